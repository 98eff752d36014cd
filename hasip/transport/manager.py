"""Starts the listeners of a node and sends bytes to destinations."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from typing import cast

from hasip.app.config import Config
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import Destination, ErrorCallback, Listener, Sink, send_datagram
from hasip.transport.limits import ConnectionLimits, EventDigest, source_of
from hasip.transport.listeners import Listeners
from hasip.transport.tcp import TcpConnection
from hasip.transport.udp import UdpProtocol

log = get_logger("hasip.transport")


IP_FREEBIND = 15

# Closes over a peer's fault (malformed or oversize stream, a peer that does
# not read) are warnings; the timeouts of quiet or slow peers are info.
_PEER_FAULTS = frozenset({"framing_error", "slow_reader"})


def _freebind_socket(listener: Listener) -> socket.socket:
    """A socket bound to a VIP this host may not hold yet (IP_FREEBIND):
    it serves the VIP the moment keepalive puts the address up."""
    kind = socket.SOCK_DGRAM if listener.transport == "udp" else socket.SOCK_STREAM
    sock = socket.socket(listener.family, kind)
    try:
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listener.host, listener.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def local_address(listener: Listener) -> tuple[str, int] | None:
    """Where an outgoing connection from ``listener`` binds: its IP and an
    ephemeral port, so that the packets leave from the address our Via and
    Record-Route name (a VIP's, the node's); None for a wildcard listener
    (the kernel's choice is as good as any)."""
    if listener.host in ("0.0.0.0", "::"):
        return None
    return (listener.host, 0)


def outgoing_socket(listener: Listener) -> socket.socket:
    """A non-blocking TCP socket bound to ``listener``'s address (see
    :func:`local_address`), with IP_FREEBIND: a VIP listener's address may
    be up on this host only since a moment, or be going."""
    sock = socket.socket(listener.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        local = local_address(listener)
        if local is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.bind(local)
    except OSError:
        sock.close()
        raise
    return sock


class Transports:
    """The node's sockets: UDP listeners, TCP servers and TCP connections
    (keyed by peer address so that both directions reuse one connection)."""

    def __init__(self, config: Config, sink: Sink, loop: asyncio.AbstractEventLoop,
                 table: Listeners | None = None) -> None:
        self.config = config
        self.sink = sink
        self.loop = loop
        self.table = table if table is not None else Listeners(
            ((a.transport, a.host, a.port) for a in config.sip.listen),
            config.cluster.vip_addresses())
        self.listeners = self.table.all
        self._servers: list[asyncio.AbstractServer] = []
        # Open connections by (peer address, our listener), for reuse in both
        # directions: a connection leaves from its listener's address, so one
        # opened from another listener is not the same flow.
        self._conns: dict[tuple[tuple[str, int], Listener], TcpConnection] = {}
        # Every open connection (a peer address may have two for a moment):
        # what the limits count, the idle sweep walks and stop() closes.
        self._live: set[TcpConnection] = set()
        self._outbound = 0
        self._limits = ConnectionLimits(config.tcp.max_connections,
                                        config.tcp.max_connections_per_source)
        # Connections that may be holding a slot for nothing: accepted ones
        # without a first message yet, and any with a message half-arrived.
        # The sweep looks at these every second, not at the whole table.
        self._suspects: set[TcpConnection] = set()
        self._refusals = EventDigest()
        self._closes = EventDigest()
        self._sweeper: asyncio.Task[None] | None = None

    def _udp_protocol(self, listener: Listener) -> asyncio.DatagramProtocol:
        # A protocol by its methods (compiled, so not an asyncio subclass).
        return cast(asyncio.DatagramProtocol, UdpProtocol(listener, self.sink))

    async def start(self) -> None:
        for listener in self.listeners:
            sock = _freebind_socket(listener) if listener.vip else None
            if listener.transport == "udp":
                if sock is not None:
                    await self.loop.create_datagram_endpoint(
                        functools.partial(self._udp_protocol, listener),
                        sock=sock)
                else:
                    await self.loop.create_datagram_endpoint(
                        functools.partial(self._udp_protocol, listener),
                        local_addr=(listener.host, listener.port), family=listener.family)
            else:
                factory = functools.partial(self._new_connection, listener)
                if sock is not None:
                    server = await self.loop.create_server(factory, sock=sock)
                else:
                    # The backlog of a VIP's socket too (asyncio's default, 100,
                    # lets a burst of connections, a flood or phones that all
                    # reconnect at once after a failover, overflow the queue).
                    server = await self.loop.create_server(
                        factory, listener.host, listener.port, family=listener.family,
                        reuse_address=True, backlog=1024)
                self._servers.append(server)
            log.info("listening", transport=listener.transport, address=listener.sent_by)
        self._sweeper = self.loop.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        for listener in self.listeners:
            if listener.udp is not None:
                listener.udp.close()
        for conn in list(self._live | set(self._conns.values())):
            conn.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    def _new_connection(self, listener: Listener) -> TcpConnection:
        return TcpConnection(listener, self.sink, self.config.sip.max_message_size,
                             self.config.tcp.max_write_buffer, self._forget, self.loop,
                             on_open=self._admit, on_partial=self._suspects.add,
                             on_fault=self._fault)

    def _admit(self, conn: TcpConnection) -> bool:
        """An accepted connection, as it opens: counted against its source's
        and the node's limits, or refused (the caller aborts it at once:
        nothing of it is read). Admitted, requests to its peer address reuse it."""
        conn.source = source_of(conn.peer[0])
        reason = self._limits.admit(conn.source, self._outbound)
        if reason is not None:
            metrics.TCP_REFUSED.labels(reason).inc()
            if self._refusals.note(reason, conn.source, self.loop.time()):
                limit = (self._limits.max_per_source if reason == "per_source"
                         else self._limits.max_total)
                log.warning("tcp_connection_refused", reason=reason,
                            peer=f"{conn.peer[0]}:{conn.peer[1]}", source=conn.source,
                            limit=limit)
            return False
        self._live.add(conn)
        self._suspects.add(conn)  # until its first message
        self._conns.setdefault((conn.peer, conn.listener), conn)
        return True

    def _forget(self, conn: TcpConnection) -> None:
        key = (conn.peer, conn.listener)
        if self._conns.get(key) is conn:
            del self._conns[key]
        if conn in self._live:
            self._live.discard(conn)
            if conn.accepted:
                self._limits.release(conn.source)
            else:
                self._outbound -= 1
        self._suspects.discard(conn)

    def send(self, data: bytes, dest: Destination, on_error: ErrorCallback | None = None) -> bool:
        """Send ``data``; ``on_error`` runs (perhaps later, for TCP) if it cannot be sent."""
        if dest.transport == "udp":
            return send_datagram(data, dest) or self._failed("udp", on_error)
        if not dest.listener.active:
            return self._failed("tcp", on_error)
        conn = dest.conn
        if conn is None or conn.closed:
            conn = self._conns.get((dest.addr, dest.listener))
        if (conn is None or conn.closed) and dest.fallback is not None:
            dest = Destination(dest.transport, dest.fallback, dest.listener)
            conn = self._conns.get((dest.addr, dest.listener))
        if conn is None or conn.closed:
            conn = self._connect(dest)
        return conn.write(data, on_error)

    def flow(self, addr: tuple[str, int], listener: Listener) -> TcpConnection | None:
        """The open connection with ``addr`` on ``listener`` (accepted or
        ours), if there is one: a registered TCP phone's flow (RFC 5626)."""
        conn = self._conns.get((addr, listener))
        if conn is None or conn.closed or conn.aborted:
            return None
        return conn

    def _failed(self, transport: str, on_error: ErrorCallback | None) -> bool:
        metrics.TRANSPORT_ERRORS.labels(transport).inc()
        if on_error is not None:
            on_error()
        return False

    def _connect(self, dest: Destination) -> TcpConnection:
        # Ours: exempt from the limits and the first-message timeout, not
        # from the message timeout (a half-sent response holds it as well).
        conn = TcpConnection(dest.listener, self.sink, self.config.sip.max_message_size,
                             self.config.tcp.max_write_buffer, self._forget, self.loop,
                             on_partial=self._suspects.add, on_fault=self._fault)
        conn.peer = dest.addr
        self._conns[(dest.addr, dest.listener)] = conn
        self._live.add(conn)
        self._outbound += 1
        self.loop.create_task(self._open(conn, dest))
        return conn

    async def _open(self, conn: TcpConnection, dest: Destination) -> None:
        sock: socket.socket | None = None
        try:
            sock = outgoing_socket(dest.listener)
            await asyncio.wait_for(self._dial(conn, sock, dest.addr), 5.0)
        except (TimeoutError, OSError) as exc:
            if sock is not None and conn.transport is None:
                sock.close()
            metrics.TRANSPORT_ERRORS.labels("tcp").inc()
            log.info("tcp_connect_failed", peer=f"{dest.addr[0]}:{dest.addr[1]}",
                     local=dest.listener.host, error=str(exc))
            conn.connection_failed()
        else:
            self._conns[(conn.peer, dest.listener)] = conn

    async def _dial(self, conn: TcpConnection, sock: socket.socket,
                    addr: tuple[str, int]) -> None:
        await self.loop.sock_connect(sock, addr)
        await self.loop.create_connection(lambda: conn, sock=sock)

    async def _sweep(self) -> None:
        """Close what holds a connection for nothing. Every ``tick`` (a
        second at most): suspects whose message or first message is late;
        every ``idle_every``: any connection quiet for ``tcp.idle_timeout``.
        No timer per connection: reading stays one timestamp per read."""
        cfg = self.config
        tick = min(1.0, cfg.tcp.message_timeout / 2, cfg.tcp.first_message_timeout / 2)
        idle_every = min(10.0, cfg.tcp.idle_timeout / 2)
        next_idle = self.loop.time() + idle_every
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            try:
                self._sweep_suspects(now)
                if now >= next_idle:
                    next_idle = now + idle_every
                    self._sweep_idle(now)
                self._log_digests(now)
            except Exception:
                # A bug here must not end the sweeping for good.
                log.error("tcp_sweep_failed", exc_info=True)

    def _sweep_suspects(self, now: float) -> None:
        message_cutoff = now - self.config.tcp.message_timeout
        first_cutoff = now - self.config.tcp.first_message_timeout
        for conn in list(self._suspects):
            if conn.closed or conn.aborted:
                self._suspects.discard(conn)
            elif conn.message_started and conn.message_started <= message_cutoff:
                self._close(conn, "slow_message", now)
            elif conn.accepted and not conn.got_message:
                if conn.opened_at <= first_cutoff:
                    self._close(conn, "no_message", now)
            elif not conn.message_started:
                self._suspects.discard(conn)  # cleared: nothing half-arrived

    def _sweep_idle(self, now: float) -> None:
        cutoff = now - self.config.tcp.idle_timeout
        for conn in list(self._live):
            if not (conn.closed or conn.aborted) and conn.last_activity < cutoff:
                self._close(conn, "idle", now, quiet=True)

    def _close(self, conn: TcpConnection, reason: str, now: float, quiet: bool = False) -> None:
        self._report(conn, reason, now, "", quiet)
        self._suspects.discard(conn)
        conn.abort()

    def _fault(self, conn: TcpConnection, reason: str, detail: str) -> None:
        """A connection about to abort over its peer's fault (it aborts itself)."""
        self._report(conn, reason, self.loop.time(), detail)

    def _report(self, conn: TcpConnection, reason: str, now: float, detail: str,
                quiet: bool = False) -> None:
        """Count a close; log it unless it is one of a flood (then the
        digest sums it into a line per reason and interval)."""
        metrics.TCP_CLOSED.labels(reason).inc()
        peer = f"{conn.peer[0]}:{conn.peer[1]}"
        if quiet:
            log.debug("tcp_connection_closed", reason=reason, peer=peer)
            return
        if not self._closes.note(reason, conn.source or conn.peer[0], now):
            return
        fields: dict[str, object] = {"reason": reason, "peer": peer,
                                     "buffered": conn.framer.buffered}
        if detail:
            fields["detail"] = detail
        if reason in _PEER_FAULTS:
            log.warning("tcp_connection_closed", **fields)
        else:
            log.info("tcp_connection_closed", **fields)

    def _log_digests(self, now: float) -> None:
        for reason, count, sources in self._refusals.summary(now):
            log.warning("tcp_connections_refused", reason=reason, count=count,
                        sources=sources, interval_s=self._refusals.interval)
        for reason, count, sources in self._closes.summary(now):
            emit = log.warning if reason in _PEER_FAULTS else log.info
            emit("tcp_connections_closed", reason=reason, count=count, sources=sources,
                 interval_s=self._closes.interval)
