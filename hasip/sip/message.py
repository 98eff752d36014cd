"""SIP messages: parse from bytes lazily, edit, serialise (RFC 3261 section 7).

Parsing splits the start line and the header lines and nothing more; a header
value is unfolded and parsed only when somebody asks for it. Headers that are
never touched are written back byte for byte, so a proxy forwards what it does
not understand unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from hasip.sip.errors import SipParseError
from hasip.sip.grammar import DATE_RE, TOKEN_RE, is_token
from hasip.sip.headers import (
    COMPACT_FORMS,
    NameAddr,
    Via,
    branch_of,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_list,
)
from hasip.sip.uri import SipUri, Uri, parse_uri

# A hard cap on any message, datagram or stream: the largest UDP payload. A
# message larger than this is answered 513 (RFC 3261 21.5.14) and a stream
# that announces one is closed, so a peer cannot make us buffer without end.
MAX_MESSAGE_SIZE = 65535

_FOLD_RE = re.compile(rb"[ \t]*\r?\n[ \t]+")
_SIP20 = b"SIP/2.0"


def _colon(raw: bytes) -> int:
    """Where the first colon of a header line is, -1 if none. A loop over the
    name (a few bytes): compiled, cheaper than ``bytes.find``'s argument
    parsing."""
    n = len(raw)
    i = 0
    while i < n:
        if raw[i] == 58:
            return i
        i += 1
    return -1


def _line_value(raw: bytes, folded: bool) -> bytes:
    """The value of header line ``raw``: after the colon, without the spaces
    and tabs around it, unfolded when the message may hold folded lines.
    (Hot: trimmed by index, one slice; compiled, a loop over the bytes is
    cheaper than bytes methods, whose arguments CPython parses each call.)"""
    start = _colon(raw) + 1
    if folded:
        value = raw[start:]
        if value.find(b"\n") >= 0:
            value = _FOLD_RE.sub(b" ", value)
        return value.strip(b" \t")
    end = len(raw)
    while start < end and (raw[start] == 32 or raw[start] == 9):
        start += 1
    while end > start and (raw[end - 1] == 32 or raw[end - 1] == 9):
        end -= 1
    return raw[start:end]


class SipMessage:
    """Headers and body shared by requests and responses.

    ``keys[i]`` is the canonical lowercase name of header line ``raws[i]``
    (compact forms expanded); ``raws[i]`` is the line as received, folding
    included, without its line ending.
    """

    __slots__ = ("_call_id", "_cseq", "_from", "_has_cl", "_split", "_to", "_top_via",
                 "_vias", "body", "folded", "keys", "raws")

    def __init__(self, keys: list[bytes], raws: list[bytes], body: bytes = b"") -> None:
        self.keys = keys
        self.raws = raws
        self.body = body
        self._has_cl = b"content-length" in keys
        # False when no header line can hold a line break (the parser knows):
        # values are then read without looking for folding.
        self.folded = True
        self._vias: list[Via] | None = None
        self._top_via: Via | None = None
        # List headers split once (Contact is read by the sanity checks, NAT
        # detection and the registrar); an edit of a header forgets its entry.
        self._split: dict[bytes, list[str]] = {}
        self._cseq: tuple[int, str] | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._call_id: str | None = None

    # -- reading ---------------------------------------------------------

    def start_line(self) -> bytes:
        raise NotImplementedError

    # Hot: no ``list.index`` that can fail (a ValueError formats its message)
    # and no ``b"x" in data`` (on CPython 3.11 it first tries the needle as an
    # integer and formats a TypeError): loops and ``bytes.find`` instead.
    def value_at(self, i: int) -> bytes:
        """The value of header line ``i``."""
        return _line_value(self.raws[i], self.folded)

    def get(self, key: bytes) -> bytes | None:
        """Value of the first header line named ``key`` (lowercase, full name)."""
        keys = self.keys
        for i in range(len(keys)):
            if keys[i] == key:
                return self.value_at(i)
        return None

    def get_str(self, key: bytes) -> str | None:
        value = self.get(key)
        return None if value is None else value.decode("latin-1")

    def get_all(self, key: bytes) -> list[bytes]:
        """Values of every header line named ``key``, unsplit."""
        keys = self.keys
        return [self.value_at(i) for i in range(len(keys)) if keys[i] == key]

    def values(self, key: bytes) -> list[str]:
        """Every comma-separated value of a list header, across its lines."""
        split = self._split.get(key)
        if split is None:
            split = []
            for value in self.get_all(key):
                split.extend(split_list(value.decode("latin-1")))
            self._split[key] = split
        return list(split)

    def count(self, key: bytes) -> int:
        return self.keys.count(key)

    def has(self, key: bytes) -> bool:
        return key in self.keys

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first (parsed once)."""
        if self._vias is None:
            values = self.values(b"via")
            if not values:
                raise SipParseError("missing Via")
            self._vias = [parse_via(v) for v in values]
        return self._vias

    @property
    def top_via(self) -> Via:
        via = self._top_via
        if via is None:
            if self._vias is not None:
                via = self._vias[0]
            else:
                # Parse only the first line's first value: the proxy needs no more.
                try:
                    i = self.keys.index(b"via")
                except ValueError:
                    raise SipParseError("missing Via")
                first = self.value_at(i).decode("latin-1")
                via = parse_via(split_list(first)[0] if "," in first else first)
            self._top_via = via
        return via

    def _edited(self, key: bytes) -> None:
        """Lines named ``key`` were added, removed or rewritten: forget what
        was read from them (the single-valued headers are never edited)."""
        self._split.pop(key, None)
        if key == b"via":
            self._vias = None
            self._top_via = None

    def set_line(self, i: int, line: bytes) -> None:
        """Rewrite header line ``i`` (its name stays)."""
        self.raws[i] = line
        self._edited(self.keys[i])

    def _copy_caches(self, other: SipMessage) -> None:
        other._cseq = self._cseq
        other._call_id = self._call_id
        other._from = self._from
        other._to = self._to

    @property
    def cseq(self) -> tuple[int, str]:
        if self._cseq is None:
            value = self.get(b"cseq")
            if value is None:
                raise SipParseError("missing CSeq")
            self._cseq = parse_cseq(value.decode("latin-1"))
        return self._cseq

    @property
    def call_id(self) -> str:
        if self._call_id is None:
            value = self.get(b"call-id")
            text = "" if value is None else value.decode("latin-1")
            if not text or " " in text or "\t" in text:
                raise SipParseError("missing or malformed Call-ID")
            self._call_id = text
        return self._call_id

    @property
    def from_(self) -> NameAddr:
        if self._from is None:
            value = self.get(b"from")
            if value is None:
                raise SipParseError("missing From")
            self._from = parse_name_addr(value.decode("latin-1"), "From")
        return self._from

    @property
    def to(self) -> NameAddr:
        if self._to is None:
            value = self.get(b"to")
            if value is None:
                raise SipParseError("missing To")
            self._to = parse_name_addr(value.decode("latin-1"), "To")
        return self._to

    @property
    def content_length(self) -> int:
        return len(self.body)

    def set_body(self, body: bytes) -> None:
        """Replace the body (a media relay's SDP); Content-Length follows."""
        self.body = body
        if self._has_cl:
            self.replace(b"content-length", b"Content-Length: %d" % len(body))

    # -- editing ---------------------------------------------------------

    def insert_top(self, key: bytes, line: bytes) -> None:
        """Insert a header line above the first line named ``key`` (or first of all)."""
        i = self.keys.index(key) if key in self.keys else 0
        self.keys.insert(i, key)
        self.raws.insert(i, line)
        self._edited(key)

    def append(self, key: bytes, line: bytes) -> None:
        self.keys.append(key)
        self.raws.append(line)
        self._edited(key)

    def replace(self, key: bytes, line: bytes) -> None:
        """Replace the first line named ``key`` (appending when there is none)."""
        if key not in self.keys:
            self.append(key, line)
            return
        self.raws[self.keys.index(key)] = line
        self._edited(key)

    def remove_all(self, key: bytes) -> None:
        keep = [i for i, k in enumerate(self.keys) if k != key]
        self.keys = [self.keys[i] for i in keep]
        self.raws = [self.raws[i] for i in keep]
        self._edited(key)

    def keep_lines(self, key: bytes, keep: Callable[[bytes], bool]) -> None:
        """Remove the lines named ``key`` whose value ``keep`` refuses."""
        if key not in self.keys:
            return
        keys: list[bytes] = []
        raws: list[bytes] = []
        for i in range(len(self.keys)):
            if self.keys[i] != key or keep(self.value_at(i)):
                keys.append(self.keys[i])
                raws.append(self.raws[i])
        self.keys = keys
        self.raws = raws
        self._edited(key)

    def pop_first_value(self, key: bytes) -> str | None:
        """Remove the first comma-separated value of ``key`` and return it."""
        if key not in self.keys:
            return None
        i = self.keys.index(key)
        raw = self.raws[i]
        colon = raw.index(b":")
        values = split_list(self.value_at(i).decode("latin-1"))
        first = values[0]
        if len(values) == 1:
            del self.keys[i]
            del self.raws[i]
        else:
            self.raws[i] = raw[:colon + 1] + b" " + ", ".join(values[1:]).encode("latin-1")
        self._edited(key)
        return first

    def to_bytes(self) -> bytes:
        parts = [self.start_line(), *self.raws]
        if not self._has_cl:
            # A message received over UDP may lack Content-Length; streams need it
            # (RFC 3261 18.3), so add the one the body implies.
            parts.append(b"Content-Length: %d" % len(self.body))
        parts.append(b"")
        parts.append(self.body)
        return b"\r\n".join(parts)


