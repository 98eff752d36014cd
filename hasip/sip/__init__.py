"""The SIP protocol layer, sans-IO: bytes in, messages and actions out.

Nothing in this package touches a socket or reads the clock; every
time-dependent call takes ``now`` as an argument.
"""

from hasip.sip.errors import SipParseError
from hasip.sip.message import Request, Response, SipMessage, parse_message

__all__ = ["Request", "Response", "SipMessage", "SipParseError", "parse_message"]
