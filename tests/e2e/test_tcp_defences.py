"""A node's TCP defences against a hostile network, with a real node on
loopback: connections per source and in all, half-sent messages, connections
that never send a message, and what must stay open (CRLF keepalives, the
node's own connections). Every loop and wait here is bounded."""

from __future__ import annotations

import re
import selectors
import socket
import time
import uuid

from hasip.demo.node import NodeProcess
from hasip.sip.framing import StreamFramer
from tests.e2e.conftest import invite, metric, status_of


def connect(node: NodeProcess, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the node from ``source`` (any 127.0.0.0/8
    address is local on Linux, so each is a source of its own)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", node.sip_port))
    return sock


def options(sock: socket.socket, node: NodeProcess) -> bytes:
    host, port = sock.getsockname()
    call_id = uuid.uuid4().hex
    return (f"OPTIONS sip:127.0.0.1:{node.sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK{call_id[:12]};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:monitor@{host}>;tag={call_id[:8]}\r\n"
            f"To: <sip:127.0.0.1:{node.sip_port}>\r\nCall-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def half_message(sock: socket.socket) -> bytes:
    """A request line and a few headers, and never the blank line."""
    host, port = sock.getsockname()
    return (f"INVITE sip:agent@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
            f"From: <sip:slow@{host}>;tag=s\r\nTo: <sip:agent@127.0.0.1>\r\n").encode()


def read_messages(sock: socket.socket, framer: StreamFramer, want: int = 1,
                  timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65535)
        except TimeoutError:
            break
        if not data:
            break
        got += framer.feed(data)
    return got


def ask(sock: socket.socket, node: NodeProcess) -> int | None:
    """OPTIONS to the node over ``sock``; the status of the answer."""
    sock.sendall(options(sock, node))
    got = read_messages(sock, StreamFramer())
    return status_of(got[0]) if got else None


def wait_closed(socks: list[socket.socket], timeout: float) -> dict[int, float]:
    """Wait up to ``timeout`` for the node to close these connections:
    index -> when (time.monotonic) each was seen closed."""
    closed: dict[int, float] = {}
    sel = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, i)
    deadline = time.monotonic() + timeout
    try:
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                i = key.data
                try:
                    data = socks[i].recv(65535)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                except BlockingIOError:
                    continue
                if not data:
                    closed[i] = time.monotonic()
                    sel.unregister(socks[i])
    finally:
        sel.close()
        for sock in socks:
            if sock.fileno() >= 0:
                sock.setblocking(True)
                sock.settimeout(5)
    return closed


def is_open(sock: socket.socket) -> bool:
    """Nothing says the peer closed: no EOF, no reset (data may be waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(65535, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
        sock.settimeout(5)


def log_lines(node: NodeProcess, event: str) -> list[str]:
    return re.findall(rf"^.*event={event}\b.*$", node.log(), re.M)


def assert_no_errors(node: NodeProcess) -> None:
    text = node.log()
    assert "level=error" not in text and "Traceback" not in text, text[-3000:]


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def test_per_source_limit_closes_the_surplus_and_spares_other_sources(make_node) -> None:
    node = make_node(tcp={"max_connections_per_source": 20, "first_message_timeout": 60.0})
    held = [connect(node) for _ in range(30)]
    try:
        closed = wait_closed(held, 3.0)
        # The ten beyond the limit are closed at once; the first twenty stay.
        assert sorted(closed) == list(range(20, 30))
        survivors = held[:20]
        assert all(is_open(s) for s in survivors)
        assert ask(survivors[0], node) == 200 and ask(survivors[-1], node) == 200
        # Another source is not locked out.
        other = connect(node, "127.0.0.2")
        held.append(other)
        assert ask(other, node) == 200
        # A slot freed by the source is its own again.
        survivors[5].close()
        deadline = time.monotonic() + 3
        again = None
        while time.monotonic() < deadline:
            again = connect(node)
            held.append(again)
            if not wait_closed([again], 0.3):
                break
        assert again is not None and ask(again, node) == 200
        text = node.metrics()
        refused = metric(text, "hasip_tcp_refused_total", 'reason="per_source"')
        assert refused >= 10
        assert metric(text, "hasip_tcp_refused_total", 'reason="total"') == 0
        # A flood is one log line (then a summary per 10 s), not one per connection.
        lines = log_lines(node, "tcp_connection_refused")
        assert len(lines) == 1 and "source=127.0.0.1" in lines[0] and "level=warning" in lines[0]
        assert_no_errors(node)
    finally:
        close_all(held)


def test_total_limit_refuses_and_closes_and_one_source_cannot_reach_it(make_node) -> None:
    """Beyond tcp.max_connections a connection is closed at once (it was
    left open, unread and unanswered, before), and the per-source limit
    keeps any one source from taking the whole table."""
    node = make_node(tcp={"max_connections": 12, "max_connections_per_source": 5,
                          "first_message_timeout": 60.0})
    held: list[socket.socket] = []
    try:
        a = [connect(node, "127.0.0.1") for _ in range(8)]
        b = [connect(node, "127.0.0.2") for _ in range(5)]
        held += a + b
        assert sorted(wait_closed(a, 2.0)) == [5, 6, 7]  # one source: 5 of 12, no more
        assert wait_closed(b, 0.5) == {}
        c = [connect(node, "127.0.0.3") for _ in range(4)]
        held += c
        assert sorted(wait_closed(c, 2.0)) == [2, 3]  # the table is full at 12
        assert all(is_open(s) for s in a[:5] + b + c[:2])
        assert ask(c[1], node) == 200
        late = connect(node, "127.0.0.4")
        held.append(late)
        assert wait_closed([late], 2.0)  # closed, not left hanging
        # Room again once a source lets go.
        for s in a[:5]:
            s.close()
        deadline = time.monotonic() + 3
        status = None
        while status is None and time.monotonic() < deadline:
            fresh = connect(node, "127.0.0.4")
            held.append(fresh)
            if not wait_closed([fresh], 0.3):
                status = ask(fresh, node)
        assert status == 200
        text = node.metrics()
        assert metric(text, "hasip_tcp_refused_total", 'reason="per_source"') == 3
        assert metric(text, "hasip_tcp_refused_total", 'reason="total"') >= 3
        assert_no_errors(node)
    finally:
        close_all(held)


def test_half_sent_messages_are_closed_after_message_timeout(make_node, udp_peer) -> None:
    callee = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"],
                     tcp={"message_timeout": 1.5, "first_message_timeout": 60.0})
    held: list[socket.socket] = []
    sent_at: list[float] = []
    try:
        for _ in range(200):
            sock = connect(node)
            held.append(sock)
            sock.sendall(half_message(sock))
            sent_at.append(time.monotonic())
        # Meanwhile a fresh connection is served: an OPTIONS, and a call
        # that the node forwards.
        fresh = connect(node, "127.0.0.2")
        held.append(fresh)
        assert ask(fresh, node) == 200
        caller = udp_peer()
        caller.send(invite(caller, f"sip:agent@127.0.0.1:{node.sip_port}"), node.sip_port)
        assert status_of(caller.recv()) == 100
        forwarded = callee.recv()
        assert forwarded is not None and forwarded.startswith(b"INVITE sip:agent@")
        # Every half-sent message is dropped within the timeout and a sweep.
        closed = wait_closed(held[:200], sent_at[-1] - time.monotonic() + 1.5 + 0.75 + 1.5)
        assert len(closed) == 200
        for i, when in closed.items():
            assert when >= sent_at[i] + 1.5 - 0.05, (i, when - sent_at[i])
        assert is_open(fresh) and ask(fresh, node) == 200
        text = node.metrics()
        assert metric(text, "hasip_tcp_closed_total", 'reason="slow_message"') == 200
        assert metric(text, "hasip_tcp_closed_total", 'reason="no_message"') == 0
        assert metric(text, "hasip_tcp_connections") == 1
        lines = log_lines(node, "tcp_connection_closed")
        assert len(lines) == 1 and "reason=slow_message" in lines[0]
        assert_no_errors(node)
    finally:
        close_all(held)


def test_a_message_trickled_a_byte_at_a_time_is_timed_from_its_start(make_node) -> None:
    """Slowloris: a byte every 0.2 s keeps the connection busy, never idle,
    but the message it never finishes is dropped at message_timeout."""
    node = make_node(tcp={"message_timeout": 1.5, "first_message_timeout": 60.0})
    sock = connect(node)
    try:
        data = half_message(sock) + b"X-Pad: " + b"p" * 100
        started = time.monotonic()
        closed_at = None
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_at = time.monotonic()
                break
            if not is_open(sock):
                closed_at = time.monotonic()
                break
            time.sleep(0.2)
            if time.monotonic() - started > 6:
                break
        assert closed_at is not None
        assert 1.5 <= closed_at - started <= 1.5 + 0.75 + 1.0
        assert metric(node.metrics(), "hasip_tcp_closed_total", 'reason="slow_message"') == 1
        assert_no_errors(node)
    finally:
        sock.close()


def test_crlf_keepalives_keep_a_quiet_connection_open(make_node) -> None:
    """RFC 5626 3.5.1: after a first message, a connection that only pings
    (double CRLF, answered by a CRLF pong) is not in a message and stays
    open past message_timeout and first_message_timeout; so does half a
    ping left waiting."""
    node = make_node(tcp={"message_timeout": 1.0, "first_message_timeout": 1.0})
    sock = connect(node)
    try:
        assert ask(sock, node) == 200
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            sock.sendall(b"\r\n\r\n")
            sock.settimeout(2)
            assert sock.recv(16) == b"\r\n"
            time.sleep(0.4)
        sock.sendall(b"\r\n\r")  # half a ping, held past the timeouts
        time.sleep(1.8)
        assert is_open(sock)
        sock.sendall(b"\n")
        assert sock.recv(16) == b"\r\n"
        assert ask(sock, node) == 200
        text = node.metrics()
        assert metric(text, "hasip_tcp_closed_total", 'reason="slow_message"') == 0
        assert metric(text, "hasip_tcp_closed_total", 'reason="no_message"') == 0
        assert_no_errors(node)
    finally:
        sock.close()


def test_connection_without_a_first_message_is_closed(make_node, udp_peer) -> None:
    """A connection that sends nothing, or only pings, is closed after
    first_message_timeout; one that sent a message stays; and a connection
    the node opened itself (to a TCP next hop that never speaks) is exempt."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(5)
    node = make_node(next_hop=[f"sip:127.0.0.1:{server.getsockname()[1]};transport=tcp"],
                     tcp={"first_message_timeout": 1.5, "message_timeout": 5.0})
    held: list[socket.socket] = [server]
    try:
        caller = udp_peer()
        caller.send(invite(caller, f"sip:agent@127.0.0.1:{node.sip_port}"), node.sip_port)
        assert status_of(caller.recv()) == 100
        ours, _ = server.accept()  # the node's connection to its next hop
        held.append(ours)
        opened = time.monotonic()
        silent = connect(node)
        pinging = connect(node)
        talking = connect(node, "127.0.0.2")
        held += [silent, pinging, talking]
        assert ask(talking, node) == 200
        pinging.sendall(b"\r\n\r\n")
        assert pinging.recv(16) == b"\r\n"  # answered, but not a message
        closed = wait_closed([silent, pinging], 1.5 + 0.75 + 1.5)
        assert sorted(closed) == [0, 1]
        for when in closed.values():
            assert 1.5 - 0.05 <= when - opened <= 1.5 + 0.75 + 1.5
        time.sleep(0.5)
        assert is_open(talking) and is_open(ours)
        assert ask(talking, node) == 200
        text = node.metrics()
        assert metric(text, "hasip_tcp_closed_total", 'reason="no_message"') == 2
        assert_no_errors(node)
    finally:
        close_all(held)


def test_a_flood_of_malformed_streams_is_one_warning(make_node) -> None:
    """Each connection that breaks the framing is closed and counted; the
    log gets one line for the lot, not one per connection."""
    node = make_node(sip={"max_message_size": 4096})
    held = [connect(node) for _ in range(30)]
    try:
        for sock in held:
            sock.sendall(b"INVITE sip:a@127.0.0.1 SIP/2.0\r\nX-Big: " + b"b" * 5000)
        assert len(wait_closed(held, 3.0)) == 30
        text = node.metrics()
        assert metric(text, "hasip_tcp_closed_total", 'reason="framing_error"') == 30
        assert metric(text, "hasip_sip_parse_errors_total", 'kind="stream"') == 30
        lines = log_lines(node, "tcp_connection_closed")
        assert len(lines) == 1 and "level=warning" in lines[0]
        assert "reason=framing_error" in lines[0]
        fresh = connect(node)
        held.append(fresh)
        assert ask(fresh, node) == 200
        assert_no_errors(node)
    finally:
        close_all(held)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_held_by_half_sent_messages_is_given_back(make_node) -> None:
    """Three waves of 150 connections, each holding 60 KB of a message that
    never ends: every wave is closed and its buffers reused by the next, so
    the node does not grow by a wave's worth (9 MB) after the first."""
    import os

    if not os.path.exists("/proc/self/status"):
        import pytest

        pytest.skip("needs /proc to read the node's RSS")
    node = make_node(sip={"max_message_size": 65535},
                     tcp={"message_timeout": 1.0, "first_message_timeout": 60.0})
    after: list[int] = []
    for _ in range(3):
        held = [connect(node) for _ in range(150)]
        try:
            for sock in held:
                sock.sendall(half_message(sock) + b"X-Pad: " + b"p" * 60000)
            assert len(wait_closed(held, 1.0 + 0.5 + 3.0)) == 150
        finally:
            close_all(held)
        time.sleep(0.2)
        after.append(rss_bytes(node.pid))
    assert after[2] - after[0] < 9 * 1024 * 1024, after
    assert metric(node.metrics(), "hasip_tcp_closed_total", 'reason="slow_message"') == 450
    assert_no_errors(node)