class Request(SipMessage):
    __slots__ = ("_uri", "max_forwards", "method", "uri_raw")

    def __init__(self, method: str, uri_raw: bytes, keys: list[bytes], raws: list[bytes],
                 body: bytes = b"") -> None:
        super().__init__(keys, raws, body)
        self.method = method
        self.uri_raw = uri_raw
        self._uri: Uri | None = None
        # Set by validate_request: the Max-Forwards value, None when absent.
        self.max_forwards: int | None = None

    def copy(self) -> Request:
        """A copy to edit and forward; header lines are shared (bytes are immutable)."""
        out = Request(self.method, self.uri_raw, list(self.keys), list(self.raws), self.body)
        out._uri = self._uri
        out._has_cl = self._has_cl
        out.folded = self.folded
        out.max_forwards = self.max_forwards
        self._copy_caches(out)
        return out

    @property
    def uri(self) -> Uri:
        if self._uri is None:
            self._uri = parse_uri(self.uri_raw.decode("latin-1"))
        return self._uri

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value
        self.uri_raw = value.raw if isinstance(value, SipUri) else str(value).encode("latin-1")

    def start_line(self) -> bytes:
        return b"%s %s SIP/2.0" % (self.method.encode("latin-1"), self.uri_raw)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_raw!r}>"


