"""The engine's timer heap and the shell's wake-up rule on a virtual clock:
whatever sequence of transactions is scheduled, each deadline fires within
one resolution of it and never before it. (Before the engine was sans-IO,
the queue re-armed for a later deadline and kept an earlier one waiting:
a 1.5 s deadline fired at 5.0 s.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hasip.proxy.timers import RESOLUTION, TimerHeap, wake_up_time
from hasip.sip.message import Request, parse_message
from hasip.sip.transaction import NonInviteClientTransaction, Timers

TIMERS = Timers(t1=0.5, t2=4.0, t4=5.0, non_invite_final=32.0, invite_final=180.0)


def options(branch: str) -> Request:
    msg = parse_message(
        f"OPTIONS sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.1;branch={branch}\r\n"
        "From: <sip:a@example.com>;tag=f\r\nTo: <sip:b@example.com>\r\nCall-ID: c\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".encode())
    assert isinstance(msg, Request)
    return msg


class Shell:
    """The asyncio shell's rule (hasip.proxy.shell): one wake-up armed at
    wake_up_time(get_timer()), re-armed only for an earlier one."""

    def __init__(self) -> None:
        self.heap = TimerHeap()
        self.armed = float("inf")
        self.fired: list[tuple[float, float, str]] = []   # (deadline, fired at, name)

    def rearm(self) -> None:
        deadline = self.heap.next_deadline()
        if deadline is not None and wake_up_time(deadline) < self.armed:
            self.armed = wake_up_time(deadline)

    def run_until(self, end: float) -> None:
        while self.armed <= end:
            now = self.armed
            self.armed = float("inf")
            for txn in self.heap.due(now):
                deadline = txn.get_timer()
                assert deadline is not None
                txn.handle_timer(now)
                self.fired.append((deadline, now, txn.key[0]))
                self.heap.schedule(txn)
            self.rearm()


def test_an_earlier_deadline_is_not_kept_waiting_for_a_later_one() -> None:
    """A at 0.0 retransmits at 0.5 and then waits until 1.5; B, started at
    0.3, retransmits at 0.8."""
    shell = Shell()
    a = NonInviteClientTransaction("A", options("z9hG4bKa"), b"", False, TIMERS)
    a.start(0.0)
    shell.heap.schedule(a)
    shell.rearm()
    shell.run_until(0.3)
    b = NonInviteClientTransaction("B", options("z9hG4bKb"), b"", False, TIMERS)
    b.start(0.3)
    shell.heap.schedule(b)
    shell.rearm()
    shell.run_until(2.0)
    assert [(round(at, 2), name) for _, at, name in shell.fired] == [
        (0.5, "A"), (0.8, "B"), (1.5, "A"), (1.8, "B")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 20.0), st.booleans()), min_size=1, max_size=30))
def test_every_deadline_fires_within_the_resolution_never_later(
        starts: list[tuple[float, bool]]) -> None:
    """Transactions started at arbitrary times (some answered at once, which
    moves their deadline later): every timer fires at or after its
    deadline and less than one resolution after it."""
    shell = Shell()
    now = 0.0
    for i, (start, answered) in enumerate(sorted(starts)):
        shell.run_until(start)
        now = start
        txn = NonInviteClientTransaction(f"T{i}", options(f"z9hG4bK{i}"), b"", False, TIMERS)
        txn.start(now)
        shell.heap.schedule(txn)
        if answered:
            # A provisional answer: retransmissions at T2 instead (a later deadline).
            resp = parse_message(
                f"SIP/2.0 100 Trying\r\nVia: SIP/2.0/UDP 198.18.0.1;branch=z9hG4bK{i}\r\n"
                "From: <sip:a@example.com>;tag=f\r\nTo: <sip:b@example.com>\r\nCall-ID: c\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".encode())
            txn.receive_response(resp, now)  # type: ignore[arg-type]
            shell.heap.schedule(txn)
        shell.rearm()
    shell.run_until(now + 40.0)
    assert shell.fired
    for deadline, at, name in shell.fired:
        assert deadline <= at + 1e-9, (name, deadline, at)
        assert at - deadline < RESOLUTION + 1e-9, (name, deadline, at)
