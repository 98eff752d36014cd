"""rtpengine's ng control protocol, sans-IO: a request is a cookie, a space
and a bencoded dictionary (``command`` and its keys) in one UDP datagram;
the answer carries the same cookie and a dictionary with ``result``
(``ok``, ``pong``, ``error``, ``load limit``) and the command's data
(rtpengine docs, "ng control protocol").

:class:`NgRequests` is the table of requests in flight: it makes the
datagram, matches an answer by its cookie, and says when to retransmit (the
same datagram: rtpengine answers a repeated cookie from its cache without
doing the command again) and when to give up. The caller injects ``now``;
the asyncio client (hasip/media/client.py) runs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hasip.media.bencode import BencodeError, Decoded, decode, encode

OK = "ok"
PONG = "pong"
ERROR = "error"


class NgError(Exception):
    """rtpengine answered ``error`` (or an answer that is not ng)."""


class NgTimeout(Exception):
    """No answer after every retransmission."""


def text(value: Decoded | None, default: str = "") -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else default


@dataclass
class NgAnswer:
    """An ng answer: its result, the SDP of an offer/answer, the error
    reason, and the rest of the dictionary (stats of delete/query)."""

    result: str
    data: dict[bytes, Decoded]

    @property
    def ok(self) -> bool:
        return self.result in (OK, PONG)

    @property
    def sdp(self) -> bytes | None:
        sdp = self.data.get(b"sdp")
        return sdp if isinstance(sdp, bytes) else None

    @property
    def error_reason(self) -> str:
        return text(self.data.get(b"error-reason"), self.result)

    @property
    def warning(self) -> str:
        return text(self.data.get(b"warning"))


def parse_answer(payload: bytes) -> NgAnswer:
    """The dictionary after the cookie; NgError when it is not one."""
    try:
        data = decode(payload)
    except BencodeError as exc:
        raise NgError(f"answer is not bencode: {exc}") from None
    if not isinstance(data, dict):
        raise NgError("answer is not a dictionary")
    result = text(data.get(b"result"))
    if not result:
        raise NgError("answer has no result")
    return NgAnswer(result, data)


def split_datagram(data: bytes) -> tuple[bytes, bytes] | None:
    """(cookie, payload) of an ng datagram; None when it has no cookie."""
    space = data.find(b" ")
    if space <= 0 or space > 64:
        return None
    return data[:space], data[space + 1:]


@dataclass
class Pending:
    cookie: bytes
    datagram: bytes
    target: tuple[str, int]
    command: str
    sent: float                 # when first sent
    next_send: float            # the next retransmission
    interval: float
    deadline: float
    tries: int = 1
    # Whatever the shell ties to the request (its future).
    waiter: Any = None


@dataclass
class Event:
    """What the table tells its driver: send a datagram (retransmission),
    a request answered (``answer``) or failed (``error``)."""

    pending: Pending
    send: bool = False
    answer: NgAnswer | None = None
    error: Exception | None = None


@dataclass
class NgRequests:
    """Requests in flight to any number of rtpengines, by cookie."""

    retransmit: float = 0.2         # first retransmission after this, then doubled
    timeout: float = 1.5            # no answer within this: NgTimeout
    max_pending: int = 100_000      # beyond this a new request fails at once
    pending: dict[bytes, Pending] = field(default_factory=dict)
    _prefix: bytes = field(default_factory=lambda: os.urandom(4).hex().encode())
    _seq: int = 0

    def request(self, target: tuple[str, int], command: dict[str, Any], now: float,
                waiter: Any = None) -> Pending:
        """Register ``command`` (a dict with "command") for ``target``; the
        caller sends ``.datagram``."""
        if len(self.pending) >= self.max_pending:
            raise NgError(f"{len(self.pending)} ng requests in flight")
        self._seq += 1
        cookie = b"%s_%d" % (self._prefix, self._seq)
        datagram = cookie + b" " + encode(command)
        p = Pending(cookie, datagram, target, str(command.get("command", "")), now,
                    now + self.retransmit, self.retransmit, now + self.timeout, waiter=waiter)
        self.pending[cookie] = p
        return p

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> Event | None:
        """An answer datagram from ``source``: the request it completes, or
        None (unknown or late cookie, a source that is not its target)."""
        parts = split_datagram(data)
        if parts is None:
            return None
        p = self.pending.get(parts[0])
        if p is None or (source[0], source[1]) != p.target:
            return None
        del self.pending[parts[0]]
        try:
            return Event(p, answer=parse_answer(parts[1]))
        except NgError as exc:
            return Event(p, error=exc)

    def cancel(self, cookie: bytes) -> None:
        self.pending.pop(cookie, None)

    def poll(self, now: float) -> list[Event]:
        """Retransmissions due and requests that ran out of time."""
        events: list[Event] = []
        for cookie, p in list(self.pending.items()):
            if now >= p.deadline:
                del self.pending[cookie]
                events.append(Event(p, error=NgTimeout(
                    f"no answer to {p.command} from {p.target[0]}:{p.target[1]} "
                    f"after {p.tries} tries ({now - p.sent:.2f} s)")))
            elif now >= p.next_send:
                p.tries += 1
                p.interval *= 2
                p.next_send = min(now + p.interval, p.deadline)
                events.append(Event(p, send=True))
        return events

    def next_deadline(self) -> float | None:
        if not self.pending:
            return None
        return min(min(p.next_send, p.deadline) for p in self.pending.values())
