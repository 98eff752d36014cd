"""RFC 3261 section 17 transactions as sans-IO state machines, with the
RFC 6026 "Accepted" states for INVITE 2xx.

A transaction never touches a socket or the clock. Every entry point takes
``now`` and returns a list of :class:`Action` for its owner to carry out;
:meth:`get_timer` says when :meth:`handle_timer` wants to be called next.

State tables (state, event -> new state; actions):

INVITE client (17.1.1, 6026 7.2)::

    calling     1xx      -> proceeding  pass up; stop A; start C
    calling     2xx      -> accepted    pass up; start M
    calling     300-699  -> completed   send ACK; pass up; start D
    calling     timer A  -> calling     resend; A doubles
    calling     timer B  -> terminated  timeout
    proceeding  1xx      -> proceeding  pass up; restart C
    proceeding  2xx      -> accepted    pass up; start M
    proceeding  300-699  -> completed   send ACK; pass up; start D
    proceeding  timer C  -> proceeding  timer_c (the proxy cancels the branch)
    accepted    2xx      -> accepted    pass up (2xx retransmissions go end to end)
    completed   300-699  -> completed   resend ACK
    completed   timer D  -> terminated
    accepted    timer M  -> terminated

non-INVITE client (17.1.2)::

    trying      1xx      -> proceeding  pass up
    trying/proceeding final -> completed pass up; start K
    trying      timer E  -> trying      resend; E = min(2E, T2)
    proceeding  timer E  -> proceeding  resend; E = T2
    trying/proceeding timer F -> terminated timeout
    completed   timer K  -> terminated

INVITE server (17.2.1, 6026 7.1)::

    proceeding  INVITE   -> proceeding  resend last provisional
    proceeding  TU 1xx   -> proceeding  send
    proceeding  TU 2xx   -> accepted    send; start L
    proceeding  TU 3-6xx -> completed   send; start G (unreliable), H
    accepted    TU 2xx   -> accepted    send
    accepted    INVITE   -> accepted    absorb
    completed   INVITE   -> completed   resend final
    completed   timer G  -> completed   resend final; G = min(2G, T2)
    completed   ACK      -> confirmed   start I
    completed   timer H  -> terminated  (no ACK came)
    confirmed   timer I  -> terminated
    accepted    timer L  -> terminated

non-INVITE server (17.2.2)::

    trying      request  -> trying      absorb
    trying/proceeding TU 1xx -> proceeding send
    proceeding  request  -> proceeding  resend last provisional
    trying/proceeding TU final -> completed send; start J
    completed   request  -> completed   resend final
    completed   timer J  -> terminated
"""

from __future__ import annotations

from hasip.sip.build import make_ack_for
from hasip.sip.message import Request, Response

# Action kinds
SEND = "send"  # data: bytes to send to the transaction's peer
RESPONSE = "response"  # data: a Response for the TU (client transactions)
TIMEOUT = "timeout"  # the peer never answered (timer B or F)
TIMER_C = "timer_c"  # a proxied INVITE got no final answer in time (RFC 3261 16.8)
TRANSPORT_ERROR = "transport_error"  # the request could not be sent (17.1.4)
TERMINATED = "terminated"  # forget the transaction

CALLING = "calling"
TRYING = "trying"
PROCEEDING = "proceeding"
ACCEPTED = "accepted"
COMPLETED = "completed"
CONFIRMED = "confirmed"
TERMINATED_STATE = "terminated"


# An action is a plain (kind, data) tuple: the hot path makes a dozen per
# call, and a tuple costs less to build than a named tuple.
Action = tuple[str, "bytes | Response | None"]
_TERMINATED: Action = ("terminated", None)
_TIMEOUT: Action = ("timeout", None)
_TIMER_C: Action = ("timer_c", None)
_TRANSPORT_ERROR: Action = ("transport_error", None)


class Timers:
    """Timer values in seconds.

    ``non_invite_final`` replaces 64*T1 for timers B and F and
    ``invite_final`` is timer C: the seed's Kamailio ``fr_timer`` (10 s) and
    ``fr_inv_timer`` (120 s).
    """

    __slots__ = ("invite_final", "non_invite_final", "t1", "t2", "t4")

    def __init__(self, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0,
                 non_invite_final: float = 10.0, invite_final: float = 120.0) -> None:
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.non_invite_final = non_invite_final
        self.invite_final = invite_final


