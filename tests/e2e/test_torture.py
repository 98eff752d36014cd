"""A node fed the 49 RFC 4475 torture messages over UDP and TCP answers the
invalid requests with 4xx/5xx, never crashes, and keeps serving calls."""

from __future__ import annotations

import socket

import pytest

from hasip.demo.node import options_ping
from hasip.demo.sipp import wait_for_stats
from tests import rfc4475
from tests.e2e.conftest import status_of
from tests.e2e.test_calls import metric

RESPONSES = {"scalarlg.dat", "bigcode.dat", "unreason.dat", "noreason.dat", "bcast.dat"}


def _call_through(sipp, node, uas_port: int) -> None:
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=5, rate=10)
    assert caller.wait(60) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 5


def test_torture_over_udp(make_node, sipp, udp_peer) -> None:
    rfc4475.require()
    uas = sipp("uas.xml")
    wait_for_stats(uas)
    node = make_node(next_hop=[f"sip:127.0.0.1:{uas.port}"])
    answers: dict[str, list[int | None]] = {}
    for name, _, _kind in rfc4475.manifest():
        peer = udp_peer()
        peer.send(rfc4475.read(name), node.sip_port)
        answers[name] = [status_of(m) for m in peer.recv_all(0.3)]
        peer.close()
        assert node.alive(), f"node died on {name}"
    for name, _, kind in rfc4475.manifest():
        if kind == "invalid" and name not in RESPONSES:
            finals = [s for s in answers[name] if s and s >= 400]
            assert finals and 400 <= finals[0] < 600, f"{name}: {answers[name]}"
        if name in RESPONSES:
            assert answers[name] == [], f"{name}: a response must not be answered"
    assert answers["insuf.dat"][-1] == 400
    assert answers["badvers.dat"][-1] == 505
    # Well-formed requests are answered along their Via (no rport: port 5060
    # of the source address), so count the answers at the node instead.
    text = node.metrics()
    for code in (483, 420, 416):  # zeromf, bext01, unkscm/novelsc
        assert metric(text, "hasip_sip_responses_sent_total", f'code="{code}"') >= 1, code
    assert "message_handling_failed" not in node.log()
    answer = options_ping("127.0.0.1", node.sip_port)
    assert answer is not None and answer.startswith(b"SIP/2.0 200")
    _call_through(sipp, node, uas.port)


def test_torture_over_tcp(make_node, sipp) -> None:
    rfc4475.require()
    uas = sipp("uas.xml")
    wait_for_stats(uas)
    node = make_node(next_hop=[f"sip:127.0.0.1:{uas.port}"])
    answered = 0
    for name, _, kind in rfc4475.manifest():
        data = rfc4475.read(name)
        with socket.create_connection(("127.0.0.1", node.sip_port), timeout=2) as conn:
            conn.sendall(data)
            conn.settimeout(0.3)
            try:
                reply = conn.recv(65535)
            except (TimeoutError, ConnectionResetError):
                reply = b""
        if kind == "invalid" and name not in RESPONSES and reply:
            status = status_of(reply)
            assert status is not None and 400 <= status < 600, name
            answered += 1
        assert node.alive(), f"node died on {name}"
    assert answered >= 10  # clerr waits for its body and ncl breaks framing; the rest answer
    assert "message_handling_failed" not in node.log()
    _call_through(sipp, node, uas.port)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_garbage_flood_is_survived(make_node, transport: str) -> None:
    """Bounded: 3,000 malformed packets in at most 20 s."""
    import random
    import time

    node = make_node()
    rng = random.Random(4475)
    deadline = time.monotonic() + 20
    sent = 0
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while sent < 3000 and time.monotonic() < deadline:
                junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
                prefix = rng.choice([b"", b"INVITE sip:a@b SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n"])
                sock.sendto(prefix + junk, ("127.0.0.1", node.sip_port))
                sent += 1
    else:
        while sent < 300 and time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", node.sip_port), timeout=2) as conn:
                conn.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2000))))
            sent += 1
    answer = options_ping("127.0.0.1", node.sip_port, 2.0)
    assert answer is not None and answer.startswith(b"SIP/2.0 200")
    assert node.alive()
    assert "message_handling_failed" not in node.log()
