"""received and rport in the top Via (RFC 3261 18.2.1, RFC 3581 4), the
Via as the next hop and the answer's way back read it."""

from __future__ import annotations

import pytest

from hasip.proxy.engine import fix_via
from hasip.sip.message import Request, parse_message


def request(via: str) -> Request:
    msg = parse_message((f"OPTIONS sip:b@198.18.0.1 SIP/2.0\r\nVia: {via}\r\n"
                         "Via: SIP/2.0/UDP 198.18.9.9;branch=z9hG4bKlower\r\n"
                         "From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: v1\r\n"
                         "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                         ).encode())
    assert isinstance(msg, Request)
    return msg


@pytest.mark.parametrize(("via", "source", "fixed"), [
    # the sent-by host is the source, no rport asked: nothing to add
    ("SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bK1", ("198.18.1.1", 5060),
     "SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bK1"),
    # another host: received (18.2.1)
    ("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1", ("198.18.1.1", 40000),
     "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;received=198.18.1.1"),
    # rport asked: filled with the source port, and received added even
    # though the host is the source (RFC 3581 4: MUST)
    ("SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bK1;rport", ("198.18.1.1", 40000),
     "SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bK1;rport=40000;received=198.18.1.1"),
    # a received= of the sender's own is replaced by ours
    ("SIP/2.0/UDP 10.0.0.5;received=203.0.113.9;branch=z9hG4bK1", ("198.18.1.1", 5060),
     "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1;received=198.18.1.1"),
    # IPv6: the bracketed sent-by compared without its brackets, received bare
    ("SIP/2.0/UDP [2001:2::5]:5060;branch=z9hG4bK1;rport", ("2001:2::5", 5062),
     "SIP/2.0/UDP [2001:2::5]:5060;branch=z9hG4bK1;rport=5062;received=2001:2::5"),
])
def test_received_and_rport(via: str, source: tuple[str, int], fixed: str) -> None:
    req = request(via)
    fix_via(req, source)
    again = parse_message(req.to_bytes())
    assert isinstance(again, Request)
    assert again.values(b"via")[0] == fixed
    assert again.values(b"via")[1] == "SIP/2.0/UDP 198.18.9.9;branch=z9hG4bKlower"
    top = again.top_via
    if "received" in top.params:
        assert top.params["received"] == source[0]      # parsed back, IPv6 too


def test_a_via_line_with_several_values_keeps_the_others() -> None:
    msg = parse_message(
        b"OPTIONS sip:b@198.18.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1;rport, "
        b"SIP/2.0/UDP 198.18.9.9;branch=z9hG4bK2\r\n"
        b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: v2\r\nCSeq: 1 OPTIONS\r\n"
        b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(msg, Request)
    fix_via(msg, ("198.18.1.1", 40000))
    again = parse_message(msg.to_bytes())
    assert again.values(b"via") == [
        "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1;rport=40000;received=198.18.1.1",
        "SIP/2.0/UDP 198.18.9.9;branch=z9hG4bK2"]
