"""The dispatcher in the route (issue 4, first part): failover to the next
node on timeouts and server errors, the callee's own answers passed back,
passive health detection, no loop for calls back from Asterisk."""

from __future__ import annotations

import time

from hasip.demo.sipp import wait_for_stats
from tests.e2e.conftest import (
    free_port,
    invite,
    metric,
    metric_total,
    reply_to,
    status_of,
)


def test_dead_node_calls_fail_over_and_it_leaves_rotation(make_node, sipp) -> None:
    alive = [sipp("uas.xml") for _ in range(2)]
    for a in alive:
        wait_for_stats(a)
    dead = free_port()
    hops = [f"sip:127.0.0.1:{alive[0].port}", f"sip:127.0.0.1:{dead}",
            f"sip:127.0.0.1:{alive[1].port}"]
    node = make_node(next_hop=hops, timers={"non_invite_final": 1.0})
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=30, rate=10)
    assert caller.wait(60) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 30   # no call lost
    for a in alive:
        a.stop()
    assert sum(a.counter("SuccessfulCall(C)") for a in alive) == 30
    text = node.metrics()
    assert metric(text, "hasip_dispatcher_state_changes_total", 'state="I"') == 1
    failovers = metric_total(text, "hasip_dispatcher_failovers_total")
    # every failover left the dead node
    assert metric(text, "hasip_dispatcher_failovers_total",
                  f'set="1",uri="sip:127.0.0.1:{dead}"') == failovers
    timeouts = metric(text, "hasip_sip_transaction_timeouts_total", 'method="INVITE"')
    # every call sent to it before three timeouts marked it inactive moved
    # on; after that it got none (round-robin alone would have sent it 10)
    assert failovers == timeouts
    assert 2 <= timeouts <= 6


def test_server_error_fails_over_but_busy_goes_back(make_node, udp_peer) -> None:
    first, second = udp_peer(), udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{first.port}", f"sip:127.0.0.1:{second.port}"])
    caller = udp_peer()
    # round-robin starts at the first node: it answers 503, the call moves on
    caller.send(invite(caller, f"sip:queue@127.0.0.1:{node.sip_port}"), node.sip_port)
    got = first.recv(2.0)
    assert got is not None and got.startswith(b"INVITE ")
    first.send(reply_to(got, 503, "Service Unavailable"), node.sip_port)
    moved = second.recv(2.0)
    assert moved is not None and moved.startswith(b"INVITE ")
    second.send(reply_to(moved, 200, "OK"), node.sip_port)
    statuses = [status_of(m) for m in caller.recv_all(1.0)]
    assert 200 in statuses and 503 not in statuses
    # the next call starts at the second node; its 486 is the callee's answer
    caller.send(invite(caller, f"sip:queue@127.0.0.1:{node.sip_port}"), node.sip_port)
    got = second.recv(2.0)
    while got is not None and not got.startswith(b"INVITE "):
        got = second.recv(2.0)
    assert got is not None
    second.send(reply_to(got, 486, "Busy Here"), node.sip_port)
    statuses = [status_of(m) for m in caller.recv_all(1.0)]
    assert 486 in statuses
    assert [m for m in first.recv_all(0.3) if m.startswith(b"INVITE ")] == []


def test_call_back_from_asterisk_for_an_unknown_user_is_not_looped(make_node,
                                                                   udp_peer) -> None:
    asterisk = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{asterisk.port}"])
    asterisk.send(invite(asterisk, f"sip:nobody@127.0.0.1:{node.sip_port}"), node.sip_port)
    statuses = [status_of(m) for m in asterisk.recv_all(1.0)]
    assert 404 in statuses
    assert all(not m.startswith(b"INVITE ") for m in asterisk.recv_all(0.2))


