"""What a transport tells the proxy about where a message came from and
where one goes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Protocol

ErrorCallback = Callable[[], None]


class Connection(Protocol):
    """A stream connection as the layers above the transports see it
    (:class:`hasip.transport.tcp.TcpConnection` is the one there is)."""

    closed: bool

    def write(self, data: bytes, on_error: ErrorCallback | None = None) -> bool: ...
    def abort(self) -> None: ...


class Listener:
    """One local socket (transport, address, port) the node serves.

    The bytes the proxy writes for it are computed once: the start of our
    Via (``Via: SIP/2.0/UDP 127.0.0.1:5060;branch=``) and our Record-Route
    URI (the proxy adds the dialog's token to it).
    """

    __slots__ = ("active", "family", "host", "port", "rr_uri", "sent_by", "socket",
                 "transport", "udp", "via_prefix", "vip")

    def __init__(self, transport: str, host: str, port: int) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        v6 = ":" in host
        self.family = socket.AF_INET6 if v6 else socket.AF_INET
        hostref = f"[{host}]" if v6 else host
        self.sent_by = f"{hostref}:{port}"
        self.via_prefix = f"Via: SIP/2.0/{transport.upper()} {self.sent_by};branch=".encode()
        params = ";transport=tcp" if transport == "tcp" else ""
        self.rr_uri = f"sip:{self.sent_by}{params};lr".encode()
        # As the location table records it: "udp:192.0.2.10:5060".
        self.socket = f"{transport}:{self.sent_by}"
        self.udp: asyncio.DatagramTransport | None = None
        # A cluster VIP: bound before we own it (IP_FREEBIND), used only
        # while ``active`` (keepalive flips it on takeover and release).
        self.vip = False
        self.active = True

    def __repr__(self) -> str:
        return f"<Listener {self.transport}:{self.sent_by}>"


class Source:
    """Where a message came from, and so where its responses go
    (RFC 3261 18.2.2 with RFC 3581 rport)."""

    __slots__ = ("addr", "conn", "listener", "received_at")

    def __init__(self, listener: Listener, addr: tuple[str, int], conn: Connection | None,
                 received_at: float) -> None:
        self.listener = listener
        self.addr = addr
        self.conn = conn
        self.received_at = received_at

    @property
    def reliable(self) -> bool:
        return self.conn is not None


class Destination:
    """A resolved next hop: transport, IP, port, and the listener to send from."""

    __slots__ = ("addr", "conn", "fallback", "listener", "transport")

    def __init__(self, transport: str, addr: tuple[str, int], listener: Listener,
                 conn: Connection | None = None,
                 fallback: tuple[str, int] | None = None) -> None:
        self.transport = transport
        self.addr = addr
        self.listener = listener
        self.conn = conn
        # Where to open a new connection when ``conn`` has closed: for a
        # response, the Via's received address and sent-by port (RFC 3261
        # 18.2.2), not the old connection's ephemeral port.
        self.fallback = fallback

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    def __repr__(self) -> str:
        return f"<Destination {self.transport}:{self.addr[0]}:{self.addr[1]}>"


def send_datagram(data: bytes, dest: Destination) -> bool:
    """Send over UDP from ``dest``'s listener: the common case of
    :meth:`Transports.send <hasip.transport.manager.Transports.send>`, here
    so that the compiled proxy reaches the socket without an interpreted
    call. False when the listener has no socket, is not ours now, or the
    kernel refused the datagram."""
    listener = dest.listener
    udp = listener.udp
    if udp is None or not listener.active:
        return False
    try:
        udp.sendto(data, dest.addr)
    except OSError:
        return False
    return True


# Sink signature: (data, listener, remote address, TCP connection or None)
Sink = Callable[[bytes, Listener, tuple[str, int], Connection | None], None]
