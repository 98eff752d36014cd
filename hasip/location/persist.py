"""Write-behind from the location change feed to the durable store.

The registrar never waits for the database: each change lands in a queue
keyed by binding (a later change of the same binding replaces the earlier
one, so the queue holds at most one entry per binding), and one task writes
batches. When the database is down or slow the queue grows (bounded, with a
gauge) and the task retries with backoff; when it is back, everything pending
is written. Nothing is dropped unless the bound is hit, which is logged and
counted.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from hasip import metrics
from hasip.location.backend import Backend
from hasip.location.binding import Binding
from hasip.location.store import DELETE, REMOTE, Change, LocationStore
from hasip.log import get_logger
from hasip.tasks import cancel

log = get_logger("hasip.location")


class WriteBehind:
    def __init__(self, backend: Backend, max_pending: int = 1_000_000, batch: int = 500,
                 max_backoff: float = 5.0, interval: float = 0.1,
                 remote: bool = True) -> None:
        self.backend = backend
        # Whether peers' changes are written too: yes for a store of this
        # node's own (SQLite), no for a database the cluster shares (MySQL),
        # where the node that made a change writes it.
        self.remote = remote
        # Gather changes this long before writing: one transaction per batch,
        # not per registration.
        self.interval = interval
        self.max_pending = max_pending
        self.batch = batch
        self.max_backoff = max_backoff
        self.pending: OrderedDict[str, Change] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.healthy = False
        metrics.LOCATION_QUEUE.set_function(lambda: len(self.pending))

    def on_change(self, change: Change) -> None:
        """Store subscriber: queue one change (coalesced by binding)."""
        if change.source == REMOTE and not self.remote:
            return
        ruid = change.binding.ruid
        self.pending.pop(ruid, None)
        self.pending[ruid] = change
        if len(self.pending) > self.max_pending:
            _, lost = self.pending.popitem(last=False)
            metrics.LOCATION_DROPPED.inc()
            log.error("location_queue_full", max_pending=self.max_pending,
                      dropped=lost.binding.ruid)
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
        """Write up to ``batch`` pending changes; False on a database error
        (the changes stay queued unless a newer change replaced them)."""
        taken: list[Change] = []
        while self.pending and len(taken) < self.batch:
            taken.append(self.pending.popitem(last=False)[1])
        if not taken:
            return True
        puts: list[Binding] = [c.binding for c in taken if c.op != DELETE]
        deletes = [c.binding.ruid for c in taken if c.op == DELETE]
        try:
            await self.backend.write(puts, deletes)
        except Exception as exc:
            for change in reversed(taken):
                ruid = change.binding.ruid
                if ruid not in self.pending:
                    self.pending[ruid] = change
                    self.pending.move_to_end(ruid, last=False)
            metrics.LOCATION_WRITE_ERRORS.labels(self.backend.name).inc()
            if self.healthy:
                log.warning("location_store_down", backend=self.backend.name,
                            error=str(exc) or type(exc).__name__, pending=len(self.pending))
            self.healthy = False
            return False
        if not self.healthy:
            log.info("location_store_up", backend=self.backend.name, pending=len(self.pending))
        self.healthy = True
        metrics.LOCATION_WRITES.labels(self.backend.name).inc(len(taken))
        return True

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


async def load_into(store: LocationStore, backend: Backend, retry: float = 2.0) -> None:
    """Open the backend and load its bindings; retried until it works (the
    node serves meanwhile: bindings registered before the load finishes win
    over older stored ones)."""
    while True:
        try:
            await backend.open()
            rows = await backend.load()
            loaded = store.load(rows)
            # Bindings that expired while no node was running.
            now = store.clock()
            expired = [b.ruid for b in rows if b.expires <= now]
            if expired:
                await backend.write([], expired)
            log.info("location_loaded", backend=backend.name, bindings=loaded,
                     purged=len(expired))
            return
        except Exception as exc:
            log.warning("location_load_failed", backend=backend.name,
                        error=str(exc) or type(exc).__name__, retry_s=retry)
            await asyncio.sleep(retry)
