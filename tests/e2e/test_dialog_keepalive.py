"""In-dialog OPTIONS keepalives (dialog.keepalive_interval): both ends of a
confirmed call are asked inside the dialog; the end that answers 481 (or
stops answering) is gone, so the dialog ends (reason keepalive) and the
other end gets a BYE instead of holding a dead call until dialog.timeout."""

from __future__ import annotations

import time

from tests.e2e.conftest import UdpPeer, metric, reply_to, start_invite, status_of


def _next_request(peer: UdpPeer, method: str, timeout: float = 3.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = peer.recv(max(0.05, deadline - time.monotonic()))
        if msg is not None and msg.startswith(method.encode() + b" "):
            return msg
    raise AssertionError(f"no {method} within {timeout} s")


def _header(msg: bytes, name: str) -> str:
    for line in msg.split(b"\r\n"):
        if line.lower().startswith(name.lower().encode() + b":"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


def test_an_end_that_is_gone_ends_the_dialog_and_the_other_end_gets_a_bye(make_node,
                                                                         udp_peer) -> None:
    callee = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"],
                     dialog={"keepalive_interval": 0.3})
    caller = udp_peer()
    forwarded = start_invite(caller, node, callee)
    ok = reply_to(forwarded, 200, "OK",
                  extra=f"Contact: <sip:callee@127.0.0.1:{callee.port}>\r\n")
    callee.send(ok, node.sip_port)
    assert status_of(caller.recv()) == 200
    # both ends are asked inside the dialog, each as if by the other end
    to_callee = _next_request(callee, "OPTIONS")
    to_caller = _next_request(caller, "OPTIONS")
    assert to_callee.startswith(f"OPTIONS sip:callee@127.0.0.1:{callee.port} ".encode())
    assert to_caller.startswith(f"OPTIONS sip:caller@127.0.0.1:{caller.port} ".encode())
    assert _header(to_callee, "Call-ID") == _header(forwarded, "Call-ID")
    assert _header(to_callee, "From") == _header(forwarded, "From")        # caller's tag
    assert _header(to_caller, "To") == _header(forwarded, "From")
    assert "tag=uas1" in _header(to_callee, "To") and "tag=uas1" in _header(to_caller, "From")
    # the caller is there, the callee no longer knows the call
    caller.send(reply_to(to_caller, 200, "OK"), node.sip_port)
    callee.send(reply_to(to_callee, 481, "Call/Transaction Does Not Exist"), node.sip_port)
    bye = _next_request(caller, "BYE")
    assert bye.startswith(f"BYE sip:caller@127.0.0.1:{caller.port} ".encode())
    assert _header(bye, "To") == _header(forwarded, "From")
    text = node.metrics()
    assert metric(text, "hasip_dialogs_ended_total", 'reason="keepalive"') == 1
    assert metric(text, "hasip_dialogs", 'state="confirmed"') == 0
    assert metric(text, "hasip_dialog_keepalives_total", 'result="answered"') >= 1


def test_an_end_that_stops_answering_ends_the_dialog(make_node, udp_peer) -> None:
    callee = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{callee.port}"],
                     dialog={"keepalive_interval": 0.2, "keepalive_failures": 2})
    caller = udp_peer()
    forwarded = start_invite(caller, node, callee)
    callee.send(reply_to(forwarded, 200, "OK",
                         extra=f"Contact: <sip:callee@127.0.0.1:{callee.port}>\r\n"),
                node.sip_port)
    assert status_of(caller.recv()) == 200
    # the caller answers every keepalive, the callee none: after two silent
    # rounds the dialog ends and the caller gets the BYE
    deadline = time.monotonic() + 5
    bye = None
    while time.monotonic() < deadline and bye is None:
        msg = caller.recv(0.1)
        if msg is not None and msg.startswith(b"OPTIONS "):
            caller.send(reply_to(msg, 200, "OK"), node.sip_port)
        elif msg is not None and msg.startswith(b"BYE "):
            bye = msg
    assert bye is not None
    assert metric(node.metrics(), "hasip_dialogs_ended_total", 'reason="keepalive"') == 1
