"""kazoo in asyncio: its asynchronous results awaited as futures, its
watches turned into calls on the event loop. kazoo runs its own threads;
nothing here blocks the loop on ZooKeeper.

Every client authenticates with the cluster's digest credentials and
creates every znode with a digest ACL of them (all permissions, no one
else): without the credentials a client can see that a znode exists but
cannot read it, write it, or create or delete anything under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.retry import KazooRetry
from kazoo.security import ACL, make_digest_acl

from keepalive.config import Credentials


def auth_args(credentials: Credentials) -> dict[str, Any]:
    """``KazooClient`` keywords: authenticate with ``credentials`` and give
    every znode created the ACL of :func:`cluster_acl`."""
    return {"auth_data": [("digest", f"{credentials.user}:{credentials.password}")],
            "default_acl": cluster_acl(credentials)}


def cluster_acl(credentials: Credentials) -> list[ACL]:
    return [make_digest_acl(credentials.user, credentials.password, all=True)]


def make_client(hosts: str, session_timeout: float, credentials: Credentials) -> KazooClient:
    """A client that reconnects at once and keeps trying (a node without
    ZooKeeper owns nothing, and must rejoin as soon as it can)."""
    retry = KazooRetry(max_tries=-1, delay=0.05, backoff=1.5, max_delay=1.0)
    return KazooClient(hosts=hosts, timeout=session_timeout, connection_retry=retry,
                       command_retry=KazooRetry(max_tries=3, delay=0.05, max_delay=0.5),
                       **auth_args(credentials))


def secure_tree(zk: KazooClient, root: str, credentials: Credentials) -> int:
    """Give every znode under ``root`` (``root`` included) the cluster's ACL
    where it has another one: a tree created before the cluster had
    credentials (open to anyone). Returns how many znodes changed. The root
    is changed last, so a root with the cluster's ACL means the whole tree
    has it and the walk is skipped; a walk cut short is finished by the
    next node that starts. Blocking: run it in an executor.

    Raises kazoo's NoAuthError when the tree belongs to other credentials."""
    acl = cluster_acl(credentials)
    try:
        if list(zk.get_acls(root)[0]) == acl:
            return 0
    except NoNodeError:
        return 0
    paths, todo = [], [root]
    while todo:
        path = todo.pop()
        paths.append(path)
        try:
            todo += [f"{path}/{child}" for child in zk.get_children(path)]
        except NoNodeError:
            continue    # an ephemeral znode gone meanwhile
    changed = 0
    for path in reversed(paths):     # children before their parents, the root last
        try:
            if list(zk.get_acls(path)[0]) != acl:
                zk.set_acls(path, acl)
                changed += 1
        except NoNodeError:
            continue
    return changed


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
