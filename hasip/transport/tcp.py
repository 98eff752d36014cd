"""TCP connections: framing by Content-Length, connection reuse in both
directions, and limits so that a slow or hostile peer cannot exhaust memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hasip import metrics
from hasip.log import get_logger
from hasip.sip.errors import SipParseError
from hasip.sip.framing import PING, StreamFramer
from hasip.transport.base import ErrorCallback, Listener, Sink

log = get_logger("hasip.transport.tcp")


class TcpConnection(asyncio.Protocol):
    """One TCP connection, accepted or opened by us."""

    def __init__(self, listener: Listener, sink: Sink, max_message: int, max_write_buffer: int,
                 on_close: Callable[[TcpConnection], None],
                 loop: asyncio.AbstractEventLoop,
                 on_open: Callable[[TcpConnection], None] | None = None) -> None:
        self.listener = listener
        self.on_open = on_open
        self.sink = sink
        self.framer = StreamFramer(max_message)
        self.max_write_buffer = max_write_buffer
        self.on_close = on_close
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.last_activity = loop.time()
        self.pending: list[tuple[bytes, ErrorCallback | None]] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer: Any = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        metrics.TCP_CONNECTIONS.inc()
        if self.on_open is not None:
            self.on_open(self)
        for data, on_error in self.pending:
            self.write(data, on_error)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            metrics.PARSE_ERRORS.labels("stream").inc()
            log.warning("tcp_framing_error", peer=f"{self.peer[0]}:{self.peer[1]}",
                        reason=exc.reason)
            self.abort()
            return
        for message in messages:
            if message == PING:
                self.write(b"\r\n")  # RFC 5626 3.5.1 pong
            else:
                self.sink(message, self.listener, self.peer, self)

    def write(self, data: bytes, on_error: ErrorCallback | None = None) -> bool:
        """Queue ``data``; a peer that stops reading is disconnected once
        ``max_write_buffer`` bytes wait for it."""
        transport = self.transport
        if self.closed:
            if on_error is not None:
                on_error()
            return False
        if transport is None:
            self.pending.append((data, on_error))
            return True
        if transport.get_write_buffer_size() + len(data) > self.max_write_buffer:
            metrics.TCP_CLOSED_SLOW.inc()
            log.warning("tcp_slow_peer_closed", peer=f"{self.peer[0]}:{self.peer[1]}",
                        buffered=transport.get_write_buffer_size())
            self.abort()
            if on_error is not None:
                on_error()
            return False
        transport.write(data)
        self.last_activity = self.loop.time()
        return True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        else:
            self.connection_failed()

    def connection_failed(self) -> None:
        """An outgoing connection that never opened."""
        self.closed = True
        for _, on_error in self.pending:
            if on_error is not None:
                on_error()
        self.pending.clear()
        self.on_close(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            metrics.TCP_CONNECTIONS.dec()
            self.on_close(self)
