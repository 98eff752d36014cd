"""TCP connections: framing by Content-Length, connection reuse in both
directions, and limits so that a slow or hostile peer cannot exhaust memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from hasip.sip.errors import SipParseError
from hasip.sip.framing import PING, StreamFramer
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import ErrorCallback, Listener, Sink

log = get_logger("hasip.transport.tcp")

# (connection, reason, detail): told before a connection aborts itself over
# a fault of its peer (framing_error, slow_reader); the manager counts it and
# keeps a flood of them to a few log lines.
FaultCallback = Callable[["TcpConnection", str, str], None]


class TcpConnection(asyncio.Protocol):
    """One TCP connection, accepted or opened by us.

    What the transports' sweep reads to find connections that hold a slot
    for nothing: ``opened_at``, ``got_message`` (a whole message has come;
    CRLF keepalives are not one), ``message_started`` (when the incomplete
    message now buffered began, 0.0 when none is) and ``last_activity``.
    """

    def __init__(self, listener: Listener, sink: Sink, max_message: int, max_write_buffer: int,
                 on_close: Callable[[TcpConnection], None],
                 loop: asyncio.AbstractEventLoop,
                 on_open: Callable[[TcpConnection], bool] | None = None,
                 on_partial: Callable[[TcpConnection], None] | None = None,
                 on_fault: FaultCallback | None = None) -> None:
        self.listener = listener
        # Accepted connections only: False refuses the connection (limits).
        self.on_open = on_open
        self.on_partial = on_partial
        self.on_fault = on_fault
        self.accepted = on_open is not None
        self.sink = sink
        self.framer = StreamFramer(max_message)
        self.max_write_buffer = max_write_buffer
        self.on_close = on_close
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.source = ""
        now = loop.time()
        self.opened_at = now
        self.last_activity = now
        self.message_started = 0.0
        self.got_message = False
        self.pending: list[tuple[bytes, ErrorCallback | None]] = []
        self.closed = False
        self.aborted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)
        self.transport = stream
        peer: Any = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.opened_at = self.last_activity = self.loop.time()
        if self.on_open is not None and not self.on_open(self):
            # Refused: nothing was counted, so nothing is undone later; the
            # abort frees the socket at once (no FIN handshake to wait for).
            self.closed = True
            stream.abort()
            return
        metrics.TCP_CONNECTIONS.inc()
        for data, on_error in self.pending:
            self.write(data, on_error)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.aborted:
            return
        now = self.loop.time()
        self.last_activity = now
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            metrics.PARSE_ERRORS.labels("stream").inc()
            self.fault("framing_error", exc.reason)
            return
        if self.framer.in_message:
            # A message that began in this read (the one before it, if any,
            # ended here) is timed from now; one still arriving keeps its start.
            if messages or not self.message_started:
                self.message_started = now
                if self.on_partial is not None:
                    self.on_partial(self)
        else:
            self.message_started = 0.0
        for message in messages:
            if message == PING:
                metrics.KEEPALIVES.inc("tcp")
                self.write(b"\r\n")  # RFC 5626 3.5.1 pong
            else:
                self.got_message = True
                self.sink(message, self.listener, self.peer, self)

    def write(self, data: bytes, on_error: ErrorCallback | None = None) -> bool:
        """Queue ``data``; a peer that stops reading is disconnected once
        ``max_write_buffer`` bytes wait for it."""
        transport = self.transport
        if self.closed or self.aborted:
            if on_error is not None:
                on_error()
            return False
        if transport is None:
            self.pending.append((data, on_error))
            return True
        if transport.get_write_buffer_size() + len(data) > self.max_write_buffer:
            metrics.TCP_CLOSED_SLOW.inc()
            self.fault("slow_reader", f"{transport.get_write_buffer_size()} bytes unread")
            if on_error is not None:
                on_error()
            return False
        transport.write(data)
        self.last_activity = self.loop.time()
        return True

    def fault(self, reason: str, detail: str) -> None:
        """The peer broke a rule: report it, then abort."""
        if self.on_fault is not None:
            self.on_fault(self, reason, detail)
        else:
            metrics.TCP_CLOSED.labels(reason).inc()
            log.warning("tcp_connection_closed", reason=reason,
                        peer=f"{self.peer[0]}:{self.peer[1]}", detail=detail)
        self.abort()

    def abort(self) -> None:
        """Close at once, dropping what waits to be sent; ``closed`` (and
        the manager's forgetting) follows when asyncio reports the loss."""
        self.aborted = True
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
