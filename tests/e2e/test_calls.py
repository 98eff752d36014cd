"""Calls through a running node: SIPp callers and answering nodes, and raw
sockets where a single message must be checked."""

from __future__ import annotations

import time

from hasip.demo.node import NodeProcess
from hasip.demo.sipp import wait_for_stats
from tests.e2e.conftest import (
    free_port,
    invite,
    metric,
    reply_to,
    start_invite,
    status_of,
    write_config,
)


def answering_nodes(sipp, count: int = 2, scenario: str = "uas.xml", transport: str = "u1"):
    nodes = [sipp(scenario, transport=transport) for _ in range(count)]
    for n in nodes:
        wait_for_stats(n)
    return nodes


def test_calls_complete_and_spread_round_robin(make_node, sipp) -> None:
    uas = answering_nodes(sipp)
    node = make_node(next_hop=[f"sip:127.0.0.1:{u.port}" for u in uas])
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=60, rate=30,
                  call_length_ms=200)
    assert caller.wait(60) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 60
    for u in uas:
        u.stop()
    assert [u.counter("SuccessfulCall(C)") for u in uas] == [30, 30]
    text = node.metrics()
    assert metric(text, "hasip_sip_requests_received_total", 'method="INVITE"') == 60
    assert metric(text, "hasip_sip_requests_forwarded_total", 'method="BYE"') == 60
    options = metric(text, "hasip_sip_requests_received_total", 'method="OPTIONS"')  # readiness
    assert metric(text, "hasip_sip_responses_sent_total", 'code="200"') == 120 + options
    assert metric(text, "hasip_sip_proxy_latency_seconds_count", 'kind="request"') >= 180


def test_calls_over_tcp_to_udp_and_tcp_to_tcp(make_node, sipp) -> None:
    udp_uas = answering_nodes(sipp, 1)[0]
    tcp_uas = answering_nodes(sipp, 1, transport="t1")[0]
    node = make_node(next_hop=[f"sip:127.0.0.1:{udp_uas.port}",
                               f"sip:127.0.0.1:{tcp_uas.port};transport=tcp"])
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=20, rate=20,
                  transport="t1", call_length_ms=100)
    assert caller.wait(60) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 20
    udp_uas.stop()
    tcp_uas.stop()
    assert udp_uas.counter("SuccessfulCall(C)") == 10
    assert tcp_uas.counter("SuccessfulCall(C)") == 10


def test_cancel_while_ringing(make_node, sipp) -> None:
    uas = answering_nodes(sipp, 1, scenario="uas_ring.xml")[0]
    node = make_node(next_hop=[f"sip:127.0.0.1:{uas.port}"])
    caller = sipp("uac_cancel.xml", remote=f"127.0.0.1:{node.sip_port}", calls=10, rate=10)
    assert caller.wait(60) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 10
    # the dialogs were tracked and ended as cancelled, none left behind
    text = node.metrics()
    assert metric(text, "hasip_dialogs_ended_total", 'reason="cancelled"') == 10
    assert metric(text, "hasip_dialogs", 'state="early"') == 0
    uas.stop()
    assert uas.counter("SuccessfulCall(C)") == 10


def test_node_that_never_answers_gives_503_when_no_node_is_left(make_node, sipp) -> None:
    """Timer B on the only node: passive detection counts it, and with no
    node left to fail over to the caller gets 503 (the seed's failure_route)."""
    dead = free_port()
    node = make_node(next_hop=[f"sip:127.0.0.1:{dead}"], timers={"non_invite_final": 2.0})
    started = time.monotonic()
    caller = sipp("uac_expect_503.xml", remote=f"127.0.0.1:{node.sip_port}", calls=3, rate=10)
    assert caller.wait(60) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 3
    assert time.monotonic() - started >= 2.0
    text = node.metrics()
    assert metric(text, "hasip_sip_transaction_timeouts_total", 'method="INVITE"') == 3
    assert metric(text, "hasip_sip_responses_sent_total", 'code="503"') == 3
    assert metric(text, "hasip_dispatcher_state_changes_total", 'state="I"') == 1


