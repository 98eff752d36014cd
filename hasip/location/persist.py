"""The location change feed written behind to the durable store (see
``hasip.storage.writebehind``: the registrar never waits for the database), and the
load of the stored bindings at start."""

from __future__ import annotations

import asyncio

from hasip.location.backend import Backend
from hasip.location.binding import Binding
from hasip.location.store import DELETE, REMOTE, Change, LocationStore
from hasip.storage import writebehind
from hasip.storage.writebehind import QueueMetrics
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger

log = get_logger("hasip.location")


LOCATION_METRICS = QueueMetrics(metrics.LOCATION_QUEUE, metrics.LOCATION_WRITES,
                                metrics.LOCATION_WRITE_ERRORS, metrics.LOCATION_DROPPED)


class WriteBehind(writebehind.WriteBehind[Change]):
    """The location store's change feed, written behind to its backend."""

    def __init__(self, backend: Backend, max_pending: int = 1_000_000, batch: int = 500,
                 max_backoff: float = 5.0, interval: float = 0.1,
                 remote: bool = True) -> None:
        super().__init__("location", backend.name, self._store, _ruid, LOCATION_METRICS,
                         max_pending, batch, max_backoff, interval)
        self.backend = backend
        # Whether peers' changes are written too: yes for a store of this
        # node's own (SQLite), no for a database the cluster shares (MySQL),
        # where the node that made a change writes it.
        self.remote = remote

    def on_change(self, change: Change) -> None:
        """Store subscriber: queue one change (coalesced by binding)."""
        if change.source == REMOTE and not self.remote:
            return
        self.queue(change)

    async def _store(self, changes: list[Change]) -> None:
        puts: list[Binding] = [c.binding for c in changes if c.op != DELETE]
        deletes = [c.binding.ruid for c in changes if c.op == DELETE]
        await self.backend.write(puts, deletes)


def _ruid(change: Change) -> str:
    return change.binding.ruid


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
