"""RFC 3261 section 17 state machines on virtual time (``now`` is a float we move)."""

from hasip.sip.message import Request, Response, parse_message
from hasip.sip.transaction import (
    ACCEPTED,
    COMPLETED,
    CONFIRMED,
    PROCEEDING,
    RESPONSE,
    SEND,
    TERMINATED,
    TERMINATED_STATE,
    TIMEOUT,
    TIMER_C,
    Action,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Timers,
    Transaction,
    cancel_target_key,
    server_key,
)

TIMERS = Timers(t1=0.5, t2=4.0, t4=5.0, non_invite_final=32.0, invite_final=180.0)


def request(method: str = "INVITE", branch: str = "z9hG4bKabc", extra: str = "") -> Request:
    msg = parse_message(
        f"{method} sip:b@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n"
        "From: <sip:a@example.com>;tag=f1\r\nTo: <sip:b@example.com>\r\n"
        f"Call-ID: c1\r\nCSeq: 7 {method}\r\n{extra}Content-Length: 0\r\n\r\n".encode())
    assert isinstance(msg, Request)
    return msg


def response(status: int, method: str = "INVITE", branch: str = "z9hG4bKabc") -> Response:
    msg = parse_message(
        f"SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n"
        "From: <sip:a@example.com>;tag=f1\r\nTo: <sip:b@example.com>;tag=t9\r\n"
        f"Call-ID: c1\r\nCSeq: 7 {method}\r\nContent-Length: 0\r\n\r\n".encode())
    assert isinstance(msg, Response)
    return msg


def kinds(actions: list[Action]) -> list[str]:
    return [kind for kind, _ in actions]


def run_until(txn: Transaction, end: float) -> list[tuple[float, str]]:
    """Fire every timer up to ``end``; returns (time, action kind) pairs."""
    out = []
    while (t := txn.get_timer()) is not None and t <= end:
        out += [(round(t, 3), kind) for kind, _ in txn.handle_timer(t)]
    return out


def test_invite_client_retransmits_with_doubling_until_timer_b() -> None:
    req = request()
    txn = InviteClientTransaction("z9hG4bKabc", req, b"INVITE...", False, TIMERS)
    assert kinds(txn.start(0.0)) == [SEND]
    fired = run_until(txn, 100.0)
    sends = [t for t, k in fired if k == SEND]
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # timer A: T1, 2T1, 4T1...
    assert (32.0, TIMEOUT) in fired and fired[-1] == (32.0, TERMINATED)  # timer B
    assert txn.state == TERMINATED_STATE


def test_invite_client_provisional_stops_a_and_starts_c() -> None:
    txn = InviteClientTransaction("z9hG4bKabc", request(), b"INVITE", False, TIMERS)
    txn.start(0.0)
    assert kinds(txn.receive_response(response(180), 0.2)) == [RESPONSE]
    assert txn.state == PROCEEDING
    assert txn.get_timer() == 180.2
    txn.receive_response(response(183), 10.0)  # restarts timer C
    assert txn.get_timer() == 190.0
    assert kinds(txn.handle_timer(190.0)) == [TIMER_C]


def test_invite_client_non_2xx_sends_ack_and_absorbs_retransmissions() -> None:
    txn = InviteClientTransaction("z9hG4bKabc", request(), b"INVITE", False, TIMERS)
    txn.start(0.0)
    actions = txn.receive_response(response(486), 1.0)
    assert kinds(actions) == [SEND, RESPONSE]
    ack = actions[0][1]
    assert isinstance(ack, bytes) and ack.startswith(b"ACK sip:b@example.com SIP/2.0")
    assert b"CSeq: 7 ACK" in ack and b";tag=t9" in ack and b"branch=z9hG4bKabc" in ack
    assert txn.state == COMPLETED
    assert kinds(txn.receive_response(response(486), 2.0)) == [SEND]  # ACK again, not up
    assert run_until(txn, 100.0) == [(33.0, TERMINATED)]  # timer D = 32 s


def test_invite_client_2xx_retransmissions_go_up_in_accepted_state() -> None:
    txn = InviteClientTransaction("z9hG4bKabc", request(), b"INVITE", True, TIMERS)
    txn.start(0.0)
    assert kinds(txn.receive_response(response(200), 1.0)) == [RESPONSE]
    assert txn.state == ACCEPTED
    assert kinds(txn.receive_response(response(200), 1.5)) == [RESPONSE]
    assert run_until(txn, 100.0) == [(33.0, TERMINATED)]  # timer M = 64 T1


