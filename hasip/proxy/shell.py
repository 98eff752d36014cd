"""The asyncio shell around the proxy engine: sockets in, the engine's
output to the sockets, one ``loop.call_at`` handle for its timer, tasks for
the answers it waits for (RADIUS, DNS), and the latency histogram. The
periodic requests the node originates (dispatcher probes, NAT pings,
dialog keepalives) run here too, on the engine's sockets."""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any

from hasip.app.config import Config
from hasip.app.services import Services
from hasip.dialog.keepalive import DialogKeepalive
from hasip.dispatcher.destinations import Destination as Node
from hasip.dispatcher.probe import Prober
from hasip.location.natping import NatPinger
from hasip.proxy.context import Wait
from hasip.proxy.engine import REQUEST, Engine
from hasip.proxy.resolver import Resolver
from hasip.proxy.routing import Router
from hasip.proxy.timers import wake_up_time
from hasip.sip.transaction import ClientTransaction
from hasip.sip.uri import SipUri
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import Connection, Destination, Listener, Source, send_datagram
from hasip.transport.listeners import Listeners
from hasip.transport.manager import Transports
from hasip.util.tasks import Periodic

log = get_logger("hasip.proxy")


class Proxy:
    """A node's stateful proxy: the engine bound to its transports."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 services: Services | None = None) -> None:
        self.config = config
        self.loop = loop
        self.services = services if services is not None else Services.in_memory(config)
        self.table = Listeners(((a.transport, a.host, a.port) for a in config.sip.listen),
                               config.cluster.vip_addresses())
        self.transports = Transports(config, self.receive, loop, self.table)
        dns = config.dns
        self.engine = Engine(config, self.services, self.table, Router,
                             Resolver(dns.ttl, dns.negative_ttl, dns.max_entries))
        self.engine.flow = self.transports.flow
        self.engine.spawner = self._spawn
        self._tasks: set[asyncio.Task[None]] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        stats = metrics.STATS
        self._latency = stats.latency
        self._lat_kinds = (stats.latency.child("request"), stats.latency.child("response"))
        self.listeners_by_socket = self.table.by_socket
        if self.services.cdrs is not None:
            self.services.cdrs.owns = self.engine.owns_socket
        own = self.engine.own
        self.pinger = NatPinger(self.services.location, self.listeners_by_socket, own,
                                config.nat.ping_interval)
        ds = config.dispatcher
        probe_from_vip = ds.probe_from == "vip"
        self.prober = Prober(self.services.dispatcher,
                             lambda node: self.node_address(node, vip=probe_from_vip), own,
                             ds.probe_interval, ds.probe_timeout, frozenset(ds.probe_codes))
        dc = config.dialog
        self.keepalive = DialogKeepalive(self.services.dialogs, self.listeners_by_socket,
                                         self.table.sent_by, self._from_listener, own,
                                         dc.keepalive_interval, dc.keepalive_failures)
        # The rounds of the node's own requests, on the loop's clock.
        self._rounds = [
            Periodic(config.nat.ping_interval, self._round(self.pinger.ping_all), "nat_ping"),
            Periodic(dc.keepalive_interval, self._round(self.keepalive.round),
                     "dialog_keepalive"),
            Periodic(self.prober.period, self._round(self.prober.round), "probe",
                     immediately=True),
        ]
        engine = self.engine
        metrics.TRANSACTIONS.labels("server").set_function(lambda: len(engine.server_txns))
        metrics.TRANSACTIONS.labels("client").set_function(lambda: len(engine.client_txns))
        metrics.IN_FLIGHT.set_function(engine.in_flight)
        cache = engine.resolver.cache
        metrics.DNS_CACHE.set_function(lambda: len(cache))

    @property
    def draining(self) -> bool:
        return self.engine.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.engine.draining = value

    def in_flight(self) -> int:
        return self.engine.in_flight()

    async def start(self) -> None:
        await self.transports.start()
        for rounds in self._rounds:
            rounds.start()

    async def stop(self) -> None:
        for rounds in self._rounds:
            await rounds.stop()
        for task in list(self._tasks):
            task.cancel()
        await self.transports.stop()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    # -- into the engine ---------------------------------------------------

    def receive(self, data: bytes, listener: Listener, addr: tuple[str, int],
                conn: Connection | None) -> None:
        """Transport sink: one datagram or one framed stream message."""
        if not self.engine.receive(data, Source(listener, addr, conn, self.loop.time())) and (
                conn is not None):
            conn.abort()    # a banned source's connection goes too
        self._flush()

    def _on_timer(self) -> None:
        # The loop may run a handle up to its clock resolution early: the
        # engine is told the time it was armed for, so that what was due
        # then fires now and the handle is not re-armed for the same time.
        now = max(self.loop.time(), self._armed_at)
        self._handle = None
        self._armed_at = math.inf
        self.engine.handle_timer(now)
        self._flush()

    def _transport_error(self, txn: ClientTransaction) -> None:
        self.engine.transport_error(txn, self.loop.time())
        self._flush()

    # -- out of the engine ---------------------------------------------------

    def _flush(self) -> None:
        """Send what the engine produced, start what it waits for, observe
        latencies, and re-arm its timer."""
        engine = self.engine
        out = engine.take_outgoing() if engine.has_output() else None
        while out:
            for data, dest, txn in out:
                if dest.transport == "udp":
                    if send_datagram(data, dest):
                        continue
                    metrics.TRANSPORT_ERRORS.labels("udp").inc()
                    if txn is not None:
                        engine.transport_error(txn, self.loop.time())
                elif txn is not None:
                    self.transports.send(data, dest,
                                         functools.partial(self._transport_error, txn))
                else:
                    self.transports.send(data, dest)
            out = engine.take_outgoing()
        if engine.has_waits():
            for wait in engine.take_waits():
                self._start_wait(wait)
        latencies = engine.latencies
        if latencies:
            now = self.loop.time()
            kinds = self._lat_kinds
            for kind, received_at in latencies:
                self._latency.observe(kinds[0] if kind == REQUEST else kinds[1],
                                      now - received_at)
            latencies.clear()
        deadline = engine.get_timer()
        if deadline is not None and deadline < self._armed_at:
            when = wake_up_time(deadline)
            if when < self._armed_at:
                if self._handle is not None:
                    self._handle.cancel()
                self._armed_at = when
                self._handle = self.loop.call_at(when, self._on_timer)

    def _start_wait(self, wait: Wait) -> None:
        async def run() -> None:
            try:
                result: Any = await wait.awaitable
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.engine.resume_failed(wait, exc, self.loop.time())
            else:
                self.engine.resume(wait, result, self.loop.time())
            self._flush()

        task = self.loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, work: Awaitable[Any]) -> None:
        """Work no message waits for (a media session's delete), on the loop."""
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("background_failed", reason=f"{type(exc).__name__}: {exc}")

        task = self.loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the node's own requests ---------------------------------------------

    def _round(self, round_: Callable[[float], object]) -> Callable[[], None]:
        """One round of own requests now, then what it produced sent."""
        def run() -> None:
            round_(self.loop.time())
            self._flush()
        return run

    def ping_address(self, address: str) -> int:
        """Ping now the NATed bindings of a VIP this node just took over."""
        sent = self.pinger.ping_address(address, self.loop.time())
        self._flush()
        return sent

    def node_address(self, node: Node, vip: bool = False) -> Destination | None:
        return self.engine.node_address(node, None, vip, self.loop.time())

    def _from_listener(self, target: SipUri, listener: Listener) -> Destination | None:
        return self.engine.from_listener(target, listener, self.loop.time())

    def owns_socket(self, socket_text: str) -> bool:
        return self.engine.owns_socket(socket_text)
