"""The stateful proxy engine (RFC 3261 section 16), without I/O.

Like aioquic's connection it takes what arrives and the time, and returns
what to do: :meth:`Engine.receive` takes one datagram or framed stream
message with its source and ``now``; :meth:`Engine.take_outgoing` hands the
messages to send (each with its destination and, for a request we relay,
the client transaction a failure to send is reported to with
:meth:`Engine.transport_error`); :meth:`Engine.get_timer` says when it
wants :meth:`Engine.handle_timer` called; :meth:`Engine.take_waits` hands
the external answers it waits for (RADIUS, DNS, a media relay), which come
back through :meth:`Engine.resume`.

*What* to do with a request is the routing script's business
(:class:`hasip.proxy.script.RoutingScript`); this module does it: server
and client transactions, response contexts and branches, forwarding (16.6),
best-response selection (16.7), CANCEL (16.10), timer C (16.8), 503 on a
transport error (16.9), loop detection (16.3), stray responses.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hasip.app.config import Config
from hasip.app.services import Services
from hasip.dispatcher.destinations import Destination as Node
from hasip.proxy.context import Branch, Reply, RequestContext, ResponseContext, Wait
from hasip.proxy.failures import FailureLog
from hasip.proxy.nat import fix_contact
from hasip.proxy.resolver import Resolver, Target
from hasip.proxy.script import RoutingScript
from hasip.proxy.timers import TimerHeap
from hasip.proxy.uac import OwnRequests
from hasip.security.routetoken import PARAM_BYTES
from hasip.sip.build import REASONS, make_cancel_for, make_response, make_response_from_raw
from hasip.sip.errors import SipParseError
from hasip.sip.headers import Via, parse_name_addr, split_list
from hasip.sip.message import Request, Response, parse_message, validate_request
from hasip.sip.transaction import (
    COMPLETED,
    CONFIRMED,
    PROCEEDING,
    RESPONSE,
    SEND,
    TERMINATED,
    TIMEOUT,
    TIMER_C,
    TRANSPORT_ERROR,
    TRYING,
    Action,
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    Timers,
    Transaction,
    cancel_target_key,
    server_key,
)
from hasip.sip.uri import SipUri, Uri
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import Connection, Destination, Listener, Source
from hasip.transport.listeners import Listeners
from hasip.util.ids import hex8

log = get_logger("hasip.proxy")

T = TypeVar("T")

# What take_outgoing() hands out: bytes, where to, and the client
# transaction to tell when it cannot be sent (None: a response).
Outgoing = tuple[bytes, Destination, ClientTransaction | None]

# Latency samples: (kind, received_at); kind 0 a request sent on, 1 a response.
REQUEST = 0
RESPONSE_KIND = 1


def _tag_of(data: bytes) -> str:
    """A To tag from a hash of what identifies the transaction (decimal: a
    format spec costs a microsecond in compiled code)."""
    return "hs" + str(zlib.crc32(data))


# Branches we generate: magic cookie, our marker, an 8-hex loop-detection hash
# (RFC 3261 16.6 step 8), then a per-process unique part.
BRANCH_MARK = "z9hG4bKhs"

_CHALLENGES = (b"www-authenticate", b"proxy-authenticate")

# RFC 3261 16.7 step 6: the 4xx answers a proxy should prefer.
_PREFERRED_4XX = frozenset({401, 407, 415, 420, 484})

CAPABILITIES = [
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, REFER, NOTIFY, SUBSCRIBE, "
    b"INFO, MESSAGE, UPDATE, PRACK",
    b"Accept: application/sdp",
    b"Server: hasip",
]


def _rr_line(listener: Listener, token: bytes, nat: bool) -> bytes:
    """Our Record-Route for ``listener``, with the dialog's token and, for a
    dialog with a NATed party, the seed's ``record_route_preset(";nat=yes")``."""
    return (b"Record-Route: <" + listener.rr_uri + PARAM_BYTES + token
            + (b";nat=yes>" if nat else b">"))


def fix_via(req: Request, addr: tuple[str, int]) -> None:
    """Add ``received`` and fill ``rport`` in the top Via (RFC 3261 18.2.1;
    RFC 3581 4: a server that fills in rport MUST add received too, even
    when it equals the sent-by host)."""
    via = req.top_via
    ip, port = addr
    host = via.host[1:-1] if via.host.startswith("[") else via.host
    want_rport = "rport" in via.params and not via.params["rport"]
    if not want_rport and host.lower() == ip and "received" not in via.params:
        return
    parts = []
    for part in via.text.split(";"):
        name = part.strip().lower()
        if name == "rport" and want_rport:
            part = f"rport={port}"
        elif name.startswith("received="):
            continue   # ours replaces whatever the sender wrote
        parts.append(part)
    if want_rport or host.lower() != ip:
        parts.append(f"received={ip}")
    text = ";".join(parts)
    i = req.keys.index(b"via")
    raw = req.raws[i]
    values = split_list(req.value_at(i).decode("latin-1"))
    values[0] = text
    req.set_line(i, raw[:raw.index(b":") + 1] + b" " + ", ".join(values).encode("latin-1"))


def no_flow(addr: tuple[str, int], listener: Listener) -> Connection | None:
    """The flow lookup of an engine without transports: no connection is open."""
    return None


