"""Phones registering and calling through a node: digest authentication
(local users file and FreeRADIUS), the registrar, location lookup and
forking, INVITE authentication, trusted gateways.

Phones and SIPp phones sit on 127.0.0.1 (untrusted); the trusted gateway is
127.0.0.2. The node's embedded users file has users 1001..1010 with password
``demo<user>``, realm ``hasip``.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from hasip.demo.sipp import wait_for_stats
from hasip.sip.message import Response, parse_message
from tests.e2e.conftest import invite, metric, status_of
from tests.e2e.sipphone import Phone, digest_header

GATEWAY = "127.0.0.2"
UNTRUSTED = {"auth": {"trusted": [f"{GATEWAY}/32"]}}


def pw(user: str) -> str:
    return f"demo{user}"


def phone_node(make_node: Any, next_hop: list[str] | None = None, **sections: Any) -> Any:
    merged = {**UNTRUSTED, **sections}
    return make_node(next_hop=next_hop, **merged)


def sipp_register(sipp: Any, node: Any, user: str, contact_port: int, password: str | None = None,
                  expires: int = 3600) -> Any:
    return sipp("register.xml", remote=f"127.0.0.1:{node.sip_port}", calls=1, service=user,
                extra=("-au", user, "-ap", password or pw(user), "-key", "contact_port",
                       str(contact_port), "-key", "expires", str(expires)))


def test_sipp_registers_with_digest_against_the_users_file(make_node, sipp) -> None:
    node = phone_node(make_node)
    phone = sipp_register(sipp, node, "1001", 5999)
    assert phone.wait(15) == 0, phone.errors()
    text = node.metrics()
    assert metric(text, "hasip_registrar_contacts") == 1
    assert metric(text, "hasip_auth_total", 'method="REGISTER",result="challenged"') == 1
    assert metric(text, "hasip_auth_total", 'method="REGISTER",result="ok"') == 1
    # written behind to the embedded SQLite store
    db = node.workdir / f"location-{node.sip_port}.db"
    deadline = time.monotonic() + 5
    rows: list[Any] = []
    while time.monotonic() < deadline and not rows:
        rows = sqlite3.connect(db).execute("SELECT username, contact FROM location").fetchall()
        time.sleep(0.1)
    assert rows == [("1001", "sip:1001@127.0.0.1:5999;transport=UDP")]
    # and unregisters (Expires: 0), authenticated as well
    gone = sipp_register(sipp, node, "1001", 5999, expires=0)
    assert gone.wait(15) == 0, gone.errors()
    text = node.metrics()
    assert metric(text, "hasip_registrar_contacts") == 0
    assert metric(text, "hasip_registrar_requests_total", 'result="unregistered"') == 1


def test_wrong_password_and_foreign_identity(phones, make_node) -> None:
    node = phone_node(make_node)
    proxy = ("127.0.0.1", node.sip_port)
    phone = phones("1001", "not-the-password")
    resp = phone.register(proxy)
    assert resp is not None and resp.status == 401  # challenged again, not registered
    assert 'realm="hasip"' in (resp.get_str(b"www-authenticate") or "")
    # right password, but for somebody else's AoR: 403
    phone = phones("1001", pw("1001"))
    resp = phone.register(proxy, to_user="1002")
    assert resp is not None and resp.status == 403
    text = node.metrics()
    assert metric(text, "hasip_auth_total", 'method="REGISTER",result="wrong_password"') == 1
    assert metric(text, "hasip_auth_total", 'method="REGISTER",result="wrong_identity"') == 1
    assert metric(text, "hasip_registrar_contacts") == 0


def test_replayed_credentials_are_refused(phones, make_node) -> None:
    node = phone_node(make_node)
    proxy = ("127.0.0.1", node.sip_port)
    phone = phones("1001", pw("1001"))
    phone.send(phone.register_request(proxy), proxy)
    challenge = phone.response()
    assert challenge is not None and challenge.status == 401
    auth = digest_header(challenge.get_str(b"www-authenticate") or "", "1001", pw("1001"),
                         "REGISTER", f"sip:127.0.0.1:{node.sip_port}", False)
    phone.send(phone.register_request(proxy, auth=auth), proxy)
    first = phone.response()
    assert first is not None and first.status == 200
    phone.send(phone.register_request(proxy, expires=0, auth=auth), proxy)  # same nc
    again = phone.response()
    assert again is not None and again.status == 401
    assert metric(node.metrics(), "hasip_registrar_contacts") == 1


def test_unregister_needs_credentials(phones, make_node) -> None:
    """The seed let ``Expires: 0`` through without authentication."""
    node = phone_node(make_node)
    proxy = ("127.0.0.1", node.sip_port)
    phone = phones("1001", pw("1001"))
    assert phone.register(proxy).status == 200  # type: ignore[union-attr]
    attacker = phones("1001", "guess")
    attacker.send(attacker.register_request(proxy, expires=0, contact=phone.contact), proxy)
    resp = attacker.response()
    assert resp is not None and resp.status == 401
    assert metric(node.metrics(), "hasip_registrar_contacts") == 1
    resp = phone.register(proxy, expires=0)
    assert resp is not None and resp.status == 200 and not resp.has(b"contact")
    assert metric(node.metrics(), "hasip_registrar_contacts") == 0


def test_registrar_answers_423_and_caps_expires(phones, make_node) -> None:
    node = phone_node(make_node, registrar={"min_expires": 30, "max_expires": 50})
    proxy = ("127.0.0.1", node.sip_port)
    phone = phones("1003", pw("1003"))
    resp = phone.register(proxy, expires=10)
    assert resp is not None and resp.status == 423 and resp.get(b"min-expires") == b"30"
    resp = phone.register(proxy, expires=3600)
    assert resp is not None and resp.status == 200
    assert f"<{phone.contact}>;expires=50".encode() in (resp.get(b"contact") or b"")


def test_registered_phone_calls_registered_phone(make_node, sipp) -> None:
    """1001 calls 1002: a 407 first, then the call reaches 1002's phone
    (SIPp answering at the contact 1002 registered)."""
    node = phone_node(make_node)
    callee = sipp("uas.xml")
    wait_for_stats(callee)
    reg = sipp_register(sipp, node, "1002", callee.port)
    assert reg.wait(15) == 0, reg.errors()
    caller = sipp("uac_auth.xml", remote=f"127.0.0.1:{node.sip_port}", calls=5, rate=10,
                  service="1002", extra=("-au", "1001", "-ap", pw("1001"), "-key", "caller",
                                         "1001"))
    assert caller.wait(30) == 0, caller.errors()
    assert caller.counter("SuccessfulCall(C)") == 5
    callee.stop()
    assert callee.counter("SuccessfulCall(C)") == 5
    text = node.metrics()
    assert metric(text, "hasip_auth_total", 'method="INVITE",result="challenged"') == 5
    assert metric(text, "hasip_auth_total", 'method="INVITE",result="ok"') == 5
    assert metric(text, "hasip_location_lookups_total", 'result="found"') == 5


def test_nobody_calls_without_credentials_or_a_trusted_address(make_node, sipp,
                                                                udp_peer) -> None:
    asterisk = sipp("uas.xml")
    wait_for_stats(asterisk)
    node = phone_node(make_node, next_hop=[f"sip:127.0.0.1:{asterisk.port}"])
    # SIPp without credentials: every call fails on the 407
    caller = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=3, rate=10)
    caller.wait(30)
    assert caller.counter("SuccessfulCall(C)") == 0
    assert caller.counter("FailedCall(C)") == 3
    # raw: no credentials, garbage credentials, credentials of another user
    peer = udp_peer()
    target = f"sip:5551234@127.0.0.1:{node.sip_port}"

    def final(extra: bytes = b"", from_user: str = "1001") -> Response:
        msg = invite(peer, target, extra=extra.decode() + "\r\n" if extra else "")
        peer.send(msg.replace(b"sip:caller@", f"sip:{from_user}@".encode()), node.sip_port)
        statuses = [m for m in peer.recv_all(1.0) if (status_of(m) or 0) >= 200]
        resp = parse_message(statuses[0])
        assert isinstance(resp, Response)
        return resp

    first = final()
    assert first.status == 407
    challenge = first.get_str(b"proxy-authenticate") or ""
    assert final(b'Proxy-Authorization: Digest username="1001", realm="hasip", nonce="x", '
                 b'uri="' + target.encode() + b'", response="00"').status == 407
    # Credentials computed for another Request-URI: refused (RFC 2617 3.2.2.5).
    assert final(b'Proxy-Authorization: Digest username="1001", realm="hasip", nonce="x", '
                 b'uri="sip:x", response="00"').status == 400
    good = digest_header(challenge, "1002", pw("1002"), "INVITE", target, True)
    assert final(good.encode(), from_user="1001").status == 403  # 1002's password, 1001's From
    asterisk.stop()
    assert asterisk.counter("IncomingCall(C)") == 0  # nothing got through


def test_gateway_calls_agent_and_unknown_user_goes_to_next_hop(make_node, sipp) -> None:
    """A trusted gateway (no challenge): a registered agent gets the call
    from the location store; an unknown number goes to the next hop."""
    agent = sipp("uas.xml")
    asterisk = sipp("uas.xml")
    for s in (agent, asterisk):
        wait_for_stats(s)
    node = phone_node(make_node, next_hop=[f"sip:127.0.0.1:{asterisk.port}"])
    reg = sipp_register(sipp, node, "1005", agent.port)
    assert reg.wait(15) == 0, reg.errors()
    to_agent = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=4, rate=10,
                    service="1005", local_ip=GATEWAY)
    assert to_agent.wait(30) == 0, to_agent.errors()
    to_unknown = sipp("uac.xml", remote=f"127.0.0.1:{node.sip_port}", calls=3, rate=10,
                      service="5550000", local_ip=GATEWAY)
    assert to_unknown.wait(30) == 0, to_unknown.errors()
    agent.stop()
    asterisk.stop()
    assert agent.counter("SuccessfulCall(C)") == 4
    assert asterisk.counter("SuccessfulCall(C)") == 3
    text = node.metrics()
    assert metric(text, "hasip_location_lookups_total", 'result="not_found"') == 3
    assert metric(text, "hasip_auth_total", 'method="INVITE",result="challenged"') == 0


def _invite_from_gateway(gw: Any, node: Any, user: str) -> bytes:
    msg = invite(gw, f"sip:{user}@127.0.0.1:{node.sip_port}")
    gw.send(msg, node.sip_port, "127.0.0.1")
    return msg


def _expect_request(phone: Phone, method: str, timeout: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = phone.recv(max(0.01, deadline - time.monotonic()))
        if msg is not None and getattr(msg, "method", "") == method:
            return msg
    raise AssertionError(f"no {method} for {phone.contact}")


def _finals(gw: Any, timeout: float) -> list[int]:
    statuses: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(s >= 200 for s in statuses):
        statuses += [status_of(m) or 0 for m in gw.recv_all(0.3)]
    return statuses


def test_parallel_fork_first_answer_wins(phones, make_node, udp_peer) -> None:
    """Two contacts of equal q ring at once; the first 200 wins and the
    other branch is CANCELled (RFC 3261 16.6, 16.7)."""
    node = phone_node(make_node)
    proxy = ("127.0.0.1", node.sip_port)
    desk, mobile = phones("1006", pw("1006")), phones("1006", pw("1006"))
    assert desk.register(proxy).status == 200  # type: ignore[union-attr]
    assert mobile.register(proxy).status == 200  # type: ignore[union-attr]
    gw = udp_peer(GATEWAY)
    _invite_from_gateway(gw, node, "1006")
    desk_invite = _expect_request(desk, "INVITE")
    mobile_invite = _expect_request(mobile, "INVITE")
    desk.answer(desk_invite, 180, "Ringing", proxy, contact=True)
    mobile.answer(mobile_invite, 180, "Ringing", proxy, contact=True)
    desk.answer(desk_invite, 200, "OK", proxy, contact=True)
    _expect_request(mobile, "CANCEL")
    statuses = _finals(gw, 2.0)
    assert 200 in statuses and 487 not in statuses


def test_serial_fork_by_q_value(phones, make_node, udp_peer) -> None:
    """q=1.0 rings alone first; when it fails (486) the q=0.5 contact rings."""
    node = phone_node(make_node)
    proxy = ("127.0.0.1", node.sip_port)
    high, low = phones("1007", pw("1007")), phones("1007", pw("1007"))
    assert high.register(proxy).status == 200  # type: ignore[union-attr]
    assert low.register(proxy, contact_params=";q=0.5").status == 200  # type: ignore[union-attr]
    gw = udp_peer(GATEWAY)
    _invite_from_gateway(gw, node, "1007")
    first = _expect_request(high, "INVITE")
    assert low.recv(0.3) is None  # not yet
    high.answer(first, 486, "Busy Here", proxy)
    second = _expect_request(low, "INVITE")
    low.answer(second, 200, "OK", proxy, contact=True)
    assert 200 in _finals(gw, 2.0)


def test_registered_user_whose_phone_does_not_answer_gets_480(phones, make_node,
                                                               udp_peer) -> None:
    node = phone_node(make_node, timers={"non_invite_final": 2.0})
    phone = phones("1008", pw("1008"))
    assert phone.register(("127.0.0.1", node.sip_port)).status == 200  # type: ignore
    phone.close()  # the phone is gone; its binding is not
    gw = udp_peer(GATEWAY)
    _invite_from_gateway(gw, node, "1008")
    assert 480 in _finals(gw, 8.0)


@pytest.mark.parametrize("dead_first", [True, False])
def test_register_against_freeradius(phones, make_node, sipp, freeradius,
                                     dead_first: bool) -> None:
    """RFC 5090 style digest checked by a real FreeRADIUS (draft-sterman
    attributes); with a dead first server the node fails over."""
    from tests.e2e.conftest import free_port

    radius = freeradius({"2001": "radius-pw", "2002": "other-pw"})
    servers = [f"127.0.0.1:{radius.port}"]
    if dead_first:
        servers.insert(0, f"127.0.0.1:{free_port()}")
    node = phone_node(make_node, auth={"source": "radius", "trusted": [f"{GATEWAY}/32"]},
                      radius={"servers": servers, "secret": radius.secret, "timeout": 0.3})
    ok = sipp_register(sipp, node, "2001", 5998, password="radius-pw")
    assert ok.wait(15) == 0, ok.errors()
    phone = phones("2002", "wrong-pw")
    resp = phone.register(("127.0.0.1", node.sip_port))
    assert resp is not None and resp.status == 401
    text = node.metrics()
    assert metric(text, "hasip_registrar_contacts") == 1
    assert metric(text, "hasip_auth_total", 'method="REGISTER",result="rejected"') == 1
    assert "Login OK: [2001]" in radius.log()
    assert ("hasip_radius_errors_total{" in text) == dead_first


def test_radius_down_means_503_and_registrations_stay(phones, make_node, freeradius) -> None:
    radius = freeradius({"2001": "radius-pw"})
    node = phone_node(make_node, auth={"source": "radius", "trusted": [f"{GATEWAY}/32"],
                                       "retry_after": 17},
                      radius={"servers": [f"127.0.0.1:{radius.port}"], "secret": radius.secret,
                              "timeout": 0.2, "retries": 1, "dead_time": 0.5})
    proxy = ("127.0.0.1", node.sip_port)
    phone = phones("2001", "radius-pw")
    assert phone.register(proxy).status == 200  # type: ignore[union-attr]
    radius.stop()
    resp = phone.register(proxy)
    assert resp is not None and resp.status == 503 and resp.get(b"retry-after") == b"17"
    assert metric(node.metrics(), "hasip_registrar_contacts") == 1  # still registered
    radius.start()
    time.sleep(0.6)  # dead_time
    resp = phone.register(proxy)
    assert resp is not None and resp.status == 200


def test_sha256_digest_and_stale_nonce(phones, make_node) -> None:
    """RFC 7616: SHA-256 offered first; an expired nonce gets stale=true."""
    node = phone_node(make_node, auth={"trusted": [f"{GATEWAY}/32"], "nonce_lifetime": 1.0,
                                       "algorithms": ["SHA-256", "MD5"]})
    proxy = ("127.0.0.1", node.sip_port)
    phone = phones("1004", pw("1004"))
    phone.send(phone.register_request(proxy), proxy)
    challenge = phone.response()
    assert challenge is not None and challenge.status == 401
    offered = [v.decode() for v in challenge.get_all(b"www-authenticate")]
    assert [o.rsplit("algorithm=", 1)[1] for o in offered] == ["SHA-256", "MD5"]
    uri = f"sip:127.0.0.1:{node.sip_port}"
    auth = digest_header(offered[0], "1004", pw("1004"), "REGISTER", uri, False)
    assert "algorithm=SHA-256" in auth
    phone.send(phone.register_request(proxy, auth=auth), proxy)
    ok = phone.response()
    assert ok is not None and ok.status == 200
    time.sleep(2.2)  # the nonce is now older than nonce_lifetime
    auth = digest_header(offered[0], "1004", pw("1004"), "REGISTER", uri, False, nc=2)
    phone.send(phone.register_request(proxy, auth=auth), proxy)
    stale = phone.response()
    assert stale is not None and stale.status == 401
    assert "stale=true" in (stale.get_str(b"www-authenticate") or "")


def test_sipp_wrong_password_is_not_registered(make_node, sipp) -> None:
    node = phone_node(make_node)
    phone = sipp_register(sipp, node, "1001", 5997, password="wrong")
    assert phone.wait(15) != 0  # SIPp expected 200 and got a second 401
    assert "401" in phone.errors()
    assert metric(node.metrics(), "hasip_registrar_contacts") == 0


def test_path_is_stored_and_used(phones, make_node, udp_peer) -> None:
    """RFC 3327: a REGISTER through an edge proxy carries Path; calls to the
    user go through that proxy (Route from the stored Path)."""
    edge = udp_peer()
    node = phone_node(make_node)
    proxy = ("127.0.0.1", node.sip_port)
    phone = phones("1003", pw("1003"))
    path = f"Path: <sip:edge@127.0.0.1:{edge.port};lr>"
    resp = phone.register(proxy, extra=(path, "Supported: path"))
    assert resp is not None and resp.status == 200
    assert resp.get(b"path") == f"<sip:edge@127.0.0.1:{edge.port};lr>".encode()
    gw = udp_peer(GATEWAY)
    _invite_from_gateway(gw, node, "1003")
    forwarded = edge.recv(2.0)
    assert forwarded is not None and forwarded.startswith(b"INVITE " + phone.contact.encode())
    assert f"Route: <sip:edge@127.0.0.1:{edge.port};lr>".encode() in forwarded


def test_tcp_phone_is_reached_over_its_connection(make_node, udp_peer) -> None:
    """A phone registered over TCP gets its calls on that connection, not at
    the Contact address (where nothing listens)."""
    import socket as _socket

    from tests.e2e.sipphone import digest_header as dh

    node = phone_node(make_node)
    conn = _socket.create_connection(("127.0.0.1", node.sip_port), timeout=3)
    try:
        local = conn.getsockname()

        def request(cseq: int, auth: str = "") -> bytes:
            return (f"REGISTER sip:127.0.0.1:{node.sip_port};transport=tcp SIP/2.0\r\n"
                    f"Via: SIP/2.0/TCP 127.0.0.1:{local[1]};branch=z9hG4bKt{cseq}\r\n"
                    f"From: <sip:1002@127.0.0.1>;tag=t\r\nTo: <sip:1002@127.0.0.1>\r\n"
                    f"Call-ID: tcp-reg-1\r\nCSeq: {cseq} REGISTER\r\n"
                    f"Contact: <sip:1002@127.0.0.1:9;transport=tcp>\r\nExpires: 600\r\n"
                    f"{auth}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()

        def read() -> bytes:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            return data

        conn.sendall(request(1))
        challenge = parse_message(read())
        assert isinstance(challenge, Response) and challenge.status == 401
        auth = dh(challenge.get_str(b"www-authenticate") or "", "1002", pw("1002"), "REGISTER",
                  f"sip:127.0.0.1:{node.sip_port};transport=tcp", False)
        conn.sendall(request(2, auth + "\r\n"))
        ok = parse_message(read())
        assert isinstance(ok, Response) and ok.status == 200
        gw = udp_peer(GATEWAY)
        _invite_from_gateway(gw, node, "1002")
        data = read()
        assert data.startswith(b"INVITE sip:1002@127.0.0.1:9;transport=tcp SIP/2.0")
    finally:
        conn.close()


def test_expired_bindings_leave_memory_and_the_database(phones, make_node) -> None:
    node = phone_node(make_node, registrar={"min_expires": 1})
    phone = phones("1001", pw("1001"))
    assert phone.register(("127.0.0.1", node.sip_port), expires=2).status == 200  # type: ignore
    db = node.workdir / f"location-{node.sip_port}.db"

    def rows() -> int:
        return int(sqlite3.connect(db).execute("SELECT COUNT(*) FROM location").fetchone()[0])

    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and rows() == 0:
        time.sleep(0.1)
    assert rows() == 1
    time.sleep(3.5)
    assert metric(node.metrics(), "hasip_registrar_contacts") == 0
    assert rows() == 0


def test_malformed_credentials_get_400(phones, make_node) -> None:
    node = phone_node(make_node)
    proxy = ("127.0.0.1", node.sip_port)
    phone = phones("1001", pw("1001"))
    for bad in ('Authorization: Digest username="1001" realm',
                'Authorization: Digest username="1001", realm="hasip", nonce="x"'):
        phone.send(phone.register_request(proxy, auth=bad), proxy)
        resp = phone.response()
        assert resp is not None and resp.status == 400, bad
    assert metric(node.metrics(), "hasip_auth_total", 'method="REGISTER",result="malformed"') == 2
