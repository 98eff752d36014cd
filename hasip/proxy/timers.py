"""One heap of transaction deadlines, without a clock of its own.

A transaction can change its next deadline many times; the heap keeps stale
entries and skips them when they come up, which is cheaper than removing
them. The engine's ``get_timer()`` is the top of this heap; the asyncio
shell keeps one ``loop.call_at`` handle for it, rounded up to
:data:`RESOLUTION`.
"""

from __future__ import annotations

import heapq
import itertools
import math

from hasip.sip.transaction import Transaction

# Wake-ups are rounded up to this many seconds: SIP timers count in half
# seconds (T1), and thousands of transactions a second would otherwise each
# get a loop iteration of their own.
RESOLUTION = 0.02


def wake_up_time(deadline: float) -> float:
    """When the shell arms its handle for ``deadline``: at most one
    resolution later, never earlier."""
    when = math.ceil(deadline / RESOLUTION) * RESOLUTION
    # (the product can round to just below the deadline: 0.8 / 0.02 * 0.02)
    return when if when >= deadline else when + RESOLUTION


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Transaction]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, txn: Transaction) -> None:
        """(Re)consider ``txn``'s next deadline."""
        deadline = txn.get_timer()
        if deadline is None or (txn.queued is not None and txn.queued <= deadline):
            return
        txn.queued = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), txn))

    def next_deadline(self) -> float | None:
        """The earliest deadline held (perhaps a stale one: harmless, it
        only wakes the engine once for nothing)."""
        heap = self._heap
        return heap[0][0] if heap else None

    def due(self, now: float) -> list[Transaction]:
        """The transactions whose timer is due at ``now``, out of the heap
        (the caller runs them and schedules them again)."""
        heap = self._heap
        out: list[Transaction] = []
        seen: set[int] = set()
        while heap and heap[0][0] <= now:
            deadline, _, txn = heapq.heappop(heap)
            if txn.queued == deadline:
                txn.queued = None
            due = txn.get_timer()
            if due is not None and due <= now:
                if id(txn) not in seen:
                    seen.add(id(txn))
                    out.append(txn)
            else:
                self.schedule(txn)
        return out
