"""Background tasks of a node (probes, pings, write-behind): a round every
interval, and stopping one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from hasip.log import get_logger

log = get_logger("hasip.tasks")


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def every(interval: float, round_: Callable[[], object], name: str) -> None:
    """Run ``round_`` every ``interval`` seconds, for ever; a round that
    raises is logged (``{name}_round_failed``) and the next one runs."""
    while True:
        await asyncio.sleep(interval)
        try:
            round_()
        except Exception:
            log.error(f"{name}_round_failed", exc_info=True)