def test_retransmissions_are_absorbed(make_node, udp_peer) -> None:
    callee = udp_peer()
    caller = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"])
    req = invite(caller, f"sip:agent@127.0.0.1:{node.sip_port}")
    caller.send(req, node.sip_port)
    assert status_of(caller.recv()) == 100
    forwarded = callee.recv()
    assert forwarded is not None and forwarded.startswith(b"INVITE ")
    callee.send(reply_to(forwarded, 180, "Ringing"), node.sip_port)
    assert status_of(caller.recv()) == 180
    for _ in range(3):  # the caller retransmits; each gets the last provisional again
        caller.send(req, node.sip_port)
        assert status_of(caller.recv()) == 180
    assert callee.recv_all(0.7) == []  # the callee saw one INVITE only
    final = reply_to(forwarded, 486, "Busy Here")
    callee.send(final, node.sip_port)
    ack = callee.recv()
    assert ack is not None and ack.startswith(b"ACK ")  # hop-by-hop ACK from the proxy
    assert status_of(caller.recv()) == 486
    hop_ack = req.replace(b"INVITE sip", b"ACK sip", 1).replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK")
    caller.send(hop_ack, node.sip_port)  # the caller's ACK for the 486 ends timer G
    callee.send(final, node.sip_port)  # a retransmitted 486 is absorbed and ACKed again
    again = callee.recv()
    assert again is not None and again.startswith(b"ACK ")
    assert caller.recv(1.0) is None  # neither relayed nor retransmitted by timer G
    caller.send(req, node.sip_port)  # a late INVITE retransmission is absorbed too
    assert caller.recv(0.5) is None
    assert callee.recv(0.2) is None
    text = node.metrics()
    assert metric(text, "hasip_sip_retransmissions_absorbed_total", 'method="INVITE"') == 4


def test_2xx_retransmissions_are_forwarded_and_ack_passes_statelessly(make_node, udp_peer) -> None:
    callee = udp_peer()
    caller = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"])
    forwarded = start_invite(caller, node, callee)
    assert f"Record-Route: <sip:127.0.0.1:{node.sip_port};lr;hsd=".encode() in forwarded
    ok = reply_to(forwarded, 200, "OK", extra=f"Contact: <sip:agent@127.0.0.1:{callee.port}>\r\n")
    callee.send(ok, node.sip_port)
    callee.send(ok, node.sip_port)
    first, second = caller.recv(), caller.recv()
    assert status_of(first) == 200 and status_of(second) == 200
    assert first is not None and b"Record-Route:" in first
    to_line = next(line for line in first.split(b"\r\n") if line.startswith(b"To:"))
    call_id = next(line for line in first.split(b"\r\n") if line.startswith(b"Call-ID:"))
    ack = (f"ACK sip:agent@127.0.0.1:{callee.port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bKack1\r\n"
           f"Route: <sip:127.0.0.1:{node.sip_port};lr>\r\n"
           f"From: <sip:caller@127.0.0.1>;tag=ft{call_id.decode()[9:15]}\r\n").encode()
    ack += to_line + b"\r\n" + call_id + b"\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
    ack += b"Content-Length: 0\r\n\r\n"
    caller.send(ack, node.sip_port)
    got = callee.recv()
    assert got is not None and got.startswith(f"ACK sip:agent@127.0.0.1:{callee.port}".encode())
    assert b"Route:" not in got  # our own Route entry was consumed (loose routing)
    assert b"Max-Forwards: 69" in got


def test_options_to_the_proxy_is_answered(make_node, udp_peer) -> None:
    node = make_node()
    peer = udp_peer()
    peer.send(invite(peer, f"sip:127.0.0.1:{node.sip_port}", method="OPTIONS"), node.sip_port)
    answer = peer.recv()
    assert status_of(answer) == 200
    assert answer is not None and b"Allow: INVITE" in answer


def test_checks_answer_with_the_right_code(make_node, udp_peer) -> None:
    callee = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"], sip={"max_message_size": 2048})
    target = f"sip:agent@127.0.0.1:{node.sip_port}"

    def ask(data: bytes) -> int | None:
        # A fresh socket each time: we send no ACK, so the proxy retransmits
        # its final answer (timer G) to the old one.
        peer.send(data, node.sip_port)
        statuses = [status_of(m) for m in peer.recv_all(0.5)]
        finals = [s for s in statuses if s and s >= 200]
        return finals[0] if finals else None

    peer = udp_peer()
    assert ask(invite(peer, target, max_forwards=0)) == 483
    peer = udp_peer()
    assert ask(invite(peer, target, extra="X-Pad: " + "a" * 3000 + "\r\n")) == 513
    peer = udp_peer()
    assert ask(invite(peer, target, extra="Route: <sip:192.0.2.50;lr>\r\n")) == 403
    peer = udp_peer()
    assert ask(invite(peer, target, extra="Proxy-Require: foo\r\n")) == 420
    peer = udp_peer()
    assert ask(invite(peer, "mailto:x@example.com")) == 416
    peer = udp_peer()
    bad_cseq = invite(peer, target).replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    assert ask(bad_cseq) == 400
    peer = udp_peer()
    assert ask(invite(peer, target).replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)) == 505
    assert callee.recv(0.2) is None  # none of them reached the next hop


