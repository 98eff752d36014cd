"""The node's control API: HTTP/1.1 with JSON bodies on ``control.listen``
(loopback by default), for operators and ``hasip dispatcher ...``.

    GET  /dispatcher                      -> {"destinations": [...]}
    POST /dispatcher/add        {"set": 1, "uri": "sip:...", "attrs": "weight=50;..."}
    POST /dispatcher/remove     {"set": 1, "uri": "sip:..."}
    POST /dispatcher/set-state  {"set": 1, "uri": "sip:...", "state": "active|inactive|disabled"}
    POST /dispatcher/reload     {}
    GET  /location                        -> {"bindings": N, "aors": N, "digest": "..."}
    GET  /location/bindings               -> {"bindings": [{...}, ...]}
    POST /location/remove       {"aor": "1001", "contact": "sip:..."} (contact optional)
    GET  /log-level                       -> {"level": "info"}
    POST /log-level             {"level": "debug"} -> {"level": "debug", "was": "info"}
    GET  /dialogs                         -> {"dialogs": N, "digest": "..."}
    GET  /replication                     -> peers, positions, sync state
    GET  /bans                            -> {"bans": [{"ip", "reason", "seconds_left", ...}]}
    POST /bans/lift             {"ip": "192.0.2.9"}
    POST /bans/add              {"ip": "192.0.2.9", "seconds": 3600}
    GET  /healthz                         -> {"status": "serving"} (the process answers)
    GET  /readyz                          -> 200 {"ready": true, "checks": {...}} or 503

Every request but the two probes carries ``Authorization: Bearer TOKEN``
(the probes say nothing but booleans, and Kubernetes and load balancers
ask them without one); Host, Origin and the
POST body's type are checked first (``hasip/app/controlauth.py`` has the rules
and their reasons); optional TLS, with client certificates when
``control.tls_ca`` is given. Refusals are logged (peer, reason) and counted
in ``hasip_control_requests_total{result}`` with every other answer.

The digests are SHA-256 of every record's fields in a canonical order: two
nodes with the same digest hold byte-equal state.

Errors are ``{"error": "..."}`` with 400 (bad request), 401 (no or wrong
token), 403 (foreign Origin, read-only token on a POST), 404 (unknown path
or destination), 405, 413 (body over 64 KiB), 415 (POST body not JSON) or
421 (Host not this node). One request per connection, 5 s for all of it.

In a cluster (``SharedSets`` attached) a change is written to the sets the
cluster shares in ZooKeeper and so reaches every node, not only this one.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import ssl
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from kazoo.exceptions import KazooException

from hasip.app.config import ControlConfig
from hasip.app.controlauth import WWW_AUTHENTICATE, AccessPolicy, Headers, Refusal
from hasip.dialog.store import DialogStore
from hasip.dispatcher.dispatcher import Dispatcher, DispatcherError
from hasip.dispatcher.shared import SharedSets
from hasip.location.store import LocationStore
from hasip.replication.records import fields_of
from hasip.replication.replicator import Replicator
from hasip.security.guard import MANUAL, SourceGuard
from hasip.telemetry import metrics
from hasip.telemetry.log import LEVELS, current_level, get_logger, set_level
from hasip.util.tlsstream import TlsStream

log = get_logger("hasip.control")

# Paths a probe asks without a token.
PROBES = frozenset({"/healthz", "/readyz"})

MAX_BODY = 65536
MAX_HEAD = 16384
TIMEOUT = 5.0
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           415: "Unsupported Media Type", 421: "Misdirected Request",
           500: "Internal Server Error", 503: "Service Unavailable"}
# hasip_control_requests_total{result}
RESULTS = {200: "ok", 400: "bad_request", 401: "unauthorized", 403: "forbidden",
           404: "not_found", 405: "bad_method", 413: "too_large",
           415: "unsupported_media_type", 421: "misdirected", 500: "error",
           503: "unavailable"}


def server_tls(config: ControlConfig) -> ssl.SSLContext | None:
    """TLS for the listener; with ``tls_ca``, a client certificate that CA
    signed is required (mutual TLS)."""
    if not config.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_ca:
        ctx.load_verify_locations(config.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Writer(Protocol):
    """Where an answer goes: an ``asyncio.StreamWriter`` or a ``TlsStream``."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class _Refused(Exception):
    """A request refused before any handler saw it (logged as such)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.message = message or reason


class ControlServer:
    def __init__(self, dispatcher: Dispatcher, location: LocationStore | None = None,
                 dialogs: DialogStore | None = None) -> None:
        self.dispatcher = dispatcher
        self.location = location
        self.dialogs = dialogs
        self.shared: SharedSets | None = None
        self.replicator: Replicator | None = None
        self.guard: SourceGuard | None = None
        self.policy: AccessPolicy | None = None
        self.tls: ssl.SSLContext | None = None
        self._server: asyncio.AbstractServer | None = None
        # What /readyz reports: check name -> passed (set by the node).
        self.readiness: Callable[[], dict[str, bool]] = lambda: {"serving": True}

    async def start(self, config: ControlConfig) -> None:
        assert config.listen is not None and config.token, "no control API without a token"
        host, port = config.listen
        self.policy = AccessPolicy(config, config.listen)
        self.tls = server_tls(config)
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD)
        log.info("control_listening", address=f"{host}:{port}",
                 tls="mutual" if config.tls_ca else "on" if self.tls else "off",
                 read_token=bool(config.read_token), hosts=",".join(config.hosts) or None,
                 origins=",".join(config.origins) or None)
        if self.tls is None and not self.policy.address.is_loopback:
            log.warning("control_plaintext", address=f"{host}:{port}",
                        hint="the token crosses the network in clear: set control.tls_cert "
                             "and control.tls_key")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer.get_extra_info("peername"))
        if self.tls is None:
            await self._serve(reader, writer, peer)
            return
        stream = TlsStream(reader, writer, self.tls, MAX_HEAD + MAX_BODY, MAX_HEAD)
        try:
            await asyncio.wait_for(stream.handshake(), TIMEOUT)
        except (OSError, TimeoutError) as exc:       # ssl.SSLError is an OSError
            metrics.CONTROL_REQUESTS.labels("tls_refused").inc()
            log.info("control_refused", peer=peer, status=0,
                     reason=f"TLS handshake failed: {type(exc).__name__} "
                            f"{getattr(exc, 'reason', None) or exc}"[:200])
            try:
                await writer.drain()             # the alert, when there is one
            except OSError:
                pass
            writer.close()
            return
        await self._serve(stream.reader, stream, peer)

    async def _serve(self, reader: asyncio.StreamReader, writer: Writer, peer: str) -> None:
        headers: list[str] = []
        try:
            status, body = await asyncio.wait_for(self._request(reader, peer), TIMEOUT)
        except _Refused as exc:
            status, body = exc.status, {"error": exc.message}
            log.info("control_refused", peer=peer, status=status, reason=exc.reason)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError, ssl.SSLError) as exc:
            status, body = 400, {"error": "malformed or incomplete request"}
            log.info("control_refused", peer=peer, status=status,
                     reason=f"malformed or incomplete ({type(exc).__name__})")
        except Exception:
            log.error("control_request_failed", peer=peer, exc_info=True)
            status, body = 500, {"error": "internal error (see the node's log)"}
        metrics.CONTROL_REQUESTS.labels(RESULTS.get(status, str(status))).inc()
        if status == 401:
            headers.append(f"WWW-Authenticate: {WWW_AUTHENTICATE}")
        data = json.dumps(body).encode()
        head = "".join(h + "\r\n" for h in headers)
        writer.write(f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                     f"{head}Connection: close\r\n\r\n".encode() + data)
        try:
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _request(self, reader: asyncio.StreamReader,
                       peer: str) -> tuple[int, dict[str, Any]]:
        head = await reader.readuntil(b"\r\n\r\n")
        method, path, headers = parse_head(head)
        assert self.policy is not None
        decision = self.policy.check(method, headers, path in PROBES)
        if isinstance(decision, Refusal):
            raise _Refused(decision.status, decision.reason, decision.message)
        if "transfer-encoding" in headers:
            raise _Refused(400, "Transfer-Encoding", "send the body with Content-Length")
        lengths = headers.get("content-length", ["0"])
        if len(lengths) != 1 or not lengths[0].strip().isdigit():
            raise _Refused(400, "bad Content-Length", "give one Content-Length (digits)")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise _Refused(413, f"body of {length} bytes", f"body over {MAX_BODY} bytes")
        if method != "POST" and length:
            raise _Refused(400, f"a body on {method}", f"{method} takes no body")
        raw = await reader.readexactly(length) if length else b""
        try:
            args = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return 400, {"error": f"body is not JSON: {getattr(exc, 'msg', exc)}"}
        if not isinstance(args, dict):
            return 400, {"error": "body must be a JSON object"}
        return await self.route(method, path, args, peer=peer)

    async def route(self, method: str, path: str, args: dict[str, Any],
                    peer: str = "") -> tuple[int, dict[str, Any]]:
        ds = self.dispatcher
        if path == "/healthz":
            return 200, {"status": "serving"}
        if path == "/readyz":
            checks = self.readiness()
            ready = all(checks.values())
            return (200 if ready else 503), {"ready": ready, "checks": checks}
        if method == "GET" and path in ("/location", "/location/bindings", "/dialogs",
                                        "/replication"):
            return 200, self.state(path)
        if path == "/dispatcher":
            if method != "GET":
                return 405, {"error": "use GET"}
            return 200, {"destinations": ds.listing()}
        if path in ("/bans", "/bans/lift", "/bans/add"):
            return self.bans(method, path, args, peer)
        if path == "/location/remove":
            return self.remove_bindings(method, args, peer)
        if path == "/log-level":
            if method == "GET":
                return 200, {"level": current_level()}
            level = args.get("level")
            try:
                was = set_level(level if isinstance(level, str) else "")
            except ValueError:
                return 400, {"error": f"give level: one of {', '.join(LEVELS)}"}
            log.warning("log_level_changed", level=level, was=was, peer=peer)
            return 200, {"level": level, "was": was}
        actions = {"/dispatcher/add", "/dispatcher/remove", "/dispatcher/set-state",
                   "/dispatcher/reload"}
        if path not in actions:
            return 404, {"error": f"no such path {path}"}
        if method != "POST":
            return 405, {"error": "use POST"}
        shared = self.shared
        try:
            if path == "/dispatcher/reload":
                count = await shared.reload() if shared is not None else ds.reload()
                return 200, {"destinations": count}
            set_id, uri = args.get("set"), args.get("uri")
            if not isinstance(set_id, int) or not isinstance(uri, str):
                return 400, {"error": "give set (a number) and uri (a string)"}
            if path == "/dispatcher/add":
                attrs = args.get("attrs", "")
                if not isinstance(attrs, str):
                    return 400, {"error": "attrs must be a string (weight=50;...)"}
                if shared is not None:
                    await shared.add(set_id, uri, attrs)
                else:
                    ds.add(set_id, uri, attrs)
            elif path == "/dispatcher/remove":
                if shared is not None:
                    await shared.remove(set_id, uri)
                else:
                    ds.remove(set_id, uri)
            else:
                state = args.get("state")
                if not isinstance(state, str):
                    return 400, {"error": "give state: active, inactive or disabled"}
                if shared is not None:
                    await shared.set_state(set_id, uri, state)
                else:
                    ds.set_state(set_id, uri, state)
        except DispatcherError as exc:
            status = 404 if str(exc).startswith("no destination") else 400
            return status, {"error": str(exc)}
        except KazooException as exc:
            # The cluster's sets cannot be changed without ZooKeeper.
            return 503, {"error": f"ZooKeeper unavailable ({type(exc).__name__}); "
                                  "nothing changed"}
        log.info("control_change", path=path, request=json.dumps(args), peer=peer)
        return 200, {"destinations": ds.listing()}

    def remove_bindings(self, method: str, args: dict[str, Any],
                        peer: str) -> tuple[int, dict[str, Any]]:
        """Kamailio's ``ul.rm``: an AoR's bindings (or the one with
        ``contact``) removed on every node (the delete is replicated) and in
        the database."""
        if method != "POST":
            return 405, {"error": "use POST"}
        aor, contact = args.get("aor"), args.get("contact", "")
        if not isinstance(aor, str) or not aor or not isinstance(contact, str):
            return 400, {"error": "give aor (a string) and, optionally, contact (a URI)"}
        store = self.location
        if store is None:
            return 404, {"error": "no location store on this node"}
        doomed = [b for b in store.bindings(aor) if not contact or b.contact == contact]
        if not doomed:
            return 404, {"error": f"no binding of {aor!r}" + (f" with contact {contact!r}"
                                                             if contact else "")}
        for b in doomed:
            store.delete(b)
        log.info("control_change", path="/location/remove", request=json.dumps(args),
                 peer=peer, removed=len(doomed))
        return 200, {"removed": len(doomed)}

    def bans(self, method: str, path: str, args: dict[str, Any],
             peer: str) -> tuple[int, dict[str, Any]]:
        """The sources banned now (every node's: bans are replicated), and
        the operator's lift and ban, which reach every node too."""
        guard = self.guard
        if guard is None:
            return 404, {"error": "no source guard on this node"}
        now = asyncio.get_running_loop().time()
        if path == "/bans":
            if method != "GET":
                return 405, {"error": "use GET"}
            return 200, {"bans": [{"ip": b.ip, "reason": b.reason, "strikes": b.strikes,
                                   "seconds_left": round(b.until - now, 1), "by": b.node}
                                  for b in guard.active(now)]}
        if method != "POST":
            return 405, {"error": "use POST"}
        ip = args.get("ip")
        try:
            ip = str(ipaddress.ip_address(ip)) if isinstance(ip, str) else None
        except ValueError:
            ip = None
        if ip is None:
            return 400, {"error": "give ip (an IPv4 or IPv6 address)"}
        if path == "/bans/lift":
            if not guard.lift(ip, now):
                return 404, {"error": f"{ip} is not banned"}
        else:
            seconds = args.get("seconds", 3600)
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not (
                    1 <= seconds <= 365 * 86400):
                return 400, {"error": "seconds must be a number from 1 to 31536000"}
            if guard.ban(ip, now, MANUAL, float(seconds)) is None:
                return 400, {"error": f"{ip} is exempt (trusted, a dispatcher node, or in "
                                      "security.exempt): it is never banned"}
        log.info("control_change", path=path, request=json.dumps(args), peer=peer)
        return 200, {"bans": [b.ip for b in guard.active(now)]}

    def state(self, path: str) -> dict[str, Any]:
        """What the node holds: counts and digests, or the bindings."""
        if path == "/replication":
            r = self.replicator
            if r is None:
                return {"replication": False}
            return {"replication": True, "node": r.node, "epoch": r.epoch, "seq": r.seq,
                    "peers": sorted(r.links), "sync": r.sync_state,
                    "positions": {k: list(v) for k, v in r.positions.items()}}
        if path == "/dialogs":
            dialogs = sorted(self.dialogs or (), key=lambda d: d.id)
            return {"dialogs": len(dialogs),
                    "digest": _digest(fields_of(d) for d in dialogs)}
        bindings = sorted(self.location.all() if self.location else (),
                          key=lambda b: (b.aor, b.ruid))
        if path == "/location/bindings":
            return {"bindings": [fields_of(b) for b in bindings]}
        return {"bindings": len(bindings), "aors": len({b.aor for b in bindings}),
                "digest": _digest(fields_of(b) for b in bindings)}


def _peer(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
    return str(addr)


def parse_head(head: bytes) -> tuple[str, str, Headers]:
    """The request line and headers (names lower-cased, every value kept);
    _Refused(400) for anything that is not HTTP/1.x."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _Refused(400, "not an HTTP/1.x request line", "malformed request line")
    headers: Headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise _Refused(400, "malformed header line", "malformed header line")
        headers.setdefault(name.lower(), []).append(value.strip())
    return parts[0], parts[1], headers


def _digest(items: Iterable[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()
