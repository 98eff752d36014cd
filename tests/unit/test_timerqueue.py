"""The timer queue on a virtual clock: a deadline earlier than the one a
transaction re-armed during a run is not kept waiting for it, and the
compiled build runs it without a TypeError (the queue's handle read after
the run re-armed it)."""

from __future__ import annotations

import asyncio

from hasip.proxy.timers import TimerQueue
from hasip.sip.message import Request, parse_message
from hasip.sip.transaction import NonInviteClientTransaction, Timers, Transaction

TIMERS = Timers(t1=0.5, t2=4.0, t4=5.0, non_invite_final=32.0, invite_final=180.0)


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock the test moves; its timers are run by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def armed(self) -> list[float]:
        return sorted(h.when() for h in self._scheduled  # type: ignore[attr-defined]
                      if not h.cancelled())

    def fire_next(self) -> float:
        handles = sorted((h for h in self._scheduled if not h.cancelled()),  # type: ignore[attr-defined]
                         key=lambda h: h.when())
        handle = handles[0]
        callback, args = handle._callback, handle._args  # type: ignore[attr-defined]
        handle.cancel()          # (out of the loop's heap: it runs here instead)
        self.now = handle.when()
        callback(*args)
        return self.now


def options(branch: str) -> Request:
    msg = parse_message(
        f"OPTIONS sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch={branch}\r\n"
        "From: <sip:a@example.com>;tag=f\r\nTo: <sip:b@example.com>\r\nCall-ID: c\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".encode())
    assert isinstance(msg, Request)
    return msg


def test_an_earlier_deadline_is_not_kept_waiting_for_a_later_one() -> None:
    """A at 0.0 retransmits at 0.5 and then waits until 1.5; B, started at
    0.3, retransmits at 0.8. Before: when A re-armed the queue for 1.5
    during the run at 0.5, B's 0.8 waited until then."""
    loop = VirtualLoop()
    fired: list[tuple[float, str]] = []

    def fire(txn: Transaction, now: float) -> None:
        txn.handle_timer(now)
        fired.append((round(now, 2), txn.key[0]))

    queue = TimerQueue(loop, fire)
    a = NonInviteClientTransaction("A", options("z9hG4bKa"), b"", False, TIMERS)
    a.start(0.0)
    queue.schedule(a)
    loop.now = 0.3
    b = NonInviteClientTransaction("B", options("z9hG4bKb"), b"", False, TIMERS)
    b.start(0.3)
    queue.schedule(b)
    for _ in range(4):
        loop.fire_next()
    assert fired == [(0.5, "A"), (0.8, "B"), (1.5, "A"), (1.8, "B")]
    queue.close()
    loop.close()