def test_loop_is_detected(make_node, udp_peer) -> None:
    """A node whose static next hop is its own address: the request comes
    back unchanged, which is a loop (482), not a spiral."""
    port = free_port()
    path = write_config(make_node.tmp_path / "loop.toml", {
        "sip": {"listen": [f"udp:127.0.0.1:{port}"]},
        "routing": {"next_hop": [f"sip:127.0.0.1:{port}"]},
        "metrics": {"listen": "off"},
        "control": {"listen": "off"},
        "auth": {"trusted": ["127.0.0.0/8"], "demo_users": True},
        "location": {"backend": "memory"},
    })
    node = NodeProcess(path, make_node.tmp_path, "127.0.0.1", port)
    make_node.nodes.append(node)
    node.start()
    peer = udp_peer()
    peer.send(invite(peer, f"sip:agent@127.0.0.1:{port}"), port)
    statuses = [status_of(m) for m in peer.recv_all(1.0)]
    assert statuses[-1] == 482


def test_stray_responses_are_dropped(make_node, udp_peer) -> None:
    node = make_node()
    peer = udp_peer()
    stray = reply_to(invite(peer, f"sip:x@127.0.0.1:{node.sip_port}"), 200, "OK")
    peer.send(stray, node.sip_port)
    assert peer.recv(0.5) is None
    assert metric(node.metrics(), "hasip_sip_stray_responses_total", 'action="dropped"') == 1


def test_a_response_matching_no_transaction_goes_on_by_its_via(make_node, udp_peer) -> None:
    """The VIP-takeover case on one host: the process that relayed an INVITE
    is replaced by a fresh one on the same socket before the callee answers.
    The new process has no transaction, but the 200 carries our Via on top:
    it goes on to the caller (RFC 3261 16.7), so the call is not lost."""
    callee = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"])
    caller = udp_peer()
    forwarded = start_invite(caller, node, callee)
    node.kill()
    node.start()
    ok = reply_to(forwarded, 200, "OK")
    callee.send(ok, node.sip_port)
    got = caller.recv()
    assert status_of(got) == 200, got
    assert got is not None and got.count(b"Via:") == 1 and f":{caller.port};".encode() in got
    callee.send(ok, node.sip_port)           # the callee's retransmission, too
    assert status_of(caller.recv()) == 200
    assert metric(node.metrics(), "hasip_sip_stray_responses_total",
                  'action="forwarded"') == 2


def test_ipv6(make_node, udp_peer) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        import pytest

        pytest.skip("no IPv6 loopback")
    callee = udp_peer("::1")
    node = make_node(next_hop=[f"sip:[::1]:{callee.port}"], host="::1")
    caller = udp_peer("::1")
    caller.send(invite(caller, f"sip:agent@[::1]:{node.sip_port}"), node.sip_port)
    assert status_of(caller.recv()) == 100
    forwarded = callee.recv()
    assert forwarded is not None and forwarded.startswith(
        f"INVITE sip:agent@[::1]:{callee.port} SIP/2.0".encode())
    assert f"Via: SIP/2.0/UDP [::1]:{node.sip_port};branch=z9hG4bK".encode() in forwarded


def test_request_for_another_domain_is_relayed(make_node, udp_peer) -> None:
    """127.0.0.2 is not one of the node's addresses: the request goes there."""
    other = udp_peer("127.0.0.2")
    node = make_node(next_hop=[])
    caller = udp_peer()
    caller.send(invite(caller, f"sip:someone@127.0.0.2:{other.port}"), node.sip_port)
    assert status_of(caller.recv()) == 100
    got = other.recv()
    assert got is not None and got.startswith(f"INVITE sip:someone@127.0.0.2:{other.port}".encode())
    assert f"Record-Route: <sip:127.0.0.1:{node.sip_port};lr;hsd=".encode() in got
    other.send(reply_to(got, 404, "Not Found"), node.sip_port, "127.0.0.1")
    assert status_of(caller.recv()) == 404


def test_strict_router_upstream_is_undone(make_node, udp_peer) -> None:
    """RFC 3261 16.4: a strict router put our Record-Route URI in the
    Request-URI and the remote target last in Route; we restore it."""
    callee = udp_peer()
    node = make_node(next_hop=[])
    caller = udp_peer()
    bye = invite(caller, f"sip:127.0.0.1:{node.sip_port};lr", method="BYE", to_tag="t1",
                 extra=f"Route: <sip:agent@127.0.0.1:{callee.port}>\r\n")
    caller.send(bye, node.sip_port)
    got = callee.recv()
    assert got is not None and got.startswith(f"BYE sip:agent@127.0.0.1:{callee.port} ".encode())
    assert b"\r\nRoute:" not in got
    callee.send(reply_to(got, 200, "OK"), node.sip_port)
    assert status_of(caller.recv()) == 200


