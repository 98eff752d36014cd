"""Failed authentications, per source and per user, sans-IO (``now``
injected): what makes password guessing slow.

* Per source: ``source_limit`` failures within ``window`` seconds and the
  source is to be banned (the caller bans it through the
  :class:`~hasip.security.guard.SourceGuard`, so the ban is shared by the
  cluster and dropped at the socket).
* Per user, against guessing from many addresses: after ``user_limit``
  failures in a row (forgotten after ``window`` without one), the user's
  next attempt is refused unchecked until a back-off has passed:
  ``backoff`` seconds, doubled for each further failure, up to
  ``max_backoff``. A success ends it. Attempts refused meanwhile do not
  count, so the owner of the account gets in as soon as the back-off ends,
  and a guesser gets one try per back-off.

Failures are wrong passwords, unknown users and credentials RADIUS
rejected; a stale nonce or a challenge is not one, so a phone that
registers every few minutes never comes near a limit. Both tables are
bounded (``max_tracked``; the oldest entries go first).
"""

from __future__ import annotations


class _SourceCount:
    __slots__ = ("count", "since")

    def __init__(self, since: float) -> None:
        self.count = 0
        self.since = since


class _UserFailures:
    __slots__ = ("count", "last", "until")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.until = 0.0


class AuthFailures:
    def __init__(self, source_limit: int = 10, window: float = 600.0, user_limit: int = 5,
                 backoff: float = 2.0, max_backoff: float = 300.0,
                 max_tracked: int = 100_000) -> None:
        self.source_limit = source_limit
        self.window = window
        self.user_limit = user_limit
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_tracked = max_tracked
        self._sources: dict[str, _SourceCount] = {}
        self._users: dict[str, _UserFailures] = {}

    def user_wait(self, user: str, now: float) -> float:
        """Seconds until ``user`` may try again (0: now)."""
        entry = self._users.get(user)
        if entry is None or entry.until <= now:
            return 0.0
        return entry.until - now

    def failed(self, source: str, user: str, now: float) -> bool:
        """Count a failure; True when ``source`` reached its limit."""
        entry = self._users.get(user)
        if entry is None:
            if len(self._users) >= self.max_tracked:
                self._evict(self._users)
            entry = self._users[user] = _UserFailures()
        entry.count += 1
        entry.last = now
        if entry.count >= self.user_limit:
            steps = min(entry.count - self.user_limit, 30)
            entry.until = now + min(self.backoff * 2.0 ** steps, self.max_backoff)
        if self.source_limit <= 0:
            return False
        count = self._sources.get(source)
        if count is None or now - count.since > self.window:
            if count is None and len(self._sources) >= self.max_tracked:
                self._evict(self._sources)
            count = self._sources[source] = _SourceCount(now)
        count.count += 1
        if count.count >= self.source_limit:
            del self._sources[source]    # banned now: it starts again after the ban
            return True
        return False

    def succeeded(self, user: str) -> None:
        """The user proved its password: its failures are forgiven. (A
        source's are not: a guesser with an account of its own could clear
        them between guesses.)"""
        self._users.pop(user, None)

    def sweep(self, now: float) -> None:
        """Forget counts that no longer matter."""
        for ip in [ip for ip, c in self._sources.items() if now - c.since > self.window]:
            del self._sources[ip]
        # A user's failures in a row are kept while they are recent (one
        # window) or its back-off runs: older ones are forgotten.
        for user in [u for u, e in self._users.items()
                     if now - e.last > self.window and e.until <= now]:
            del self._users[user]

    @staticmethod
    def _evict(table: dict[str, _SourceCount] | dict[str, _UserFailures]) -> None:
        for key in list(table)[:max(1, len(table) // 10)]:
            del table[key]

    def tracked(self) -> tuple[int, int]:
        return len(self._sources), len(self._users)
