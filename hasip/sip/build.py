"""Building the responses and requests that an element generates itself."""

from __future__ import annotations

from hasip.sip.message import Request

REASONS: dict[int, bytes] = {
    100: b"Trying", 180: b"Ringing", 181: b"Call Is Being Forwarded", 182: b"Queued",
    183: b"Session Progress", 200: b"OK", 202: b"Accepted", 300: b"Multiple Choices",
    301: b"Moved Permanently", 302: b"Moved Temporarily", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    407: b"Proxy Authentication Required", 408: b"Request Timeout", 410: b"Gone",
    413: b"Request Entity Too Large", 414: b"Request-URI Too Long",
    415: b"Unsupported Media Type", 416: b"Unsupported URI Scheme", 420: b"Bad Extension",
    421: b"Extension Required", 423: b"Interval Too Brief",
    480: b"Temporarily Unavailable", 481: b"Call/Transaction Does Not Exist",
    482: b"Loop Detected", 483: b"Too Many Hops", 484: b"Address Incomplete",
    486: b"Busy Here", 487: b"Request Terminated", 488: b"Not Acceptable Here",
    491: b"Request Pending", 500: b"Server Internal Error", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Server Time-out",
    505: b"Version Not Supported", 513: b"Message Too Large", 600: b"Busy Everywhere",
    603: b"Decline", 604: b"Does Not Exist Anywhere", 606: b"Not Acceptable",
}

_COPIED = frozenset((b"via", b"from", b"call-id", b"cseq"))
# (status, reason) -> status line, for the answers a node gives all the time.
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def make_response(
    request: Request,
    status: int,
    reason: bytes | None = None,
    to_tag: str | None = None,
    extra: list[bytes] | None = None,
    body: bytes = b"",
) -> bytes:
    """A response to ``request`` as bytes (RFC 3261 8.2.6.2): Via, From,
    Call-ID and CSeq copied, To copied with ``to_tag`` added when it has none."""
    reason = reason or REASONS.get(status, b"Unknown")
    status_line = _STATUS_LINES.get((status, reason))
    if status_line is None:
        status_line = b"SIP/2.0 %d %s" % (status, reason)
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[(status, reason)] = status_line
    lines = [status_line]
    keys = request.keys
    raws = request.raws
    to_at = -1
    for i in range(len(keys)):
        key = keys[i]
        if key in _COPIED:
            lines.append(raws[i])
        elif to_at < 0 and key == b"to":
            to_at = i
    if to_at >= 0:
        to_line = raws[to_at]
        if to_tag is not None and to_line.lower().find(b"tag=") < 0:
            to_line = b"%s;tag=%s" % (to_line.rstrip(), to_tag.encode("latin-1"))
        lines.append(to_line)
    if extra:
        lines.extend(extra)
    lines.append(b"Content-Length: %d" % len(body) if body else b"Content-Length: 0")
    lines.append(b"")
    lines.append(body)
    return b"\r\n".join(lines)


def make_response_from_raw(data: bytes, status: int, reason: bytes) -> bytes | None:
    """A best-effort error response for bytes that did not parse: copy the
    Via, From, To, Call-ID and CSeq lines that can be found. ``None`` when the
    bytes do not even look like a request."""
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    if not lines or lines[0].startswith(b"SIP/") or b" " not in lines[0]:
        return None
    wanted = (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")
    out = [b"SIP/2.0 %d %s" % (status, reason)]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in wanted and b":" in line:
            out.append(line)
    if not any(line.split(b":", 1)[0].strip().lower() in (b"via", b"v") for line in out[1:]):
        return None
    out.append(b"Content-Length: 0")
    out.append(b"")
    out.append(b"")
    return b"\r\n".join(out)


def make_ack_for(request: Request, response_to_line: bytes) -> bytes:
    """The ACK a client transaction sends for a non-2xx final response
    (RFC 3261 17.1.1.3): same R-URI, top Via, From, Call-ID and Route as the
    INVITE, To from the response, CSeq method ACK."""
    lines = [b"ACK %s SIP/2.0" % request.uri_raw]
    seen_via = False
    for key, raw in zip(request.keys, request.raws, strict=True):
        if key == b"via":
            if not seen_via:
                # The first Via line is ours: the proxy always adds its own line.
                lines.append(raw)
                seen_via = True
        elif key in (b"from", b"call-id", b"route", b"max-forwards"):
            lines.append(raw)
    lines.append(response_to_line)
    lines.append(b"CSeq: %d ACK" % request.cseq[0])
    lines.append(b"Content-Length: 0")
    lines.append(b"")
    lines.append(b"")
    return b"\r\n".join(lines)


def make_cancel_for(request: Request) -> bytes:
    """The CANCEL for a request we forwarded (RFC 3261 9.1): same R-URI, top
    Via, From, To, Call-ID, Route and CSeq number, method CANCEL."""
    lines = [b"CANCEL %s SIP/2.0" % request.uri_raw]
    seen_via = False
    for key, raw in zip(request.keys, request.raws, strict=True):
        if key == b"via":
            if not seen_via:
                lines.append(raw)
                seen_via = True
        elif key in (b"from", b"to", b"call-id", b"route", b"max-forwards"):
            lines.append(raw)
    lines.append(b"CSeq: %d CANCEL" % request.cseq[0])
    lines.append(b"Content-Length: 0")
    lines.append(b"")
    lines.append(b"")
    return b"\r\n".join(lines)
