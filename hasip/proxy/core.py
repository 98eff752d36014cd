"""The stateful proxy engine (RFC 3261 section 16): transactions, forwarding,
response contexts, CANCEL, loop detection and the timer queue, glued to the
transports. *What* to do with a request is the routing script's business
(:mod:`hasip.proxy.routing`); this module does it."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import os
import socket
import zlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from hasip import metrics
from hasip.config import Config
from hasip.dialog.keepalive import BRANCH_PREFIX as KEEPALIVE_BRANCH
from hasip.dialog.keepalive import DialogKeepalive
from hasip.dispatcher.destinations import Destination as Node
from hasip.dispatcher.probe import BRANCH_PREFIX as PROBE_BRANCH
from hasip.dispatcher.probe import Prober
from hasip.ids import hex8
from hasip.location.natping import BRANCH_PREFIX as NAT_PING_BRANCH
from hasip.location.natping import NatPinger
from hasip.log import get_logger
from hasip.proxy.nat import fix_contact
from hasip.proxy.routing import Router
from hasip.proxy.timers import TimerQueue
from hasip.security.routetoken import PARAM_BYTES
from hasip.services import Services
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
from hasip.transport.base import Destination, Listener, Source, send_datagram
from hasip.transport.manager import Transports
from hasip.transport.tcp import TcpConnection

log = get_logger("hasip.proxy")

T = TypeVar("T")


def _tag_of(data: bytes) -> str:
    """A To tag from a hash of what identifies the transaction (decimal: a
    format spec costs a microsecond in compiled code)."""
    return "hs" + str(zlib.crc32(data))


# Branches we generate: magic cookie, our marker, an 8-hex loop-detection hash
# (RFC 3261 16.6 step 8), then a per-process unique part.
_BRANCH_MARK = "z9hG4bKhs"


def _rr_line(listener: Listener, token: bytes, nat: bool) -> bytes:
    """Our Record-Route for ``listener``, with the dialog's token and, for a
    dialog with a NATed party, the seed's ``record_route_preset(";nat=yes")``."""
    return (b"Record-Route: <" + listener.rr_uri + PARAM_BYTES + token
            + (b";nat=yes>" if nat else b">"))


class Branch:
    """One client transaction of a response context (RFC 3261 16.6)."""

    __slots__ = ("cancel_pending", "cancelled", "dest", "final", "final_status", "nat",
                 "provisional", "rc", "request", "txn")

    def __init__(self, rc: ResponseContext | None, request: Request, dest: Destination) -> None:
        self.rc = rc
        self.request = request
        self.dest = dest
        self.txn: ClientTransaction | None = None
        self.provisional = False
        self.final: Response | None = None
        self.final_status = 0
        self.cancel_pending = False
        self.cancelled = False
        # The callee is behind NAT: fix the Contact of its answers.
        self.nat = False


class ResponseContext:
    """A server transaction and the branches forwarded for it (RFC 3261 16.7)."""

    __slots__ = ("branches", "cancelled", "data", "final_sent", "key", "reply_dest", "request",
                 "server", "source")

    def __init__(self, server: ServerTransaction | None, request: Request, source: Source,
                 reply_dest: Destination, key: tuple[str, ...] | None = None) -> None:
        self.server = server
        self.request = request
        self.source = source
        self.reply_dest = reply_dest
        # The server transaction's key (RFC 3261 17.2.3): the transaction is
        # made only when the request needs one (Proxy.stateful); until then
        # answers go out statelessly, as Kamailio's sl does.
        self.key = key if key is not None else (server.key if server is not None else None)
        self.branches: list[Branch] = []
        self.final_sent = False
        self.cancelled = False
        # Free for the routing script (failover state, selected destination...).
        self.data: dict[str, object] = {}

    def pending(self) -> bool:
        return any(b.final_status == 0 for b in self.branches)


