"""Per-source request rates and bans (what Kamailio's pike module and an
htable of banned addresses do), sans-IO: every call takes ``now``, in
whatever clock the caller keeps (the node uses its event loop's).

Each source address has a token bucket: ``burst`` requests at once,
refilled at ``rate`` a second. A source that empties its bucket, or that
failed authentication too often (:mod:`hasip.security.authfail`), is
banned: every message from it is dropped unanswered for ``ban_time``,
doubled for each further ban of the same source (up to ``max_ban_time``).
A source that stays out of trouble for ``max_ban_time`` after its last ban
starts again from one strike.

Exempt sources (trusted networks, the dispatcher's nodes, ``security.exempt``:
the ``exempt`` callback decides, once per source) are never limited nor
banned. Memory is bounded: at most ``max_sources`` buckets (a full bucket
says nothing, so idle ones are swept first) and as many bans.

Bans are cluster state: each ban and lift is numbered with a Lamport
version (:mod:`hasip.cluster.lamport`, as the stores' records), handed to the
subscribers (the node logs it, counts it and replicates it), and
:meth:`SourceGuard.apply` takes a peer's, so a source banned by one node is
dropped by all.
"""

from __future__ import annotations

from collections.abc import Callable

from hasip.cluster.lamport import newer

# Why a source was banned.
RATE = "rate"
AUTH = "auth"
MANUAL = "manual"

# Ban change operations.
BANNED = "ban"
LIFTED = "lift"


class Ban:
    """One banned source: dropped until ``until``, the ``strikes``-th ban."""

    __slots__ = ("ip", "node", "reason", "strikes", "until", "version")

    def __init__(self, ip: str, until: float, strikes: int, reason: str, version: int,
                 node: str) -> None:
        self.ip = ip
        self.until = until
        self.strikes = strikes
        self.reason = reason
        self.version = version
        self.node = node


class _Bucket:
    __slots__ = ("at", "exempt", "tokens")

    def __init__(self, tokens: float, at: float, exempt: bool) -> None:
        self.tokens = tokens
        self.at = at
        self.exempt = exempt


BanCallback = Callable[[str, Ban, bool], None]   # (op, ban, local)