class Response(SipMessage):
    __slots__ = ("reason", "status")

    def top_branch(self) -> str | None:
        """The branch of the top Via, read without parsing the Via."""
        if b"via" not in self.keys:
            return None
        raw = self.raws[self.keys.index(b"via")]
        first = raw.split(b",", 1)[0] if raw.find(b",") >= 0 else raw
        return branch_of(first.decode("latin-1"))

    def __init__(self, status: int, reason: bytes, keys: list[bytes], raws: list[bytes],
                 body: bytes = b"") -> None:
        super().__init__(keys, raws, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> bytes:
        return b"SIP/2.0 %d %s" % (self.status, self.reason)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason!r}>"


# Header names as written on the wire -> canonical key. Senders use a handful
# of spellings, so the check and the lowering are done once per spelling; the
# table is bounded so that a flood of invented names cannot grow it.
_NAMES: dict[bytes, bytes] = {}


def _header_key(name: bytes) -> bytes:
    stripped = name.rstrip(b" \t")
    if not is_token(stripped):
        raise SipParseError(f"header name is not a token: {stripped!r}")
    key = stripped.lower()
    if len(key) == 1:
        key = COMPACT_FORMS.get(key, key)
    if len(_NAMES) < 1024:
        _NAMES[name] = key
    return key


