"""The TCP transports' admission and sweep, driven with a fake transport and
a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from prometheus_client import REGISTRY

from hasip.app.config import config_from_dict
from hasip.transport.base import Listener
from hasip.transport.manager import Transports
from hasip.transport.tcp import TcpConnection

MSG = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 198.18.0.1:5060;branch=z9hG4bK1\r\n"
       b"Content-Length: 0\r\n\r\n")


class FakeLoop:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class FakeTransport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.aborted = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> Any:
        return self.peer if name == "peername" else None

    def abort(self) -> None:
        self.aborted = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


def counter(name: str, reason: str) -> float:
    return REGISTRY.get_sample_value(name, {"reason": reason}) or 0.0


class Node:
    """Transports with a fake loop, and what reached the proxy."""

    def __init__(self, **tcp: Any) -> None:
        self.loop = FakeLoop()
        self.received: list[bytes] = []
        config = config_from_dict({"tcp": tcp})
        self.transports = Transports(config, self.sink, cast(asyncio.AbstractEventLoop, self.loop))
        self.listener = Listener("tcp", "127.0.0.1", 5060)

    def sink(self, data: bytes, listener: Listener, addr: tuple[str, int],
             conn: TcpConnection | None) -> None:
        self.received.append(data)

    def accept(self, ip: str, port: int) -> tuple[TcpConnection, FakeTransport]:
        conn = self.transports._new_connection(self.listener)
        transport = FakeTransport((ip, port))
        conn.connection_made(cast(asyncio.BaseTransport, transport))
        return conn, transport

    def lose(self, conn: TcpConnection) -> None:
        conn.connection_lost(None)

    def sweep(self, at: float) -> None:
        self.loop.now = at
        self.transports._sweep_suspects(at)


def test_a_refused_connection_is_aborted_as_it_opens_and_never_read() -> None:
    node = Node(max_connections=10, max_connections_per_source=2)
    before = counter("hasip_tcp_refused_total", "per_source")
    (a, ta), (_b, tb), (c, tc) = (node.accept("198.18.0.1", p) for p in (1, 2, 3))
    assert not ta.aborted and not tb.aborted and tc.aborted
    assert counter("hasip_tcp_refused_total", "per_source") == before + 1
    c.data_received(MSG)
    assert node.received == []  # nothing of it reaches the proxy
    c.connection_lost(None)  # asyncio reports the abort: nothing to undo
    assert node.transports._limits.by_source == {"198.18.0.1": 2}
    node.lose(a)
    d, td = node.accept("198.18.0.1", 4)
    assert not td.aborted
    d.data_received(MSG)
    assert node.received == [MSG]


def test_the_total_counts_the_node_s_own_connections() -> None:
    node = Node(max_connections=4, max_connections_per_source=2)
    node.transports._outbound = 2  # two connections of ours
    before = counter("hasip_tcp_refused_total", "total")
    results = [node.accept(ip, 1)[1].aborted for ip in ("198.18.0.1", "198.18.0.2", "198.18.0.3")]
    assert results == [False, False, True]
    assert counter("hasip_tcp_refused_total", "total") == before + 1


def test_a_half_sent_message_is_closed_at_message_timeout_from_its_first_byte() -> None:
    node = Node(message_timeout=5.0, first_message_timeout=60.0)
    conn, transport = node.accept("198.18.0.1", 1)
    start = node.loop.now
    conn.data_received(MSG[:20])
    for step in range(1, 10):  # a byte every half second: busy, never complete
        node.sweep(start + step * 0.5)
        conn.data_received(MSG[20 + step:21 + step])
    node.sweep(start + 4.99)
    assert not transport.aborted
    before = counter("hasip_tcp_closed_total", "slow_message")
    node.sweep(start + 5.0)
    assert transport.aborted
    assert counter("hasip_tcp_closed_total", "slow_message") == before + 1


def test_each_message_is_timed_on_its_own() -> None:
    """Messages that keep spanning reads are fine as long as each completes
    in time; the suspect set empties once nothing is half-arrived."""
    node = Node(message_timeout=5.0, first_message_timeout=60.0)
    conn, transport = node.accept("198.18.0.1", 1)
    t = node.loop.now
    conn.data_received(MSG[:30])
    for _ in range(5):
        t += 4.0
        node.loop.now = t
        conn.data_received(MSG[30:] + MSG[:30])  # one ends, the next begins
        node.sweep(t + 0.5)
        assert not transport.aborted
    conn.data_received(MSG[30:])
    node.sweep(t + 100.0)
    assert not transport.aborted and len(node.received) == 6
    assert conn not in node.transports._suspects


def test_without_a_first_message_a_connection_is_closed_pings_or_not() -> None:
    node = Node(first_message_timeout=10.0, message_timeout=5.0)
    start = node.loop.now
    _silent, t_silent = node.accept("198.18.0.1", 1)
    pinging, t_pinging = node.accept("198.18.0.1", 2)
    talking, t_talking = node.accept("198.18.0.1", 3)
    talking.data_received(MSG)
    for step in range(1, 20):
        node.loop.now = start + step * 0.5
        pinging.data_received(b"\r\n\r\n")
        talking.data_received(b"\r\n\r\n")
        node.sweep(start + step * 0.5)
    assert t_pinging.written.count(b"\r\n") == 19  # pongs, RFC 5626 3.5.1
    assert not (t_silent.aborted or t_pinging.aborted or t_talking.aborted)
    node.sweep(start + 10.0)
    assert t_silent.aborted and t_pinging.aborted and not t_talking.aborted
    assert talking not in node.transports._suspects  # cleared after its first message


def test_a_connection_of_ours_has_no_first_message_deadline() -> None:
    node = Node(first_message_timeout=1.0, message_timeout=1.0)
    ours = TcpConnection(node.listener, node.sink, 65535, 1 << 20, node.transports._forget,
                         cast(asyncio.AbstractEventLoop, node.loop),
                         on_partial=node.transports._suspects.add)
    transport = FakeTransport(("198.18.0.9", 5060))
    ours.connection_made(cast(asyncio.BaseTransport, transport))
    node.sweep(node.loop.now + 100.0)
    assert not transport.aborted
    ours.data_received(MSG[:10])  # but a half-sent response holds it as well
    node.sweep(node.loop.now + 1.0)
    assert transport.aborted


def test_a_flood_of_closes_is_one_log_line_then_a_summary(caplog: Any) -> None:
    node = Node(first_message_timeout=1.0, message_timeout=1.0)
    start = node.loop.now
    for port in range(50):
        node.accept("198.18.0.7", port)
    with caplog.at_level("INFO", logger="hasip.transport"):
        node.sweep(start + 1.0)
        node.transports._log_digests(start + 1.0)
        assert [r.getMessage() for r in caplog.records] == ["tcp_connection_closed"]
        node.transports._log_digests(start + 11.0)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["tcp_connection_closed", "tcp_connections_closed"]
    summary = caplog.records[-1].__dict__
    assert summary["count"] == 49 and summary["sources"] == "198.18.0.7=49"
