"""RFC 3261 section 16 on virtual time: messages and time steps in, the
exact messages the engine sends out (start line and destination, and the
headers that matter). The routing script is a plain forker
(tests/unit/enginelab.py), so what is tested is the engine's part:
forking and best-response selection (16.7), CANCEL (16.10), timer C (16.8),
503 on a transport error (16.9), loop detection (16.3), strict routing
(16.6 step 7), stray responses and retransmission absorption."""

from __future__ import annotations

import pytest

from hasip.app.config import Config, MetricsConfig
from hasip.proxy.routing import Router
from tests.unit.enginelab import (
    CALLEE_A,
    CALLEE_B,
    CALLER,
    Lab,
    Sent,
    answer,
    cancel_of,
    invite,
    lines,
)

A = "sip:agent@198.18.2.1:5060"
B = "sip:agent@198.18.2.2:5060"


def forked(lab: Lab) -> tuple[Sent, Sent]:
    out = lab.receive(invite())
    assert lines(out) == [("SIP/2.0 100 Trying", CALLER),
                          (f"INVITE {A} SIP/2.0", CALLEE_A),
                          (f"INVITE {B} SIP/2.0", CALLEE_B)]
    return out[1], out[2]


def test_forking_writes_our_via_and_decrements_max_forwards() -> None:
    lab = Lab([A, B])
    to_a, to_b = forked(lab)
    for sent in (to_a, to_b):
        vias = sent.header("via")
        assert vias[0].startswith("SIP/2.0/UDP 198.18.0.1:5060;branch=z9hG4bKhs")
        assert vias[1] == "SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKcaller1"
        assert sent.header("max-forwards") == ["69"]
    # Each branch has its own branch parameter (RFC 3261 16.6 step 8).
    assert to_a.header("via")[0] != to_b.header("via")[0]


# (answers of A, answers of B) -> the final answer upstream (16.7 step 6)
BEST = [
    (["486 Busy Here"], ["404 Not Found"], "486 Busy Here"),          # same class: first
    (["503 Service Unavailable"], ["404 Not Found"], "404 Not Found"),  # lowest class
    (["500 Server Error"], ["302 Moved Temporarily"], "302 Moved Temporarily"),
    (["503 Service Unavailable"], ["503 Service Unavailable"],
     "500 Server Internal Error"),                                     # 503 is not passed up
    (["404 Not Found"], ["484 Address Incomplete"], "484 Address Incomplete"),  # preferred 4xx
]


@pytest.mark.parametrize(("from_a", "from_b", "upstream"), BEST)
def test_best_response(from_a: list[str], from_b: list[str], upstream: str) -> None:
    lab = Lab([A, B])
    to_a, to_b = forked(lab)
    out: list[Sent] = []
    for status in from_a:
        out += lab.receive(answer(to_a, status, "a"), CALLEE_A)
    assert [s for s in out if s.to == CALLER] == []     # B still pending: nothing yet
    for status in from_b:
        out += lab.receive(answer(to_b, status, "b"), CALLEE_B)
    upstream_out = [s.first_line for s in out if s.to == CALLER]
    assert upstream_out == [f"SIP/2.0 {upstream}"]
    # Each non-2xx final was ACKed hop by hop by the client transaction.
    assert sorted(s.first_line.split()[0] + str(s.to) for s in out if s.to != CALLER) == [
        "ACK" + str(CALLEE_A), "ACK" + str(CALLEE_B)]


def test_6xx_cancels_the_other_branches_and_wins() -> None:
    lab = Lab([A, B])
    to_a, to_b = forked(lab)
    lab.receive(answer(to_b, "180 Ringing", "b"), CALLEE_B)
    out = lab.receive(answer(to_a, "603 Decline", "a"), CALLEE_A)
    assert lines(out) == [(f"ACK {A} SIP/2.0", CALLEE_A), (f"CANCEL {B} SIP/2.0", CALLEE_B)]
    out = lab.receive(answer(to_b, "487 Request Terminated", "b"), CALLEE_B)
    assert ("SIP/2.0 603 Decline", CALLER) in lines(out)
    assert ("SIP/2.0 487 Request Terminated", CALLER) not in lines(out)


