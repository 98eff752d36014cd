"""Parsers for the header values a proxy reads: name-addr/addr-spec (From,
To, Contact, Route, Record-Route), Via, CSeq and list splitting.

All parsers take ``str`` decoded as latin-1 and raise :class:`SipParseError`
on malformed input.
"""

from __future__ import annotations

import re
from typing import Final

from hasip.sip.errors import SipParseError
from hasip.sip.grammar import (
    ABSOLUTE_URI_RE,
    PARAM_RE,
    PLAIN_PARAMS_RE,
    QUOTED_RE,
    TOKEN_RE,
    VIA_RE,
    is_digits,
)
from hasip.sip.uri import Uri, parse_uri
from hasip.util.memo import remember

# Compact forms (RFC 3261 section 7.3.3 and later RFCs) -> canonical lowercase names.
COMPACT_FORMS: dict[bytes, bytes] = {
    b"a": b"accept-contact",
    b"b": b"referred-by",
    b"c": b"content-type",
    b"d": b"request-disposition",
    b"e": b"content-encoding",
    b"f": b"from",
    b"i": b"call-id",
    b"j": b"reject-contact",
    b"k": b"supported",
    b"l": b"content-length",
    b"m": b"contact",
    b"n": b"identity-info",
    b"o": b"event",
    b"r": b"refer-to",
    b"s": b"subject",
    b"t": b"to",
    b"u": b"allow-events",
    b"v": b"via",
    b"x": b"session-expires",
    b"y": b"identity",
}


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value (RFC 3261 7.3.1), keeping commas
    inside quoted strings and inside ``<...>`` intact."""
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:
        return [part.strip() for part in value.split(",")]
    parts: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "," and not angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    if quoted:
        raise SipParseError("unterminated quoted string")
    parts.append(value[start:].strip())
    return parts


def parse_params(text: str, pos: int, what: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )`` from ``pos`` to the end of ``text``."""
    rest = text[pos:]
    if PLAIN_PARAMS_RE.fullmatch(rest) is None:
        return general_params(text, pos, what)
    # Tokens only: one match for the whole list instead of one per parameter
    # (and a method call for each of its groups).
    params: dict[str, str | None] = {}
    for piece in rest.split(";")[1:]:
        name, eq, value = piece.partition("=")
        params[name.lower()] = value if eq else None
    return params


def general_params(text: str, pos: int, what: str) -> dict[str, str | None]:
    """Any parameter list: quoted values, IPv6 references, white space."""
    params: dict[str, str | None] = {}
    n = len(text)
    while pos < n:
        m = PARAM_RE.match(text, pos)
        if m is None:
            if text[pos:].strip(" \t"):
                raise SipParseError(f"malformed parameters in {what}: {text[pos:]!r}")
            break
        params[m.group(1).lower()] = m.group(2)
        pos = m.end()
    return params


class NameAddr:
    """``[display-name] <URI> *(;param)`` or ``addr-spec *(;param)``.

    The URI is parsed when first read: a proxy reads the tags of From and To
    on every request and their URIs rarely.
    """

    __slots__ = ("_uri", "display", "params", "text", "uri_text")

    def __init__(self, display: str | None, uri_text: str, params: dict[str, str | None],
                 text: str) -> None:
        self.display = display
        self.uri_text = uri_text
        self._uri: Uri | None = None
        self.params = params
        self.text = text

    @property
    def uri(self) -> Uri:
        """The URI; raises :class:`SipParseError` when it is malformed."""
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __repr__(self) -> str:
        return f"NameAddr({self.text!r})"


# Parsed name-addrs by text: a dialog repeats its From, To and Route values
# in every request. Bounded; parsed values are never mutated.
_NA_CACHE: dict[str, NameAddr] = {}


def parse_name_addr(text: str, what: str = "header") -> NameAddr:
    """Parse one name-addr or addr-spec with header parameters (RFC 3261 20.10)."""
    na = _NA_CACHE.get(text)
    if na is None:
        na = remember(_NA_CACHE, text,
                      _with_new_tag(text, what) or _parse_name_addr(text, what))
    return na


def _with_new_tag(text: str, what: str) -> NameAddr | None:
    """A From (or To) whose last parameter is a plain ``;tag=``: the rest is
    what the same phone sent before (parsed once, cached), the tag is new in
    every request. None when the text is not of that shape."""
    s = text.strip(" \t")
    i = s.rfind(";tag=")
    if i <= 0:
        return None
    tag = s[i + 5:]
    if TOKEN_RE.fullmatch(tag) is None:
        return None
    base = parse_name_addr(s[:i], what)
    params = dict(base.params)
    params["tag"] = tag
    return NameAddr(base.display, base.uri_text, params, s)


