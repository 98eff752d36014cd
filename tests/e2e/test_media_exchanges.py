"""Every SDP exchange of a relayed call, with raw user agents on loopback
and a real rtpengine (issue 15): hold and unhold by re-INVITE keep the
media on the relay, a late offer (SDP in the 2xx, answer in the ACK) is
relayed, a cancelled or refused call leaves no session in rtpengine's own
list, and when rtpengine is down or slow the configured policy decides
(the call goes on without relay, or 503)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hasip.sip.message import Response
from tests.e2e.conftest import free_port, metric
from tests.e2e.mediaua import Party, sdp_direction, sdp_media

CALLER, CALLEE = "127.0.0.5", "127.0.0.6"
RTPENGINE = "127.0.0.1"


@pytest.fixture
def parties() -> Iterator[tuple[Party, Party]]:
    caller, callee = Party(CALLER, "caller"), Party(CALLEE, "agent")
    yield caller, callee
    caller.close()
    callee.close()


def media_node(make_node, callee: Party, rtpengine_url: str, timers: dict | None = None,
               **media: object):
    return make_node(next_hop=[f"sip:{CALLEE}:{callee.sip.port}"], timers=timers or {},
                     media={"rtpengine": [rtpengine_url], "relay": "always", **media})


@dataclass
class Call:
    call_id: str
    uri: str              # the callee's Contact: in-dialog Request-URI
    to: str               # To with the callee's tag
    routes: list[str]     # the caller's route set
    caller_media: tuple[str, int] = ("", 0)   # where the caller sends RTP
    callee_media: tuple[str, int] = ("", 0)   # where the callee sends RTP


@dataclass
class Invite:
    call_id: str
    target: str
    branch: str     # a CANCEL and the ACK of a failure are sent with it


def send_invite(node, caller: Party, body: bytes | None = None) -> Invite:
    inv = Invite(uuid.uuid4().hex, f"sip:agent@127.0.0.1:{node.sip_port}",
                 "z9hG4bK" + uuid.uuid4().hex[:12])
    caller.send(caller.request("INVITE", inv.target, f"<{inv.target}>", inv.call_id, cseq=1,
                               body=caller.sdp() if body is None else body, branch=inv.branch),
                node.sip_port)
    return inv


def invite(node, caller: Party, callee: Party, body: bytes | None = None):
    """The caller's INVITE, and the request the callee got."""
    inv = send_invite(node, caller, body)
    return inv, callee.recv_request("INVITE")


def ack_failure(node, caller: Party, inv: Invite, failure: Response) -> None:
    caller.send(caller.request("ACK", inv.target, failure.get_str(b"to") or "", inv.call_id,
                               cseq=1, branch=inv.branch), node.sip_port)


def answer(node, caller: Party, callee: Party, inv: Invite, fwd, body: bytes | None = None
           ) -> tuple[Call, Response]:
    """The callee answers 200 (its SDP unless ``body``); the caller gets it."""
    callee.reply_to(fwd, 200, "OK", callee.sdp() if body is None else body)
    ok = caller.recv_response(200)
    routes = [v.strip() for v in reversed(ok.values(b"record-route"))]
    to = ok.get_str(b"to") or ""
    call = Call(inv.call_id, f"sip:agent@{CALLEE}:{callee.sip.port}", to, routes)
    return call, ok


def ack(node, caller: Party, callee: Party, call: Call, cseq: int, body: bytes = b""):
    """The caller's ACK of a 2xx; what reached the callee."""
    caller.send(caller.request("ACK", call.uri, call.to, call.call_id, cseq=cseq,
                               body=body, routes=call.routes), node.sip_port)
    return callee.recv_request("ACK")


def in_dialog(node, caller: Party, call: Call, method: str, body: bytes = b"") -> None:
    caller.send(caller.request(method, call.uri, call.to, call.call_id, body=body,
                               routes=call.routes), node.sip_port)


def hang_up(node, caller: Party, callee: Party, call: Call) -> None:
    """The caller's BYE, answered by the callee."""
    in_dialog(node, caller, call, "BYE")
    callee.reply_to(callee.recv_request("BYE"), 200, "OK")
    caller.recv_response(200)


def relayed(addr: tuple[str, int], rtpe, ip: str = RTPENGINE) -> bool:
    return addr[0] == ip and rtpe.port_min <= addr[1] < rtpe.port_min + 200