def test_challenges_of_all_branches_are_aggregated() -> None:
    """16.7 step 7: a 401/407 upstream carries every branch's challenge."""
    lab = Lab([A, B])
    to_a, to_b = forked(lab)
    lab.receive(answer(to_a, "401 Unauthorized", "a",
                       'WWW-Authenticate: Digest realm="a", nonce="1"\n'), CALLEE_A)
    out = lab.receive(answer(to_b, "407 Proxy Authentication Required", "b",
                             'Proxy-Authenticate: Digest realm="b", nonce="2"\n'), CALLEE_B)
    up = [s for s in out if s.to == CALLER]
    assert [s.first_line for s in up] == ["SIP/2.0 401 Unauthorized"]
    assert up[0].header("www-authenticate") == ['Digest realm="a", nonce="1"']
    assert up[0].header("proxy-authenticate") == ['Digest realm="b", nonce="2"']


def test_2xx_is_relayed_and_cancels_the_others() -> None:
    lab = Lab([A, B])
    to_a, to_b = forked(lab)
    lab.receive(answer(to_a, "180 Ringing", "a"), CALLEE_A)
    lab.receive(answer(to_b, "180 Ringing", "b"), CALLEE_B)
    out = lab.receive(answer(to_a, "200 OK", "a"), CALLEE_A)
    assert lines(out) == [("SIP/2.0 200 OK", CALLER), (f"CANCEL {B} SIP/2.0", CALLEE_B)]
    up = out[0]
    assert up.header("via") == ["SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKcaller1"]
    # A second 2xx (from B, before its CANCEL landed) goes up too (16.7 step 5).
    out = lab.receive(answer(to_b, "200 OK", "b"), CALLEE_B)
    assert lines(out) == [("SIP/2.0 200 OK", CALLER)]


def test_cancel_is_answered_and_reaches_each_branch_after_its_provisional() -> None:
    lab = Lab([A, B])
    to_a, to_b = forked(lab)
    lab.receive(answer(to_a, "180 Ringing", "a"), CALLEE_A)
    out = lab.receive(cancel_of(invite()))
    # 16.10: 200 for the CANCEL; CANCEL to A (rang); B has sent nothing: not yet (9.1).
    assert lines(out) == [("SIP/2.0 200 OK", CALLER), (f"CANCEL {A} SIP/2.0", CALLEE_A)]
    cancel_a = out[1]
    assert cancel_a.header("via") == [to_a.header("via")[0]]   # the INVITE's branch
    out = lab.receive(answer(to_b, "100 Trying", ""), CALLEE_B)
    assert lines(out) == [(f"CANCEL {B} SIP/2.0", CALLEE_B)]
    lab.receive(answer(to_a, "487 Request Terminated", "a"), CALLEE_A)
    out = lab.receive(answer(to_b, "487 Request Terminated", "b"), CALLEE_B)
    assert ("SIP/2.0 487 Request Terminated", CALLER) in lines(out)
    assert lab.fork is not None and lab.fork.finals == [487]


def test_cancel_before_any_branch_answers_487_and_unmatched_cancel_481() -> None:
    lab = Lab([A])
    lab.receive(invite())
    out = lab.receive(cancel_of(invite(call="other", branch="z9hG4bKother")))
    assert lines(out) == [("SIP/2.0 481 Call/Transaction Does Not Exist", CALLER)]


def test_timer_c_cancels_a_ringing_branch_and_answers_408() -> None:
    """16.8: timer C (timers.invite_final) fires on a branch that rang for
    too long: CANCEL downstream, 408 upstream once it ends."""
    lab = Lab([A])
    out = lab.receive(invite())
    to_a = out[1]
    lab.receive(answer(to_a, "180 Ringing", "a"), CALLEE_A)
    limit = lab.config.timers.invite_final
    assert lab.advance(limit - 1.0) == []
    out = lab.advance(1.5)
    assert (f"CANCEL {A} SIP/2.0", CALLEE_A) in lines(out)
    assert ("SIP/2.0 408 Request Timeout", CALLER) in lines(out)