def test_probes_take_a_dead_node_out_within_two_seconds_and_back(make_node, sipp) -> None:
    """Default probing (every 0.5 s, 0.5 s timeout, 2 failures): a node that
    does not answer is out of rotation within 2 s without any call, and back
    once it answers again."""

    alive = sipp("uas.xml")
    wait_for_stats(alive)
    later = free_port()
    node = make_node(next_hop=[f"sip:127.0.0.1:{alive.port}", f"sip:127.0.0.1:{later}"],
                     dispatcher={"probe_interval": 0.5})
    started = time.monotonic()

    def up(port: int) -> float:
        return metric(node.metrics(), "hasip_dispatcher_destination_up",
                      f'set="1",uri="sip:127.0.0.1:{port}"')

    while time.monotonic() - started < 5 and up(later) == 1:
        time.sleep(0.1)
    assert up(later) == 0 and time.monotonic() - started < 2.5
    assert up(alive.port) == 1
    # every call goes to the live node, none waits on the dead one
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=10, rate=20)
    assert caller.wait(30) == 0, caller.errors()
    assert metric_total(node.metrics(), "hasip_dispatcher_failovers_total") == 0
    back = sipp("uas.xml", local_port=later)
    wait_for_stats(back)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and up(later) == 0:
        time.sleep(0.1)
    assert up(later) == 1
    text = node.metrics()
    assert metric(text, "hasip_dispatcher_probes_total", 'result="timeout"') >= 2
    assert metric(text, "hasip_dispatcher_probes_total", 'result="ok"') >= 1


def ctl(node, *args: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    # The node's own configuration: control.listen and control.token_file.
    res = subprocess.run([sys.executable, "-m", "hasip", "dispatcher", "-c",
                          str(node.config_path), *args], capture_output=True, text=True,
                         timeout=30)
    return res.returncode, res.stdout, res.stderr


def test_dispatcher_commands_change_a_running_node(make_node, sipp) -> None:
    """Add a node during a load: it takes calls within a probe interval;
    disable one: it gets no new calls; remove one; nothing restarted."""
    first, second = sipp("uas.xml"), sipp("uas.xml")
    for s in (first, second):
        wait_for_stats(s)
    node = make_node(next_hop=[f"sip:127.0.0.1:{first.port}"],
                     dispatcher={"probe_interval": 0.5})
    rc, out, _ = ctl(node, "list")
    assert rc == 0 and f"sip:127.0.0.1:{first.port}" in out and " AP " in out
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=120, rate=40)

    time.sleep(1.0)
    rc, out, err = ctl(node, "add", "1", f"sip:127.0.0.1:{second.port}",
                       "weight=1;description=ast2")
    assert rc == 0, err
    assert f"sip:127.0.0.1:{second.port}" in out and "ast2" in out
    assert caller.wait(60) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 120    # no call lost to the change
    second.stop()
    assert second.counter("SuccessfulCall(C)") >= 30     # it took its share at once
    rc, out, _ = ctl(node, "set-state", "1", f"sip:127.0.0.1:{first.port}", "disabled")
    assert rc == 0 and " DP " in out
    rc, _, err = ctl(node, "remove", "1", "sip:127.0.0.1:1")
    assert rc == 1 and "no destination sip:127.0.0.1:1 in set 1" in err
    rc, out, _ = ctl(node, "remove", "1", f"sip:127.0.0.1:{second.port}")
    assert rc == 0 and f"sip:127.0.0.1:{second.port}" not in out
    rc, _, err = ctl(node, "add", "1", "not-a-uri")
    assert rc == 1 and "malformed" in err.lower()
    rc, _, err = ctl(node, "reload")
    assert rc == 1 and "no dispatcher.list_file" in err


def test_reload_rereads_the_list_file_and_keeps_states(make_node, tmp_path) -> None:
    ds = tmp_path / "dispatcher.list"
    ds.write_text("1 sip:127.0.0.1:5999\n")
    node = make_node(dispatcher={"list_file": str(ds)})
    ds.write_text("1 sip:127.0.0.1:5999\n1 sip:127.0.0.1:5998 0 0 description=new\n")
    rc, out, _ = ctl(node, "reload")
    assert rc == 0 and "reloaded: 2 destinations" in out
    rc, out, _ = ctl(node, "list")
    assert "sip:127.0.0.1:5998" in out and "new" in out


def _answerers(sipp, n: int) -> list:
    nodes = [sipp("uas.xml") for _ in range(n)]
    for a in nodes:
        wait_for_stats(a)
    return nodes


def _shares(node, nodes) -> list[float]:
    text = node.metrics()
    return [metric(text, "hasip_dispatcher_requests_sent_total",
                   f'set="1",uri="sip:127.0.0.1:{a.port}"') for a in nodes]