# Request methods as received -> as str, for the methods seen so far
# (bounded like the name table): a method is checked and decoded once.
_METHODS: dict[bytes, str] = {}


def _crlf_headers(lines: list[bytes]) -> list[bytes] | None:
    """The keys of header lines split at CRLF, or None when a line needs the
    general path (a continuation line, a line without a colon)."""
    keys: list[bytes] = []
    names = _NAMES
    for raw in lines:
        colon = _colon(raw)
        if colon <= 0:
            return None
        name = raw[:colon]
        key = names.get(name)
        if key is None:
            first = raw[:1]
            if first == b" " or first == b"\t":
                return None
            key = _header_key(name)
        keys.append(key)
    return keys


def _split_headers(head: bytes) -> tuple[list[bytes], list[bytes]]:
    """Header lines with folding or bare LF line ends: the slow, general way."""
    keys: list[bytes] = []
    raws: list[bytes] = []
    for line in head.splitlines()[1:]:
        first = line[:1]
        if first == b" " or first == b"\t":
            if not raws:
                raise SipParseError("continuation line before any header")
            raws[-1] = raws[-1] + b"\r\n" + line
            continue
        colon = line.find(b":")
        if colon <= 0:
            raise SipParseError("header line without a name and colon")
        name = line[:colon]
        key = _NAMES.get(name)
        if key is None:
            key = _header_key(name)
        keys.append(key)
        raws.append(line)
    return keys, raws


