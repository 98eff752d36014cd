"""One heap of transaction deadlines behind a single ``loop.call_at`` handle.

A transaction can change its next deadline many times; the heap keeps stale
entries and skips them when they come up, which is cheaper than cancelling and
re-arming a timer handle per transaction.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable

from hasip.sip.transaction import Transaction

# Wake-ups are rounded up to this many seconds: SIP timers count in half
# seconds (T1), and thousands of transactions a second would otherwise each
# get a loop iteration of their own.
RESOLUTION = 0.02


class TimerQueue:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 fire: Callable[[Transaction, float], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._heap: list[tuple[float, int, Transaction]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, txn: Transaction) -> None:
        """(Re)consider ``txn``'s next deadline."""
        deadline = txn.get_timer()
        if deadline is None or (txn.queued is not None and txn.queued <= deadline):
            return
        txn.queued = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), txn))
        if deadline < self._armed_at:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        when = math.ceil(deadline / RESOLUTION) * RESOLUTION
        if when >= self._armed_at:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._run)

    def _run(self) -> None:
        # Forget the handle that fired without reading the attribute again
        # here: mypyc would take it for None for the rest of the method (the
        # narrowing of the assignment), while a timer fired in the loop may
        # arm a new handle meanwhile (a TypeError in the compiled build).
        self._disarm()
        heap = self._heap
        now = self._loop.time()
        while heap and heap[0][0] <= now:
            deadline, _, txn = heapq.heappop(heap)
            if txn.queued == deadline:
                txn.queued = None
            due = txn.get_timer()
            if due is not None and due <= now:
                self._fire(txn, now)
            self.schedule(txn)
        if heap:
            # The earliest deadline left, even if a transaction handled
            # above armed the handle for a later one (_arm keeps the
            # earlier of the two).
            self._arm(heap[0][0])

    def _disarm(self) -> None:
        self._handle = None
        self._armed_at = math.inf

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._heap.clear()
