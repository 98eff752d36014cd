"""Cutting a byte stream (TCP) into SIP messages by Content-Length (RFC 3261 18.3),
with RFC 5626 CRLF keepalives. Sans-IO: feed bytes, get messages."""

from __future__ import annotations

import re

from hasip.sip.errors import SipParseError
from hasip.sip.message import MAX_MESSAGE_SIZE

_CL_RE = re.compile(rb"(?:^|\n)(?:content-length|l)[ \t]*:[ \t]*(\S*)", re.IGNORECASE)

# What feed() yields for a double-CRLF keepalive ping (RFC 5626 3.5.1): the
# transport answers it with a single CRLF pong.
PING = b"\r\n\r\n"


class StreamFramer:
    """Accumulates stream bytes and yields whole messages.

    At most ``max_size`` bytes are buffered for one message: a peer that sends
    an endless header block or announces a huge body gets a
    :class:`SipParseError` (the transport then closes the connection).
    """

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def in_message(self) -> bool:
        """Whether the bytes held are the start of a message not yet complete.

        CRLFs between messages are not: a keepalive ping that arrived in
        part (``\r\n\r``) is all that can wait in the buffer without a
        message having begun (RFC 5626 3.5.1), so a connection that only
        pings is never "in a message". The transport times how long one
        message takes to arrive from the moment this turns true.
        """
        buf = self._buf
        return len(buf) > 0 and buf[0] != 13 and buf[0] != 10

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            if buf[0] in (13, 10):
                if buf.startswith(PING):
                    out.append(PING)
                    del buf[:4]
                    continue
                stripped = len(buf) - len(buf.lstrip(b"\r\n"))
                if stripped == len(buf) and stripped < 4 and buf.startswith(b"\r\n\r"[:stripped]):
                    break  # maybe the start of a ping; wait for more
                del buf[:stripped]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    raise SipParseError("header block exceeds the size limit", 513)
                break
            head_len = end + 4
            m = _CL_RE.search(buf, 0, end + 2)
            length = 0
            if m is not None:
                value = m.group(1)
                if not value.isdigit() or len(value) > 10:
                    raise SipParseError("malformed Content-Length on a stream")
                length = int(value)
            total = head_len + length
            if total > self.max_size:
                raise SipParseError("message exceeds the size limit", 513)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out