def parse_message(data: bytes, datagram: bool = True) -> Request | Response:
    """Parse one message.

    For a datagram, ``Content-Length`` (when present) says how much of the rest
    is body; octets beyond it are discarded (RFC 3261 18.3) and a length larger
    than what arrived is an error. For a stream the framer has already cut the
    message to its length, and ``data`` ends where the body does.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError("message too large", 513)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        body_start = end + 4
    else:
        end = data.find(b"\n\n")
        if end < 0:
            raise SipParseError("no blank line after the headers")
        body_start = end + 2
    head = data[:end]
    # The common case, CRLF line ends and no folding: split once, and each
    # name is looked up in the table of spellings seen before.
    raws = head.split(b"\r\n")
    start = raws.pop(0)
    crlf_keys = _crlf_headers(raws) if head.count(b"\n") == len(raws) else None
    if crlf_keys is None:
        keys, raws = _split_headers(head)
        start = head.split(b"\n", 1)[0].rstrip(b"\r")
    else:
        keys = crlf_keys

    body = data[body_start:]
    n_cl = keys.count(b"content-length")
    if n_cl:
        if n_cl > 1:
            raise SipParseError("more than one Content-Length")
        raw_cl = _line_value(raws[keys.index(b"content-length")], crlf_keys is None)
        if not raw_cl.isdigit() or len(raw_cl) > 10:
            raise SipParseError("malformed Content-Length")
        length = int(raw_cl)
        if length > len(body):
            raise SipParseError("Content-Length larger than the message")
        if datagram:
            body = body[:length]
        elif length != len(body):
            raise SipParseError("Content-Length does not match the framed body")

    if start.startswith(b"SIP/"):
        parts = start.split(b" ", 2)
        if len(parts) < 2 or parts[0] != _SIP20:
            raise SipParseError("malformed status line or unsupported version")
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not b"100" <= code <= b"699":
            raise SipParseError("malformed status code")
        resp = Response(int(code), parts[2] if len(parts) == 3 else b"", keys, raws, body)
        resp.folded = crlf_keys is None
        return resp

    parts = start.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError("malformed request line")
    method, uri_raw, version = parts
    name = _METHODS.get(method)
    if name is None:
        if not is_token(method):
            raise SipParseError("method is not a token")
        name = method.decode("latin-1")
        if len(_METHODS) < 256:
            _METHODS[method] = name
    if version != _SIP20:
        if version.upper().startswith(b"SIP/"):
            raise SipParseError("unsupported SIP version", 505)
        raise SipParseError("malformed request line")
    req = Request(name, uri_raw, keys, raws, body)
    req.folded = crlf_keys is None
    return req


# Requests whose Contact is used (registration, dialog target): the others'
# Contact is not read, so it is not parsed either.
_CONTACT_METHODS = frozenset(("REGISTER", "INVITE", "SUBSCRIBE", "NOTIFY", "REFER", "UPDATE"))


def _validate_common(msg: SipMessage) -> None:
    # One pass counting the headers that must be there (once, but Via).
    n_from = n_to = n_call_id = n_cseq = n_via = 0
    for key in msg.keys:
        if key == b"via":
            n_via += 1
        elif key == b"from":
            n_from += 1
        elif key == b"to":
            n_to += 1
        elif key == b"call-id":
            n_call_id += 1
        elif key == b"cseq":
            n_cseq += 1
    for n, name in ((n_from, "from"), (n_to, "to"), (n_call_id, "call-id"), (n_cseq, "cseq")):
        if n != 1:
            raise SipParseError(f"missing {name}" if n == 0 else f"more than one {name}")
    if not n_via:
        raise SipParseError("missing Via")
    # Only the top Via is ours to read (as Kamailio does): the others belong
    # to the elements the responses go back through.
    msg.top_via  # noqa: B018
    msg.cseq  # noqa: B018
    msg.call_id  # noqa: B018
    msg.from_  # noqa: B018
    msg.to  # noqa: B018


def validate_request(req: Request) -> None:
    """The proxy's sanity checks (Kamailio's sanity module, RFC 4475 3.1.2):
    required headers once each, CSeq method equal to the request method, the
    Request-URI, From, To and Route URIs well formed, no headers in the
    Request-URI, scalar fields in range."""
    uri = req.uri
    if getattr(uri, "headers", None):
        raise SipParseError("headers are not allowed in a Request-URI")
    _validate_common(req)
    if req.cseq[1] != req.method:
        raise SipParseError("CSeq method does not match the request method")
    keys = req.keys
    if b"max-forwards" in keys:
        if keys.count(b"max-forwards") > 1:
            raise SipParseError("more than one Max-Forwards")
        mf = req.get(b"max-forwards") or b""
        if not mf.isdigit() or int(mf) > 255:
            raise SipParseError("Max-Forwards is not a number 0-255")
        req.max_forwards = int(mf)
    # What routing reads, checked before it runs (a header that fails to
    # parse halfway through the routing script would leave the request
    # unanswered): the URIs of From and To, every Route entry.
    for name, addr in (("From", req.from_), ("To", req.to)):
        try:
            addr.uri  # noqa: B018
        except SipParseError as exc:
            raise SipParseError(f"{name}: {exc.reason}") from None
    if b"route" in keys:
        for value in req.values(b"route"):
            parse_name_addr(value, "Route").uri  # noqa: B018
    if b"contact" in keys and req.method in _CONTACT_METHODS:
        for value in req.values(b"contact"):
            if value != "*":
                parse_name_addr(value, "Contact").uri  # noqa: B018 - validates the URI
    if b"expires" in keys:
        exp = req.get(b"expires") or b""
        if not exp.isdigit() or int(exp) >= 2**32:
            raise SipParseError("Expires is not a number below 2**32")
    if b"date" in keys:
        date = req.get_str(b"date") or ""
        if DATE_RE.fullmatch(date) is None:
            raise SipParseError("Date is not an RFC 1123 date in GMT")


def validate_response(resp: Response) -> None:
    _validate_common(resp)
    if TOKEN_RE.fullmatch(resp.cseq[1]) is None:
        raise SipParseError("bad CSeq method")