def _parse_name_addr(text: str, what: str) -> NameAddr:
    s = text.strip(" \t")
    display: str | None = None
    if s.startswith('"'):
        m = QUOTED_RE.match(s)
        if m is None:
            raise SipParseError(f"unterminated quoted display name in {what}")
        display = m.group(0)
        rest = s[m.end():].lstrip(" \t")
        if not rest.startswith("<"):
            raise SipParseError(f"expected <URI> after display name in {what}")
        lt = len(s) - len(rest)
    else:
        lt = s.find("<")
        if lt >= 0:
            words = s[:lt].split()
            for word in words:
                if TOKEN_RE.fullmatch(word) is None:
                    raise SipParseError(f"display name is not a token list in {what}")
            display = " ".join(words) or None
    if lt >= 0:
        gt = s.find(">", lt)
        if gt < 0:
            raise SipParseError(f"missing '>' in {what}")
        uri_text = s[lt + 1:gt]
        if not uri_text or uri_text != uri_text.strip(" \t"):
            raise SipParseError(f"white space inside <> in {what}")
        if ABSOLUTE_URI_RE.fullmatch(uri_text) is None:
            raise SipParseError(f"malformed URI in {what}: {uri_text!r}")
        params = parse_params(s, gt + 1, what)
    else:
        # addr-spec without <>: it ends at the first ';' (RFC 3261 20.10: a
        # URI with ',', ';' or '?' must be enclosed in <>).
        semi = s.find(";")
        uri_text = (s if semi < 0 else s[:semi]).rstrip(" \t")
        if not uri_text or any(c in uri_text for c in " \t?,"):
            raise SipParseError(f"malformed addr-spec in {what}: {uri_text!r}")
        if ABSOLUTE_URI_RE.fullmatch(uri_text) is None:
            raise SipParseError(f"malformed URI in {what}: {uri_text!r}")
        params = parse_params(s, len(uri_text), what) if semi >= 0 else {}
    return NameAddr(display, uri_text, params, s)


class Via:
    """One Via value (RFC 3261 20.42, RFC 3581)."""

    __slots__ = ("host", "params", "port", "protocol", "text", "transport")

    def __init__(self, protocol: str, transport: str, host: str, port: int | None,
                 params: dict[str, str | None], text: str) -> None:
        self.protocol = protocol
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.text = text

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return self.host.lower() if self.port is None else f"{self.host.lower()}:{self.port}"

    def is_rfc3261_branch(self) -> bool:
        """A branch with the magic cookie and something after it (RFC 3261 8.1.1.7;
        RFC 4475 3.2.1 treats a bare cookie as no branch)."""
        b = self.params.get("branch")
        return b is not None and len(b) > 7 and b.startswith("z9hG4bK")

    def __repr__(self) -> str:
        return f"Via({self.text!r})"


_BRANCH_RE = re.compile(r";[ \t]*branch[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)


def branch_of(via_value: str) -> str | None:
    """The branch of a Via value without parsing the rest: enough to match a
    response to a client transaction, whose Via we wrote ourselves."""
    m = _BRANCH_RE.search(via_value)
    return m.group(1) if m else None


# Via prefixes ("SIP/2.0/UDP 192.0.2.7:5060", up to the first ";") already
# parsed -> (protocol, transport, host, port): a client repeats its prefix in
# every request and only the parameters (the branch) change. Bounded.
_VIA_PREFIXES: dict[str, tuple[str, str, str, int | None]] = {}


def parse_via(text: str) -> Via:
    semi = text.find(";")
    prefix = text if semi < 0 else text[:semi]
    known = _VIA_PREFIXES.get(prefix)
    if known is not None:
        protocol, transport, host, port_num = known
        params = parse_params(text, len(prefix), "Via")
    else:
        protocol, transport, host, port_num, end = _parse_via_prefix(text)
        params = parse_params(text, end, "Via")
        if end == len(prefix):
            remember(_VIA_PREFIXES, prefix, (protocol, transport, host, port_num))
    for key in ("branch", "received", "maddr", "ttl"):
        if key in params and not params[key]:
            raise SipParseError(f"Via parameter {key} without a value")
    return Via(protocol, transport, host, port_num, params, text.strip())


def _parse_via_prefix(text: str) -> tuple[str, str, str, int | None, int]:
    """sent-protocol and sent-by; and where the parameters start."""
    m = VIA_RE.match(text)
    if m is None:
        raise SipParseError(f"malformed Via {text.strip()!r}")
    name, version, transport, host, port = m.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise SipParseError(f"unsupported protocol in Via: {name}/{version}", 505)
    port_num = int(port) if port else None
    if port_num is not None and port_num > 65535:
        raise SipParseError("Via port out of range")
    return f"{name}/{version}", transport.upper(), host, port_num, m.end()


# Methods known to be tokens, so their CSeq need not be matched.
_METHOD_TOKENS: Final = frozenset(("REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS",
                                   "PRACK", "UPDATE", "INFO", "SUBSCRIBE", "NOTIFY", "REFER",
                                   "MESSAGE", "PUBLISH"))


def parse_cseq(text: str) -> tuple[int, str]:
    """``CSeq = 1*DIGIT LWS Method``; the number is below 2**31 (RFC 3261 8.1.1.5)."""
    parts = text.split()
    if len(parts) != 2 or not is_digits(parts[0]) or len(parts[0]) > 10:
        raise SipParseError(f"malformed CSeq {text.strip()!r}")
    number = int(parts[0])
    if number >= 2**31:
        raise SipParseError("CSeq number out of range")
    if parts[1] not in _METHOD_TOKENS and TOKEN_RE.fullmatch(parts[1]) is None:
        raise SipParseError("CSeq method is not a token")
    return number, parts[1]
