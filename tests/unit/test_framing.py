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


def test_in_message_only_while_a_message_is_incomplete() -> None:
    """The transport times a message from the moment its first byte waits
    in the buffer; keepalives between messages never count as one."""
    framer = StreamFramer()
    assert not framer.in_message
    assert framer.feed(MSG[:10]) == []
    assert framer.in_message  # a request line begun
    assert framer.feed(MSG[10:]) == [MSG]
    assert not framer.in_message and framer.buffered == 0
    # A ping in pieces waits in the buffer without being a message.
    for piece in (b"\r", b"\n", b"\r"):
        assert framer.feed(piece) == []
        assert not framer.in_message
    assert framer.feed(b"\n") == [PING]
    assert not framer.in_message
    # A complete message followed by the start of the next: in one again.
    assert framer.feed(MSG + MSG[:3]) == [MSG]
    assert framer.in_message
    assert framer.feed(MSG[3:]) == [MSG]
    assert not framer.in_message


def test_in_message_after_a_ping_and_a_partial_head() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\nINVITE sip:a@b SIP/2.0\r\nVia: x\r\n") == [PING]
    assert framer.in_message
    # The header block is complete but the body is not: still in a message.
    assert framer.feed(b"Content-Length: 5\r\n\r\nhel") == []
    assert framer.in_message


def test_in_message_byte_by_byte_is_true_exactly_inside_messages() -> None:
    stream = b"\r\n\r\n" + MSG + b"\r\n" + MSG
    framer = StreamFramer()
    inside = []
    for i in range(len(stream)):
        done = framer.feed(stream[i:i + 1])
        inside.append((framer.in_message, bool(done)))
    # The first byte of each message starts it; its last byte ends it.
    first = 4
    second = 4 + len(MSG) + 2
    for i, (in_msg, done) in enumerate(inside):
        in_first = first <= i < first + len(MSG) - 1
        in_second = second <= i < second + len(MSG) - 1
        assert in_msg == (in_first or in_second), i
        ends = i in (first + len(MSG) - 1, second + len(MSG) - 1, 3)  # 3: the ping
        assert done == ends, i