def test_distribution_round_robin_weights_and_hashing(make_node, sipp) -> None:
    """Three answering nodes: round-robin even within 1 %, weights 50/30/20
    within a few percent; hashing on the R-URI user keeps a number on one node."""
    nodes = _answerers(sipp, 3)
    rr = make_node(next_hop=[f"sip:127.0.0.1:{a.port}" for a in nodes])
    caller = sipp("uac.xml", remote=f"127.0.0.1:{rr.sip_port}", calls=300, rate=100)
    assert caller.wait(60) == 0, caller.errors()
    assert _shares(rr, nodes) == [100, 100, 100]
    dests = [f"1 sip:127.0.0.1:{a.port} 0 0 weight={w}" for a, w in zip(nodes, (50, 30, 20),
                                                                          strict=True)]
    weighted = make_node(dispatcher={"algorithm": "weighted", "destinations": dests})
    caller = sipp("uac.xml", remote=f"127.0.0.1:{weighted.sip_port}", calls=300, rate=100)
    assert caller.wait(60) == 0, caller.errors()
    assert _shares(weighted, nodes) == [150, 90, 60]
    hashed = make_node(dispatcher={"algorithm": "hash_ruri", "destinations": dests})
    caller = sipp("uac.xml", remote=f"127.0.0.1:{hashed.sip_port}", calls=60, rate=60,
                  service="5551234")
    assert caller.wait(60) == 0, caller.errors()
    assert sorted(_shares(hashed, nodes)) == [0, 0, 60]   # one number, one node


def test_node_killed_mid_load_loses_no_call_and_comes_back(make_node, sipp) -> None:

    nodes = _answerers(sipp, 3)
    node = make_node(next_hop=[f"sip:127.0.0.1:{a.port}" for a in nodes],
                     timers={"non_invite_final": 1.0}, dispatcher={"probe_interval": 0.5})
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=300, rate=50)
    time.sleep(2.0)
    victim = nodes[1]
    victim.proc.kill()   # dies with no goodbye
    victim.proc.wait()
    assert caller.wait(60) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 300
    text = node.metrics()
    assert metric(text, "hasip_dispatcher_destination_up",
                  f'set="1",uri="sip:127.0.0.1:{victim.port}"') == 0
    back = sipp("uas.xml", local_port=victim.port)
    wait_for_stats(back)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and metric(
            node.metrics(), "hasip_dispatcher_destination_up",
            f'set="1",uri="sip:127.0.0.1:{victim.port}"') == 0:
        time.sleep(0.1)
    assert metric(node.metrics(), "hasip_dispatcher_destination_up",
                  f'set="1",uri="sip:127.0.0.1:{victim.port}"') == 1


def test_node_answering_options_but_not_invite_stays_out(make_node, sipp, udp_peer) -> None:
    """Probes alone would bring it back every half second; after calls failed
    on it, it stays out for dispatcher.hold_down."""
    import threading

    liar = udp_peer()
    stop = threading.Event()

    def answer_options_only() -> None:
        while not stop.is_set():
            msg = liar.recv(0.2)
            if msg is not None and msg.startswith(b"OPTIONS "):
                liar.send(reply_to(msg, 200, "OK"), sender[1], sender[0])

    good = _answerers(sipp, 1)[0]
    node = make_node(next_hop=[f"sip:127.0.0.1:{liar.port}", f"sip:127.0.0.1:{good.port}"],
                     timers={"non_invite_final": 1.0},
                     dispatcher={"probe_interval": 0.5, "hold_down": 30.0})
    sender = ("127.0.0.1", node.sip_port)
    thread = threading.Thread(target=answer_options_only, daemon=True)
    thread.start()
    try:
        caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=40, rate=10)
        assert caller.wait(60) == 0, caller.errors()
        assert caller.counter("SuccessfulCall(C)") == 40
        text = node.metrics()
        # two timeouts take it out (the calls sent to it in the first 1.2 s
        # fail over: about six, more on a loaded machine); it does not come
        # back while it answers probes (flapping would send it every other
        # call again: about twenty)
        failovers = metric_total(text, "hasip_dispatcher_failovers_total")
        up = metric(text, "hasip_dispatcher_destination_up",
                    f'set="1",uri="sip:127.0.0.1:{liar.port}"')
        assert failovers <= 9 and up == 0, (failovers, up)
        assert metric(text, "hasip_dispatcher_probes_total", 'result="ok"') >= 4
    finally:
        stop.set()
        thread.join(2)