class RequestContext:
    """What the routing script gets for one request: the message, where it came
    from, and the operations it may apply (reply, record-route, forward)."""

    __slots__ = ("nat", "proxy", "rc", "record_route", "request", "rr_token", "send_socket",
                 "source", "trusted", "user")

    def __init__(self, proxy: Proxy, request: Request, source: Source,
                 rc: ResponseContext | None) -> None:
        self.proxy = proxy
        self.request = request
        self.source = source
        self.rc = rc
        self.record_route = False
        # The sender is behind NAT (Record-Route gets ;nat=yes).
        self.nat = False
        # The authenticated user, once digest authentication succeeded.
        self.user: str | None = None
        # Our socket named by a double Record-Route: in-dialog requests leave from it.
        self.send_socket: Listener | None = None
        # The dialog token our Record-Route carries (hasip.security.routetoken).
        self.rr_token = b""
        # The source is trusted (a gateway, a dispatcher node): the routing
        # script decides it once per request.
        self.trusted = False

    def reply(self, status: int, reason: bytes | None = None,
              extra: list[bytes] | None = None) -> None:
        self.proxy.reply(self, status, reason, extra)

    def forward(self, request_uri: SipUri | None = None, next_hop: SipUri | None = None,
                dest: Destination | None = None, routes: tuple[str, ...] = (),
                nat: bool = False, timers: Timers | None = None) -> bool:
        return self.proxy.forward(self, request_uri, next_hop, dest, routes, nat, timers)

    def suspend(self, pending: Awaitable[T], resume: Callable[[T], None]) -> None:
        """Wait for ``pending`` (a RADIUS answer...) off the hot path, then call
        ``resume`` with its result unless the request was answered meanwhile
        (a CANCEL). The server transaction absorbs retransmissions."""
        self.proxy.suspend(self, pending, resume)

    def force_rport(self) -> None:
        """Answer to the packet's source port whatever the Via says (RFC 3581)."""
        rc = self.rc
        src = self.source
        if rc is not None and src.conn is None:
            rc.reply_dest = Destination("udp", src.addr, src.listener)

    def forward_stateless(self) -> bool:
        return self.proxy.forward_stateless(self)

    def stateful(self) -> None:
        """Keep a server transaction from now on (Kamailio's t_newtran):
        retransmissions are absorbed and answers retransmitted. Forwarding
        and suspending make one themselves; the registrar asks for one
        before it changes a binding."""
        if self.rc is not None:
            self.proxy.stateful(self.rc)


