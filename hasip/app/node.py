"""A node's life cycle: start the proxy and the metrics listener, serve until
a signal, then shut down gracefully within a bound (a second signal exits at
once)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

from hasip import __version__
from hasip.app import compiled
from hasip.app.config import Config
from hasip.app.control import ControlServer
from hasip.app.services import Services
from hasip.app.services import build as build_services
from hasip.cluster.member import Cluster
from hasip.proxy.shell import Proxy
from hasip.replication.replicator import Replicator
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger

log = get_logger("hasip.server")


class Node:
    def __init__(self, config: Config, services: Services) -> None:
        self.config = config
        self.services = services
        self.proxy: Proxy | None = None
        self.serving = False
        self.cluster: Cluster | None = None
        self.replicator: Replicator | None = None
        self._stop = asyncio.Event()
        self._signals = 0

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("shutdown_requested", signal=signal.Signals(signum).name,
                     grace_s=self.config.shutdown.grace)
            self._stop.set()
        else:
            log.warning("shutdown_forced", signal=signal.Signals(signum).name)
            os._exit(1)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        services = self.services
        await services.start()
        # Metrics and control listen before SIP does: whoever sees the node
        # answer SIP can already scrape and steer it.
        if self.config.metrics.listen is not None:
            host, port = self.config.metrics.listen
            metrics.start_metrics_server(host, port)
            log.info("metrics_listening", address=f"{host}:{port}")
        control = ControlServer(services.dispatcher, services.location, services.dialogs)
        control.guard = services.guard
        control.readiness = self.readiness
        if self.config.control.listen is not None:
            await control.start(self.config.control)
        self.proxy = Proxy(self.config, loop, services)
        cluster: Cluster | None = None
        if self.config.cluster.zookeeper:
            # Joined (not contending yet) before SIP is served, so that the
            # first call already uses the cluster's dispatcher sets.
            cluster = self.cluster = Cluster(self.config, self.proxy.transports.listeners)
            cluster.acquired_hooks.append(self.proxy.ping_address)
            await cluster.start()
            control.shared = await cluster.share_dispatcher(services.dispatcher)
            if self.config.replication.listen is not None:
                control.replicator = self.replicator = await cluster.replicate(self.config,
                                                                               services)
        await self.proxy.start()
        if cluster is not None:
            cluster.ready(True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        metrics.UP.set(1)
        self.serving = True
        metrics.BUILD.labels(__version__, str(compiled.state["compiled"]).lower()).set(1)
        log.info("node_started", node=self.config.node.name, config=self.config.path,
                 loop=type(loop).__module__, compiled=compiled.state["compiled"],
                 interpreted_because=compiled.state["reason"] or None)
        await self._stop.wait()
        if cluster is not None:
            cluster.ready(False)   # the VIPs move to another node now
        await self.drain()
        if cluster is not None:
            await cluster.stop()
        await control.stop()
        await self.proxy.stop()
        await services.stop(self.config.shutdown.grace)
        log.info("node_stopped", node=self.config.node.name)
        return 0

    def readiness(self) -> dict[str, bool]:
        """What /readyz checks: SIP served (started, not shutting down), in
        a cluster ZooKeeper connected and the operator's drain off, with
        replication the join's sync done."""
        checks = {"serving": self.serving}
        if self.cluster is not None:
            checks["zookeeper"] = self.cluster.keepalive.connected
            checks["not_drained"] = not self.cluster.keepalive.draining
        if self.replicator is not None:
            checks["synced"] = self.replicator.sync_state.get("state") in ("synced", "partial")
        return checks

    async def drain(self) -> None:
        """Refuse new dialogs (503), let transactions in flight finish, bounded
        by ``shutdown.grace``."""
        assert self.proxy is not None
        self.proxy.draining = True
        self.serving = False
        metrics.UP.set(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown.grace
        last_report = 0.0
        while loop.time() < deadline:
            pending = self.proxy.in_flight()
            if pending == 0:
                break
            if loop.time() - last_report >= 1.0:
                log.info("draining", in_flight=pending,
                         remaining_s=round(deadline - loop.time(), 1))
                last_report = loop.time()
            await asyncio.sleep(0.05)
        else:
            log.warning("drain_timeout", abandoned=self.proxy.in_flight())


def tune_gc() -> None:
    """Collect less often: transactions free themselves by reference counting
    (their cycles are broken when they end), and a node keeps tens of
    thousands of them alive, which every full collection would walk."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run_node(config: Config, services: Services | None = None) -> int:
    tune_gc()
    node = Node(config, services if services is not None else build_services(config))
    if config.node.event_loop == "uvloop":
        import uvloop

        return int(uvloop.run(node.run()))
    return asyncio.run(node.run())
