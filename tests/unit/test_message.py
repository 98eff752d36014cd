"""Parsing, editing and serialising SIP messages (RFC 3261 sections 7, 18.3, 20)."""

import pytest

from hasip.sip.errors import SipParseError
from hasip.sip.message import Request, Response, parse_message, validate_request

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@example.com>\r\n'
    b"From: Alice <sip:alice@example.org>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.org\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1>\r\n"
    b"X-Unknown:   odd   spacing ;;,, kept\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def test_request_fields() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri_raw == b"sip:bob@example.com"
    assert msg.cseq == (314159, "INVITE")
    assert msg.call_id == "a84b4c76e66710@pc33.example.org"
    assert msg.from_.tag == "1928301774"
    assert msg.to.tag is None
    assert msg.to.display == '"Bob"'
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert msg.body == b"v=0\n"
    validate_request(msg)


def test_untouched_message_serialises_byte_for_byte() -> None:
    assert parse_message(INVITE).to_bytes() == INVITE


def test_unknown_header_passes_through_unchanged_after_edits() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    msg.insert_top(b"via", b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKabc")
    msg.replace(b"max-forwards", b"Max-Forwards: 69")
    out = msg.to_bytes()
    assert b"X-Unknown:   odd   spacing ;;,, kept\r\n" in out
    assert out.index(b"10.0.0.1") < out.index(b"192.0.2.1")
    again = parse_message(out)
    assert [v.host for v in again.vias] == ["10.0.0.1", "192.0.2.1"]
    assert again.get(b"max-forwards") == b"69"


def test_compact_forms_and_folding() -> None:
    data = (
        b"OPTIONS sip:x@example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n"
        b"f: <sip:a@example.com>;tag=1\r\n"
        b"t: <sip:x@example.com>\r\n"
        b"i: abc\r\n"
        b"CSeq: 1\r\n  OPTIONS\r\n"
        b"Subject: first\r\n second\r\n"
        b"l: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.call_id == "abc"
    assert msg.cseq == (1, "OPTIONS")
    assert msg.get(b"subject") == b"first second"
    assert msg.get(b"content-length") == b"0"
    assert msg.to_bytes() == data


def test_multi_value_headers_split_outside_quotes_and_angles() -> None:
    data = (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com:5070"
        b";branch=z9hG4bK2\r\n"
        b"Via: SIP/2.0/UDP c.example.com;branch=z9hG4bK3\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n"
        b"Call-ID: x\r\nCSeq: 1 REGISTER\r\n"
        b'Contact: "Smith, John" <sip:j@h1.example.com;p=a,b>, <sip:j@h2.example.com>\r\n'
        b"Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert [v.host for v in msg.vias] == ["a.example.com", "b.example.com", "c.example.com"]
    assert msg.vias[1].port == 5070 and msg.vias[1].transport == "TCP"
    contacts = msg.values(b"contact")
    assert contacts == ['"Smith, John" <sip:j@h1.example.com;p=a,b>', "<sip:j@h2.example.com>"]
    assert msg.pop_first_value(b"via") is not None
    assert [v.host for v in msg.vias] == ["b.example.com", "c.example.com"]


def test_response_fields() -> None:
    data = (
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n"
        b"Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (180, b"Ringing")
    assert msg.to.tag == "2"


def test_datagram_content_length_rules() -> None:
    head = INVITE.split(b"\r\n\r\n")[0].replace(b"Content-Length: 4", b"Content-Length: 2")
    msg = parse_message(head + b"\r\n\r\nv=0\n")
    assert msg.body == b"v="  # extra octets in a datagram are discarded (18.3)
    too_long = head.replace(b"Content-Length: 2", b"Content-Length: 99") + b"\r\n\r\nv=0\n"
    with pytest.raises(SipParseError) as info:
        parse_message(too_long)
    assert info.value.status == 400
    no_cl = head.replace(b"\r\nContent-Length: 2", b"") + b"\r\n\r\nbody"
    msg = parse_message(no_cl)
    assert msg.body == b"body"
    assert b"Content-Length: 4" in msg.to_bytes()


def test_stream_body_must_match_content_length() -> None:
    with pytest.raises(SipParseError):
        parse_message(INVITE + b"extra", datagram=False)


def test_size_cap_gives_513() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE + b"x" * 70000)
    assert info.value.status == 513


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"INVITE  sip:a@b SIP/2.0", 400),
        (b"INVITE sip:a@b SIP/2.0 ", 400),
        (b"INVITE sip:a@b SIP/3.0", 505),
        (b"INV ITE", 400),
        (b"SIP/2.0 99 Odd", 400),
        (b"SIP/2.0 7000 Odd", 400),
    ],
)
def test_bad_start_lines(line: bytes, status: int) -> None:
    data = line + b"\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == status


@pytest.mark.parametrize(
    ("header", "replacement"),
    [
        (b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"),
        (b"CSeq: 314159 INVITE", b"CSeq: 99999999999 INVITE"),
        (b"Max-Forwards: 70", b"Max-Forwards: 256"),
        (b"Call-ID: a84b4c76e66710@pc33.example.org\r\n", b""),
        (b"Contact: <sip:alice@192.0.2.1>", b"Contact: sip:alice@192.0.2.1?x=y"),
        (b"Contact: <sip:alice@192.0.2.1>", b'Contact: "unterminated <sip:a@b>'),
        (b'To: "Bob" <sip:bob@example.com>', b"To: Bob, Jr <sip:bob@example.com>"),
        (b'To: "Bob" <sip:bob@example.com>', b"To: < sip:bob@example.com >"),
        (b"INVITE sip:bob@example.com SIP", b"INVITE sip:bob@example.com?Route=x SIP"),
    ],
)
def test_sanity_checks_reject(header: bytes, replacement: bytes) -> None:
    msg = parse_message(INVITE.replace(header, replacement))
    assert isinstance(msg, Request)
    with pytest.raises(SipParseError) as info:
        validate_request(msg)
    assert info.value.status == 400
