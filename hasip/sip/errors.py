"""Errors raised by the SIP protocol layer.

Every error a parser raises carries the status code a server should answer
with (as h11's ``error_status_hint``). Any other exception escaping the
parser is a bug.
"""


class SipParseError(Exception):
    """A message (or part of one) that does not follow RFC 3261's grammar.

    ``status`` is the response code to send when the message is a request
    that can still be answered (400 unless a more precise code applies, such
    as 505 for an unknown SIP version or 513 for an oversize message).
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
