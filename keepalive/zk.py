"""kazoo in asyncio: its asynchronous results awaited as futures, its
watches turned into calls on the event loop. kazoo runs its own threads;
nothing here blocks the loop on ZooKeeper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.retry import KazooRetry


def make_client(hosts: str, session_timeout: float) -> KazooClient:
    """A client that reconnects at once and keeps trying (a node without
    ZooKeeper owns nothing, and must rejoin as soon as it can)."""
    retry = KazooRetry(max_tries=-1, delay=0.05, backoff=1.5, max_delay=1.0)
    return KazooClient(hosts=hosts, timeout=session_timeout, connection_retry=retry,
                       command_retry=KazooRetry(max_tries=3, delay=0.05, max_delay=0.5))


async def wait(result: Any) -> Any:
    """Await a kazoo ``IAsyncResult`` (``client.get_async(...)`` and friends)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def done(res: Any) -> None:
        def settle() -> None:
            if future.done():
                return
            try:
                future.set_result(res.get(block=False))
            except Exception as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(settle)

    result.rawlink(done)
    return await future


def on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> Callable[..., None]:
    """A kazoo watch function that runs ``callback`` on ``loop``."""

    def watch(*_args: Any) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(callback)

    return watch
