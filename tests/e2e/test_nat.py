"""SIP-level NAT handling on loopback: a phone that claims a private address
(Via and Contact 10.0.0.5) while its packets come from 127.0.0.1:port, as a
phone behind NAT does. The namespace test with a real NAT is test_nat_netns."""

from __future__ import annotations

import time
from typing import Any

from hasip.sip.message import Response, parse_message
from tests.e2e.conftest import invite, metric
from tests.e2e.sipphone import Phone

GATEWAY = "127.0.0.2"


def test_natted_phone_is_registered_reached_and_pinged(make_node, udp_peer) -> None:
    node = make_node(auth={"trusted": [f"{GATEWAY}/32"]}, nat={"ping_interval": 0.5})
    proxy = ("127.0.0.1", node.sip_port)
    phone = Phone("1009", "demo1009", contact_host="10.0.0.5")
    phone.rport = False  # the proxy must force it: 10.0.0.5:5060 is unreachable
    try:
        resp = phone.register(proxy)
        assert resp is not None and resp.status == 200  # answered to the real source port
        assert b"<sip:1009@10.0.0.5:" in (resp.get(b"contact") or b"")  # stored as sent
        text = node.metrics()
        assert metric(text, "hasip_nat_detected_total", 'method="REGISTER"') == 2

        gw = udp_peer(GATEWAY)
        gw.send(invite(gw, f"sip:1009@127.0.0.1:{node.sip_port}"), node.sip_port, "127.0.0.1")
        req: Any = None
        pings = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and req is None:
            msg = phone.recv(0.5)
            if msg is not None and getattr(msg, "method", "") == "INVITE":
                req = msg
        assert req is not None, "the INVITE did not come through the NAT binding"
        assert req.uri_raw.startswith(b"sip:1009@10.0.0.5:")
        assert b";nat=yes" in (req.get(b"record-route") or b"")
        phone.answer(req, 200, "OK", proxy, contact=True)
        answers = [parse_message(m) for m in gw.recv_all(1.0)]
        ok = [m for m in answers if isinstance(m, Response) and m.status == 200]
        assert ok, answers
        # the callee's private Contact is fixed to where its packets come from
        assert ok[0].get(b"contact") == f"<sip:1009@127.0.0.1:{phone.port}>".encode()

        # keepalives: OPTIONS to the NATed contact, from the node's socket
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and pings < 2:
            msg = phone.recv(0.5)
            if msg is not None and getattr(msg, "method", "") == "OPTIONS":
                pings += 1
                phone.answer(msg, 200, "OK", proxy)
        assert pings >= 2
        time.sleep(0.2)
        text = node.metrics()
        assert metric(text, "hasip_nat_pings_total", 'result="sent"') >= 2
        assert metric(text, "hasip_nat_pings_total", 'result="answered"') >= 1
    finally:
        phone.close()


def test_natted_caller_gets_its_contact_fixed(make_node, udp_peer) -> None:
    """An INVITE from a phone behind NAT: authenticated, then forwarded with
    its Contact rewritten to the public source and Record-Route ;nat=yes."""
    from tests.e2e.sipphone import digest_header

    asterisk = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{asterisk.port}"],
                     auth={"trusted": [f"{GATEWAY}/32"]})
    proxy = ("127.0.0.1", node.sip_port)
    phone = Phone("1009", "demo1009", contact_host="10.0.0.5")
    phone.rport = False
    try:
        target = f"sip:2000@127.0.0.1:{node.sip_port}"

        def send_invite(auth: str = "") -> None:
            extra = auth + "\r\n" if auth else ""
            msg = invite(phone, target, extra=extra).replace(b"sip:caller@", b"sip:1009@")
            phone.send(msg, proxy)

        send_invite()
        challenge = phone.response()
        assert challenge is not None and challenge.status == 407
        send_invite(digest_header(challenge.get_str(b"proxy-authenticate") or "", "1009",
                                  "demo1009", "INVITE", target, True))
        forwarded = asterisk.recv(2.0)
        assert forwarded is not None and forwarded.startswith(b"INVITE sip:2000@")
        msg = parse_message(forwarded)
        assert msg.get(b"contact") == f"<sip:1009@127.0.0.1:{phone.port}>".encode()
        assert b";nat=yes" in (msg.get(b"record-route") or b"")
    finally:
        phone.close()
