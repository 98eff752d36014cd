"""A keepalive node: the ZooKeeper session, fencing on its loss, the
guarded service's health, drain, membership, and one election per VIP.

Fencing: kazoo reports SUSPENDED when the connection is lost (at the latest
2/3 of the session timeout after the servers last heard from us); the
session itself expires on the servers only after the whole timeout, and
only then can another node take the VIP. So every owned VIP is dropped a
short grace after SUSPENDED (``fence_grace``: 1/6 of the timeout), from a
timer thread, unless the connection came back meanwhile, before anyone else
may hold it: ownership never overlaps. If the connection
comes back with the session alive, the lock is still ours and the address
goes back up; if the session was lost, the node rejoins with a new one.

Membership: ``ROOT/nodes/NODE``, ephemeral, JSON (health, drain, owned VIPs,
what the embedding service advertises); ``ROOT/drain/NODE`` (persistent) is
the operator's drain flag.

Access: the session authenticates with the cluster's digest credentials and
every znode is created readable and writable by their holders only
(``keepalive.zk``). A tree found open at start (created before the cluster
had credentials) is given that ACL before the node contends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState

from keepalive import metrics
from keepalive.config import KeepaliveConfig
from keepalive.election import VipElection
from keepalive.zk import make_client, on_loop, secure_tree, wait

_log = logging.getLogger("keepalive")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

Hook = Callable[[str, str], None]   # (VIP name, address)


class Keepalive:
    """``await Keepalive(config).start()``; ``set_healthy``; ``await stop()``.

    ``on_acquired``/``on_released`` are called with (VIP name, address) when
    this node starts/stops holding a VIP; ``on_released`` may run on kazoo's
    thread (fencing) and must only flip state."""

    def __init__(self, config: KeepaliveConfig, on_acquired: Hook | None = None,
                 on_released: Hook | None = None) -> None:
        self.config = config
        self.on_acquired = on_acquired
        self.on_released = on_released
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop_policy().get_event_loop()
        if config.credentials is None:
            raise ValueError("keepalive needs the cluster's ZooKeeper credentials: an open "
                             "tree lets anyone who reaches ZooKeeper move the VIPs")
        self.credentials = config.credentials
        self.zk = make_client(config.zookeeper, config.timing.session_timeout,
                              config.credentials)
        self.elections = [VipElection(self, spec) for spec in config.vips]
        self.healthy = False
        self.draining = False
        self.connected = False
        self.session_id = 0
        self.zk_state = "connecting"
        self.started = time.time()
        self._publish = asyncio.Event()
        # Called on the loop after each (re)connection: the embedding
        # service re-reads what it watches (a new session has no watches).
        self.connected_hooks: list[Callable[[], None]] = []
        self._suspended_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        metrics.HEALTHY.set(0)
        metrics.DRAINING.set(0)
        metrics.ZK_CONNECTED.set(0)

    def log(self, event: str, level: str = "info", **fields: Any) -> None:
        _log.log(_LEVELS.get(level, logging.INFO), event, extra=fields)

    # -- life ----------------------------------------------------------------

    async def start(self, connect_timeout: float = 15.0) -> None:
        """Connect (waiting up to ``connect_timeout``), then contend once healthy."""
        self.loop = asyncio.get_running_loop()
        self.zk.add_listener(self._on_state)
        await self.loop.run_in_executor(None, lambda: self.zk.start(timeout=connect_timeout))
        await self._secure()
        self._connected()
        for election in self.elections:
            election.start()
        self._tasks.append(self.loop.create_task(self._membership()))
        self.log("keepalive_started", node=self.config.node, zookeeper=self.config.zookeeper,
                 vips=",".join(e.spec.address for e in self.elections))

    async def _secure(self) -> None:
        """An upgrade from a cluster without credentials: its tree is open to
        anyone; give it the cluster's ACL (once, before contending)."""
        root = self.config.root
        try:
            changed = await self.loop.run_in_executor(
                None, secure_tree, self.zk, root, self.credentials)
        except NoAuthError:
            self.log("zookeeper_access_denied", level="error", root=root,
                     user=self.credentials.user,
                     hint="the tree is protected by other credentials")
            await self.loop.run_in_executor(None, self._close)
            raise
        if changed:
            self.log("zookeeper_acl_secured", root=root, znodes=changed,
                     user=self.credentials.user)

    async def stop(self) -> None:
        for election in self.elections:
            await election.stop()
        for task in self._tasks:
            task.cancel()
        if self.connected:
            try:
                await wait(self.zk.delete_async(self.member_path))
            except Exception:
                pass
        await self.loop.run_in_executor(None, self._close)

    def _close(self) -> None:
        self.zk.stop()
        self.zk.close()

    @property
    def member_path(self) -> str:
        return f"{self.config.root}/nodes/{self.config.node}"

    @property
    def drain_path(self) -> str:
        return f"{self.config.root}/drain/{self.config.node}"

    def set_healthy(self, healthy: bool) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        metrics.HEALTHY.set(1 if healthy else 0)
        self.log("service_health", healthy=healthy)
        self._poke_all()

    def owned(self) -> list[str]:
        return [e.spec.address for e in self.elections if e.owned]

    def election(self, name_or_address: str) -> VipElection | None:
        return next((e for e in self.elections
                     if name_or_address in (e.name, e.spec.address)), None)

    # -- the session ------------------------------------------------------------

    def fence_grace(self) -> float:
        """How long a suspended owner may wait for its connection to come back
        before it drops its VIPs. kazoo declares the connection lost at the
        latest 2/3 of the session timeout after the servers last heard from
        us; they expire the session at the whole timeout: a third is left,
        of which we use half (the rest is margin). A server that dies
        closes the connection at once, and kazoo reconnects to another one
        within that grace: no VIP blinks."""
        return self.config.timing.session_timeout / 6

    def _on_state(self, state: str) -> None:
        """kazoo's thread: fence (now, or after the grace), then tell the loop."""
        if state in (KazooState.SUSPENDED, KazooState.LOST):
            self.connected = False
            self._suspended_at = time.monotonic()
            if state == KazooState.LOST:
                self._fence_all()
            else:
                timer = threading.Timer(self.fence_grace(), self._fence_if_suspended,
                                        (self._suspended_at,))
                timer.daemon = True
                timer.start()
            metrics.ZK_CONNECTED.set(0)
            event = "suspended" if state == KazooState.SUSPENDED else "lost"
            metrics.ZK_EVENTS.labels(event).inc()
            self.zk_state = event
            if state == KazooState.LOST:
                for election in self.elections:
                    election.candidate = None
            self.log("zookeeper_" + event, level="warning")
        else:
            self._suspended_at = 0.0
            self.loop.call_soon_threadsafe(self._connected)

    def _fence_all(self) -> None:
        for election in self.elections:
            if election.owned:
                election.fence()

    def _fence_if_suspended(self, since: float) -> None:
        if self._suspended_at == since and not self.zk.connected:
            self.log("fenced", after_ms=round((time.monotonic() - since) * 1000),
                     level="warning")
            self._fence_all()

    def _connected(self) -> None:
        if not self.zk.connected:
            return
        self.connected = True
        self.session_id = self.zk.client_id[0] if self.zk.client_id else 0
        self.zk_state = "connected"
        metrics.ZK_CONNECTED.set(1)
        metrics.ZK_EVENTS.labels("connected").inc()
        self.log("zookeeper_connected", session=hex(self.session_id))
        self._poke_all()
        for hook in self.connected_hooks:
            hook()

    def _poke_all(self) -> None:
        for election in self.elections:
            election.poke()
        self._publish.set()

    # -- hooks from elections ------------------------------------------------------

    def hooks_acquired(self, election: VipElection) -> None:
        if self.on_acquired is not None:
            self.on_acquired(election.name, election.spec.address)

    def hooks_released(self, election: VipElection) -> None:
        if self.on_released is not None:
            self.on_released(election.name, election.spec.address)

    def publish(self) -> None:
        """Membership data changed: rewrite it soon."""
        self.loop.call_soon_threadsafe(self._publish.set)

    # -- membership and drain ---------------------------------------------------------

    def _member_data(self) -> bytes:
        return json.dumps({
            "node": self.config.node, "healthy": self.healthy, "draining": self.draining,
            "owned": self.owned(), "since": self.started, "updated": time.time(),
            "vips": {e.name: {"address": e.spec.address, "priority": e.spec.priority}
                     for e in self.elections},
            **self.config.advertise}).encode()

    async def _membership(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._publish.wait(), 5.0)
            except TimeoutError:
                pass
            self._publish.clear()
            if not self.connected:
                continue
            try:
                await self._check_drain()
                data = self._member_data()
                try:
                    await wait(self.zk.set_async(self.member_path, data))
                except NoNodeError:
                    try:
                        await wait(self.zk.create_async(self.member_path, data, ephemeral=True,
                                                        makepath=True))
                    except NodeExistsError:
                        self._publish.set()   # an old session's node: retry
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log("membership_error", error=repr(exc), level="warning")
                await asyncio.sleep(0.2)
                self._publish.set()

    async def _check_drain(self) -> None:
        stat = await wait(self.zk.exists_async(self.drain_path,
                                               watch=on_loop(self.loop, self._publish.set)))
        draining = stat is not None
        if draining != self.draining:
            self.draining = draining
            metrics.DRAINING.set(1 if draining else 0)
            self.log("drain" if draining else "undrain", node=self.config.node)
            if not draining:
                for election in self.elections:
                    election.handover_failed = False
            self._poke_all()
