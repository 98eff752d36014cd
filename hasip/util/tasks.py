"""Background tasks of a node (probes, pings, write-behind): a round every
interval, and stopping one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from hasip.telemetry.log import get_logger

log = get_logger("hasip.tasks")


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Periodic:
    """``round_`` every ``interval`` seconds between :meth:`start` and
    :meth:`stop` (never when ``interval`` is 0; the first at once when
    ``immediately``); a round that raises is logged
    (``{name}_round_failed``) and the next one runs."""

    def __init__(self, interval: float, round_: Callable[[], object], name: str,
                 immediately: bool = False) -> None:
        self.interval = interval
        self.round = round_
        self.name = name
        self.immediately = immediately
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        wait = not self.immediately
        while True:
            if wait:
                await asyncio.sleep(self.interval)
            wait = True
            try:
                self.round()
            except Exception:
                log.error(f"{self.name}_round_failed", exc_info=True)
