"""One log line per failed call set-up that names the call: an
authentication failure (the routing script's digest check) or a failed
delivery (a final answer >= 400 for a request the proxy forwarded or could
not forward). Sans-IO: the time is passed in, lines go to a logger given at
construction, and a flood (a password guesser, a dead Asterisk farm) is held
to ``rate`` lines per second; the lines left out are counted and reported
(``dropped=N``) on the next line that goes out.

Every value comes from the network: each is cut to :data:`MAX_FIELD`
characters (the log formatters quote and escape them).
"""

from __future__ import annotations

from typing import Protocol

from hasip.sip.build import REASONS
from hasip.sip.message import Request
from hasip.sip.uri import SipUri, Uri
from hasip.telemetry.log import get_logger

MAX_FIELD = 128
# Lines per second at most, by default.
RATE = 20
# Verdicts of a normal digest exchange, not failures: the first challenge
# of a call or registration, and a stale nonce answered again.
NOT_FAILURES = frozenset(("challenged", "stale"))
# Answers the proxy makes when it could not forward a request it had to
# deliver (no binding, no next hop, none usable, no answer, DNS, scheme);
# other answers of its own without a branch are refusals of the request
# (483, 420, 403...), not failed deliveries.
UNDELIVERED = frozenset((404, 408, 416, 478, 480, 500, 503))


class FieldLogger(Protocol):
    def info(self, event: str, **fields: object) -> None: ...


class AuthVerdict(Protocol):
    """What :class:`hasip.auth.authenticator.Verdict` holds that is logged."""

    status: int
    reason: bytes | None
    result: str


def aor(uri: Uri) -> str:
    """``user@host`` of a SIP URI (``host`` alone without a user); other
    schemes as written."""
    if isinstance(uri, SipUri):
        text = f"{uri.user}@{uri.host}" if uri.user else uri.host
    else:
        text = str(uri)
    return text[:MAX_FIELD]


def _reason(status: int, reason: bytes | None) -> str:
    return (reason or REASONS.get(status, b"")).decode("latin-1", "replace")[:MAX_FIELD]


class RateLimit:
    """At most ``rate`` events in any window of one second that starts with
    an event let through; the rest are counted until the next window."""

    __slots__ = ("dropped", "rate", "used", "window_start")

    def __init__(self, rate: int = RATE) -> None:
        self.rate = rate
        self.window_start = float("-inf")
        self.used = 0
        self.dropped = 0

    def take(self, now: float) -> int | None:
        """None: drop this event (counted); else let it through, with the
        number dropped since the last one let through (then reset)."""
        if now - self.window_start >= 1.0:
            self.window_start = now
            self.used = 0
        if self.used >= self.rate:
            self.dropped += 1
            return None
        self.used += 1
        dropped, self.dropped = self.dropped, 0
        return dropped


class FailureLog:
    """The failure lines of one node (the engine holds one)."""

    def __init__(self, logger: FieldLogger | None = None, rate: int = RATE) -> None:
        self.log: FieldLogger = logger if logger is not None else get_logger(
            "hasip.proxy.failures")
        self.limit = RateLimit(rate)

    def _line(self, event: str, req: Request, addr: tuple[str, int], status: int,
              reason: bytes | None, now: float, **extra: str) -> None:
        dropped = self.limit.take(now)
        if dropped is None:
            return
        fields: dict[str, object] = {
            "call_id": req.call_id[:MAX_FIELD], "method": req.method[:MAX_FIELD],
            "from_aor": aor(req.from_.uri), "to_aor": aor(req.to.uri), "ruri": aor(req.uri),
            "source": f"{addr[0]}:{addr[1]}", "status": status,
            "reason": _reason(status, reason), **extra}
        if dropped:
            fields["dropped"] = dropped
        self.log.info(event, **fields)

    def auth(self, req: Request, addr: tuple[str, int], verdict: AuthVerdict,
             now: float) -> None:
        """The digest check refused ``req`` (from ``addr``); a first
        challenge or a stale nonce is not a failure and logs nothing."""
        if verdict.result in NOT_FAILURES:
            return
        self._line("auth_failed", req, addr, verdict.status, verdict.reason, now,
                   result=verdict.result[:MAX_FIELD])

    def delivery(self, req: Request, addr: tuple[str, int], status: int,
                 reason: bytes | None, forwarded: bool, cancelled: bool, now: float) -> None:
        """The final answer ``status`` goes upstream for ``req``:
        ``forwarded`` when the proxy sent it on (a relayed answer, or its own
        408/503 for the branches), else an answer of the routing script. A
        cancelled request's 487 and our own challenges log nothing."""
        if status < 400 or cancelled:
            return
        if not forwarded and status not in UNDELIVERED:
            return
        self._line("delivery_failed", req, addr, status, reason, now,
                   forwarded="yes" if forwarded else "no")