def test_silent_node_fails_over_after_answer_timeout(make_node, sipp, udp_peer) -> None:
    """dispatcher.answer_timeout (1 s) instead of timer B (10 s): a node that
    does not answer at all costs a caller one second, not ten."""

    silent = udp_peer()
    good = _answerers(sipp, 1)[0]
    node = make_node(next_hop=[f"sip:127.0.0.1:{silent.port}", f"sip:127.0.0.1:{good.port}"],
                     dispatcher={"answer_timeout": 1.0})
    started = time.monotonic()
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=6, rate=10)
    assert caller.wait(30) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 6
    assert time.monotonic() - started < 6.0
    assert metric_total(node.metrics(), "hasip_dispatcher_failovers_total") >= 1


def _first_request(peer, method: str, timeout: float = 2.0) -> bytes | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = peer.recv(max(0.05, deadline - time.monotonic()))
        if msg is not None and msg.startswith(method.encode() + b" "):
            return msg
    return None


def _ring_then_cancel(caller, callee, invite_msg: bytes, target: str, branch: str,
                      call_id: str, port: int) -> list[int | None]:
    """``callee`` rings; the caller CANCELs; the CANCEL must reach the callee,
    which answers it and the INVITE (487). Returns the statuses the caller got."""
    callee.send(reply_to(invite_msg, 180, "Ringing"), port)
    time.sleep(0.2)
    caller.send(invite(caller, target, branch=branch, call_id=call_id, method="CANCEL"), port)
    cancel = _first_request(callee, "CANCEL")
    assert cancel is not None
    callee.send(reply_to(cancel, 200, "OK"), port)
    callee.send(reply_to(invite_msg, 487, "Request Terminated"), port)
    return [status_of(m) for m in caller.recv_all(1.0)]


def test_cancel_during_failover_is_honoured(make_node, udp_peer) -> None:
    """A CANCEL after the call moved to the next node cancels it there; a
    CANCEL while the first node still has it stops the failover: the caller
    gets 487 and no other node sees the call."""
    first, second = udp_peer(), udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{first.port}", f"sip:127.0.0.1:{second.port}"])
    caller = udp_peer()
    target = f"sip:queue@127.0.0.1:{node.sip_port}"

    # 1. moved to the second node (the first answered 503), then cancelled
    call_id, branch = "cancel-after-failover", "z9hG4bKcaf1"
    caller.send(invite(caller, target, branch=branch, call_id=call_id), node.sip_port)
    got = _first_request(first, "INVITE")
    assert got is not None
    first.send(reply_to(got, 503, "Service Unavailable"), node.sip_port)
    moved = _first_request(second, "INVITE")
    assert moved is not None
    statuses = _ring_then_cancel(caller, second, moved, target, branch, call_id, node.sip_port)
    assert 487 in statuses and 200 in statuses            # the CANCEL's 200, the INVITE's 487

    # 2. cancelled while the first node rings: its 487 goes back, no failover
    call_id, branch = "cancel-before-failover", "z9hG4bKcbf1"
    caller.send(invite(caller, target, branch=branch, call_id=call_id), node.sip_port)
    ringing, got = None, None
    deadline = time.monotonic() + 3
    while got is None and time.monotonic() < deadline:
        for peer in (first, second):
            msg = peer.recv(0.05)
            if msg is not None and msg.startswith(b"INVITE ") and call_id.encode() in msg:
                ringing, got = peer, msg
                break
    assert ringing is not None and got is not None
    statuses = _ring_then_cancel(caller, ringing, got, target, branch, call_id, node.sip_port)
    assert 487 in statuses
    other = second if ringing is first else first
    assert _first_request(other, "INVITE", 0.5) is None
    text = node.metrics()
    assert metric_total(text, "hasip_dispatcher_failovers_total") == 1   # only the first call's
    assert metric(text, "hasip_dialogs_ended_total", 'reason="cancelled"') == 2