class Engine:
    """A stateful proxy's transactions and section-16 logic for one node."""

    def __init__(self, config: Config, services: Services, listeners: Listeners,
                 script: Callable[[Engine], RoutingScript],
                 resolver: Resolver | None = None, unique: str | None = None) -> None:
        self.config = config
        self.services = services
        self.listeners = listeners
        self.resolver = resolver if resolver is not None else Resolver()
        self.timers = config.timers
        self.server_txns: dict[tuple[str, ...], ServerTransaction] = {}
        self.client_txns: dict[tuple[str, ...], ClientTransaction] = {}
        self.timer_heap = TimerHeap()
        self._unique = unique if unique is not None else os.urandom(3).hex()
        self._counter = itertools.count(1)
        self.draining = False
        # The time of the call into the engine being handled (every entry
        # point sets it): what operations of the script run at, even when
        # they run long after the request arrived (a failover, a resume).
        self.now = 0.0
        self.my_ips = {a.host.lower() for a in config.sip.listen}
        self.my_ports = {a.port for a in config.sip.listen}
        self.my_domains = set(config.sip.domains)
        self.my_sent_by = listeners.sent_by
        self._sent_by_bytes = [s.encode() for s in self.my_sent_by]
        self.guard = services.guard
        self.signer = services.signer
        self.max_transactions = config.sip.max_transactions
        self.max_message_size = config.sip.max_message_size
        self.capabilities = CAPABILITIES
        self.listeners_by_socket = listeners.by_socket
        stats = metrics.STATS
        self._req_in = stats.requests_in
        self._resp_in = stats.responses_in
        self._resp_out = stats.responses_out
        self._req_out = stats.requests_out
        # IP-literal next hops resolved once: (transport, host, port) -> where.
        self._destinations: dict[tuple[str, str, int], Destination | None] = {}
        # What the shell takes after each call.
        self._out: list[Outgoing] = []
        self._waits: list[Wait] = []
        self.latencies: list[tuple[int, float]] = []
        # The requests the node sends itself (probes, NAT pings, dialog
        # keepalives): answered here, before stray responses.
        self.own = OwnRequests(self._emit)
        # The open stream connection with a peer on one of our listeners
        # (the shell's transports answer): a registered TCP phone's flow.
        self.flow: Callable[[tuple[str, int], Listener], Connection | None] = no_flow
        # Failed authentications and deliveries, one rate-limited line each.
        self.failures = FailureLog()
        # Runs work no message waits for (a media session's delete): the
        # shell puts it on the loop; without a shell it is a wait.
        self.spawner: Callable[[Awaitable[Any]], None] = self._spawn_as_wait
        self.script: RoutingScript = script(self)

    # -- the shell's side ----------------------------------------------------

    def has_output(self) -> bool:
        return bool(self._out)

    def has_waits(self) -> bool:
        return bool(self._waits)

    def take_outgoing(self) -> list[Outgoing]:
        out = self._out
        if out:
            self._out = []
        return out

    def take_waits(self) -> list[Wait]:
        waits = self._waits
        if waits:
            self._waits = []
        return waits

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` wants calling next (None: no timer)."""
        deadline = self.timer_heap.next_deadline()
        own = self.own.next_deadline()
        if own is not None and (deadline is None or own < deadline):
            return own
        return deadline

    def handle_timer(self, now: float) -> None:
        self.now = now
        self.own.expire(now)
        for txn in self.timer_heap.due(now):
            actions = txn.handle_timer(now)
            if any(kind == SEND for kind, _ in actions):
                metrics.RETRANSMITTED_OUT.labels(
                    "request" if isinstance(txn, ClientTransaction) else "response").inc()
            if isinstance(txn, ClientTransaction):
                self._run_client(txn, actions, now)
            else:
                assert isinstance(txn, ServerTransaction)
                self._run_server(txn, actions, now)

    def transport_error(self, txn: ClientTransaction, now: float) -> None:
        """The request of ``txn`` could not be sent (RFC 3261 16.9: 503)."""
        log.debug("transport_error", branch=txn.key[0])
        self.now = now
        if txn.owner is not None:
            self._run_client(txn, txn.transport_error(), now)

    def resume(self, wait: Wait, result: object, now: float) -> None:
        """An awaitable handed out by :meth:`take_waits` finished."""
        self.now = now
        wait.on_result(result)

    def resume_failed(self, wait: Wait, exc: BaseException, now: float) -> None:
        self.now = now
        wait.on_error(exc)

    def spawn(self, work: Awaitable[Any]) -> None:
        self.spawner(work)

    def _spawn_as_wait(self, work: Awaitable[Any]) -> None:
        def failed(exc: BaseException) -> None:
            log.warning("background_failed", reason=f"{type(exc).__name__}: {exc}")

        self._waits.append(Wait(work, lambda _result: None, failed))

    def in_flight(self) -> int:
        """Server transactions that have not sent a final response yet."""
        return sum(1 for t in self.server_txns.values() if t.state in (PROCEEDING, TRYING))

    def _emit(self, data: bytes, dest: Destination, txn: ClientTransaction | None = None) -> None:
        self._out.append((data, dest, txn))

    # -- identity ----------------------------------------------------------

    def is_myself(self, uri: Uri) -> bool:
        """Kamailio's ``uri == myself``: one of our addresses (and ports) or domains."""
        if not isinstance(uri, SipUri):
            return False
        host = uri.host_ip
        if host in self.my_domains:
            return True
        if host in self.my_ips:
            return (uri.port or 5060) in self.my_ports
        return False

    # -- receiving ---------------------------------------------------------

    def receive(self, data: bytes, src: Source) -> bool:
        """One datagram or framed stream message from ``src`` (received at
        ``src.received_at``, the engine's ``now``). False: the source is
        banned and its connection should go."""
        now = self.now = src.received_at
        addr = src.addr
        if not self.guard.allow(addr[0], now):
            # A banned source (hasip.security.guard): dropped unanswered.
            return False
        try:
            if len(data) > self.max_message_size:
                metrics.PARSE_ERRORS.labels("too_large").inc()
                self._reply_unparsable(data, src, 513, b"Message Too Large")
                return True
            try:
                msg = parse_message(data, datagram=src.conn is None)
            except SipParseError as exc:
                metrics.PARSE_ERRORS.labels("parse").inc()
                log.debug("parse_error", peer=f"{addr[0]}:{addr[1]}", reason=exc.reason)
                self._reply_unparsable(data, src, exc.status,
                                       REASONS.get(exc.status, b"Bad Request"))
                return True
            if type(msg) is Request:
                self._on_request(msg, src)
            else:
                assert isinstance(msg, Response)
                self._on_response(msg, src)
        except Exception:
            # A bug must cost one message, never the node.
            log.error("message_handling_failed", exc_info=True, peer=f"{addr[0]}:{addr[1]}")
        return True

    def _reply_unparsable(self, data: bytes, src: Source, status: int, reason: bytes) -> None:
        if data.startswith(b"SIP/") or data.startswith(b"ACK "):
            return
        out = make_response_from_raw(data, status, reason)
        if out is not None:
            self._send_to_source(out, src)
            self._resp_out.inc(str(status))

    def _send_to_source(self, data: bytes, src: Source) -> None:
        self._emit(data, Destination("tcp" if src.conn else "udp", src.addr, src.listener,
                                     src.conn))

    @staticmethod
    def reply_destination(src: Source, via: Via) -> Destination:
        """Where responses to a request go (RFC 3261 18.2.2, RFC 3581 4)."""
        if src.conn is not None:
            port = int(via.params.get("rport") or 0) or via.port or 5060
            return Destination(src.listener.transport, src.addr, src.listener, src.conn,
                               (src.addr[0], port))
        port = src.addr[1] if "rport" in via.params else (via.port or 5060)
        return Destination("udp", (src.addr[0], port), src.listener)

    def _on_request(self, req: Request, src: Source) -> None:
        method = req.method
        self._req_in.inc(method)
        try:
            validate_request(req)
            if self._has_our_via(req):
                req.vias  # noqa: B018 - loop detection reads every Via
        except SipParseError as exc:
            metrics.PARSE_ERRORS.labels("sanity").inc()
            log.debug("bad_request", peer=f"{src.addr[0]}:{src.addr[1]}", reason=exc.reason)
            if method != "ACK":
                to_tag = _tag_of(req.raws[0] if req.raws else b"")
                data = make_response(req, exc.status, exc.reason.encode("latin-1", "replace"),
                                     to_tag)
                self._send_to_source(data, src)
                self._resp_out.inc(str(exc.status))
            return
        fix_via(req, src.addr)
        if method == "ACK":
            self._on_ack(req, src)
            return
        if method == "CANCEL":
            self._on_cancel(req, src)
            return
        key = server_key(req)
        txn = self.server_txns.get(key)
        if txn is not None:
            metrics.RETRANSMISSIONS.labels(method).inc()
            self._run_server(txn, txn.receive_request(req, src.received_at), src.received_at)
            return
        # No transaction yet: the script's answer goes out statelessly
        # unless it forwards, suspends or saves (``stateful``). A challenge,
        # a refusal or an answer to a keepalive OPTIONS leaves no state, and
        # a source that never ACKs gets one answer per request it sends.
        rc = ResponseContext(None, req, src, self.reply_destination(src, req.top_via), key)
        ctx = RequestContext(self, req, src, rc)
        if self.draining and req.to.tag is None:
            ctx.reply(503, b"Service Unavailable (shutting down)", [b"Retry-After: 5"])
            return
        if len(self.server_txns) >= self.max_transactions:
            # Memory stays bounded whatever arrives.
            metrics.REFUSED.inc("overload")
            ctx.reply(503, b"Service Unavailable (overloaded)", [b"Retry-After: 5"])
            return
        self.run_script(ctx, self.script.route, ctx)

    def run_script(self, ctx: RequestContext, step: Callable[[T], None], arg: T) -> None:
        """Run a step of the routing script; an exception there (a bug) still
        gets the request a final answer (500) and cancels what it forwarded."""
        try:
            step(arg)
        except Exception:
            log.error("routing_failed", exc_info=True, call_id=ctx.request.call_id,
                      method=ctx.request.method)
            metrics.REFUSED.inc("routing_error")
            rc = ctx.rc
            if rc is None or rc.final_sent or ctx.request.method == "ACK":
                return
            for branch in rc.branches:
                if branch.final_status == 0:
                    self._cancel_branch(branch, self.now)
            try:
                self._reply_rc(rc, 500, b"Server Internal Error")
            except Exception:
                log.error("routing_failed_reply", exc_info=True, call_id=ctx.request.call_id)

    def stateful(self, rc: ResponseContext) -> None:
        """The server transaction of ``rc``, made now if it has none yet."""
        key = rc.key
        if rc.server is not None or rc.final_sent or key is None:
            return
        req = rc.request
        src = rc.source
        reliable = src.conn is not None
        txn: ServerTransaction
        if req.method == "INVITE":
            txn = InviteServerTransaction(key, reliable, self.timers)
        else:
            txn = NonInviteServerTransaction(key, reliable, self.timers)
        txn.owner = rc
        rc.server = txn
        self.server_txns[key] = txn
        if req.method == "INVITE":
            # RFC 3261 16.2: a stateful proxy answers INVITE with 100 at once.
            data = make_response(req, 100)
            now = self.now
            self._run_server(txn, txn.send_response(100, data, now), now)
            self._resp_out.inc("100")

    def _on_ack(self, req: Request, src: Source) -> None:
        key = server_key(req)
        txn = self.server_txns.get(key)
        if txn is not None and txn.state in (COMPLETED, CONFIRMED):
            # ACK for a non-2xx final response: hop by hop, absorbed here.
            self._run_server(txn, txn.receive_request(req, src.received_at), src.received_at)
            return
        if txn is not None and txn.state == PROCEEDING:
            return
        if txn is None and req.to.tag == self._tag_for_key(key):
            return   # the ACK of a failure we answered statelessly (a challenge)
        # ACK for a 2xx: its own transaction, forwarded statelessly (16.11).
        ctx = RequestContext(self, req, src, None)
        self.run_script(ctx, self.script.route, ctx)

    def _on_cancel(self, req: Request, src: Source) -> None:
        key = server_key(req)
        now = src.received_at
        txn = self.server_txns.get(key)
        if txn is not None:
            metrics.RETRANSMISSIONS.labels("CANCEL").inc()
            self._run_server(txn, txn.receive_request(req, now), now)
            return
        invite = self.server_txns.get(cancel_target_key(req))
        if invite is None:
            ctx = RequestContext(self, req, src, None)
            self.run_script(ctx, self.script.route_unmatched_cancel, ctx)
            return
        txn = NonInviteServerTransaction(key, src.conn is not None, self.timers)
        txn.owner = ResponseContext(txn, req, src, self.reply_destination(src, req.top_via))
        self.server_txns[key] = txn
        # RFC 3261 16.10: answer the CANCEL, then cancel every pending branch.
        data = make_response(req, 200, to_tag=self._tag_for_key(invite.key))
        self._run_server(txn, txn.send_response(200, data, now), now)
        self._resp_out.inc("200")
        rc = invite.owner
        if isinstance(rc, ResponseContext) and not rc.final_sent:
            self.cancel_context(rc, now)

    def cancel_context(self, rc: ResponseContext, now: float) -> None:
        rc.cancelled = True
        if not rc.branches:
            self._reply_rc(rc, 487)
            return
        for branch in rc.branches:
            if branch.final_status == 0:
                if branch.provisional:
                    self._cancel_branch(branch, now)
                else:
                    # RFC 3261 9.1: no CANCEL before a provisional response.
                    branch.cancel_pending = True

    # -- responses -----------------------------------------------------------

    def _on_response(self, resp: Response, src: Source) -> None:
        self._resp_in.inc(str(resp.status))
        now = src.received_at
        try:
            branch = resp.top_branch()
            method = resp.cseq[1]
        except SipParseError:
            metrics.PARSE_ERRORS.labels("response").inc()
            return
        txn = self.client_txns.get((branch or "", method))
        if txn is None:
            if branch is not None and self.own.answer(branch, resp.status, now):
                return
            forwarded = self._forward_stray(resp)
            metrics.STRAY_RESPONSES.labels("forwarded" if forwarded else "dropped").inc()
            return
        self._run_client(txn, txn.receive_response(resp, now), now)

    def _forward_stray(self, resp: Response) -> bool:
        """RFC 3261 16.7: a response matching no transaction goes on as a
        stateless proxy would send it, by the next Via (18.2.2, received and
        rport). That is how a node that took a VIP over carries the 2xx (and
        its retransmissions) of an INVITE relayed by the VIP's previous owner,
        and how a late 2xx gets through. Only a response whose top Via we
        wrote (our address, our branch mark) is relayed: we never reflect a
        foreign response to an address named in it."""
        try:
            vias = resp.vias
            if len(vias) < 2:
                return False
            top, nxt = vias[0], vias[1]
            if top.sent_by not in self.my_sent_by or not (top.branch or "").startswith(
                    BRANCH_MARK):
                return False
            host = nxt.params.get("received") or nxt.host
            rport = nxt.params.get("rport")
            port = int(rport) if rport else (nxt.port or 5060)
        except (SipParseError, ValueError):
            return False
        dest = self._destination(Target(nxt.transport.lower(), host.strip("[]"), port))
        if dest is None:
            return False
        resp.pop_first_value(b"via")
        self.script.on_stray_reply(resp)
        self._emit(resp.to_bytes(), dest)
        self._resp_out.inc(str(resp.status))
        return True

    def _on_branch_response(self, branch: Branch, resp: Response, now: float) -> None:
        status = resp.status
        rc = branch.rc
        if status < 200:
            branch.provisional = True
            if branch.cancel_pending:
                self._cancel_branch(branch, now)
        else:
            branch.final_status = status
            branch.final = resp
        if rc is None:
            return  # our own request (a CANCEL)
        self.script.on_branch_reply(rc, branch, status)
        if status == 100:
            return  # hop by hop
        resp.pop_first_value(b"via")
        if not resp.has(b"via"):
            return
        if branch.nat and status < 300:
            dest = branch.dest
            fix_contact(resp, dest.addr, dest.transport if dest.reliable else "")
        keys = resp.keys
        if (b"p-asserted-identity" in keys or b"remote-party-id" in keys) and not (
                self.services.is_trusted(*branch.dest.addr)):
            # RFC 3325 5: identities from an untrusted callee are not passed on.
            for key in (b"p-asserted-identity", b"remote-party-id"):
                if key in resp.keys:
                    resp.remove_all(key)
                    metrics.SCREENED.inc(key.decode())
        if branch.held is not None:
            branch.held.append(resp)   # behind a reply the hook holds
            return
        self._hook_reply(rc, branch, resp, now)

    def _hook_reply(self, rc: ResponseContext, branch: Branch, resp: Response,
                    now: float) -> None:
        """The reply hook, then the relay (or a wait for the hook's answer)."""
        reply = Reply(rc, branch, resp)
        self.script.on_reply(reply)
        wait = reply.wait
        if wait is None:
            self._relay_reply(rc, branch, reply.response, now)
            return
        if branch.held is None:
            branch.held = []
        pending, resume = wait

        def done(result: Any) -> None:
            try:
                resume(result)
            except Exception:
                log.error("reply_hook_failed", exc_info=True, call_id=rc.request.call_id)
            self._release(rc, branch, reply.response, self.now)

        def failed(exc: BaseException) -> None:
            log.warning("reply_hook_wait_failed", call_id=rc.request.call_id,
                        status=reply.response.status, reason=str(exc) or type(exc).__name__)
            self._release(rc, branch, reply.response, self.now)

        self._waits.append(Wait(pending, done, failed, rc.request.call_id))

    def _release(self, rc: ResponseContext, branch: Branch, resp: Response, now: float) -> None:
        """A held reply goes on, then those queued behind it, each through
        the hook again."""
        queued = branch.held or []
        branch.held = None
        self._relay_reply(rc, branch, resp, now)
        while queued:
            nxt = queued.pop(0)
            if branch.held is not None:
                branch.held.append(nxt)
                continue
            self._hook_reply(rc, branch, nxt, now)
            if branch.held is not None:
                branch.held.extend(queued)
                return
        if branch.final_status and not rc.pending():
            self._maybe_finish(rc, now)

    def _relay_reply(self, rc: ResponseContext, branch: Branch, resp: Response,
                     now: float) -> None:
        status = resp.status
        if status < 200:
            if not rc.final_sent:
                self._relay_upstream(rc, resp, now)
        elif status < 300:
            first = not rc.final_sent
            if first:
                self.script.on_answered(rc, resp, branch.nat)
            # Every 2xx goes upstream (RFC 3261 16.7 step 5), so that each
            # forked 2xx is ACKed and hung up by the caller.
            self._relay_upstream(rc, resp, now)
            if first and rc.request.method == "INVITE":
                # RFC 3261 16.7 step 10: a 2xx ends the other branches.
                for other in rc.branches:
                    if other is not branch and other.final_status == 0:
                        self._cancel_branch(other, now)
        else:
            self.script.on_branch_failure(rc, branch)
            if status >= 600:
                # RFC 3261 16.7 step 5: a 6xx cancels the pending branches.
                for other in rc.branches:
                    if other.final_status == 0:
                        self._cancel_branch(other, now)
            self._maybe_finish(rc, now)

    def _on_branch_timeout(self, branch: Branch, now: float, status: int = 408) -> None:
        """No answer (408), or the request could not be sent (503, RFC 3261 16.9)."""
        branch.final_status = status
        rc = branch.rc
        if rc is None:
            return
        if status == 408:
            metrics.TIMEOUTS.labels(rc.request.method).inc()
        self.script.on_branch_failure(rc, branch)
        self._maybe_finish(rc, now)

    def _maybe_finish(self, rc: ResponseContext, now: float) -> None:
        """All branches final: let the script fail over, else send the best answer."""
        if rc.final_sent or rc.pending():
            return
        if not rc.cancelled and self.script.failure_route(rc):
            return
        best = self._best_branch(rc)
        if best is None:
            return
        if best.final is None or (rc.cancelled and best.final_status == 408):
            # Our own answer: a timeout (408) or an unreachable next hop (503).
            if rc.cancelled:
                self._reply_rc(rc, 487)
            elif best.final_status == 503:
                self._reply_rc(rc, 503, b"Service Unavailable (next hop unreachable)")
            else:
                self._reply_rc(rc, best.final_status)
            return
        resp = best.final
        if resp.status == 503:
            # RFC 3261 16.7 step 6: a 503 from downstream is not passed up as is.
            resp.status = 500
            resp.reason = b"Server Internal Error"
        elif resp.status in (401, 407):
            self._aggregate_challenges(rc, resp)
        self._relay_upstream(rc, resp, now)

    @staticmethod
    def _aggregate_challenges(rc: ResponseContext, resp: Response) -> None:
        """RFC 3261 16.7 step 7: a 401 or 407 going upstream carries the
        WWW-Authenticate and Proxy-Authenticate values of every branch that
        challenged, so that the caller can answer all of them at once."""
        have = {raw for key, raw in zip(resp.keys, resp.raws, strict=True)
                if key in _CHALLENGES}
        for branch in rc.branches:
            other = branch.final
            if other is None or other is resp or other.status not in (401, 407):
                continue
            for key, raw in zip(other.keys, other.raws, strict=True):
                if key in _CHALLENGES and raw not in have:
                    have.add(raw)
                    resp.append(key, raw)

    def best_status(self, rc: ResponseContext) -> int:
        """The status the context would answer with now (0: no branch)."""
        best = self._best_branch(rc)
        return best.final_status if best is not None else 0

    @staticmethod
    def _best_branch(rc: ResponseContext) -> Branch | None:
        """RFC 3261 16.7 step 6: a 6xx if any, else the lowest class; within
        4xx, preferably 401, 407, 415, 420 or 484 (answers the caller can act
        on); otherwise the first to arrive."""
        best: Branch | None = None
        best_rank = 100
        for branch in rc.branches:
            status = branch.final_status
            if status == 0:
                continue
            rank = 0 if status >= 600 else (status // 100) * 10
            if status in _PREFERRED_4XX:
                rank -= 1
            if rank < best_rank:
                best, best_rank = branch, rank
        return best

    def _final(self, rc: ResponseContext, status: int, reason: bytes | None) -> None:
        """The context's final answer goes out (relayed or ours)."""
        rc.final_sent = True
        if status >= 400:
            self.failures.delivery(rc.request, rc.source.addr, status, reason,
                                   bool(rc.branches), rc.cancelled, self.now)
        self.script.on_final(rc, status)

    def _relay_upstream(self, rc: ResponseContext, resp: Response, now: float) -> None:
        status = resp.status
        if status >= 200:
            self._final(rc, status, resp.reason)
        server = rc.server
        data = resp.to_bytes()
        if server is None:
            self._emit(data, rc.reply_dest)
        else:
            self._run_server(server, server.send_response(status, data, now), now)
        self._resp_out.inc(str(status))
        self.latencies.append((RESPONSE_KIND, now))

    def _reply_rc(self, rc: ResponseContext, status: int, reason: bytes | None = None,
                  extra: list[bytes] | None = None) -> None:
        server = rc.server
        to_tag = None
        if status > 100:
            key = rc.key
            to_tag = (self._tag_for_key(key) if key is not None else
                      _tag_of(rc.request.call_id.encode("latin-1")))
        data = make_response(rc.request, status, reason, to_tag, extra)
        if status >= 200:
            self._final(rc, status, reason)
        if server is None:
            self._emit(data, rc.reply_dest)
        else:
            now = self.now
            self._run_server(server, server.send_response(status, data, now), now)
        self._resp_out.inc(str(status))

    @staticmethod
    def _tag_for_key(key: tuple[str, ...]) -> str:
        """Our To tag for a transaction's answers, stateful or not: the same
        for every answer and retransmission of it, and computable again
        from its ACK; from the branch (RFC 2543 requests: from all their
        matching fields)."""
        text = key[0] if key[0] != "2543" else "|".join(key)
        # The key's text was decoded from latin-1, so UTF-8 encodes it (and
        # is the cheaper primitive).
        return _tag_of(text.encode())

    # -- operations for the routing script -----------------------------------

    def context_for(self, rc: ResponseContext) -> RequestContext:
        """A request context to forward more branches of ``rc`` (failure route)."""
        return RequestContext(self, rc.request, rc.source, rc)

    def suspend(self, ctx: RequestContext, pending: Awaitable[Any],
                resume: Callable[[Any], None]) -> None:
        if ctx.rc is not None:
            self.stateful(ctx.rc)   # retransmissions are absorbed while it waits

        def done(result: Any) -> None:
            if ctx.rc is not None and ctx.rc.final_sent:
                return
            self.run_script(ctx, resume, result)

        def failed(exc: BaseException) -> None:
            log.error("suspended_step_failed", call_id=ctx.request.call_id,
                      reason=f"{type(exc).__name__}: {exc}")
            ctx.reply(500, b"Server Internal Error")

        self._waits.append(Wait(pending, done, failed, ctx.request.call_id))

    def reply(self, ctx: RequestContext, status: int, reason: bytes | None = None,
              extra: list[bytes] | None = None) -> None:
        req = ctx.request
        if req.method == "ACK":
            return
        if ctx.rc is not None:
            if ctx.rc.final_sent and status >= 200:
                return  # answered already (e.g. 416 by _prepare before a 503 fallback)
            self._reply_rc(ctx.rc, status, reason, extra)
            return
        to_tag = None
        if status > 100:
            to_tag = _tag_of(req.call_id.encode("latin-1"))
        data = make_response(req, status, reason, to_tag, extra)
        self._emit(data, self.reply_destination(ctx.source, req.top_via))
        self._resp_out.inc(str(status))

    def _prepare(self, ctx: RequestContext, request_uri: SipUri | None,
                 next_hop: SipUri | None,
                 routes: tuple[str, ...] = ()) -> tuple[Request, SipUri] | None:
        """The request to send (RFC 3261 16.6 steps 1-7) and the URI to send it to."""
        req = ctx.request
        out = req.copy()
        if request_uri is not None:
            out.uri = request_uri
        for value in reversed(routes):
            # A registered Path (RFC 3327): the route set in front of the contact.
            out.insert_top(b"route", b"Route: " + value.encode("latin-1"))
        mf = req.max_forwards
        if mf is None:
            out.append(b"max-forwards", b"Max-Forwards: %d" % self.config.sip.max_forwards)
        else:
            out.replace(b"max-forwards", b"Max-Forwards: %d" % (mf - 1))
        target: Uri
        if next_hop is not None:
            target = next_hop
        elif b"route" in out.keys:
            first = parse_name_addr(out.values(b"route")[0], "Route")
            target = first.uri
            if isinstance(target, SipUri) and not target.lr:
                # Next hop is a strict router (RFC 3261 16.6 step 7).
                out.append(b"route", b"Route: <" + out.uri_raw + b">")
                out.pop_first_value(b"route")
                out.uri = target
        else:
            target = out.uri
        if not isinstance(target, SipUri):
            ctx.reply(416)
            return None
        return out, target

    def forward(self, ctx: RequestContext, request_uri: SipUri | None = None,
                next_hop: SipUri | None = None, dest: Destination | None = None,
                routes: tuple[str, ...] = (), nat: bool = False,
                timers: Timers | None = None) -> bool:
        """Stateful relay (Kamailio's ``t_relay``): a new branch of ``ctx``'s
        response context, to ``dest`` when given (a registered contact's
        recorded source), else to where the target resolves. False when the
        next hop cannot be used; the script then replies."""
        if ctx.rc is not None:
            self.stateful(ctx.rc)
        prepared = self._prepare(ctx, request_uri, next_hop, routes)
        if prepared is None:
            return False
        out, target = prepared
        if dest is None:
            targets = self.resolver.targets(target, self.now)
            if targets is None:
                self._forward_after_dns(ctx, out, target, nat, timers)
                return True
            dest = self._with_socket(ctx, self._first_usable(targets))
        if dest is None:
            return False
        self._start_branch(ctx, out, dest, nat, timers)
        return True

    def _forward_after_dns(self, ctx: RequestContext, out: Request, target: SipUri,
                           nat: bool, timers: Timers | None) -> None:
        def resolved(_: object) -> None:
            if ctx.rc is not None and ctx.rc.final_sent:
                return
            targets = self.resolver.targets(target, self.now) or []
            dest = self._with_socket(ctx, self._first_usable(targets))
            if dest is None:
                ctx.reply(503, b"Service Unavailable (cannot resolve next hop)")
                return
            self._start_branch(ctx, out, dest, nat, timers)

        def failed(exc: BaseException) -> None:
            log.warning("dns_lookup_failed", call_id=ctx.request.call_id,
                        reason=str(exc) or type(exc).__name__)
            ctx.reply(503, b"Service Unavailable (cannot resolve next hop)")

        self._waits.append(Wait(self.resolver.lookup(target, self.now), resolved, failed,
                                ctx.request.call_id))

    def _first_usable(self, targets: list[Target]) -> Destination | None:
        for target in targets:
            dest = self._destination(target)
            if dest is not None:
                return dest
        return None

    def _with_socket(self, ctx: RequestContext | None, dest: Destination | None,
                     sock: Listener | None = None) -> Destination | None:
        """``dest`` sent from the socket the script chose (``sock`` or
        ``ctx.send_socket``), else from the socket the request came in on
        when that one can reach it (Kamailio's default). A call that came in
        on a VIP thus leaves from the VIP: Via and Record-Route name the VIP,
        so answers and in-dialog requests reach whichever node owns it then,
        not the node that relayed the INVITE."""
        if dest is None:
            return None
        if sock is None and ctx is not None:
            sock = ctx.send_socket or ctx.source.listener
        if sock is None or sock is dest.listener or not self.listeners.can_reach(
                sock, dest.transport, dest.listener.family, dest.addr[0]):
            return dest
        return Destination(dest.transport, dest.addr, sock)

    def from_listener(self, target: SipUri, listener: Listener,
                      now: float) -> Destination | None:
        """Where ``target`` is, reached from ``listener`` when it can reach it."""
        dest = self.resolve(target, now)
        if dest is None or dest.listener is listener or not self.listeners.can_reach(
                listener, dest.transport, dest.listener.family, dest.addr[0]):
            return dest
        return Destination(dest.transport, dest.addr, listener)

    def owns_socket(self, socket_text: str) -> bool:
        """Whether ``socket_text`` ("udp:VIP:5060") is ours to serve now: one
        of our listeners, and (a VIP) held by this node."""
        listener = self.listeners_by_socket.get(socket_text)
        return listener is not None and listener.active

    def node_address(self, node: Node, ctx: RequestContext | None = None,
                     vip: bool = False, now: float = 0.0) -> Destination | None:
        """Where a dispatcher destination is reached: its URI resolved, sent
        from its ``socket`` attribute when it names one of our listeners,
        else from the incoming socket of ``ctx``, else (a probe) from the
        node's own address or, with ``vip``, a VIP it owns."""
        dest = self.resolve(node.uri, self.now if ctx is not None else now)
        if dest is None:
            return None
        sock = self.listeners_by_socket.get(node.socket) if node.socket else None
        if sock is None and ctx is None and vip:
            sock = self.listeners.listener_for(dest.transport, dest.listener.family,
                                               dest.addr[0], vip=True)
        return self._with_socket(ctx, dest, sock)

    def resolve(self, target: SipUri, now: float) -> Destination | None:
        """The first usable place ``target`` resolves to now (None: none, or
        a name not in the cache yet)."""
        targets = self.resolver.targets(target, now)
        return self._first_usable(targets) if targets else None

    def _destination(self, target: Target) -> Destination | None:
        """IP, port, transport and local listener for a resolved target."""
        key = (target.transport, target.host, target.port)
        dest = self._destinations.get(key)
        if dest is not None and dest.listener.active:
            return dest
        # Not seen yet, or its socket is a VIP this node no longer owns.
        dest = self._make_destination(target)
        if len(self._destinations) >= 4096:
            self._destinations.clear()
        self._destinations[key] = dest
        return dest

    def _make_destination(self, target: Target) -> Destination | None:
        transport = target.transport
        if transport not in ("udp", "tcp"):
            return None
        try:
            addr = ipaddress.ip_address(target.host)
        except ValueError:
            return None
        if addr.is_multicast or addr.is_unspecified or str(addr) == "255.255.255.255":
            return None
        listener = self.listeners.listener_for(
            transport, socket.AF_INET6 if addr.version == 6 else socket.AF_INET, str(addr))
        if listener is None:
            return None
        return Destination(transport, (str(addr), target.port), listener)

    def _loop_hash(self, req: Request) -> str:
        fields = (req.uri_raw, (req.to.tag or "").encode("latin-1"),
                  (req.from_.tag or "").encode("latin-1"), req.call_id.encode("latin-1"),
                  b"%d" % req.cseq[0], req.get(b"proxy-require") or b"")
        return hex8(zlib.crc32(b"|".join(fields)))

    def is_loop(self, req: Request) -> bool:
        """RFC 3261 16.3 step 4: our own Via with the branch we would compute
        now means the request came back unchanged: a loop, not a spiral. The
        hash leaves out the top Via, which differs on every pass."""
        if not self._has_our_via(req):
            return False
        wanted = self._loop_hash(req)
        for via in req.vias:
            branch = via.branch or ""
            if (via.sent_by in self.my_sent_by and branch.startswith(BRANCH_MARK)
                    and branch[9:17] == wanted):
                return True
        return False

    def _has_our_via(self, req: Request) -> bool:
        keys = req.keys
        raws = req.raws
        for i in range(len(keys)):
            if keys[i] == b"via":
                raw = raws[i]
                for sent_by in self._sent_by_bytes:
                    if raw.find(sent_by) >= 0:
                        return True
        return False

    def _start_branch(self, ctx: RequestContext, out: Request, dest: Destination,
                      nat: bool = False, timers: Timers | None = None) -> None:
        req = ctx.request
        rc = ctx.rc
        if ctx.record_route:
            in_listener = ctx.source.listener
            marked = ctx.nat or nat
            token = ctx.rr_token
            if not token:
                # The dialog's proof for its in-dialog requests (routetoken).
                token = ctx.rr_token = self.signer.token(
                    req.call_id, req.from_.tag or "").encode()
            if in_listener is not dest.listener:
                # Two sockets: record both so each side routes to the one it
                # can reach (Kamailio's double Record-Route).
                out.insert_top(b"record-route", _rr_line(in_listener, token, marked))
            out.insert_top(b"record-route", _rr_line(dest.listener, token, marked))
        branch_id = (BRANCH_MARK + self._loop_hash(req) + self._unique
                     + hex(next(self._counter))[2:])
        out.insert_top(b"via", dest.listener.via_prefix + branch_id.encode())
        data = out.to_bytes()
        branch = Branch(rc, out, dest)
        branch.nat = nat
        txn: ClientTransaction
        if out.method == "INVITE":
            txn = InviteClientTransaction(branch_id, out, data, dest.reliable,
                                          timers or self.timers)
        else:
            txn = NonInviteClientTransaction(branch_id, out, data, dest.reliable, self.timers)
        branch.txn = txn
        txn.owner = branch
        self.client_txns[txn.key] = txn
        if rc is not None:
            rc.branches.append(branch)
        now = self.now
        self._run_client(txn, txn.start(now), now)
        self._req_out.inc(out.method)
        self.latencies.append((REQUEST, ctx.source.received_at))

    def forward_stateless(self, ctx: RequestContext) -> bool:
        """Forward without a transaction (ACK for 2xx, RFC 3261 16.11): the
        branch is derived from the incoming one so a retransmission gets the same."""
        prepared = self._prepare(ctx, None, None)
        if prepared is None:
            return False
        out, target = prepared
        dest = self._with_socket(ctx, self.resolve(target, self.now))
        if dest is None:
            return False
        req = ctx.request
        seed = (req.top_via.branch or req.top_via.text) + req.call_id
        branch_id = "z9hG4bKsl" + hex8(zlib.crc32(seed.encode("latin-1")))
        out.insert_top(b"via", dest.listener.via_prefix + branch_id.encode())
        self._emit(out.to_bytes(), dest)
        self._req_out.inc(out.method)
        self.latencies.append((REQUEST, ctx.source.received_at))
        return True

    def _cancel_branch(self, branch: Branch, now: float) -> None:
        if branch.cancelled or branch.final_status or branch.txn is None:
            return
        if branch.request.method != "INVITE":
            return
        if not branch.provisional:
            branch.cancel_pending = True
            return
        branch.cancelled = True
        branch.cancel_pending = False
        data = make_cancel_for(branch.request)
        cancel = parse_message(data)
        assert isinstance(cancel, Request)
        cancel_branch = Branch(None, cancel, branch.dest)
        txn = NonInviteClientTransaction(branch.txn.key[0], cancel, data, branch.dest.reliable,
                                         self.timers)
        txn.owner = cancel_branch
        cancel_branch.txn = txn
        self.client_txns[txn.key] = txn
        self._run_client(txn, txn.start(now), now)

    # -- running transaction actions -------------------------------------------

    def _run_client(self, txn: ClientTransaction, actions: list[Action], now: float) -> None:
        branch = txn.owner
        assert isinstance(branch, Branch)
        for kind, data in actions:
            if kind == SEND:
                assert isinstance(data, bytes)
                self._out.append((data, branch.dest, txn))
            elif kind == RESPONSE:
                assert isinstance(data, Response)
                self._on_branch_response(branch, data, now)
            elif kind == TIMEOUT:
                self._on_branch_timeout(branch, now)
            elif kind == TRANSPORT_ERROR:
                self._on_branch_timeout(branch, now, 503)
            elif kind == TIMER_C:
                # RFC 3261 16.8: cancel the branch and answer it with 408 ourselves.
                self._cancel_branch(branch, now)
                self._on_branch_timeout(branch, now)
            elif kind == TERMINATED:
                self.client_txns.pop(txn.key, None)
                # Break the branch <-> transaction cycle so that reference
                # counting frees them without waiting for the cyclic GC.
                branch.txn = None
                txn.owner = None
                return
        self.timer_heap.schedule(txn)

    def _run_server(self, txn: ServerTransaction, actions: list[Action], now: float) -> None:
        owner = txn.owner
        if isinstance(owner, ResponseContext):
            rc: ResponseContext | None = owner
            dest = owner.reply_dest
        else:
            assert isinstance(owner, Destination)
            rc = None
            dest = owner
        for kind, data in actions:
            if kind == SEND:
                assert isinstance(data, bytes)
                self._out.append((data, dest, None))
            elif kind == TERMINATED:
                self.server_txns.pop(txn.key, None)
                if rc is not None:
                    rc.server = None
                    rc.branches = []
                txn.owner = None
                return
        if rc is not None and rc.final_sent and not rc.branches:
            # Answered here (a challenge, a registration, a refusal): for the
            # retransmissions of its answer the transaction needs only where
            # to send them. The request and its context go now, not after
            # Timer J's 32 s, and the garbage collector does not walk them
            # meanwhile (they were most of its work under registration load).
            txn.owner = dest
        self.timer_heap.schedule(txn)


# The transaction classes the engine drives (for the shell's type hints).
__all__ = ["BRANCH_MARK", "Engine", "Outgoing", "Transaction", "fix_via"]