class Transaction:
    """What every transaction shares: a state, named timers and a key."""

    __slots__ = ("_timers", "key", "owner", "queued", "reliable", "state", "timers")

    def __init__(self, key: tuple[str, ...], reliable: bool, timers: Timers) -> None:
        self.key = key
        self.reliable = reliable
        self.timers = timers
        self.state = ""
        self._timers: dict[str, float] = {}
        # The asyncio layer keeps its per-transaction context here.
        self.owner: object = None
        # The deadline under which the timer queue holds this transaction.
        self.queued: float | None = None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or ``None``."""
        t = self._timers
        if not t:
            return None
        if len(t) == 1:
            for v in t.values():
                return v
        return min(t.values())

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while self._timers and self.state != TERMINATED_STATE:
            name, deadline = min(self._timers.items(), key=lambda kv: kv[1])
            if deadline > now:
                break
            del self._timers[name]
            actions.extend(self._fire(name, now))
        return actions

    def _fire(self, name: str, now: float) -> list[Action]:
        raise NotImplementedError

    def _terminate(self) -> list[Action]:
        self.state = TERMINATED_STATE
        self._timers.clear()
        return [_TERMINATED]

    def _wait(self, name: str, now: float, seconds: float) -> list[Action]:
        """Start a wait timer; zero (reliable transports) terminates at once."""
        if seconds <= 0:
            return self._terminate()
        self._timers[name] = now + seconds
        return []


class ClientTransaction(Transaction):
    """Shared parts of the client transactions: the request sent and its bytes."""

    __slots__ = ("_ack", "_interval", "data", "last_response", "request")

    def __init__(self, branch: str, request: Request, data: bytes, reliable: bool,
                 timers: Timers) -> None:
        super().__init__((branch, request.method), reliable, timers)
        self.request = request
        self.data = data
        self._interval = timers.t1
        self.last_response: Response | None = None
        self._ack: bytes | None = None

    def start(self, now: float) -> list[Action]:
        raise NotImplementedError

    def receive_response(self, resp: Response, now: float) -> list[Action]:
        raise NotImplementedError

    def transport_error(self) -> list[Action]:
        """The transport could not send (RFC 3261 17.1.4): report it; a proxy
        then acts as if the branch had answered 503 (RFC 3261 16.9)."""
        if self.state in (TERMINATED_STATE, COMPLETED, ACCEPTED):
            return []
        return [_TRANSPORT_ERROR, *self._terminate()]


class InviteClientTransaction(ClientTransaction):
    __slots__ = ()

    def start(self, now: float) -> list[Action]:
        self.state = CALLING
        if not self.reliable:
            self._timers["A"] = now + self.timers.t1
        self._timers["B"] = now + self.timers.non_invite_final
        return [(SEND, self.data)]

    def receive_response(self, resp: Response, now: float) -> list[Action]:
        state = self.state
        status = resp.status
        if state in (CALLING, PROCEEDING):
            self.last_response = resp
            if status < 200:
                self.state = PROCEEDING
                self._timers.pop("A", None)
                self._timers.pop("B", None)
                self._timers["C"] = now + self.timers.invite_final
                return [(RESPONSE, resp)]
            self._timers.clear()
            if status < 300:
                self.state = ACCEPTED
                self._timers["M"] = now + 64 * self.timers.t1
                return [(RESPONSE, resp)]
            self.state = COMPLETED
            to_line = next(r for k, r in zip(resp.keys, resp.raws, strict=True) if k == b"to")
            self._ack = make_ack_for(self.request, to_line)
            actions: list[Action] = [(SEND, self._ack), (RESPONSE, resp)]
            return actions + self._wait("D", now, 0 if self.reliable else 32.0)
        if state == ACCEPTED and 200 <= status < 300:
            return [(RESPONSE, resp)]
        if state == COMPLETED and status >= 300 and self._ack is not None:
            return [(SEND, self._ack)]
        return []

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "A" and self.state == CALLING:
            self._interval *= 2
            self._timers["A"] = now + self._interval
            return [(SEND, self.data)]
        if name == "B" and self.state == CALLING:
            return [_TIMEOUT, *self._terminate()]
        if name == "C" and self.state == PROCEEDING:
            return [_TIMER_C]
        if name in ("D", "M"):
            return self._terminate()
        return []


class NonInviteClientTransaction(ClientTransaction):
    __slots__ = ()

    def start(self, now: float) -> list[Action]:
        self.state = TRYING
        if not self.reliable:
            self._timers["E"] = now + self.timers.t1
        self._timers["F"] = now + self.timers.non_invite_final
        return [(SEND, self.data)]

    def receive_response(self, resp: Response, now: float) -> list[Action]:
        if self.state not in (TRYING, PROCEEDING):
            return []
        self.last_response = resp
        if resp.status < 200:
            self.state = PROCEEDING
            return [(RESPONSE, resp)]
        self.state = COMPLETED
        self._timers.clear()
        wait = 0 if self.reliable else self.timers.t4
        return [(RESPONSE, resp), *self._wait("K", now, wait)]

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "E" and self.state in (TRYING, PROCEEDING):
            if self.state == TRYING:
                self._interval = min(2 * self._interval, self.timers.t2)
            else:
                self._interval = self.timers.t2
            self._timers["E"] = now + self._interval
            return [(SEND, self.data)]
        if name == "F":
            return [_TIMEOUT, *self._terminate()]
        if name == "K":
            return self._terminate()
        return []


class ServerTransaction(Transaction):
    """Shared parts of the server transactions: the last response. The request
    is the TU's: a transaction that lives on for retransmissions after its
    final answer (32 s on UDP) keeps only the answer's bytes."""

    __slots__ = ("_interval", "last_response", "last_status")

    def __init__(self, key: tuple[str, ...], reliable: bool, timers: Timers) -> None:
        super().__init__(key, reliable, timers)
        self.last_response: bytes | None = None
        self.last_status = 0
        self._interval = timers.t1

    def receive_request(self, request: Request, now: float) -> list[Action]:
        """A retransmission of the request (or an ACK) arrived."""
        raise NotImplementedError

    def send_response(self, status: int, data: bytes, now: float) -> list[Action]:
        """The TU answers; returns what to send."""
        raise NotImplementedError