def test_no_answer_at_all_times_out_with_408_after_retransmissions() -> None:
    lab = Lab([A])
    lab.receive(invite())
    out = lab.advance(1.6)
    # Timer A: retransmissions at T1 and 2*T1 after the first (0.5, 1.5 s).
    assert lines(out) == [(f"INVITE {A} SIP/2.0", CALLEE_A)] * 2
    out = lab.advance(40.0)
    assert ("SIP/2.0 408 Request Timeout", CALLER) in lines(out)


def test_transport_error_answers_503() -> None:
    """16.9: a request that cannot be sent is a 503 of our own."""
    lab = Lab([A])
    lab.receive(invite())
    out = lab.fail_sending(CALLEE_A)
    assert [s.first_line for s in out if s.to == CALLER] == [
        "SIP/2.0 503 Service Unavailable (next hop unreachable)"]


def test_loop_is_detected_and_a_spiral_is_not() -> None:
    """16.3 step 4: the request comes back with our Via and the same branch
    hash: 482. Changed on the way (a new Request-URI): a spiral, relayed."""
    lab = Lab(["sip:agent@198.18.0.1"])          # the target is ourselves, unchanged
    out = lab.receive(invite())
    looped = out[1]
    back = looped.data.decode().replace("\r\n", "\n")
    out = lab.receive(back, CALLEE_A)
    assert ("SIP/2.0 482 Loop Detected", CALLEE_A) in lines(out)
    spiral = back.replace("INVITE sip:agent@198.18.0.1 ", "INVITE sip:other@198.18.0.1 ")
    out = lab.receive(spiral, CALLEE_A)
    assert ("SIP/2.0 482 Loop Detected", CALLEE_A) not in lines(out)


def test_strict_router_next_hop_gets_the_route_as_request_uri() -> None:
    """16.6 step 7: the next hop is a strict router (no ;lr): its URI
    becomes the Request-URI and the old Request-URI the last Route."""
    lab = Lab(script=RouteFollower)
    out = lab.receive(invite(extra="Route: <sip:198.18.2.1:5060>\n"))
    sent = [s for s in out if s.to == CALLEE_A]
    assert [s.first_line for s in sent] == ["INVITE sip:198.18.2.1:5060 SIP/2.0"]
    assert sent[0].header("route") == ["<sip:agent@198.18.0.1>"]


def test_request_from_a_strict_router_is_restored() -> None:
    """16.4: a strict router before us put our Record-Route URI in the
    Request-URI and the real one last in Route: hasip's script undoes it."""
    config = Config(metrics=MetricsConfig(listen=None))
    config.auth.trusted = ["198.18.1.0/24"]
    lab = Lab(script=Router, config=config)
    bye = ("BYE sip:198.18.0.1:5060;lr SIP/2.0\n"
           "Via: SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKbye1\n"
           "Max-Forwards: 70\nFrom: <sip:caller@198.18.1.1>;tag=from1\n"
           "To: <sip:agent@198.18.0.1>;tag=callee\nCall-ID: c1\nCSeq: 2 BYE\n"
           "Route: <sip:agent@198.18.2.1:5060>\nContent-Length: 0\n\n")
    out = lab.receive(bye)
    assert lines(out) == [("BYE sip:agent@198.18.2.1:5060 SIP/2.0", CALLEE_A)]
    assert out[0].header("route") == []


class RouteFollower:
    """Forwards every request by its Route (or Request-URI)."""

    def __init__(self, engine: object) -> None:
        pass

    def route(self, ctx):  # type: ignore[no-untyped-def]
        if ctx.request.method == "ACK":
            ctx.forward_stateless()
        else:
            ctx.forward()

    def route_unmatched_cancel(self, ctx):  # type: ignore[no-untyped-def]
        ctx.reply(481)

    def on_branch_reply(self, rc, branch, status):  # type: ignore[no-untyped-def]
        pass

    def on_reply(self, reply):  # type: ignore[no-untyped-def]
        pass

    def on_branch_failure(self, rc, branch):  # type: ignore[no-untyped-def]
        pass

    def failure_route(self, rc):  # type: ignore[no-untyped-def]
        return False

    def on_answered(self, rc, response, nat):  # type: ignore[no-untyped-def]
        pass

    def on_stray_reply(self, response):  # type: ignore[no-untyped-def]
        pass

    def on_final(self, rc, status):  # type: ignore[no-untyped-def]
        pass


