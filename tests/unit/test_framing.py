"""Stream framing by Content-Length, keepalives and the size cap."""

import pytest

from hasip.sip.errors import SipParseError
from hasip.sip.framing import PING, StreamFramer

MSG = (b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
       b"Content-Length: 5\r\n\r\nhello")


def test_whole_and_byte_by_byte_give_the_same_messages() -> None:
    stream = MSG + b"\r\n\r\n" + MSG + MSG
    assert StreamFramer().feed(stream) == [MSG, PING, MSG, MSG]
    framer = StreamFramer()
    out = []
    for i in range(len(stream)):
        out += framer.feed(stream[i:i + 1])
    assert out == [MSG, PING, MSG, MSG]


def test_single_crlf_is_a_pong_and_ignored() -> None:
    assert StreamFramer().feed(b"\r\n" + MSG) == [MSG]


def test_compact_content_length() -> None:
    msg = MSG.replace(b"Content-Length", b"l")
    assert StreamFramer().feed(msg) == [msg]


def test_caps() -> None:
    with pytest.raises(SipParseError):
        StreamFramer(max_size=2000).feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * 3000)
    with pytest.raises(SipParseError):
        StreamFramer(max_size=2000).feed(MSG.replace(b"Length: 5", b"Length: 99999") + b"x")
    with pytest.raises(SipParseError):
        StreamFramer().feed(MSG.replace(b"Length: 5", b"Length: -5"))
