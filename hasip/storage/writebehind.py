"""Write-behind to a database: the SIP path never waits for it.

Items land in a queue keyed by record (a later item for the same key
replaces the earlier one, so the queue holds at most one entry per record)
and one task writes them in batches. When the database is down or slow the
queue grows (bounded, with a gauge) and the task retries with backoff;
when it is back, everything pending is written. Nothing is dropped unless
the bound is hit, which is logged and counted. The location store's
bindings and the dialogs' CDRs both go this way.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

from hasip.telemetry.log import get_logger
from hasip.util.tasks import cancel

log = get_logger("hasip.writebehind")

T = TypeVar("T")


@dataclass(frozen=True)
class QueueMetrics:
    queue: Gauge       # items waiting
    writes: Counter    # items written, by backend
    errors: Counter    # failed batches, by backend
    dropped: Counter   # items dropped at the bound


class WriteBehind(Generic[T]):
    def __init__(self, what: str, backend_name: str, write: Callable[[list[T]], Awaitable[None]],
                 key: Callable[[T], str], stats: QueueMetrics, max_pending: int = 1_000_000,
                 batch: int = 500, max_backoff: float = 5.0, interval: float = 0.1) -> None:
        self.what = what                   # "location", "cdr": the logs' event prefix
        self.backend_name = backend_name
        self._write = write
        self._key = key
        self.stats = stats
        # Gather items this long before writing: one transaction per batch.
        self.interval = interval
        self.max_pending = max_pending
        self.batch = batch
        self.max_backoff = max_backoff
        self.pending: OrderedDict[str, T] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.healthy = False
        stats.queue.set_function(lambda: len(self.pending))

    def queue(self, item: T) -> None:
        key = self._key(item)
        self.pending.pop(key, None)
        self.pending[key] = item
        if len(self.pending) > self.max_pending:
            lost, _ = self.pending.popitem(last=False)
            self.stats.dropped.inc()
            log.error(f"{self.what}_queue_full", max_pending=self.max_pending, dropped=lost)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(self.interval)
            if await self.write_batch():
                backoff = 0.2
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def write_batch(self) -> bool:
        """Write up to ``batch`` pending items; False on a database error (the
        items stay queued unless a newer item for the same key replaced them)."""
        taken: list[tuple[str, T]] = []
        while self.pending and len(taken) < self.batch:
            taken.append(self.pending.popitem(last=False))
        if not taken:
            return True
        try:
            await self._write([item for _, item in taken])
        except asyncio.CancelledError:
            # stop() while a batch was being written: whether it reached
            # the database is unknown, so it stays queued for the final
            # flush (the writes are idempotent upserts).
            self._requeue(taken)
            raise
        except Exception as exc:
            self._requeue(taken)
            self.stats.errors.labels(self.backend_name).inc()
            if self.healthy:
                log.warning(f"{self.what}_store_down", backend=self.backend_name,
                            error=str(exc) or type(exc).__name__, pending=len(self.pending))
            self.healthy = False
            return False
        if not self.healthy:
            log.info(f"{self.what}_store_up", backend=self.backend_name,
                     pending=len(self.pending))
        self.healthy = True
        self.stats.writes.labels(self.backend_name).inc(len(taken))
        return True

    def _requeue(self, taken: list[tuple[str, T]]) -> None:
        """Put a batch that was not written back in front (unless a newer
        item for the same key replaced it meanwhile)."""
        for key, item in reversed(taken):
            if key not in self.pending:
                self.pending[key] = item
                self.pending.move_to_end(key, last=False)

    async def flush(self, timeout: float) -> bool:
        """Write everything pending, for at most ``timeout`` seconds (shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending and loop.time() < deadline:
            if not await self.write_batch():
                await asyncio.sleep(0.2)
        return not self.pending

    async def stop(self) -> None:
        await cancel(self._task)