def test_stray_response_with_our_via_is_relayed_a_foreign_one_dropped() -> None:
    """A response for no transaction of ours: relayed by its second Via only
    when the top Via is ours (a VIP taken over); a foreign one is dropped."""
    lab = Lab([A])
    ours = ("SIP/2.0 200 OK\n"
            "Via: SIP/2.0/UDP 198.18.0.1:5060;branch=z9hG4bKhs12345678other1\n"
            "Via: SIP/2.0/UDP 198.18.1.1:5070;branch=z9hG4bKup;received=198.18.1.9\n"
            "From: <sip:a@x>;tag=1\nTo: <sip:b@x>;tag=2\nCall-ID: s1\nCSeq: 1 INVITE\n"
            "Content-Length: 0\n\n")
    assert lines(lab.receive(ours, CALLEE_A)) == [("SIP/2.0 200 OK", ("198.18.1.9", 5070))]
    foreign = ours.replace("198.18.0.1:5060;branch=z9hG4bKhs", "198.18.9.9:5060;branch=z9hG4bKhs")
    assert lab.receive(foreign, CALLEE_A) == []


def test_retransmissions_are_absorbed_both_ways() -> None:
    lab = Lab([A])
    out = lab.receive(invite())
    to_a = out[1]
    # The caller retransmits its INVITE: the 100 again, nothing forwarded.
    assert lines(lab.receive(invite())) == [("SIP/2.0 100 Trying", CALLER)]
    lab.receive(answer(to_a, "180 Ringing", "a"), CALLEE_A)
    # Now the retransmission gets the latest provisional.
    assert lines(lab.receive(invite())) == [("SIP/2.0 180 Ringing", CALLER)]
    # The callee's 486 and its retransmission: relayed once, ACKed each time.
    out = lab.receive(answer(to_a, "486 Busy Here", "a"), CALLEE_A)
    out += lab.receive(answer(to_a, "486 Busy Here", "a"), CALLEE_A)
    assert [s.first_line for s in out if s.to == CALLER] == ["SIP/2.0 486 Busy Here"]
    assert [s.first_line for s in out if s.to == CALLEE_A] == [f"ACK {A} SIP/2.0"] * 2


def test_a_held_reply_waits_with_the_ones_behind_it_in_order() -> None:
    """The reply hook may hold a reply for an external answer (a media
    relay's); the replies after it on the same branch wait behind it."""
    lab = Lab([A])
    assert lab.fork is not None
    held: list[int] = []

    def hold(reply):  # type: ignore[no-untyped-def]
        if reply.response.status == 183:
            async def relay_answer() -> str:
                return "sdp"

            def resume(result: str) -> None:
                held.append(reply.response.status)
                reply.response.append(b"x-media", b"X-Media: " + result.encode())

            reply.hold(relay_answer(), resume)

    lab.fork.hold_next = hold
    out = lab.receive(invite())
    to_a = out[1]
    out = lab.receive(answer(to_a, "183 Session Progress", "a"), CALLEE_A)
    out += lab.receive(answer(to_a, "200 OK", "a"), CALLEE_A)
    assert [s for s in out if s.to == CALLER] == []       # both wait
    assert len(lab.waits) == 1
    wait = lab.waits.pop()
    wait.awaitable.close()   # type: ignore[attr-defined]
    lab.engine.resume(wait, "sdp", lab.now)
    out = lab.flush()
    assert [s.first_line for s in out if s.to == CALLER] == [
        "SIP/2.0 183 Session Progress", "SIP/2.0 200 OK"]
    assert out[0].header("x-media") == ["sdp"]
    assert held == [183]
