"""CRLF keepalives (RFC 5626 3.5.1; linphone sends them over UDP too): not
messages, so neither parsed nor answered, but counted."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from hasip.telemetry import metrics
from hasip.transport.base import Listener
from hasip.transport.tcp import TcpConnection
from hasip.transport.udp import UdpProtocol

MSG = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.1:5060;branch=z9hG4bK1\r\n"
       b"Content-Length: 0\r\n\r\n")


def keepalives(transport: str) -> float:
    return metrics.KEEPALIVES.value(transport)


class Sink:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def __call__(self, data: bytes, listener: Listener, addr: tuple[str, int],
                 conn: Any) -> None:
        self.got.append(data)


def test_udp_crlf_datagrams_are_counted_and_never_reach_the_proxy() -> None:
    sink = Sink()
    proto = UdpProtocol(Listener("udp", "127.0.0.1", 5060), sink)
    before = keepalives("udp")
    for ping in (b"\r\n\r\n", b"\r\n", b"\n"):
        proto.datagram_received(ping, ("198.18.0.1", 5062))
    assert sink.got == []
    assert keepalives("udp") == before + 3
    proto.datagram_received(MSG, ("198.18.0.1", 5062, 0, 0))
    proto.datagram_received(b"\r\n\r\nX", ("198.18.0.1", 5062))  # not a keepalive
    assert sink.got == [MSG, b"\r\n\r\nX"]
    assert keepalives("udp") == before + 3


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> Any:
        return ("198.18.0.1", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


class FakeLoop:
    def time(self) -> float:
        return 1000.0


def test_tcp_ping_gets_a_pong_and_is_counted() -> None:
    sink = Sink()
    conn = TcpConnection(Listener("tcp", "127.0.0.1", 5060), sink, 65535, 1 << 20,
                         on_close=lambda c: None,
                         loop=cast(asyncio.AbstractEventLoop, FakeLoop()))
    transport = FakeTransport()
    conn.connection_made(cast(asyncio.BaseTransport, transport))
    before = keepalives("tcp")
    conn.data_received(b"\r\n\r\n" + MSG + b"\r\n\r")
    conn.data_received(b"\n")
    assert sink.got == [MSG]
    assert transport.written == [b"\r\n", b"\r\n"]  # one pong per ping, RFC 5626 3.5.1
    assert keepalives("tcp") == before + 2