def test_next_hop_that_is_a_strict_router(make_node, udp_peer) -> None:
    """RFC 3261 16.6 step 7: a next hop without ;lr gets the Request-URI."""
    router = udp_peer()
    node = make_node(next_hop=[])
    caller = udp_peer()
    bye = invite(caller, "sip:agent@192.0.2.9", method="BYE", to_tag="t1",
                 extra=f"Route: <sip:127.0.0.1:{node.sip_port};lr>, "
                       f"<sip:127.0.0.1:{router.port}>\r\n")
    caller.send(bye, node.sip_port)
    got = router.recv()
    assert got is not None
    assert got.startswith(f"BYE sip:127.0.0.1:{router.port} SIP/2.0".encode())
    assert b"Route: <sip:agent@192.0.2.9>" in got


def test_tcp_connection_to_a_next_hop_is_reused(make_node, udp_peer) -> None:
    """Three calls to a TCP next hop travel on one connection, and the
    answers that come back on it reach the callers."""
    import socket as socketmod

    from hasip.sip.framing import StreamFramer

    server = socketmod.socket(socketmod.AF_INET, socketmod.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(5)
    port = server.getsockname()[1]
    node = make_node(next_hop=[f"sip:127.0.0.1:{port};transport=tcp"])
    callers = [udp_peer() for _ in range(3)]
    for caller in callers:
        start_invite(caller, node)
    conn, _ = server.accept()
    conn.settimeout(5)
    framer = StreamFramer()
    received: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(received) < 3 and time.monotonic() < deadline:
        received += framer.feed(conn.recv(65535))
    assert len(received) == 3 and all(m.startswith(b"INVITE ") for m in received)
    assert b";transport=tcp;lr;hsd=" in received[0]  # double Record-Route: UDP in, TCP out
    server.settimeout(0.5)
    try:
        server.accept()
        extra_connection = True
    except TimeoutError:
        extra_connection = False
    assert not extra_connection
    for message in received:
        conn.sendall(reply_to(message, 486, "Busy Here"))
    statuses = sorted(status_of(c.recv()) for c in callers)
    assert statuses == [486, 486, 486]
    conn.close()
    server.close()


def test_unreachable_tcp_next_hop_gives_503_at_once(make_node, udp_peer) -> None:
    """RFC 3261 16.9: a transport error counts as a 503 from that branch."""
    closed = free_port()
    node = make_node(next_hop=[f"sip:127.0.0.1:{closed};transport=tcp"])
    caller = udp_peer()
    started = time.monotonic()
    caller.send(invite(caller, f"sip:agent@127.0.0.1:{node.sip_port}"), node.sip_port)
    statuses = []
    while (msg := caller.recv(3.0)) is not None:
        statuses.append(status_of(msg))
        if statuses[-1] and statuses[-1] >= 200:
            break
    assert statuses[-1] == 503
    assert time.monotonic() - started < 2.0  # not after timer B


def test_timer_c_cancels_a_branch_that_rings_too_long(make_node, udp_peer) -> None:
    """RFC 3261 16.8: no final answer within timers.invite_final after a
    provisional one: the proxy CANCELs the branch; its 408 sends the call to
    the next node, and with none left the caller gets 503."""
    callee = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"], timers={"invite_final": 1.0})
    caller = udp_peer()
    forwarded = start_invite(caller, node, callee)
    started = time.monotonic()
    callee.send(reply_to(forwarded, 180, "Ringing"), node.sip_port)
    assert status_of(caller.recv()) == 180
    cancel = callee.recv(3.0)
    assert cancel is not None and cancel.startswith(b"CANCEL ")
    assert 0.9 <= time.monotonic() - started < 2.5
    assert status_of(caller.recv(3.0)) == 503
    callee.send(reply_to(cancel, 200, "OK"), node.sip_port)  # the CANCEL's own answer
    callee.send(reply_to(forwarded, 487, "Request Terminated"), node.sip_port)
    ack = callee.recv()
    assert ack is not None and ack.startswith(b"ACK ")  # the 487 is ACKed hop by hop
    # ... and not relayed: the caller already has its 503 (which the node
    # retransmits until ACKed: that is allowed, a 487 is not).
    assert 487 not in [status_of(m) for m in caller.recv_all(0.6)]


def test_one_final_answer_only(make_node, udp_peer) -> None:
    """A request the proxy cannot route gets exactly one final answer."""
    node = make_node(next_hop=[])
    peer = udp_peer()
    peer.send(invite(peer, "mailto:x@example.com"), node.sip_port)
    finals = [status_of(m) for m in peer.recv_all(0.4) if (status_of(m) or 0) >= 200]
    assert finals[0] == 416
    text = node.metrics()
    assert metric(text, "hasip_sip_responses_sent_total", 'code="416"') == 1
    assert metric(text, "hasip_sip_responses_sent_total", 'code="503"') == 0
