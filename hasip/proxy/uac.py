"""The requests the node sends as a client of its own: dispatcher probes,
NAT keepalive pings, in-dialog keepalives and the BYEs that end a dead
dialog (later: media queries and the like).

One builder writes them and one table holds those outstanding, by branch;
an answer, or its absence at the deadline, goes back to whoever sent the
request. Sans-IO: the engine owns the table, hands it the responses that
match no transaction of its own and the time, and sends what it builds.

The requests are not transactions (no retransmission): a probe or a ping
that is lost counts as unanswered, which is what it is there to find out.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Sequence

from hasip.transport.base import Destination

# Every branch the node writes for its own requests starts with this
# (RFC 3261 magic cookie, then "hu"; the branches of forwarded requests
# have "hs", stateless ones "sl"): an answer to one of them never goes on
# as a stray response, even when it comes after its deadline.
BRANCH_PREFIX = "z9hG4bKhu"

# What the sender is told: the final status, or None when no final answer
# came by the deadline; and the time.
Result = Callable[[int | None, float], None]
Emit = Callable[[bytes, Destination], object]

# Outstanding requests held at most (a round of pings to every NATed
# binding is the largest burst); more are refused, not queued.
LIMIT = 200_000


class Pending:
    __slots__ = ("deadline", "method", "on_result", "sent_at")

    def __init__(self, method: str, sent_at: float, deadline: float,
                 on_result: Result | None) -> None:
        self.method = method
        self.sent_at = sent_at
        self.deadline = deadline
        self.on_result = on_result


class OwnRequests:
    """The node's own outstanding requests, and their builder."""

    def __init__(self, emit: Emit, limit: int = LIMIT) -> None:
        self.emit = emit
        self.limit = limit
        self.pending: dict[str, Pending] = {}
        self._heap: list[tuple[float, str]] = []
        self.tag = os.urandom(4).hex()
        self._counter = 0
        self.refused = 0        # requests not sent: the table was full
        self.late = 0           # answers after their deadline (or to a BYE)

    def __len__(self) -> int:
        return len(self.pending)

    def send(self, method: str, target: str, dest: Destination, now: float, *,
             timeout: float, on_result: Result | None = None, from_: str | None = None,
             to: str | None = None, call_id: str | None = None, cseq: int = 1,
             routes: Sequence[str] = ()) -> bool:
        """Build and emit ``method`` to ``target`` (the Request-URI) via
        ``dest``; ``on_result`` hears of its final answer or of its
        absence ``timeout`` seconds from ``now``. From defaults to the
        node (``sip:hasip@`` the listener, with the table's tag), To to the
        target, Call-ID to one of its own. False when it was not sent."""
        if len(self.pending) >= self.limit:
            self.refused += 1
            return False
        self._counter += 1
        branch = f"{BRANCH_PREFIX}{self.tag}{self._counter:x}"
        sent_by = dest.listener.sent_by
        route_lines = "".join(f"Route: {r}\r\n" for r in routes)
        data = (f"{method} {target} SIP/2.0\r\n"
                f"Via: SIP/2.0/{dest.transport.upper()} {sent_by};branch={branch};rport\r\n"
                f"{route_lines}"
                f"From: {from_ or f'<sip:hasip@{sent_by}>;tag={self.tag}'}\r\n"
                f"To: {to or f'<{target}>'}\r\n"
                f"Call-ID: {call_id or f'{branch}@{sent_by}'}\r\n"
                f"CSeq: {cseq} {method}\r\n"
                f"Max-Forwards: 70\r\n"
                f"Content-Length: 0\r\n\r\n").encode("latin-1", "replace")
        deadline = now + timeout
        self.pending[branch] = Pending(method, now, deadline, on_result)
        heapq.heappush(self._heap, (deadline, branch))
        self.emit(data, dest)
        return True

    def answer(self, branch: str, status: int, now: float) -> bool:
        """A response whose top Via has ``branch``: True when it answers one
        of our requests (a provisional one keeps it outstanding; a late one
        is absorbed, not forwarded)."""
        if not branch.startswith(BRANCH_PREFIX):
            return False
        if status < 200:
            return True
        entry = self.pending.pop(branch, None)
        if entry is None:
            self.late += 1
            return True
        if entry.on_result is not None:
            entry.on_result(status, now)
        return True

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][1] not in self.pending:
            heapq.heappop(heap)     # answered already
        return heap[0][0] if heap else None

    def expire(self, now: float) -> int:
        """Tell the senders of the requests unanswered at ``now``."""
        heap = self._heap
        expired = 0
        while heap and heap[0][0] <= now:
            _, branch = heapq.heappop(heap)
            entry = self.pending.pop(branch, None)
            if entry is None:
                continue
            expired += 1
            if entry.on_result is not None:
                entry.on_result(None, now)
        return expired
