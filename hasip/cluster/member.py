"""The node in its cluster: keepalive embedded (VIP ownership through
ZooKeeper), our VIP listeners switched on and off as VIPs come and go, the
service's health fed to the election, and the dispatcher's sets shared
through the same ZooKeeper session (authenticated with the cluster's
credentials: ``keepalive.zk``)."""

from __future__ import annotations

from collections.abc import Callable

from hasip.app.config import Config
from hasip.app.services import Services
from hasip.dispatcher.dispatcher import Dispatcher
from hasip.dispatcher.shared import SharedSets
from hasip.replication.replicator import Replicator
from hasip.telemetry.log import get_logger
from hasip.transport.base import Listener
from keepalive.config import KeepaliveConfig
from keepalive.manager import Keepalive

log = get_logger("hasip.cluster")


class Cluster:
    def __init__(self, config: Config, listeners: list[Listener]) -> None:
        c = config.cluster
        self.root = c.root
        self.replicator: Replicator | None = None
        # Run on the loop when this node takes a VIP (its address given).
        self.acquired_hooks: list[Callable[[str], object]] = []
        self.listeners = listeners
        self.keepalive = Keepalive(
            KeepaliveConfig(node=config.node.name, zookeeper=c.zookeeper, vips=list(c.vips),
                            root=c.root, timing=c.timing, credentials=c.credentials(),
                            advertise={"sip": [lst.socket for lst in listeners]}),
            on_acquired=self._acquired, on_released=self._released)

    def _switch(self, address: str, active: bool) -> None:
        for listener in self.listeners:
            if listener.vip and listener.host == address:
                listener.active = active

    def _acquired(self, _name: str, address: str) -> None:
        self._switch(address, True)
        for hook in self.acquired_hooks:
            hook(address)

    def _released(self, _name: str, address: str) -> None:
        # May run on kazoo's thread (fencing): a flag flip only.
        self._switch(address, False)

    async def start(self) -> None:
        await self.keepalive.start()

    async def share_dispatcher(self, dispatcher: Dispatcher) -> SharedSets:
        """The dispatcher's sets from ``ROOT/dispatcher`` (seeded from this
        node's when absent), kept current by a watch."""
        shared = SharedSets(self.keepalive.zk, f"{self.root}/dispatcher", dispatcher)
        await shared.start()
        self.keepalive.connected_hooks.append(shared.resync)
        return shared

    async def replicate(self, config: Config, services: Services) -> Replicator:
        """Replication to the peers (their addresses from the membership),
        and the join: the cluster's state pulled before this node serves."""
        ka = self.keepalive

        def advertise(fields: dict[str, object]) -> None:
            ka.config.advertise.update(fields)
            ka.publish()

        replicator = Replicator(config.replication, config.node.name, services.location,
                                services.dialogs, services.dispatcher, ka.zk,
                                f"{self.root}/nodes", advertise, services.guard)
        self.replicator = replicator
        await replicator.start()
        await replicator.join()
        return replicator

    def ready(self, ready: bool) -> None:
        """Contend for VIPs while the node serves; give them up when it stops."""
        self.keepalive.set_healthy(ready)

    async def stop(self) -> None:
        if self.replicator is not None:
            await self.replicator.stop()
        await self.keepalive.stop()
