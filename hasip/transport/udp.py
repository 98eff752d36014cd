"""UDP listener: each datagram is handed to the sink as it is."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import Listener, Sink

log = get_logger("hasip.transport.udp")

# Bytes of kernel buffer asked for each way (the kernel caps it at
# net.core.rmem_max / wmem_max unless those are raised).
SOCKET_BUFFER = 4 << 20

# The longest datagram taken for a CRLF keepalive: linphone and others send
# "\r\n\r\n" (the RFC 5626 3.5.1 ping, over UDP), some a single "\r\n".
MAX_KEEPALIVE = 4


class UdpProtocol:
    """An asyncio datagram protocol by its methods, not by inheritance: a
    compiled class cannot derive from asyncio's, and the event loop calls
    ``datagram_received`` for every datagram."""

    __slots__ = ("listener", "sink")

    def __init__(self, listener: Listener, sink: Sink) -> None:
        self.listener = listener
        self.sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass.
        # The standard loop reads every datagram into a 256 KiB buffer, which
        # glibc serves with mmap/munmap each time; 64 KiB (the largest UDP
        # payload) made a relay 2.7x cheaper (../shared/BENCHMARKING.md).
        if hasattr(transport, "max_size"):
            transport.max_size = 65536
        # Bursts of datagrams must wait in the kernel, not be dropped there.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
                except OSError:
                    pass
        self.listener.udp = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) <= MAX_KEEPALIVE and not data.strip(b"\r\n"):
            # A keepalive, not a message: counted, never parsed nor answered.
            metrics.KEEPALIVES.inc("udp")
            return
        if len(addr) > 2:
            addr = addr[:2]
        self.sink(data, self.listener, addr, None)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier sends (port unreachable): the transaction
        # layer's timers deal with the lost request.
        log.debug("udp_error", listener=self.listener.sent_by, error=str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.udp = None
