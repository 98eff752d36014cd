"""REGISTER processing (RFC 3261 10.3, RFC 3327 Path, RFC 5626/5627
instance ids), sans-IO: a REGISTER and its context in, the changes applied to
the :class:`LocationStore` and the answer to send out.

Authentication and NAT detection happen before (the routing script); this
module trusts the AoR it is given.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass

from hasip.location.binding import FLAG_NAT, FLAG_OUTBOUND, Binding, new_ruid
from hasip.location.store import LocationStore
from hasip.sip.errors import SipParseError
from hasip.sip.grammar import is_digits
from hasip.sip.headers import NameAddr, parse_name_addr
from hasip.sip.message import Request
from hasip.sip.uri import SipUri, parse_uri


@dataclass
class Policy:
    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 3600
    max_contacts: int = 10
    default_q: float = 1.0


# The records below write their __init__ out instead of letting @dataclass
# generate it: a compiled build (hasip/app/compiled.py) compiles only what is written.
@dataclass(init=False)
class Origin:
    """Where the REGISTER came from, as the registrar records it."""

    socket: str                   # our socket, "udp:192.0.2.10:5060"
    received: str | None          # the NATed source, "udp:203.0.113.5:4711"
    nat: bool

    def __init__(self, socket: str, received: str | None = None, nat: bool = False) -> None:
        self.socket = socket
        self.received = received
        self.nat = nat


@dataclass(init=False)
class Outcome:
    status: int
    reason: bytes | None
    headers: list[bytes]
    result: str                   # for metrics: ok, unregistered, query, or the failure

    def __init__(self, status: int, reason: bytes | None = None,
                 headers: list[bytes] | None = None, result: str = "ok") -> None:
        self.status = status
        self.reason = reason
        self.headers = [] if headers is None else headers
        self.result = result


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not is_digits(text) or len(text) > 10:
        return None
    return int(text)


def _q_value(text: str | None, default: float) -> float | None:
    if text is None:
        return default
    try:
        q = float(text)
    except ValueError:
        return None
    return q if 0.0 <= q <= 1.0 else None


def contact_key(uri_text: str) -> str:
    """Contacts are the same binding when their URIs match (RFC 3261 19.1.4,
    reduced to user, host, port and transport)."""
    try:
        uri = parse_uri(uri_text)
    except SipParseError:
        return uri_text
    if not isinstance(uri, SipUri):
        return uri_text
    return f"{uri.scheme}:{uri.user or ''}@{uri.host.lower()}:{uri.port or 0};{uri.transport}"


@dataclass(init=False)
class _Wanted:
    contact: str
    expires: int
    q: float
    instance: str | None
    reg_id: int

    def __init__(self, contact: str, expires: int, q: float, instance: str | None,
                 reg_id: int) -> None:
        self.contact = contact
        self.expires = expires
        self.q = q
        self.instance = instance
        self.reg_id = reg_id


def _parse_contacts(req: Request, policy: Policy) -> list[_Wanted] | str | Outcome:
    """The contacts to register, ``"*"`` for a wildcard, or a failure."""
    header_expires = _int_or_none(req.get_str(b"expires"))
    values = req.values(b"contact") if req.has(b"contact") else []
    if any(v.strip() == "*" for v in values):
        if len(values) != 1 or header_expires != 0:
            return Outcome(400, b"Bad Request (* needs Expires: 0 and no other contact)",
                           result="bad_request")
        return "*"
    wanted: list[_Wanted] = []
    for value in values:
        try:
            na: NameAddr = parse_name_addr(value, "Contact")
            uri = na.uri
        except SipParseError as exc:
            return Outcome(400, f"Bad Request ({exc.reason})".encode(), result="bad_request")
        if not isinstance(uri, SipUri):
            return Outcome(400, b"Bad Request (Contact is not a SIP URI)", result="bad_request")
        expires = _int_or_none(na.params.get("expires"))
        if expires is None:
            expires = header_expires if header_expires is not None else policy.default_expires
        q = _q_value(na.params.get("q"), policy.default_q)
        if q is None:
            return Outcome(400, b"Bad Request (q out of range)", result="bad_request")
        instance = na.params.get("+sip.instance")
        if instance is not None:
            instance = instance.strip('"')
        reg_id = _int_or_none(na.params.get("reg-id")) or 0
        wanted.append(_Wanted(na.uri_text, expires, q, instance, reg_id))
    return wanted


def _option_tags(req: Request, key: bytes) -> list[str]:
    tags: list[str] = []
    for value in req.get_all(key):
        tags += [t.strip().lower() for t in value.decode("latin-1").split(",")]
    return tags


def supports_outbound(req: Request) -> bool:
    """The UA speaks RFC 5626 outbound (``outbound`` in Supported or Require)."""
    return "outbound" in _option_tags(req, b"supported") or (
        "outbound" in _option_tags(req, b"require"))


def _same_binding(b: Binding, w: _Wanted, key: str) -> bool:
    if w.instance is not None and b.instance is not None:
        # RFC 5626: one flow per (instance, reg-id); RFC 5627 without reg-id.
        return b.instance == w.instance and b.reg_id == w.reg_id
    return contact_key(b.contact) == key


def register(req: Request, aor: str, store: LocationStore, policy: Policy, origin: Origin,
             now: float) -> Outcome:
    """Apply a REGISTER to ``store``; all or nothing."""
    parsed = _parse_contacts(req, policy)
    if isinstance(parsed, Outcome):
        return parsed
    call_id = req.call_id
    cseq = req.cseq[0]
    current = store.bindings(aor, now)
    path: tuple[str, ...] = ()
    if req.has(b"path"):
        supported = (req.get_str(b"supported") or "").lower()
        if "path" not in [s.strip() for s in supported.split(",")]:
            return Outcome(420, b"Bad Extension", [b"Unsupported: path"], result="bad_request")
        path = tuple(req.values(b"path"))

    if parsed == "*":
        for b in current:
            if b.call_id == call_id and cseq <= b.cseq:
                return Outcome(400, b"Bad Request (CSeq out of order)", result="bad_cseq")
        for b in current:
            store.delete(b)
        return _ok(store, aor, now, path, "unregistered")

    wanted = parsed
    assert isinstance(wanted, list)
    for w in wanted:
        if 0 < w.expires < policy.min_expires:
            return Outcome(423, b"Interval Too Brief",
                           [b"Min-Expires: %d" % policy.min_expires], result="too_brief")
    # Plan every change before applying any (RFC 3261 10.3 step 7).
    plan: list[tuple[Binding | None, _Wanted]] = []
    for w in wanted:
        key = contact_key(w.contact)
        old = next((b for b in current if _same_binding(b, w, key)), None)
        if old is not None and old.call_id == call_id and cseq <= old.cseq:
            return Outcome(400, b"Bad Request (CSeq out of order)", result="bad_cseq")
        plan.append((old, w))
    remaining = len(current) - sum(1 for old, w in plan if old is not None and w.expires == 0)
    added = sum(1 for old, w in plan if old is None and w.expires > 0)
    if policy.max_contacts and remaining + added > policy.max_contacts:
        return Outcome(403, b"Forbidden (too many registered contacts)",
                       result="too_many_contacts")
    flags = FLAG_NAT if origin.nat else 0
    # RFC 5626 6: a flow registration needs the UA's outbound support and
    # both +sip.instance and reg-id; the 200 then requires outbound.
    outbound = supports_outbound(req)
    flow_registered = False
    ua = req.get_str(b"user-agent") or ""
    unregistered = bool(plan) and all(w.expires == 0 for _, w in plan)
    for old, w in plan:
        if w.expires == 0:
            if old is not None:
                store.delete(old)
            continue
        expires = min(w.expires, policy.max_expires)
        wflags = flags
        if outbound and w.instance is not None and w.reg_id > 0:
            wflags |= FLAG_OUTBOUND
            flow_registered = True
        binding = Binding(aor=aor, contact=w.contact, expires=now + expires, call_id=call_id,
                          cseq=cseq, q=w.q, instance=w.instance, reg_id=w.reg_id, path=path,
                          received=origin.received, socket=origin.socket, user_agent=ua[:255],
                          flags=wflags, ruid=old.ruid if old is not None else new_ruid())
        store.put(binding, now)
    result = "query" if not plan else ("unregistered" if unregistered else "ok")
    outcome = _ok(store, aor, now, path, result)
    if flow_registered:
        outcome.headers.append(b"Require: outbound")
    return outcome


def _ok(store: LocationStore, aor: str, now: float, path: tuple[str, ...],
        result: str) -> Outcome:
    headers = []
    for b in store.bindings(aor, now):
        line = f"Contact: <{b.contact}>;expires={b.remaining(now)}"
        if b.q != 1.0:
            line += f";q={b.q:g}"
        if b.instance is not None:
            line += f';+sip.instance="{b.instance}"'
            if b.reg_id:
                line += f";reg-id={b.reg_id}"
        headers.append(line.encode("latin-1", "replace"))
    for value in path:
        headers.append(b"Path: " + value.encode("latin-1", "replace"))
    if path:
        headers.append(b"Supported: path")
    headers.append(_date(int(now)))
    return Outcome(200, None, headers, result)


_DATE: list[tuple[int, bytes]] = [(0, b"")]


def _date(second: int) -> bytes:
    """The Date header, formatted once per second."""
    if _DATE[0][0] != second:
        _DATE[0] = (second, b"Date: " + email.utils.formatdate(second, usegmt=True).encode())
    return _DATE[0][1]