class Proxy:
    """A stateful proxy bound to a node's transports."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 services: Services | None = None) -> None:
        self.config = config
        self.loop = loop
        self.services = services if services is not None else Services.in_memory(config)
        self._tasks: set[asyncio.Task[None]] = set()
        self.timers = config.timers
        self.transports = Transports(config, self.receive, loop)
        self.server_txns: dict[tuple[str, ...], ServerTransaction] = {}
        self.client_txns: dict[tuple[str, ...], ClientTransaction] = {}
        self.timerq = TimerQueue(loop, self._on_timer)
        self._unique = os.urandom(3).hex()
        self._counter = itertools.count(1)
        self._resolved: dict[str, str] = {}
        self.draining = False
        self.my_ips = {a.host.lower() for a in config.listen}
        self.my_ports = {a.port for a in config.listen}
        self.my_domains = set(config.domains)
        self.my_sent_by = {lst.sent_by for lst in self.transports.listeners}
        self.guard = self.services.guard
        self.signer = self.services.signer
        self.max_transactions = config.max_transactions
        self._sent_by_bytes = [s.encode() for s in self.my_sent_by]
        self.capabilities = [
            b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, REFER, NOTIFY, SUBSCRIBE, "
            b"INFO, MESSAGE, UPDATE, PRACK",
            b"Accept: application/sdp",
            b"Server: hasip",
        ]
        stats = metrics.STATS
        self._req_in = stats.requests_in
        self._resp_in = stats.responses_in
        self._resp_out = stats.responses_out
        self._req_out = stats.requests_out
        self._latency = stats.latency
        self._lat_request = stats.latency.child("request")
        self._lat_response = stats.latency.child("response")
        self._destinations: dict[tuple[str, str, int], Destination | None] = {}
        self.listeners_by_socket = {lst.socket: lst for lst in self.transports.listeners}
        if self.services.cdrs is not None:
            self.services.cdrs.owns = self.owns_socket
        self.pinger = NatPinger(self.services.location, self.listeners_by_socket,
                                self.transports.send, config.nat.ping_interval)
        ds = config.dispatcher
        probe_from_vip = ds.probe_from == "vip"
        self.prober = Prober(self.services.dispatcher,
                             lambda node: self.node_address(node, vip=probe_from_vip),
                             self.transports.send,
                             ds.probe_interval, ds.probe_timeout, frozenset(ds.probe_codes))
        dc = config.dialog
        self.keepalive = DialogKeepalive(self.services.dialogs, self.listeners_by_socket,
                                         self.my_sent_by, self._from_listener,
                                         self.transports.send, dc.keepalive_interval,
                                         dc.keepalive_failures)
        self.router = Router(self)
        metrics.TRANSACTIONS.labels("server").set_function(lambda: len(self.server_txns))
        metrics.TRANSACTIONS.labels("client").set_function(lambda: len(self.client_txns))
        metrics.IN_FLIGHT.set_function(self.in_flight)

    async def start(self) -> None:
        await self.transports.start()
        self.pinger.start()
        self.prober.start()
        self.keepalive.start()

    async def stop(self) -> None:
        await self.pinger.stop()
        await self.prober.stop()
        await self.keepalive.stop()
        for task in list(self._tasks):
            task.cancel()
        await self.transports.stop()
        self.timerq.close()

    def context_for(self, rc: ResponseContext) -> RequestContext:
        """A request context to forward more branches of ``rc`` (failure route)."""
        return RequestContext(self, rc.request, rc.source, rc)

    def suspend(self, ctx: RequestContext, pending: Awaitable[T],
                resume: Callable[[T], None]) -> None:
        if ctx.rc is not None:
            self.stateful(ctx.rc)   # retransmissions are absorbed while it waits

        async def wait() -> None:
            try:
                result = await pending
            except Exception:
                log.error("suspended_step_failed", exc_info=True, call_id=ctx.request.call_id)
                ctx.reply(500, b"Server Internal Error")
                return
            if ctx.rc is not None and ctx.rc.final_sent:
                return
            self.run_script(ctx, resume, result)

        task = self.loop.create_task(wait())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def in_flight(self) -> int:
        """Server transactions that have not sent a final response yet."""
        return sum(1 for t in self.server_txns.values() if t.state in (PROCEEDING, TRYING))

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

    def receive(self, data: bytes, listener: Listener, addr: tuple[str, int],
                conn: TcpConnection | None) -> None:
        """Transport sink: one datagram or one framed stream message."""
        now = self.loop.time()
        if not self.guard.allow(addr[0], now):
            # A banned source (hasip.security.guard): dropped unanswered;
            # its TCP connection goes too.
            if conn is not None:
                conn.abort()
            return
        src = Source(listener, addr, conn, now)
        try:
            if len(data) > self.config.max_message_size:
                metrics.PARSE_ERRORS.labels("too_large").inc()
                self._reply_unparsable(data, src, 513, b"Message Too Large")
                return
            try:
                msg = parse_message(data, datagram=conn is None)
            except SipParseError as exc:
                metrics.PARSE_ERRORS.labels("parse").inc()
                log.debug("parse_error", peer=f"{addr[0]}:{addr[1]}", reason=exc.reason)
                self._reply_unparsable(data, src, exc.status,
                                       REASONS.get(exc.status, b"Bad Request"))
                return
            if type(msg) is Request:
                self._on_request(msg, src)
            else:
                assert isinstance(msg, Response)
                self._on_response(msg, src)
        except Exception:
            # A bug must cost one message, never the node.
            log.error("message_handling_failed", exc_info=True, peer=f"{addr[0]}:{addr[1]}")

    def _reply_unparsable(self, data: bytes, src: Source, status: int, reason: bytes) -> None:
        if data.startswith(b"SIP/") or data.startswith(b"ACK "):
            return
        out = make_response_from_raw(data, status, reason)
        if out is not None:
            self._send_to_source(out, src)
            self._resp_out.inc(str(status))

    def send(self, data: bytes, dest: Destination) -> None:
        """Send a message: a datagram straight to the socket (compiled), the
        rest (TCP, or a datagram that could not go: counted there) through
        the transports."""
        if dest.transport == "udp" and send_datagram(data, dest):
            return
        self.transports.send(data, dest)

    def _send_to_source(self, data: bytes, src: Source) -> None:
        dest = Destination("tcp" if src.conn else "udp", src.addr, src.listener, src.conn)
        self.send(data, dest)

    def reply_destination(self, src: Source, via: Via) -> Destination:
        """Where responses to a request go (RFC 3261 18.2.2, RFC 3581 4)."""
        if src.conn is not None:
            port = int(via.params.get("rport") or 0) or via.port or 5060
            return Destination(src.listener.transport, src.addr, src.listener, src.conn,
                               (src.addr[0], port))
        port = src.addr[1] if "rport" in via.params else (via.port or 5060)
        return Destination("udp", (src.addr[0], port), src.listener)

    def _fix_via(self, req: Request, src: Source) -> None:
        """Add ``received`` and fill ``rport`` in the top Via (RFC 3261 18.2.1, RFC 3581)."""
        via = req.top_via
        ip, port = src.addr
        host = via.host[1:-1] if via.host.startswith("[") else via.host
        add_received = host.lower() != ip
        want_rport = "rport" in via.params and not via.params["rport"]
        if not add_received and not want_rport:
            return
        text = via.text
        if want_rport:
            parts = text.split(";")
            for i, part in enumerate(parts):
                if part.strip().lower() == "rport":
                    parts[i] = f"rport={port}"
            text = ";".join(parts)
        if add_received:
            text += f";received={ip}"
        i = req.keys.index(b"via")
        raw = req.raws[i]
        values = split_list(req.value_at(i).decode("latin-1"))
        values[0] = text
        req.set_line(i, raw[:raw.index(b":") + 1] + b" " + ", ".join(values).encode("latin-1"))

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
        self._fix_via(req, src)
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
            self._run_server(txn, txn.receive_request(req, src.received_at))
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
        self.run_script(ctx, self.router.route, ctx)

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
                    self._cancel_branch(branch)
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
            now = self.loop.time()
            self._run_server(txn, txn.send_response(100, data, now))
            self._resp_out.inc("100")

    def _on_ack(self, req: Request, src: Source) -> None:
        key = server_key(req)
        txn = self.server_txns.get(key)
        if txn is not None and txn.state in (COMPLETED, CONFIRMED):
            # ACK for a non-2xx final response: hop by hop, absorbed here.
            self._run_server(txn, txn.receive_request(req, src.received_at))
            return
        if txn is not None and txn.state == PROCEEDING:
            return
        if txn is None and req.to.tag == self._tag_for_key(key):
            return   # the ACK of a failure we answered statelessly (a challenge)
        # ACK for a 2xx: its own transaction, forwarded statelessly (16.11).
        ctx = RequestContext(self, req, src, None)
        self.run_script(ctx, self.router.route, ctx)

    def _on_cancel(self, req: Request, src: Source) -> None:
        key = server_key(req)
        txn = self.server_txns.get(key)
        if txn is not None:
            metrics.RETRANSMISSIONS.labels("CANCEL").inc()
            self._run_server(txn, txn.receive_request(req, src.received_at))
            return
        invite = self.server_txns.get(cancel_target_key(req))
        if invite is None:
            ctx = RequestContext(self, req, src, None)
            self.run_script(ctx, self.router.route_unmatched_cancel, ctx)
            return
        txn = NonInviteServerTransaction(key, src.conn is not None, self.timers)
        txn.owner = ResponseContext(txn, req, src, self.reply_destination(src, req.top_via))
        self.server_txns[key] = txn
        # RFC 3261 16.10: answer the CANCEL, then cancel every pending branch.
        data = make_response(req, 200, to_tag=self._tag_for_key(invite.key))
        self._run_server(txn, txn.send_response(200, data, src.received_at))
        self._resp_out.inc("200")
        rc = invite.owner
        if isinstance(rc, ResponseContext) and not rc.final_sent:
            self.cancel_context(rc)

    def cancel_context(self, rc: ResponseContext) -> None:
        rc.cancelled = True
        if not rc.branches:
            self._reply_rc(rc, 487)
            return
        for branch in rc.branches:
            if branch.final_status == 0:
                if branch.provisional:
                    self._cancel_branch(branch)
                else:
                    # RFC 3261 9.1: no CANCEL before a provisional response.
                    branch.cancel_pending = True

    # -- responses -----------------------------------------------------------

    def _on_response(self, resp: Response, src: Source) -> None:
        self._resp_in.inc(str(resp.status))
        try:
            branch = resp.top_branch()
            method = resp.cseq[1]
        except SipParseError:
            metrics.PARSE_ERRORS.labels("response").inc()
            return
        txn = self.client_txns.get((branch or "", method))
        if txn is None:
            if branch and branch.startswith(PROBE_BRANCH):
                self.prober.answered(branch, resp.status, src.received_at)
            elif branch and branch.startswith(KEEPALIVE_BRANCH):
                self.keepalive.answered(branch, resp.status)
            elif not (branch and branch.startswith(NAT_PING_BRANCH)
                      and self.pinger.answered(branch)):
                forwarded = self._forward_stray(resp)
                metrics.STRAY_RESPONSES.labels("forwarded" if forwarded else "dropped").inc()
            return
        self._run_client(txn, txn.receive_response(resp, src.received_at), src.received_at)

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
                    _BRANCH_MARK):
                return False
            host = nxt.params.get("received") or nxt.host
            rport = nxt.params.get("rport")
            port = int(rport) if rport else (nxt.port or 5060)
        except (SipParseError, ValueError):
            return False
        dest = self._resolve(nxt.transport.lower(), host.strip("[]"), port)
        if dest is None:
            return False
        resp.pop_first_value(b"via")
        self.send(resp.to_bytes(), dest)
        self._resp_out.inc(str(resp.status))
        return True

    def _on_branch_response(self, branch: Branch, resp: Response, received_at: float) -> None:
        status = resp.status
        rc = branch.rc
        if status < 200:
            branch.provisional = True
            if branch.cancel_pending:
                self._cancel_branch(branch)
        else:
            branch.final_status = status
            branch.final = resp
        if rc is not None and rc.data:
            self.router.on_branch_reply(rc, status)
        if rc is None or status == 100:
            return  # our own request (a CANCEL), or a 100 (hop by hop)
        resp.pop_first_value(b"via")
        if not resp.has(b"via"):
            return
        if branch.nat and status < 300:
            fix_contact(resp, branch.dest.addr)
        keys = resp.keys
        if (b"p-asserted-identity" in keys or b"remote-party-id" in keys) and not (
                self.services.is_trusted(*branch.dest.addr)):
            self.router.screen_identity(resp)
        if status < 200:
            self._relay_upstream(rc, resp, received_at)
        elif status < 300:
            first = not rc.final_sent
            if first and rc.data:
                self.router.on_answered(rc, resp, branch.nat)
            self._relay_upstream(rc, resp, received_at)
            if first and rc.request.method == "INVITE":
                # RFC 3261 16.7 step 10: a 2xx ends the other branches.
                for other in rc.branches:
                    if other is not branch and other.final_status == 0:
                        self._cancel_branch(other)
        else:
            self.router.on_branch_failure(rc, branch)
            if status >= 600:
                for other in rc.branches:
                    if other.final_status == 0:
                        self._cancel_branch(other)
            self._maybe_finish(rc, received_at)

    def _on_branch_timeout(self, branch: Branch, received_at: float, status: int = 408) -> None:
        """No answer (408), or the request could not be sent (503, RFC 3261 16.9)."""
        branch.final_status = status
        rc = branch.rc
        if rc is None:
            return
        if status == 408:
            metrics.TIMEOUTS.labels(rc.request.method).inc()
        self.router.on_branch_failure(rc, branch)
        self._maybe_finish(rc, received_at)

    def _maybe_finish(self, rc: ResponseContext, received_at: float) -> None:
        """All branches final: let the script fail over, else send the best answer."""
        if rc.final_sent or rc.pending():
            return
        if not rc.cancelled and self.router.failure_route(rc):
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
        self._relay_upstream(rc, resp, received_at)

    def best_status(self, rc: ResponseContext) -> int:
        """The status the context would answer with now (0: no branch)."""
        best = self._best_branch(rc)
        return best.final_status if best is not None else 0

    @staticmethod
    def _best_branch(rc: ResponseContext) -> Branch | None:
        """RFC 3261 16.7 step 6: a 6xx if any, else the lowest class."""
        best: Branch | None = None
        best_rank = 10
        for branch in rc.branches:
            status = branch.final_status
            rank = 0 if status >= 600 else status // 100
            if rank < best_rank:
                best, best_rank = branch, rank
        return best

    def _final(self, rc: ResponseContext, status: int) -> None:
        """The context's final answer goes out (relayed or ours): the script
        hears of a failure (a tracked dialog ends)."""
        rc.final_sent = True
        if status >= 300 and rc.data:
            self.router.on_final(rc, status)

    def _relay_upstream(self, rc: ResponseContext, resp: Response, received_at: float) -> None:
        status = resp.status
        if status >= 200:
            self._final(rc, status)
        server = rc.server
        data = resp.to_bytes()
        if server is None:
            self.send(data, rc.reply_dest)
        else:
            self._run_server(server, server.send_response(status, data, received_at))
        self._resp_out.inc(str(status))
        self._latency.observe(self._lat_response, self.loop.time() - received_at)

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
            self._final(rc, status)
        if server is None:
            self.send(data, rc.reply_dest)
        else:
            self._run_server(server, server.send_response(status, data, self.loop.time()))
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
        self.send(data, self.reply_destination(ctx.source, req.top_via))
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
            out.append(b"max-forwards", b"Max-Forwards: %d" % self.config.max_forwards)
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
            dest = self._with_socket(ctx, self.resolve(target))
        if dest is None:
            if self._needs_dns(target):
                self.loop.create_task(self._forward_after_dns(ctx, out, target))
                return True
            return False
        self._start_branch(ctx, out, dest, nat, timers)
        return True

    async def _forward_after_dns(self, ctx: RequestContext, out: Request, target: SipUri) -> None:
        host = target.params.get("maddr") or target.host_ip
        try:
            infos = await self.loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
            self._resolved[host] = str(infos[0][4][0])
        except OSError:
            log.info("dns_failed", host=host)
        dest = self.resolve(target)
        if dest is None:
            ctx.reply(503, b"Service Unavailable (cannot resolve next hop)")
            return
        if ctx.rc is not None and ctx.rc.final_sent:
            return
        self._start_branch(ctx, out, dest)

    @staticmethod
    def _needs_dns(target: SipUri) -> bool:
        host = target.params.get("maddr") or target.host_ip
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return True
        return False

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
        if sock is None or sock is dest.listener or not self.transports.can_reach(
                sock, dest.transport, dest.listener.family, dest.addr[0]):
            return dest
        return Destination(dest.transport, dest.addr, sock)

    def _from_listener(self, target: SipUri, listener: Listener) -> Destination | None:
        """Where ``target`` is, reached from ``listener`` when it can reach it."""
        dest = self.resolve(target)
        if dest is None or dest.listener is listener or not self.transports.can_reach(
                listener, dest.transport, dest.listener.family, dest.addr[0]):
            return dest
        return Destination(dest.transport, dest.addr, listener)

    def owns_socket(self, socket_text: str) -> bool:
        """Whether ``socket_text`` ("udp:VIP:5060") is ours to serve now: one
        of our listeners, and (a VIP) held by this node."""
        listener = self.listeners_by_socket.get(socket_text)
        return listener is not None and listener.active

    def node_address(self, node: Node, ctx: RequestContext | None = None,
                     vip: bool = False) -> Destination | None:
        """Where a dispatcher destination is reached: its URI resolved, sent
        from its ``socket`` attribute when it names one of our listeners,
        else from the incoming socket of ``ctx``, else (a probe) from the
        node's own address or, with ``vip``, a VIP it owns."""
        dest = self.resolve(node.uri)
        if dest is None:
            return None
        sock = self.listeners_by_socket.get(node.socket) if node.socket else None
        if sock is None and ctx is None and vip:
            sock = self.transports.listener_for(dest.transport, dest.listener.family,
                                                dest.addr[0], vip=True)
        return self._with_socket(ctx, dest, sock)

    def resolve(self, target: SipUri) -> Destination | None:
        """IP, port, transport and local listener for ``target`` (RFC 3263 for
        IP literals and A/AAAA names: no NAPTR/SRV yet). None when unusable."""
        transport = target.transport
        host = target.params.get("maddr") or target.host_ip
        key = (transport, host, target.default_port())
        dest = self._destinations.get(key)
        if dest is not None and dest.listener.active:
            return dest
        # Not seen yet, or its socket is a VIP this node no longer owns.
        dest = self._resolve(transport, host, key[2])
        if dest is not None or not self._needs_dns(target):
            if len(self._destinations) >= 4096:
                self._destinations.clear()
            self._destinations[key] = dest
        return dest

    def _resolve(self, transport: str, host: str, port: int) -> Destination | None:
        if transport not in ("udp", "tcp"):
            return None
        ip = self._resolved.get(host, host)
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if addr.is_multicast or addr.is_unspecified or str(addr) == "255.255.255.255":
            return None
        listener = self.transports.listener_for(
            transport, socket.AF_INET6 if addr.version == 6 else socket.AF_INET, str(addr))
        if listener is None:
            return None
        return Destination(transport, (str(addr), port), listener)

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
            if (via.sent_by in self.my_sent_by and branch.startswith(_BRANCH_MARK)
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
        branch_id = (_BRANCH_MARK + self._loop_hash(req) + self._unique
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
        now = self.loop.time()
        self._run_client(txn, txn.start(now), now)
        self._req_out.inc(out.method)
        self._latency.observe(self._lat_request, self.loop.time() - ctx.source.received_at)

    def forward_stateless(self, ctx: RequestContext) -> bool:
        """Forward without a transaction (ACK for 2xx, RFC 3261 16.11): the
        branch is derived from the incoming one so a retransmission gets the same."""
        prepared = self._prepare(ctx, None, None)
        if prepared is None:
            return False
        out, target = prepared
        dest = self._with_socket(ctx, self.resolve(target))
        if dest is None:
            return False
        req = ctx.request
        seed = (req.top_via.branch or req.top_via.text) + req.call_id
        branch_id = "z9hG4bKsl" + hex8(zlib.crc32(seed.encode("latin-1")))
        out.insert_top(b"via", dest.listener.via_prefix + branch_id.encode())
        self.send(out.to_bytes(), dest)
        self._req_out.inc(out.method)
        self._latency.observe(self._lat_request, self.loop.time() - ctx.source.received_at)
        return True

    def _cancel_branch(self, branch: Branch) -> None:
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
        now = self.loop.time()
        self._run_client(txn, txn.start(now), now)

    # -- running transaction actions -------------------------------------------

    def _run_client(self, txn: ClientTransaction, actions: list[Action], now: float) -> None:
        branch = txn.owner
        assert isinstance(branch, Branch)
        for kind, data in actions:
            if kind == SEND:
                assert isinstance(data, bytes)
                self.transports.send(data, branch.dest,
                                     functools.partial(self._transport_error, txn))
            elif kind == RESPONSE:
                assert isinstance(data, Response)
                self._on_branch_response(branch, data, now)
            elif kind == TIMEOUT:
                self._on_branch_timeout(branch, now)
            elif kind == TRANSPORT_ERROR:
                self._on_branch_timeout(branch, now, 503)
            elif kind == TIMER_C:
                # RFC 3261 16.8: cancel the branch and answer it with 408 ourselves.
                self._cancel_branch(branch)
                self._on_branch_timeout(branch, now)
            elif kind == TERMINATED:
                self.client_txns.pop(txn.key, None)
                # Break the branch <-> transaction cycle so that reference
                # counting frees them without waiting for the cyclic GC.
                branch.txn = None
                txn.owner = None
                return
        self.timerq.schedule(txn)

    def _transport_error(self, txn: ClientTransaction) -> None:
        log.debug("transport_error", branch=txn.key[0])
        self._run_client(txn, txn.transport_error(), self.loop.time())

    def _run_server(self, txn: ServerTransaction, actions: list[Action]) -> None:
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
                self.send(data, dest)
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
        self.timerq.schedule(txn)

    def _on_timer(self, txn: Transaction, now: float) -> None:
        actions = txn.handle_timer(now)
        if any(kind == SEND for kind, _ in actions):
            metrics.RETRANSMITTED_OUT.labels(
                "request" if isinstance(txn, ClientTransaction) else "response").inc()
        if isinstance(txn, ClientTransaction):
            self._run_client(txn, actions, now)
        else:
            assert isinstance(txn, ServerTransaction)
            self._run_server(txn, actions)
