"""CRLF keepalives against a running node: linphone's "\r\n\r\n" datagrams
are ignored silently (no answer, no parse error, no log line) and counted;
a TCP ping gets its pong (RFC 5626 3.5.1)."""

from __future__ import annotations

import socket
import time

from tests.e2e.conftest import metric, metric_total


def test_udp_crlf_keepalives_are_counted_not_parse_errors(make_node, udp_peer) -> None:
    node = make_node()
    phone = udp_peer()
    log_before = node.log()
    for _ in range(3):
        phone.send(b"\r\n\r\n", node.sip_port)
    assert phone.recv(0.5) is None  # nothing answers a keepalive
    text = node.metrics()
    assert metric(text, "hasip_sip_keepalives_received_total", 'transport="udp"') == 3
    assert metric_total(text, "hasip_sip_parse_errors_total") == 0
    assert node.log() == log_before


def test_tcp_ping_is_answered_with_a_pong_and_counted(make_node) -> None:
    node = make_node()
    with socket.create_connection(("127.0.0.1", node.sip_port), timeout=2) as sock:
        sock.sendall(b"\r\n\r\n")
        assert sock.recv(16) == b"\r\n"
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        text = node.metrics()
        if metric(text, "hasip_sip_keepalives_received_total", 'transport="tcp"') == 1:
            break
        time.sleep(0.05)
    assert metric(text, "hasip_sip_keepalives_received_total", 'transport="tcp"') == 1
    assert metric_total(text, "hasip_sip_parse_errors_total") == 0
