"""Hypothesis properties of the parser and the framer."""

from hypothesis import given, settings
from hypothesis import strategies as st

from hasip.sip.errors import SipParseError
from hasip.sip.framing import StreamFramer
from hasip.sip.message import Request, parse_message, validate_request
from hasip.util.ids import hex8

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
                min_size=1, max_size=12)
user_part = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()", min_size=1,
                    max_size=12)
host = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True)
header_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                       max_size=40).map(str.strip)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["INVITE", "BYE", "OPTIONS", "REGISTER"]) | token)
    user = draw(user_part)
    lines = [
        f"{method} sip:{user}@{draw(host)}:{draw(st.integers(1, 65535))} SIP/2.0",
        f"Via: SIP/2.0/UDP {draw(host)};branch=z9hG4bK{draw(token)}",
        f"From: <sip:{draw(user_part)}@{draw(host)}>;tag={draw(token)}",
        f"To: \"{draw(token)}\" <sip:{user}@{draw(host)}>",
        f"Call-ID: {draw(token)}@{draw(host)}",
        f"CSeq: {draw(st.integers(0, 2**31 - 1))} {method}",
        f"Max-Forwards: {draw(st.integers(0, 255))}",
    ]
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"X-{draw(token)}: {draw(header_value)}")
    body = draw(st.binary(max_size=64))
    head = "\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@given(requests())
@settings(max_examples=150)
def test_parse_serialise_roundtrip(data: bytes) -> None:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    validate_request(msg)
    out = msg.to_bytes()
    assert out == data
    again = parse_message(out)
    assert isinstance(again, Request)
    assert (again.method, again.uri_raw, again.keys, again.raws, again.body) == (
        msg.method, msg.uri_raw, msg.keys, msg.raws, msg.body)


def _parse_or_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
        if isinstance(msg, Request):
            validate_request(msg)
        msg.cseq  # noqa: B018
        msg.top_via  # noqa: B018
    except SipParseError:
        pass


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_any_bytes_parse_or_raise_the_protocol_error(data: bytes) -> None:
    _parse_or_error(data)


@given(requests(), st.data())
@settings(max_examples=100)
def test_mutated_messages_parse_or_raise_the_protocol_error(data: bytes,
                                                           draw: st.DataObject) -> None:
    pos = draw.draw(st.integers(0, len(data) - 1))
    junk = draw.draw(st.binary(min_size=1, max_size=8))
    _parse_or_error(data[:pos] + junk + data[pos + 1:])


@given(st.lists(requests(), min_size=1, max_size=4), st.lists(st.integers(1, 50), max_size=30))
@settings(max_examples=100)
def test_framer_whole_or_in_pieces(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(messages)
    whole = StreamFramer().feed(stream)
    framer = StreamFramer()
    pieces: list[bytes] = []
    pos = 0
    for size in cuts:
        pieces += framer.feed(stream[pos:pos + size])
        pos += size
    pieces += framer.feed(stream[pos:])
    assert whole == pieces == messages


@given(st.binary(max_size=400), st.lists(st.integers(1, 40), max_size=20))
@settings(max_examples=150)
def test_framer_any_bytes_frame_or_raise(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer(max_size=1024)
    try:
        pos = 0
        for size in cuts:
            framer.feed(data[pos:pos + size])
            pos += size
        framer.feed(data[pos:])
    except SipParseError:
        pass


@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_hex8_is_eight_hex_digits(n: int) -> None:
    assert hex8(n) == f"{n:08x}"