class SourceGuard:
    def __init__(self, node: str, rate: float, burst: int, ban_time: float,
                 max_ban_time: float, exempt: Callable[[str], bool],
                 max_sources: int = 100_000) -> None:
        self.node = node
        self.rate = rate
        self.burst = float(burst)
        self.ban_time = ban_time
        self.max_ban_time = max_ban_time
        self.exempt = exempt
        self.max_sources = max_sources
        self._buckets: dict[str, _Bucket] = {}
        # Active bans and, past their end, the strikes of recent ones.
        self._bans: dict[str, Ban] = {}
        self.version = 0
        self.subscribers: list[BanCallback] = []
        self.dropped = 0

    # -- the hot path ------------------------------------------------------------

    def allow(self, ip: str, now: float) -> bool:
        """Whether a message from ``ip`` may be handled (False: drop it)."""
        if self._bans:
            ban = self._bans.get(ip)
            if ban is not None and now < ban.until:
                self.dropped += 1
                return False
        if self.rate <= 0.0:
            return True
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._make_room(now)
            exempt = self.exempt(ip)
            self._buckets[ip] = _Bucket(self.burst - 1.0, now, exempt)
            return True
        if bucket.exempt:
            return True
        tokens = bucket.tokens + (now - bucket.at) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket.at = now
        if tokens < 0.999999:      # (clock readings are floats)
            bucket.tokens = tokens
            self.ban(ip, now, RATE)
            self.dropped += 1
            return False
        bucket.tokens = tokens - 1.0
        return True

    # -- bans --------------------------------------------------------------------

    def is_exempt(self, ip: str) -> bool:
        bucket = self._buckets.get(ip)
        return bucket.exempt if bucket is not None else self.exempt(ip)

    def ban(self, ip: str, now: float, reason: str, length: float = 0.0) -> Ban | None:
        """Ban ``ip`` (None when it is exempt or banned already): for
        ``length`` seconds when given (an operator's ban), else for the
        source's next step of ban_time, doubled per strike."""
        if self.is_exempt(ip):
            return None
        old = self._bans.get(ip)
        if old is not None and now < old.until and not length:
            return None
        strikes = 1
        if old is not None and now - old.until < self.max_ban_time:
            strikes = old.strikes + 1
        if not length:
            length = min(self.ban_time * 2.0 ** min(strikes - 1, 30), self.max_ban_time)
        self.version += 1
        ban = Ban(ip, now + length, strikes, reason, self.version, self.node)
        self._store(ban)
        # Back with a full allowance when the ban ends (or is lifted), not a debt.
        self._buckets.pop(ip, None)
        self._notify(BANNED, ban, True)
        return ban

    def lift(self, ip: str, now: float) -> bool:
        """End the ban of ``ip`` (and forget its strikes). False: none."""
        ban = self._bans.pop(ip, None)
        if ban is None or now >= ban.until:
            return False
        self._buckets.pop(ip, None)
        self.version += 1
        ban.version, ban.node, ban.until = self.version, self.node, now
        self._notify(LIFTED, ban, True)
        return True

    def apply(self, op: str, ban: Ban, now: float) -> bool:
        """A peer's ban or lift, kept if newer than what we hold (True)."""
        if ban.version > self.version:
            self.version = ban.version
        old = self._bans.get(ban.ip)
        if old is not None and not newer(ban.version, ban.node, old.version, old.node):
            return False
        if op == LIFTED:
            if old is None:
                return False
            del self._bans[ban.ip]
        else:
            if self.is_exempt(ban.ip):
                return False
            self._store(ban)
        self._notify(op, ban, False)
        return True

    def active(self, now: float) -> list[Ban]:
        """The bans in force, soonest to end first."""
        return sorted((b for b in self._bans.values() if now < b.until), key=lambda b: b.until)

    def banned(self, ip: str, now: float) -> bool:
        ban = self._bans.get(ip)
        return ban is not None and now < ban.until

    def _store(self, ban: Ban) -> None:
        bans = self._bans
        if ban.ip not in bans and len(bans) >= self.max_sources:
            # Forget the ban that ends first (dicts keep insertion order:
            # scanning for it is rare, bans at the bound are rarer).
            first = min(bans.values(), key=lambda b: b.until)
            del bans[first.ip]
        bans[ban.ip] = ban

    def _notify(self, op: str, ban: Ban, local: bool) -> None:
        for callback in self.subscribers:
            callback(op, ban, local)

    # -- housekeeping --------------------------------------------------------------

    def exempt_changed(self) -> None:
        """The exempt sources changed (a dispatcher node added or removed):
        each source is asked again on its next message; a node that became
        exempt loses its ban."""
        self._buckets.clear()
        for ip in [ip for ip in self._bans if self.exempt(ip)]:
            del self._bans[ip]

    def sweep(self, now: float) -> None:
        """Forget full buckets and bans whose strikes have lapsed."""
        if self.rate > 0.0:
            refill = (self.burst / self.rate)
            for ip in [ip for ip, b in self._buckets.items()
                       if not b.exempt and now - b.at >= refill]:
                del self._buckets[ip]
        for ip in [ip for ip, b in self._bans.items() if now - b.until >= self.max_ban_time]:
            del self._bans[ip]

    def _make_room(self, now: float) -> None:
        self.sweep(now)
        if len(self._buckets) >= self.max_sources:
            # Still full (a flood from many addresses): the oldest go.
            for ip in list(self._buckets)[:max(1, self.max_sources // 10)]:
                del self._buckets[ip]

    def tracked(self) -> int:
        return len(self._buckets)