def audio_both_ways(caller: Party, callee: Party, call: Call, rtpe, count: int = 20,
                    ip: str = RTPENGINE) -> None:
    """RTP from each party to the address it was given arrives at the
    other, from rtpengine's ports on ``ip``."""
    caller.rtp_to(call.caller_media, count)
    got = callee.rtp_received()
    assert len(got) >= count * 0.9 and all(relayed(a, rtpe, ip) for a in got), got
    callee.rtp_to(call.callee_media, count)
    got = caller.rtp_received()
    assert len(got) >= count * 0.9 and all(relayed(a, rtpe, ip) for a in got), got


def wait_no_session(rtpe, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (calls := rtpe.calls()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return calls


def test_hold_and_unhold_keep_media_through_the_relay(make_node, rtpengine, parties) -> None:
    caller, callee = parties
    rtpe = rtpengine()
    node = media_node(make_node, callee, rtpe.url)
    inv, fwd = invite(node, caller, callee)
    call, ok = answer(node, caller, callee, inv, fwd)
    call.callee_media, call.caller_media = sdp_media(fwd.body), sdp_media(ok.body)
    assert relayed(call.callee_media, rtpe) and relayed(call.caller_media, rtpe)
    # a retransmission of the 2xx (before the ACK) is answered again:
    # rtpengine gives the same SDP
    callee.reply_to(fwd, 200, "OK", callee.sdp())
    again = caller.recv_response(200)
    assert again.body == ok.body
    ack(node, caller, callee, call, 1)
    audio_both_ways(caller, callee, call, rtpe)
    # hold: the caller offers sendonly; the callee sees it on the relay
    in_dialog(node, caller, call, "INVITE", caller.sdp("sendonly", 2))
    held = callee.recv_request("INVITE")
    assert sdp_direction(held.body) == "sendonly" and relayed(sdp_media(held.body), rtpe)
    callee.reply_to(held, 200, "OK", callee.sdp("recvonly", 2))
    ok = caller.recv_response(200)
    assert sdp_direction(ok.body) == "recvonly" and sdp_media(ok.body) == call.caller_media
    ack(node, caller, callee, call, caller.cseq)
    # unhold: both ways again, through the same relay ports
    in_dialog(node, caller, call, "INVITE", caller.sdp("sendrecv", 3))
    unheld = callee.recv_request("INVITE")
    assert sdp_direction(unheld.body) == "sendrecv"
    assert sdp_media(unheld.body) == call.callee_media
    callee.reply_to(unheld, 200, "OK", callee.sdp("sendrecv", 3))
    ok = caller.recv_response(200)
    assert sdp_media(ok.body) == call.caller_media
    ack(node, caller, callee, call, caller.cseq)
    audio_both_ways(caller, callee, call, rtpe)
    assert rtpe.calls() == [call.call_id]
    hang_up(node, caller, callee, call)
    assert wait_no_session(rtpe) == []
    text = node.metrics()
    assert metric(text, "hasip_media_requests_total",
                  f'command="offer",result="ok",rtpengine="{rtpe.url}"') == 3
    assert metric(text, "hasip_media_requests_total",
                  f'command="answer",result="ok",rtpengine="{rtpe.url}"') == 4


def test_late_offer_in_the_2xx_answered_in_the_ack(make_node, rtpengine, parties) -> None:
    caller, callee = parties
    rtpe = rtpengine()
    # T1 of 50 ms: the INVITE's client transaction ends 3.2 s after its 2xx
    node = media_node(make_node, callee, rtpe.url, timers={"t1": 0.05})
    inv, fwd = invite(node, caller, callee, body=b"")
    assert not fwd.body
    call, ok = answer(node, caller, callee, inv, fwd)    # the callee offers
    call.caller_media = sdp_media(ok.body)
    assert relayed(call.caller_media, rtpe)
    # the 2xx again once its transaction has ended (relayed statelessly,
    # as after a takeover): the same rewritten offer, not the callee's own
    time.sleep(3.6)
    callee.reply_to(fwd, 200, "OK", callee.sdp())
    assert caller.recv_response(200).body == ok.body
    assert metric(node.metrics(), "hasip_sip_stray_responses_total",
                  'action="forwarded"') == 1
    acked = ack(node, caller, callee, call, 1, caller.sdp())   # the caller answers
    call.callee_media = sdp_media(acked.body)
    assert relayed(call.callee_media, rtpe)
    audio_both_ways(caller, callee, call, rtpe)
    hang_up(node, caller, callee, call)
    assert wait_no_session(rtpe) == []


def test_cancelled_and_refused_calls_leave_no_session(make_node, rtpengine, parties) -> None:
    caller, callee = parties
    rtpe = rtpengine()
    node = media_node(make_node, callee, rtpe.url)
    # busy: 486, ACKed by the proxy
    inv, fwd = invite(node, caller, callee)
    assert rtpe.calls() == [inv.call_id]
    callee.reply_to(fwd, 486, "Busy Here")
    ack_failure(node, caller, inv, caller.recv_response(486))
    assert callee.recv_request("ACK") is not None
    assert wait_no_session(rtpe) == []
    # cancelled while ringing: CANCEL, 200, 487
    inv, fwd = invite(node, caller, callee)
    callee.reply_to(fwd, 180, "Ringing")
    caller.recv_response(180)
    assert rtpe.calls() == [inv.call_id]
    caller.send(caller.request("CANCEL", inv.target, f"<{inv.target}>", inv.call_id, cseq=1,
                               branch=inv.branch), node.sip_port)
    caller.recv_response(200)
    callee.reply_to(callee.recv_request("CANCEL"), 200, "OK")
    callee.reply_to(fwd, 487, "Request Terminated")
    ack_failure(node, caller, inv, caller.recv_response(487))
    assert wait_no_session(rtpe) == []
    text = node.metrics()
    assert metric(text, "hasip_media_requests_total",
                  f'command="delete",result="ok",rtpengine="{rtpe.url}"') == 2


def test_rtpengine_down_calls_go_on_without_relay(make_node, parties) -> None:
    """media.on_failure = continue: nobody answers on the ng port; the call
    is relayed with its own SDP, logged and counted for an alert."""
    caller, callee = parties
    dead = f"udp:127.0.0.1:{free_port()}"
    node = media_node(make_node, callee, dead, on_failure="continue", timeout=0.4,
                      retransmit=0.1)
    started = time.monotonic()
    inv, fwd = invite(node, caller, callee)
    waited = time.monotonic() - started
    assert sdp_media(fwd.body) == (CALLER, caller.rtp_port)          # untouched
    call, ok = answer(node, caller, callee, inv, fwd)
    assert sdp_media(ok.body) == (CALLEE, callee.rtp_port)
    ack(node, caller, callee, call, 1)
    print(f"INVITE reached the callee {waited * 1000:.0f} ms after it was sent")
    assert waited < 2.0
    hang_up(node, caller, callee, call)
    text = node.metrics()
    assert metric(text, "hasip_media_calls_total", 'decision="unrelayed"') == 1
    assert metric(text, "hasip_media_failures_total", 'command="offer"') == 1
    assert "event=media_relay_failed command=offer" in node.log()


def test_rtpengine_slow_calls_refused_with_503(make_node, rtpengine, parties) -> None:
    """media.on_failure = reject: rtpengine stopped (SIGSTOP: it takes the
    requests and answers none) gets the caller a 503 with Retry-After; once
    it runs again it is not left holding the refused call's session."""
    caller, callee = parties
    rtpe = rtpengine()
    node = media_node(make_node, callee, rtpe.url, on_failure="reject", timeout=0.5,
                      retransmit=0.1)
    assert rtpe.proc is not None
    os.kill(rtpe.proc.pid, signal.SIGSTOP)
    try:
        inv = send_invite(node, caller)
        refused = caller.recv_response(503, timeout=5.0)
        assert refused.get(b"retry-after") == b"5"
        assert callee.recv(0.5) is None                       # never offered to anyone
    finally:
        os.kill(rtpe.proc.pid, signal.SIGCONT)
    ack_failure(node, caller, inv, refused)
    assert wait_no_session(rtpe) == []
    text = node.metrics()
    assert metric(text, "hasip_media_calls_total", 'decision="rejected"') == 1


def test_by_the_seed_rule_a_call_without_nat_is_not_relayed(make_node, rtpengine,
                                                            parties) -> None:
    """media.relay = nat (the default): neither party behind NAT, so the
    media goes end to end and rtpengine is not asked."""
    caller, callee = parties
    rtpe = rtpengine()
    node = media_node(make_node, callee, rtpe.url, relay="nat")
    inv, fwd = invite(node, caller, callee)
    assert sdp_media(fwd.body) == (CALLER, caller.rtp_port)
    call, ok = answer(node, caller, callee, inv, fwd)
    assert sdp_media(ok.body) == (CALLEE, callee.rtp_port)
    assert rtpe.calls() == []
    ack(node, caller, callee, call, 1)
    hang_up(node, caller, callee, call)
    text = node.metrics()
    assert metric(text, "hasip_media_calls_total", 'decision="relayed"') == 0
    assert metric(text, "hasip_media_requests_total",
                  f'command="offer",result="ok",rtpengine="{rtpe.url}"') == 0


def test_media_on_the_interface_named_for_the_calls_socket(make_node, rtpengine,
                                                          parties) -> None:
    """media.interfaces: calls that came in on 127.0.0.1 have their media on
    rtpengine's interface "vip" (127.0.0.7), not on its first one."""
    caller, callee = parties
    rtpe = rtpengine(interfaces=("pub/127.0.0.1", "vip/127.0.0.7"))
    node = media_node(make_node, callee, rtpe.url, interfaces={"127.0.0.1": "vip"})
    inv, fwd = invite(node, caller, callee)
    call, ok = answer(node, caller, callee, inv, fwd)
    call.callee_media, call.caller_media = sdp_media(fwd.body), sdp_media(ok.body)
    assert relayed(call.callee_media, rtpe, "127.0.0.7"), call.callee_media
    assert relayed(call.caller_media, rtpe, "127.0.0.7"), call.caller_media
    ack(node, caller, callee, call, 1)
    audio_both_ways(caller, callee, call, rtpe, ip="127.0.0.7")
    hang_up(node, caller, callee, call)
    assert wait_no_session(rtpe) == []


def test_a_call_that_times_out_has_its_session_deleted(make_node, rtpengine, parties) -> None:
    """A dialog nobody hung up (dialog.timeout) ends, and so does its media
    session: rtpengine is not left with it."""
    caller, callee = parties
    rtpe = rtpengine()
    node = make_node(next_hop=[f"sip:{CALLEE}:{callee.sip.port}"], dialog={"timeout": 2.0},
                     media={"rtpengine": [rtpe.url], "relay": "always"})
    inv, fwd = invite(node, caller, callee)
    call, _ = answer(node, caller, callee, inv, fwd)
    ack(node, caller, callee, call, 1)
    assert rtpe.calls() == [call.call_id]
    assert wait_no_session(rtpe, timeout=6.0) == []
    assert "event=dialog_timeout" in node.log()


def test_a_call_cancelled_while_its_offer_is_out_leaves_no_session(make_node, rtpengine,
                                                                   parties) -> None:
    """The caller cancels while rtpengine has not answered the offer yet
    (it is stopped for a moment): the caller gets its 487, the callee
    never hears of the call, and the session the late offer made is
    deleted."""
    caller, callee = parties
    rtpe = rtpengine()
    node = media_node(make_node, callee, rtpe.url, timeout=3.0)
    assert rtpe.proc is not None
    os.kill(rtpe.proc.pid, signal.SIGSTOP)
    try:
        inv = send_invite(node, caller)
        time.sleep(0.3)
        caller.send(caller.request("CANCEL", inv.target, f"<{inv.target}>", inv.call_id,
                                   cseq=1, branch=inv.branch), node.sip_port)
        answers = [caller.recv(3.0), caller.recv(3.0)]
    finally:
        os.kill(rtpe.proc.pid, signal.SIGCONT)
    by_method = {a.cseq[1]: a.status for a in answers if isinstance(a, Response)}
    assert by_method == {"CANCEL": 200, "INVITE": 487}, answers
    terminated = next(a for a in answers if isinstance(a, Response) and a.status == 487)
    ack_failure(node, caller, inv, terminated)
    assert callee.recv(1.0) is None
    assert wait_no_session(rtpe) == []
    assert "event=media_offer_outlived_call" in node.log()


def test_update_offers_within_the_call(make_node, rtpengine, parties) -> None:
    """An UPDATE with SDP (RFC 3311) in a confirmed call is offered, its
    200 answered, on the call's relay ports."""
    caller, callee = parties
    rtpe = rtpengine()
    node = media_node(make_node, callee, rtpe.url)
    inv, fwd = invite(node, caller, callee)
    call, ok = answer(node, caller, callee, inv, fwd)
    call.callee_media, call.caller_media = sdp_media(fwd.body), sdp_media(ok.body)
    ack(node, caller, callee, call, 1)
    in_dialog(node, caller, call, "UPDATE", caller.sdp("sendrecv", 2))
    update = callee.recv_request("UPDATE")
    assert sdp_media(update.body) == call.callee_media
    callee.reply_to(update, 200, "OK", callee.sdp("sendrecv", 2))
    ok = caller.recv_response(200)
    assert sdp_media(ok.body) == call.caller_media
    audio_both_ways(caller, callee, call, rtpe)
    hang_up(node, caller, callee, call)
    assert wait_no_session(rtpe) == []
    text = node.metrics()
    assert metric(text, "hasip_media_requests_total",
                  f'command="offer",result="ok",rtpengine="{rtpe.url}"') == 2


def test_late_offer_in_a_reliable_183_answered_in_the_prack(make_node, rtpengine,
                                                            parties) -> None:
    """RFC 3262: an INVITE without SDP, a reliable 183 that offers, the
    PRACK that answers; both go through the relay, then the call has audio."""
    caller, callee = parties
    rtpe = rtpengine()
    node = media_node(make_node, callee, rtpe.url)
    inv, fwd = invite(node, caller, callee, body=b"")
    head = callee.answer(fwd, 183, "Session Progress", callee.sdp())
    head = head.replace(b"Content-Type:", b"Require: 100rel\r\nRSeq: 1\r\nContent-Type:", 1)
    via = fwd.top_via
    callee.send(head, int(via.port or 5060), via.host)
    progress = caller.recv_response(183)
    call = Call(inv.call_id, f"sip:agent@{CALLEE}:{callee.sip.port}",
                progress.get_str(b"to") or "",
                [v.strip() for v in reversed(progress.values(b"record-route"))])
    call.caller_media = sdp_media(progress.body)
    assert relayed(call.caller_media, rtpe)
    prack = caller.request("PRACK", call.uri, call.to, call.call_id, body=caller.sdp(),
                           routes=call.routes)
    prack = prack.replace(b"Content-Type:", b"RAck: 1 1 INVITE\r\nContent-Type:", 1)
    caller.send(prack, node.sip_port)
    got = callee.recv_request("PRACK")
    call.callee_media = sdp_media(got.body)
    assert relayed(call.callee_media, rtpe)
    callee.reply_to(got, 200, "OK")
    caller.recv_response(200)
    callee.reply_to(fwd, 200, "OK")
    assert not caller.recv_response(200).body
    ack(node, caller, callee, call, 1)
    audio_both_ways(caller, callee, call, rtpe)
    hang_up(node, caller, callee, call)
    assert wait_no_session(rtpe) == []


def test_a_multipart_body_is_passed_on_not_taken_for_a_late_offer(make_node, rtpengine,
                                                                   parties) -> None:
    """An INVITE whose body is not plain SDP (multipart/mixed) is not
    relayed: its body goes on untouched and the 200's SDP is not offered to
    rtpengine as if the INVITE had none."""
    caller, callee = parties
    rtpe = rtpengine()
    node = media_node(make_node, callee, rtpe.url)
    body = (b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + caller.sdp()
            + b"\r\n--b1--\r\n")
    target = f"sip:agent@127.0.0.1:{node.sip_port}"
    call_id = uuid.uuid4().hex
    raw = caller.request("INVITE", target, f"<{target}>", call_id, cseq=1, body=body)
    raw = raw.replace(b"Content-Type: application/sdp\r\nContent-Length",
                      b"Content-Type: multipart/mixed;boundary=b1\r\nContent-Length", 1)
    caller.send(raw, node.sip_port)
    fwd = callee.recv_request("INVITE")
    assert fwd.body == body
    callee.reply_to(fwd, 200, "OK", callee.sdp())
    ok = caller.recv_response(200)
    assert sdp_media(ok.body) == (CALLEE, callee.rtp_port)
    assert rtpe.calls() == []
    assert metric(node.metrics(), "hasip_media_calls_total", 'decision="not_sdp"') == 1
