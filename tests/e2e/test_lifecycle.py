"""A node's life: graceful shutdown, forced exit, metrics, TCP limits."""

from __future__ import annotations

import signal
import socket
import time

from tests.e2e.conftest import invite, reply_to, start_invite, status_of
from tests.e2e.test_calls import metric


def test_sigterm_finishes_transactions_in_flight_then_exits(make_node, udp_peer) -> None:
    callee = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"], shutdown={"grace": 10.0})
    caller = udp_peer()
    forwarded = start_invite(caller, node, callee)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert node.alive()  # still waiting for the answer in flight
    late = udp_peer()  # a new call during the drain is refused
    late.send(invite(late, f"sip:agent@127.0.0.1:{node.sip_port}"), node.sip_port)
    statuses = [status_of(m) for m in late.recv_all(0.5)]
    assert 503 in statuses
    callee.send(reply_to(forwarded, 200, "OK"), node.sip_port)
    assert status_of(caller.recv()) == 200  # the call in flight completed
    started = time.monotonic()
    assert node.proc.wait(5) == 0
    assert time.monotonic() - started < 2.0  # it left as soon as nothing was in flight
    assert "shutdown_requested" in node.log() and "node_stopped" in node.log()


def test_grace_bounds_the_drain_and_second_signal_exits_at_once(make_node, udp_peer) -> None:
    callee = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"], shutdown={"grace": 1.0})
    caller = udp_peer()
    start_invite(caller, node)
    assert node.proc is not None
    started = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(5) == 0
    assert 0.9 <= time.monotonic() - started < 3.0  # the grace bounded it
    assert "drain_timeout" in node.log()

    node2 = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"], shutdown={"grace": 30.0})
    caller.send(invite(caller, f"sip:agent@127.0.0.1:{node2.sip_port}"), node2.sip_port)
    assert node2.proc is not None
    node2.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    node2.proc.send_signal(signal.SIGTERM)
    assert node2.proc.wait(5) != 0
    assert time.monotonic() - started < 1.0
    assert "shutdown_forced" in node2.log()


def test_metrics_exposition(make_node, udp_peer) -> None:
    node = make_node()
    peer = udp_peer()
    peer.send(b"garbage\r\n\r\n", node.sip_port)
    peer.send(invite(peer, f"sip:127.0.0.1:{node.sip_port}", method="OPTIONS"), node.sip_port)
    assert status_of(peer.recv()) == 200
    text = node.metrics()
    for name in ("hasip_sip_requests_received_total", "hasip_sip_responses_sent_total",
                 "hasip_sip_transactions_in_flight", "hasip_sip_parse_errors_total",
                 "hasip_sip_retransmissions_absorbed_total", "hasip_sip_proxy_latency_seconds",
                 "hasip_sip_transactions", "hasip_up"):
        assert f"# TYPE {name}" in text, name
    assert metric(text, "hasip_sip_parse_errors_total", 'kind="parse"') == 1
    assert metric(text, "hasip_up") == 1


def test_slow_tcp_peer_is_disconnected_not_buffered(make_node) -> None:
    """A client that sends requests but never reads its answers: the node
    drops the connection once its write buffer limit is reached and goes on."""
    node = make_node(tcp={"max_write_buffer": 65536})
    conn = socket.create_connection(("127.0.0.1", node.sip_port), timeout=5)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = conn.getsockname()[1]
    pad = ";pad=" + "p" * 3000  # responses copy the Via, so they are as large
    closed = False
    deadline = time.monotonic() + 20
    sent = 0
    while sent < 20000 and time.monotonic() < deadline:
        msg = (f"OPTIONS sip:127.0.0.1:{node.sip_port} SIP/2.0\r\n"
               f"Via: SIP/2.0/TCP 127.0.0.1:{port};branch=z9hG4bKslow{sent}{pad}\r\n"
               f"From: <sip:slow@127.0.0.1>;tag=s\r\nTo: <sip:127.0.0.1>\r\n"
               f"Call-ID: slow{sent}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        try:
            conn.sendall(msg.encode())
        except OSError:
            closed = True
            break
        sent += 1
    conn.close()
    text = node.metrics()
    assert closed or metric(text, "hasip_tcp_closed_slow_peer_total") >= 1
    assert metric(text, "hasip_tcp_closed_slow_peer_total") >= 1
    from hasip.demo.node import options_ping

    answer = options_ping("127.0.0.1", node.sip_port)
    assert answer is not None and answer.startswith(b"SIP/2.0 200")


def test_oversize_stream_message_closes_the_connection(make_node) -> None:
    node = make_node(sip={"max_message_size": 4096})
    with socket.create_connection(("127.0.0.1", node.sip_port), timeout=5) as conn:
        conn.sendall(b"INVITE sip:a@127.0.0.1 SIP/2.0\r\nX-Big: " + b"b" * 10000)
        conn.settimeout(3)
        try:
            data = conn.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b""  # closed by the node
    assert node.alive()


def test_response_after_the_tcp_connection_closed_goes_to_the_via(make_node, udp_peer) -> None:
    """RFC 3261 18.2.2: the connection a request came on is gone; the answer
    is sent over a new connection to the Via's address and port."""
    from hasip.sip.framing import StreamFramer
    from tests.e2e.conftest import reply_to, status_of

    callee = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    listener.settimeout(5)
    via_port = listener.getsockname()[1]
    conn = socket.create_connection(("127.0.0.1", node.sip_port), timeout=5)
    msg = (f"INVITE sip:agent@127.0.0.1:{node.sip_port} SIP/2.0\r\n"
           f"Via: SIP/2.0/TCP 127.0.0.1:{via_port};branch=z9hG4bKtcpgone\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=f1\r\n"
           f"To: <sip:agent@127.0.0.1:{node.sip_port}>\r\nCall-ID: tcpgone1\r\n"
           "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
    conn.sendall(msg)
    assert status_of(StreamFramer().feed(conn.recv(65535))[0]) == 100
    conn.close()
    forwarded = callee.recv()
    assert forwarded is not None
    time.sleep(0.2)
    callee.send(reply_to(forwarded, 486, "Busy Here"), node.sip_port)
    back, _ = listener.accept()
    back.settimeout(5)
    framer = StreamFramer()
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        got = framer.feed(back.recv(65535))
    assert got and status_of(got[0]) == 486
    back.close()
    listener.close()
