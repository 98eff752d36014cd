"""The dispatcher and the calls in progress: active calls per node from the
dialog tracker (least_calls, maxload), a slow node, draining a removed
node, the per-node socket, dialogs that never end."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hasip.demo import SCENARIOS
from hasip.demo.sipp import wait_for_stats
from tests.e2e.conftest import invite, metric, metric_total, reply_to, status_of
from tests.e2e.test_dispatcher import _answerers, ctl


def _active(node, port: int, text: str | None = None) -> float:
    return metric(text or node.metrics(), "hasip_dispatcher_active_calls",
                  f'set="1",uri="sip:127.0.0.1:{port}"')


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _slow_scenario(tmp_path: Path, answer_after_ms: int) -> str:
    """uas.xml that rings for ``answer_after_ms`` before it answers."""
    text = (SCENARIOS / "uas.xml").read_text()
    slow = text.replace('<recv request="CANCEL" timeout="10" ontimeout="answer"/>',
                        f'<recv request="CANCEL" timeout="{answer_after_ms}" '
                        'ontimeout="answer"/>')
    assert slow != text
    path = tmp_path / "uas_slow.xml"
    path.write_text(slow)
    return str(path)


def test_active_calls_are_counted_per_node_and_released(make_node, sipp) -> None:
    """Long calls: each node's active-call gauge matches the calls it holds;
    they fall to zero when the calls end (BYE), and the dialogs are counted."""
    nodes = _answerers(sipp, 2)
    node = make_node(next_hop=[f"sip:127.0.0.1:{a.port}" for a in nodes])
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=10, rate=20,
                  call_length_ms=3000)
    assert _wait(lambda: metric(node.metrics(), "hasip_dialogs", 'state="confirmed"') == 10, 5)
    text = node.metrics()
    assert [_active(node, a.port, text) for a in nodes] == [5, 5]
    assert caller.wait(30) == 0, caller.errors()
    text = node.metrics()
    assert [_active(node, a.port, text) for a in nodes] == [0, 0]
    assert metric(text, "hasip_dialogs", 'state="confirmed"') == 0
    assert metric(text, "hasip_dialogs_ended_total", 'reason="bye"') == 10


def test_slow_node_gets_fewer_calls_with_least_calls_and_none_fails(make_node, sipp,
                                                                     tmp_path) -> None:
    """A node that rings 1.5 s before it answers holds its calls longer: the
    least-calls algorithm sends it fewer; every call completes, none fails
    over (it rings, so it is alive)."""
    fast = _answerers(sipp, 2)
    slow = sipp(_slow_scenario(tmp_path, 1500))
    wait_for_stats(slow)
    nodes = [*fast, slow]
    node = make_node(next_hop=[f"sip:127.0.0.1:{a.port}" for a in nodes],
                     dispatcher={"algorithm": "least_calls"})
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=90, rate=30,
                  call_length_ms=1000)
    assert caller.wait(60) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 90
    text = node.metrics()
    sent = [metric(text, "hasip_dispatcher_requests_sent_total",
                   f'set="1",uri="sip:127.0.0.1:{a.port}"') for a in nodes]
    assert sum(sent) == 90
    # balanced active calls: a node's share goes with 1 / (call time on it):
    # about 1 s on the fast ones, 2.5 s on the slow one (round-robin: 30 each)
    assert sent[2] < 0.7 * min(sent[:2]), sent
    assert metric_total(text, "hasip_dispatcher_failovers_total") == 0


def test_maxload_caps_a_node_and_a_full_set_answers_503(make_node, sipp, udp_peer) -> None:
    capped, other = _answerers(sipp, 2)
    node = make_node(dispatcher={"destinations": [
        f"1 sip:127.0.0.1:{capped.port} 0 0 maxload=2", f"1 sip:127.0.0.1:{other.port}"]})
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=10, rate=20,
                  call_length_ms=3000)
    assert _wait(lambda: metric(node.metrics(), "hasip_dialogs", 'state="confirmed"') == 10, 5)
    assert _active(node, capped.port) == 2
    assert caller.wait(30) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 10
    text = node.metrics()
    assert [metric(text, "hasip_dispatcher_requests_sent_total",
                   f'set="1",uri="sip:127.0.0.1:{a.port}"') for a in (capped, other)] == [2, 8]

    # one node, one call allowed: the second caller gets 503 while the first talks
    hop = udp_peer()
    single = make_node(dispatcher={"destinations": [f"1 sip:127.0.0.1:{hop.port} 0 0 maxload=1"]})
    first, second = udp_peer(), udp_peer()
    first.send(invite(first, f"sip:queue@127.0.0.1:{single.sip_port}"), single.sip_port)
    got = hop.recv(2.0)
    assert got is not None and got.startswith(b"INVITE ")
    hop.send(reply_to(got, 180, "Ringing"), single.sip_port)
    second.send(invite(second, f"sip:queue@127.0.0.1:{single.sip_port}"), single.sip_port)
    answers = second.recv_all(1.0)
    assert 503 in [status_of(m) for m in answers]
    assert not [m for m in hop.recv_all(0.3) if m.startswith(b"INVITE ")]


def test_removed_node_finishes_its_calls(make_node, sipp) -> None:
    """`hasip dispatcher remove` during calls: the node takes no new call, its
    calls run to their BYE, it is listed as draining until they end."""
    nodes = _answerers(sipp, 2)
    node = make_node(next_hop=[f"sip:127.0.0.1:{a.port}" for a in nodes])
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=20, rate=10,
                  call_length_ms=2500)
    gone = nodes[0]
    uri = f"sip:127.0.0.1:{gone.port}"
    assert _wait(lambda: _active(node, gone.port) >= 3, 5)
    rc, out, err = ctl(node, "remove", "1", uri)
    assert rc == 0, err
    rc, out, err = ctl(node, "list", "--json")
    assert rc == 0, err
    entry = next(e for e in json.loads(out) if e["uri"] == uri)
    assert entry["draining"] and entry["active_calls"] >= 3
    sent_before = metric(node.metrics(), "hasip_dispatcher_requests_sent_total",
                         f'set="1",uri="{uri}"')
    assert caller.wait(40) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 20            # nothing dropped
    # its calls ended normally (BYE), and it got no new one after removal
    text = node.metrics()
    sent = [metric(text, "hasip_dispatcher_requests_sent_total",
                   f'set="1",uri="sip:127.0.0.1:{a.port}"') for a in nodes]
    assert sent[0] == sent_before and sum(sent) == 20
    assert metric(node.metrics(), "hasip_dialogs_ended_total", 'reason="bye"') == 20
    rc, out, _ = ctl(node, "list", "--json")
    assert all(e["uri"] != uri for e in json.loads(out))        # drained


def test_node_socket_attribute_sends_from_that_address(make_node, udp_peer) -> None:
    """``socket=udp:127.0.0.3:PORT``: calls and probes to that node leave from
    our second address (Via, Record-Route and the packet's source)."""
    asterisk = udp_peer()
    node = make_node(
        sip={"listen": ["udp:127.0.0.1:{port}", "udp:127.0.0.3:{port}"]},
        dispatcher={"destinations": [
            f"1 sip:127.0.0.1:{asterisk.port} 0 0 socket=udp:127.0.0.3:{{port}}"],
            "probe_interval": 0.5})
    caller = udp_peer()
    caller.send(invite(caller, f"sip:queue@127.0.0.1:{node.sip_port}"), node.sip_port)
    asterisk.sock.settimeout(2.0)
    seen = {}
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not {"INVITE", "OPTIONS"} <= set(seen):
        data, addr = asterisk.sock.recvfrom(65536)
        seen.setdefault(data.split(b" ", 1)[0].decode(), (data, addr))
    for method in ("INVITE", "OPTIONS"):
        data, addr = seen[method]
        assert addr == ("127.0.0.3", node.sip_port), method
        assert f"Via: SIP/2.0/UDP 127.0.0.3:{node.sip_port}".encode() in data, method
    invite_data = seen["INVITE"][0]
    assert f"<sip:127.0.0.3:{node.sip_port};lr;hsd=".encode() in invite_data
    assert f"<sip:127.0.0.1:{node.sip_port};lr;hsd=".encode() in invite_data   # double RR


def test_dialog_without_bye_times_out_and_frees_its_node(make_node, sipp) -> None:
    nodes = _answerers(sipp, 1)
    node = make_node(next_hop=[f"sip:127.0.0.1:{nodes[0].port}"], dialog={"timeout": 1.0})
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=1, rate=1,
                  call_length_ms=4000)
    assert _wait(lambda: _active(node, nodes[0].port) == 1, 3)
    assert _wait(lambda: metric(node.metrics(), "hasip_dialogs_ended_total",
                                'reason="timeout"') == 1, 4)
    assert _active(node, nodes[0].port) == 0
    assert caller.wait(20) == 0, caller.errors()   # the BYE still follows Record-Route