def test_reliable_invite_client_does_not_retransmit() -> None:
    txn = InviteClientTransaction("z9hG4bKabc", request(), b"INVITE", True, TIMERS)
    txn.start(0.0)
    assert run_until(txn, 100.0) == [(32.0, TIMEOUT), (32.0, TERMINATED)]


def test_non_invite_client_timer_e_caps_at_t2_and_f_times_out() -> None:
    txn = NonInviteClientTransaction("z9hG4bKabc", request("OPTIONS"), b"OPT", False, TIMERS)
    txn.start(0.0)
    fired = run_until(txn, 40.0)
    sends = [t for t, k in fired if k == SEND]
    assert sends[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # doubling up to T2 = 4 s, then every 4 s
    assert (32.0, TIMEOUT) in fired


def test_non_invite_client_provisional_then_final() -> None:
    txn = NonInviteClientTransaction("z9hG4bKabc", request("BYE"), b"BYE", False, TIMERS)
    txn.start(0.0)
    txn.receive_response(response(100, "BYE"), 0.1)
    fired = run_until(txn, 5.0)
    assert [t for t, k in fired if k == SEND] == [0.5, 4.5]  # T2 once proceeding
    assert kinds(txn.receive_response(response(200, "BYE"), 5.0)) == [RESPONSE]
    assert txn.receive_response(response(200, "BYE"), 5.1) == []
    assert run_until(txn, 20.0) == [(10.0, TERMINATED)]  # timer K = T4


def test_invite_server_resends_final_with_timer_g_until_ack() -> None:
    req = request()
    txn = InviteServerTransaction(server_key(req), False, TIMERS)
    assert kinds(txn.send_response(100, b"100", 0.0)) == [SEND]
    assert txn.receive_request(req, 0.1) == [(SEND, b"100")]  # retransmission absorbed
    txn.send_response(486, b"486", 1.0)
    assert txn.state == COMPLETED
    fired = run_until(txn, 4.0)
    assert fired == [(1.5, SEND), (2.5, SEND)]
    assert txn.receive_request(request(), 4.0) == [(SEND, b"486")]
    txn.receive_request(request("ACK"), 4.1)
    assert txn.state == CONFIRMED
    assert run_until(txn, 20.0) == [(9.1, TERMINATED)]  # timer I = T4


def test_invite_server_timer_h_without_ack() -> None:
    req = request()
    txn = InviteServerTransaction(server_key(req), True, TIMERS)
    txn.send_response(500, b"500", 0.0)
    assert run_until(txn, 100.0) == [(32.0, TERMINATED)]


def test_invite_server_accepted_absorbs_invite_and_passes_2xx() -> None:
    req = request()
    txn = InviteServerTransaction(server_key(req), False, TIMERS)
    txn.send_response(200, b"200", 0.0)
    assert txn.state == ACCEPTED
    assert txn.receive_request(req, 0.5) == []
    assert txn.send_response(200, b"200", 0.6) == [(SEND, b"200")]
    assert run_until(txn, 100.0) == [(32.0, TERMINATED)]  # timer L


def test_non_invite_server_absorbs_and_replays() -> None:
    req = request("BYE")
    txn = NonInviteServerTransaction(server_key(req), False, TIMERS)
    assert txn.receive_request(req, 0.1) == []  # trying: nothing to resend yet
    txn.send_response(200, b"200", 0.2)
    assert txn.receive_request(req, 0.3) == [(SEND, b"200")]
    assert run_until(txn, 100.0) == [(32.2, TERMINATED)]  # timer J = 64 T1


def test_server_keys() -> None:
    invite = request()
    ack = request("ACK")
    cancel = request("CANCEL")
    assert server_key(invite) == ("z9hG4bKabc", "192.0.2.1:5060", "INVITE")
    assert server_key(ack) == server_key(invite)
    assert server_key(cancel) != server_key(invite)
    assert cancel_target_key(cancel) == server_key(invite)
    old = request(branch="1")  # RFC 2543: no magic cookie
    key = server_key(old)
    assert key[0] == "2543" and "c1" in key and key[-1] == "INVITE"
    assert server_key(request("ACK", branch="1")) == key