class InviteServerTransaction(ServerTransaction):
    __slots__ = ()

    def __init__(self, key: tuple[str, ...], reliable: bool, timers: Timers) -> None:
        super().__init__(key, reliable, timers)
        self.state = PROCEEDING

    def receive_request(self, request: Request, now: float) -> list[Action]:
        """A retransmitted INVITE, or the ACK for a non-2xx final response."""
        if request.method == "ACK":
            if self.state == COMPLETED:
                self.state = CONFIRMED
                self._timers.clear()
                return self._wait("I", now, 0 if self.reliable else self.timers.t4)
            return []
        if self.state in (PROCEEDING, COMPLETED) and self.last_response is not None:
            return [(SEND, self.last_response)]
        return []

    def send_response(self, status: int, data: bytes, now: float) -> list[Action]:
        state = self.state
        if state == PROCEEDING:
            self.last_response = data
            self.last_status = status
            if status < 200:
                return [(SEND, data)]
            if status < 300:
                self.state = ACCEPTED
                self._timers["L"] = now + 64 * self.timers.t1
                return [(SEND, data)]
            self.state = COMPLETED
            if not self.reliable:
                self._timers["G"] = now + self.timers.t1
            self._timers["H"] = now + 64 * self.timers.t1
            return [(SEND, data)]
        if state == ACCEPTED and 200 <= status < 300:
            return [(SEND, data)]
        return []

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "G" and self.state == COMPLETED and self.last_response is not None:
            self._interval = min(2 * self._interval, self.timers.t2)
            self._timers["G"] = now + self._interval
            return [(SEND, self.last_response)]
        if name in ("H", "I", "L"):
            return self._terminate()
        return []


class NonInviteServerTransaction(ServerTransaction):
    __slots__ = ()

    def __init__(self, key: tuple[str, ...], reliable: bool, timers: Timers) -> None:
        super().__init__(key, reliable, timers)
        self.state = TRYING

    def receive_request(self, request: Request, now: float) -> list[Action]:
        if self.state in (PROCEEDING, COMPLETED) and self.last_response is not None:
            return [(SEND, self.last_response)]
        return []

    def send_response(self, status: int, data: bytes, now: float) -> list[Action]:
        if self.state not in (TRYING, PROCEEDING):
            return []
        self.last_response = data
        self.last_status = status
        if status < 200:
            self.state = PROCEEDING
            return [(SEND, data)]
        self.state = COMPLETED
        wait = 0 if self.reliable else 64 * self.timers.t1
        return [(SEND, data), *self._wait("J", now, wait)]

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "J":
            return self._terminate()
        return []


def server_key(request: Request) -> tuple[str, ...]:
    """The key that matches a request to its server transaction (RFC 3261
    17.2.3): branch, sent-by and method (ACK matches INVITE). Requests whose
    branch lacks the magic cookie fall back to RFC 2543 matching on
    Request-URI, From tag, Call-ID, CSeq number and top Via."""
    via = request.top_via
    method = request.method
    if method == "ACK":
        method = "INVITE"
    if via.is_rfc3261_branch():
        return (via.params["branch"] or "", via.sent_by, method)
    return (
        "2543",
        request.uri_raw.decode("latin-1"),
        request.from_.tag or "",
        request.call_id,
        str(request.cseq[0]),
        via.text,
        method,
    )


def cancel_target_key(cancel: Request) -> tuple[str, ...]:
    """The key of the INVITE server transaction that a CANCEL cancels (17.2.3, 9.2)."""
    key = server_key(cancel)
    return (*key[:-1], "INVITE")
