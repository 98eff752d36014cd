"""The routing script: the seed's Kamailio route blocks as Python, one
method per block. Each takes a :class:`RequestContext` and either replies or
forwards; what the blocks do, not how, lives here."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from hasip.auth.authenticator import AUTHENTICATED, Verdict
from hasip.auth.digest import CredentialsError, parse_credentials
from hasip.dialog.dialog import ENDED_BYE, ENDED_CANCELLED, ENDED_FAILED
from hasip.dispatcher.destinations import ACTIVE
from hasip.dispatcher.destinations import Destination as Node
from hasip.dispatcher.dispatcher import FAILOVER
from hasip.location.binding import Binding, format_socket, parse_socket
from hasip.location.registrar import Origin, register
from hasip.proxy.context import Branch, Reply, RequestContext, ResponseContext
from hasip.proxy.engine import Engine
from hasip.proxy.media import NEVER, MediaHook
from hasip.proxy.nat import behind_nat, fix_contact
from hasip.security.routetoken import PARAM
from hasip.sip.errors import SipParseError
from hasip.sip.headers import parse_name_addr
from hasip.sip.message import Request, Response
from hasip.sip.uri import SipUri, Uri, parse_uri
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import Destination, Listener

log = get_logger("hasip.routing")


def _realm_of(value: bytes) -> str | None:
    """The realm of one (Proxy-)Authorization value; None when it does not
    parse (a value we cannot read is not passed on either)."""
    try:
        return parse_credentials(value.decode("latin-1")).realm
    except CredentialsError:
        return None


_USER_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                       "-_.!~*'()&=+$,;?/")


def _escape_user(user: str) -> str:
    """A user name as the user part of a SIP URI (RFC 3261 25.1 escapes)."""
    return "".join(c if c in _USER_SAFE else "".join(f"%{b:02X}" for b in c.encode())
                   for c in user)

# Requests that create a dialog and must not be sent along a preloaded Route
# to somewhere else (the seed's 403 rule).
_DIALOG_CREATING = ("INVITE", "REFER")
# In-dialog requests whose SDP goes through the media relay.
_SDP_METHODS = ("INVITE", "UPDATE", "PRACK", "ACK")


class Router:
    """hasip's routing script (:class:`hasip.proxy.script.RoutingScript`)."""

    def __init__(self, proxy: Engine) -> None:
        self.proxy = proxy
        self.config = proxy.config
        self.services = proxy.services
        # Request-URIs rewritten to a node, by (Request-URI, node URI).
        self._rewritten: dict[tuple[bytes, str], SipUri] = {}
        # The media relay (hasip/proxy/media.py), when rtpengine is configured.
        self.media: MediaHook | None = None
        relay = self.services.media
        if relay is not None and self.config.media.relay != NEVER:
            self.media = MediaHook(self.config.media, relay, self.services.dialogs,
                                   proxy.owns_socket, proxy.spawn)
            cdrs = self.services.cdrs
            if cdrs is not None:
                # a relayed call's CDR waits for rtpengine's figures
                cdrs.media_first = True
                self.media.deleted = cdrs.queue

    # -- route (main) ----------------------------------------------------------

    def route(self, ctx: RequestContext) -> None:
        """The main route block: checks, then in-dialog or initial handling."""
        req = ctx.request
        method = req.method
        ctx.trusted = self.services.is_trusted(*ctx.source.addr)
        if method == "OPTIONS" and self.is_keepalive(ctx):
            ctx.reply(200, extra=self.proxy.capabilities)
            return
        if req.max_forwards == 0:
            ctx.reply(483)
            return
        if b"proxy-require" in req.keys:
            # RFC 3261 16.3 step 5: we support no option tag a client can require of us.
            ctx.reply(420, extra=[b"Unsupported: " + (req.get(b"proxy-require") or b"")])
            return
        if req.to.tag is not None:
            self.route_within_dialog(ctx)
            return
        # Loops are looked for on initial requests: in-dialog ones follow
        # their route set, which cannot loop through us unnoticed.
        if method != "ACK" and self.proxy.is_loop(req):
            ctx.reply(482)
            return
        self.route_initial(ctx)

    def is_keepalive(self, ctx: RequestContext) -> bool:
        """OPTIONS to the proxy itself (no user part): peers and monitors probing us."""
        req = ctx.request
        uri = req.uri
        return (req.to.tag is None and isinstance(uri, SipUri) and uri.user is None
                and self.proxy.is_myself(uri) and not req.has(b"route"))

    # -- in-dialog requests (the seed's loose_route section) ---------------------

    def route_within_dialog(self, ctx: RequestContext) -> None:
        req = ctx.request
        trusted = ctx.trusted
        if not trusted and not self.in_our_dialog(req):
            # A To tag proves nothing: only the token of a Record-Route we
            # wrote does (hasip.security.routetoken). Never relayed.
            metrics.REFUSED.inc("not_our_dialog")
            log.info("in_dialog_refused", peer=f"{ctx.source.addr[0]}:{ctx.source.addr[1]}",
                     method=req.method, call_id=req.call_id)
            if req.method != "ACK":
                ctx.reply(403, b"Forbidden (not a dialog of ours)")
            return
        if not trusted:
            self.screen(ctx)
        self.consume_credentials(req)
        if (req.get(b"route") or b"").find(b";nat=yes") >= 0:
            # A dialog we marked NATed at its start.
            ctx.nat = True
            if ctx.rc is not None:
                ctx.rc.nat = True
        self.handle_nat(ctx)
        method = req.method
        if method == "BYE":
            dialogs = self.services.dialogs
            d = dialogs.find(req.call_id, req.from_.tag, req.to.tag)
            if d is not None:
                dialogs.end(d, ENDED_BYE)
        had_route = self.loose_route(ctx)
        media = self.media
        if media is not None and (method == "INVITE" or (req.body and method in _SDP_METHODS)):
            # an SDP exchange within a relayed call (a re-INVITE without
            # SDP too: its 2xx offers)
            d = self.services.dialogs.find(req.call_id, req.from_.tag, req.to.tag)
            if d is not None and d.media:
                media.in_dialog(ctx, d, lambda c: self.forward_in_dialog(c, had_route))
                return
        self.forward_in_dialog(ctx, had_route)

    def forward_in_dialog(self, ctx: RequestContext, had_route: bool) -> None:
        """Relay an in-dialog request along its route set (or answer it)."""
        req = ctx.request
        if had_route or not self.proxy.is_myself(req.uri):
            if req.method == "ACK":
                ctx.forward_stateless()
            elif not ctx.forward():
                ctx.reply(503, b"Service Unavailable (next hop unusable)")
            return
        if req.method == "ACK":
            return  # an ACK for a dialog we do not route: nothing to do
        ctx.reply(404, b"Not Here")

    def in_our_dialog(self, req: Request) -> bool:
        """Whether an in-dialog request follows a route set we recorded: our
        Route entry on top (or, after a strict router, our URI as the
        Request-URI) carries this dialog's token; or the dialog store knows
        the dialog (dialogs set up before tokens existed)."""
        uri: Uri | None = None
        if b"route" in req.keys:
            first = parse_name_addr(req.values(b"route")[0], "Route").uri
            if self.proxy.is_myself(first):
                uri = first
        if uri is None and self.proxy.is_myself(req.uri):
            uri = req.uri     # a strict router put our Record-Route URI here
        token = uri.params.get(PARAM) if isinstance(uri, SipUri) else None
        from_tag, to_tag = req.from_.tag, req.to.tag
        if token and self.services.signer.verify(req.call_id, from_tag or "", to_tag, token):
            return True
        return self.services.dialogs.find(req.call_id, from_tag, to_tag) is not None

    def loose_route(self, ctx: RequestContext) -> bool:
        """RFC 3261 16.4: undo a strict router's rewrite, drop our own Route
        entries (two with double Record-Route). True when a Route set was there."""
        req = ctx.request
        proxy = self.proxy
        if b"route" in req.keys and proxy.is_myself(req.uri) and req.uri.user is None:  # type: ignore[union-attr]
            # The previous hop was a strict router: our Record-Route URI is the
            # Request-URI, and the real one is the last Route value.
            routes = req.values(b"route")
            last = parse_name_addr(routes[-1], "Route")
            if isinstance(last.uri, SipUri):
                req.remove_all(b"route")
                for value in routes[:-1]:
                    req.append(b"route", b"Route: " + value.encode("latin-1"))
                req.uri = last.uri
        if b"route" not in req.keys:
            return False
        values = req.values(b"route")
        ours = 0
        for value in values[:2]:
            if not proxy.is_myself(parse_name_addr(value, "Route").uri):
                break
            ours += 1
        if ours == 2:
            # Double Record-Route: the second of ours faces the next hop.
            second = parse_name_addr(values[1], "Route").uri
            if isinstance(second, SipUri):
                ctx.send_socket = proxy.listeners.listener_at(
                    second.transport, second.host_ip, second.default_port())
        if ours:
            req.remove_all(b"route")
            for value in values[ours:]:
                req.append(b"route", b"Route: " + value.encode("latin-1"))
        return True

    # -- initial requests ----------------------------------------------------

    def route_initial(self, ctx: RequestContext) -> None:
        req = ctx.request
        method = req.method
        # A Route preloaded by a phone that uses us as outbound proxy: ours is
        # dropped; one pointing elsewhere is refused for INVITE/REFER (seed).
        foreign_route = False
        if b"route" in req.keys:
            self.loose_route(ctx)
            if b"route" in req.keys:
                if method in _DIALOG_CREATING:
                    ctx.reply(403, b"Forbidden (Route without To tag)")
                    return
                foreign_route = True
        if method == "ACK":
            # An ACK without a To tag matched no transaction of ours: it
            # acknowledges nothing we sent, and is never relayed.
            metrics.REFUSED.inc("unmatched_ack")
            return
        self.handle_nat(ctx)
        if method == "REGISTER" and not foreign_route and self.proxy.is_myself(req.uri):
            self.route_register(ctx)
            return
        ctx.record_route = True
        if ctx.trusted:
            self.route_request(ctx)
            return
        # The seed's hole: phones placed calls unauthenticated. Every initial
        # request from an untrusted address proves who sent it (407).
        identity = self._user_of(req.from_.uri)
        self.authenticate(ctx, True, identity, self.route_request)

    def route_request(self, ctx: RequestContext) -> None:
        """An initial request allowed through: relay, or look up our users."""
        req = ctx.request
        self.consume_credentials(req)
        if not ctx.trusted:
            self.screen(ctx)
        if req.method == "INVITE":
            self.start_dialog(ctx)
            if self.media is not None:
                self.media.initial(ctx, self.callee_nat(ctx), self.route_onwards)
                return
        self.route_onwards(ctx)

    def callee_nat(self, ctx: RequestContext) -> bool:
        """The INVITE goes to a registered contact behind NAT."""
        req = ctx.request
        if b"route" in req.keys or not self.proxy.is_myself(req.uri):
            return False
        aor = self.aor_of(req.uri)
        return aor is not None and any(b.nat for b in self.services.location.bindings(aor))

    def route_onwards(self, ctx: RequestContext) -> None:
        """Where an initial request goes: relayed, or to our users."""
        req = ctx.request
        if b"route" in req.keys or not self.proxy.is_myself(req.uri):
            self.route_relay(ctx)
        elif req.method == "INVITE":
            self.route_invite(ctx)
        else:
            self.route_local(ctx)

    def route_invite(self, ctx: RequestContext) -> None:
        """The seed's route[3]: a registered user gets the call, anything
        else goes to the next hop (route[5])."""
        self.route_local(ctx)

    # -- dialogs (Kamailio's dlg_manage) --------------------------------------------

    def start_dialog(self, ctx: RequestContext) -> None:
        """Track the dialog this INVITE may create (its context carries it)."""
        req = ctx.request
        rc = ctx.rc
        if rc is None:
            return
        contact = req.get(b"contact")
        d = self.services.dialogs.create(
            req.call_id, req.from_.tag or "", req.from_.uri_text, req.to.uri_text,
            req.uri_raw.decode("latin-1"), contact.decode("latin-1") if contact else "",
            req.cseq[0], ctx.source.listener.socket, ctx.nat, ctx.user or "")
        if d is not None:
            rc.dialog = d

    def on_answered(self, rc: ResponseContext, resp: Response, nat: bool) -> None:
        """The first 2xx to a tracked INVITE: the dialog is confirmed."""
        d = rc.dialog
        if d is not None:
            contact = resp.get(b"contact")
            routes = tuple(v.decode("latin-1") for v in resp.get_all(b"record-route"))
            self.services.dialogs.confirm(d, resp.to.tag or "",
                                          contact.decode("latin-1") if contact else "",
                                          routes, nat)

    def on_final(self, rc: ResponseContext, status: int) -> None:
        """A tracked INVITE was answered with a failure: its dialog never was."""
        d = rc.dialog
        if d is not None and status >= 300:
            reason = ENDED_CANCELLED if rc.cancelled or status == 487 else ENDED_FAILED
            self.services.dialogs.end(d, reason, status)

    # -- NAT (the seed's nat_uac_test / force_rport / fix_contact) -------------

    def handle_nat(self, ctx: RequestContext) -> None:
        req = ctx.request
        src = ctx.source
        if not behind_nat(req, src.addr, self.config.nat.detect):
            return
        ctx.nat = True
        metrics.NAT_DETECTED.inc(req.method)
        ctx.force_rport()
        if ctx.rc is not None:
            ctx.rc.nat = True
        if req.method != "REGISTER":
            # The registrar keeps the contact as sent and records the source
            # (fix_nated_register); other requests get a reachable Contact:
            # the NAT's public side, or (a stream) the caller's connection.
            fix_contact(req, src.addr, "" if src.conn is None else src.listener.transport)

    # -- credentials and identities (RFC 3261 22.3, RFC 3325) ------------------------

    def consume_credentials(self, req: Request) -> None:
        """Our realm's credentials end here (RFC 3261 22.3): relayed, they
        would hand every next hop material for an offline password attack.
        Credentials for other realms (Asterisk's) go on."""
        keys = req.keys
        if b"proxy-authorization" not in keys and b"authorization" not in keys:
            return
        realm = self._realm(req, True)
        for key in (b"proxy-authorization", b"authorization"):
            if key in keys:
                before = req.count(key)
                req.keep_lines(key, lambda value: _realm_of(value) not in (realm, None))
                removed = before - req.count(key)
                if removed:
                    metrics.SCREENED.inc(key.decode())

    def screen(self, ctx: RequestContext) -> None:
        """A request from an untrusted source: the identities it asserts are
        not believed (RFC 3325 5: only trusted peers keep theirs); with
        ``auth.assert_identity`` the authenticated user is asserted instead."""
        req = ctx.request
        keys = req.keys
        if b"p-asserted-identity" in keys or b"remote-party-id" in keys or (
                b"p-preferred-identity" in keys):
            self.screen_identity(req)
            if b"p-preferred-identity" in keys:
                req.remove_all(b"p-preferred-identity")
                metrics.SCREENED.inc("p-preferred-identity")
        if ctx.user and self.config.auth.assert_identity and req.to.tag is None:
            uri = req.from_.uri
            host = uri.host if isinstance(uri, SipUri) else self.config.auth.realm
            req.append(b"p-asserted-identity",
                       b"P-Asserted-Identity: <sip:" + _escape_user(ctx.user).encode("latin-1")
                       + b"@" + host.encode("latin-1") + b">")

    @staticmethod
    def screen_identity(msg: Request | Response) -> None:
        """Remove P-Asserted-Identity and Remote-Party-ID."""
        for key in (b"p-asserted-identity", b"remote-party-id"):
            if key in msg.keys:
                msg.remove_all(key)
                metrics.SCREENED.inc(key.decode())

    # -- authentication ---------------------------------------------------------

    def _user_of(self, uri: Uri) -> str | None:
        return uri.user_unescaped() if isinstance(uri, SipUri) else None

    def _realm(self, req: Request, proxy: bool) -> str:
        if self.config.auth.realm:
            return self.config.auth.realm
        uri = req.from_.uri if proxy else req.to.uri
        return uri.host_ip if isinstance(uri, SipUri) else "hasip"

    def authenticate(self, ctx: RequestContext, proxy: bool, identity: str | None,
                     then: Callable[[RequestContext], None]) -> None:
        """Digest-authenticate ``ctx`` (401 for REGISTER, 407 otherwise), then
        call ``then``; an answer from RADIUS resumes the request later."""
        verdict = self.services.authenticator.check(ctx.request, proxy,
                                                    self._realm(ctx.request, proxy), identity,
                                                    ctx.source.addr[0], self.proxy.now)
        if isinstance(verdict, Verdict):
            self._authenticated(ctx, verdict, then)
        else:
            ctx.suspend(verdict, lambda v: self._authenticated(ctx, v, then))

    def _authenticated(self, ctx: RequestContext, verdict: Verdict,
                       then: Callable[[RequestContext], None]) -> None:
        if verdict.kind == AUTHENTICATED:
            ctx.user = verdict.user
            then(ctx)
        else:
            self.proxy.failures.auth(ctx.request, ctx.source.addr, verdict, self.proxy.now)
            ctx.reply(verdict.status, verdict.reason, verdict.headers)

    # -- registrar (the seed's route[2]) -------------------------------------------

    def route_register(self, ctx: RequestContext) -> None:
        """Authenticate every REGISTER, unregistering included (the seed let
        Expires: 0 through without credentials), then save."""
        user = self._user_of(ctx.request.to.uri)
        if not user:
            ctx.reply(400, b"Bad Request (To has no user part)")
            return
        self.authenticate(ctx, False, user, self.save)

    def aor_of(self, uri: Uri) -> str | None:
        if not isinstance(uri, SipUri) or not uri.user:
            return None
        user = uri.user_unescaped() or ""
        return f"{user}@{uri.host_ip}" if self.config.registrar.use_domain else user

    def save(self, ctx: RequestContext) -> None:
        req = ctx.request
        aor = self.aor_of(req.to.uri)
        assert aor is not None
        # A retransmission must get this answer again, not a second try
        # (whose CSeq and nonce-count would be refused).
        ctx.stateful()
        src = ctx.source
        transport = src.listener.transport
        received = None
        if ctx.nat or src.conn is not None:
            # Where the phone can be reached: its NAT's public side, or its
            # TCP connection (Kamailio's received / fix_nated_register).
            received = format_socket(transport, src.addr[0], src.addr[1])
        origin = Origin(src.listener.socket, received, ctx.nat)
        outcome = register(req, aor, self.services.location, self.services.policy, origin,
                           time.time())
        metrics.REGISTRATIONS.inc(outcome.result)
        log.debug("register", aor=aor, result=outcome.result, status=outcome.status)
        ctx.reply(outcome.status, outcome.reason, outcome.headers)

    # -- location lookup -------------------------------------------------------

    def route_local(self, ctx: RequestContext) -> None:
        """A request to our domain: every current binding of the Request-URI's
        user, highest q first (parallel within a q, serial between); nobody
        registered: the next-hop step."""
        aor = self.aor_of(ctx.request.uri)
        bindings = self.services.location.bindings(aor) if aor else []
        if not bindings:
            metrics.LOOKUPS.inc("not_found")
            if self.services.dispatcher.is_destination(ctx.source.addr):
                # A call back from Asterisk for nobody we know: never back
                # into the dispatcher (a loop between us and Asterisk).
                ctx.reply(404, b"Not Found (not registered)")
                return
            self.route_to_next_hop(ctx)
            return
        metrics.LOOKUPS.inc("found")
        groups: list[list[Binding]] = []
        for b in bindings:
            if groups and groups[-1][0].q == b.q:
                groups[-1].append(b)
            else:
                groups.append([b])
        assert ctx.rc is not None
        ctx.rc.location = groups[1:]
        if not self.fork(ctx, groups[0]):
            self.next_contacts(ctx)

    def fork(self, ctx: RequestContext, bindings: list[Binding]) -> bool:
        """One branch per binding; False when none could be sent."""
        sent = False
        rc = ctx.rc
        for b in bindings:
            try:
                uri = parse_uri(b.contact)
            except SipParseError:
                continue
            if not isinstance(uri, SipUri):
                continue
            dest = self.binding_destination(b)
            if dest is None and self.registered_over_stream(b):
                # no destination for a stream registration: its flow is gone
                if b.outbound:
                    # RFC 5626 5.3: an outbound registration is reached over
                    # its flow or not at all (the Contact may be anywhere).
                    log.info("flow_failed", aor=b.aor, call_id=ctx.request.call_id,
                             flow=b.received)
                    if rc is not None:
                        rc.flows_failed += 1
                    continue
                # RFC 3261 16.5: the connection the phone registered on is
                # gone (a restart, a takeover): the Contact it registered.
                dest = self.contact_destination(b, uri)
            before = len(rc.branches) if rc is not None else 0
            if ctx.forward(request_uri=uri, dest=dest, routes=b.path, nat=b.nat):
                sent = True
                if rc is not None and len(rc.branches) > before:
                    rc.branches[-1].binding = b
        return sent

    def _binding_listener(self, b: Binding, transport: str, host: str) -> Listener | None:
        """The socket ``b`` registered on, or one of ``transport`` that reaches ``host``."""
        listener = self.proxy.listeners_by_socket.get(b.socket)
        if listener is None or listener.transport != transport:
            listener = self.proxy.listeners.listener_for(
                transport, socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return listener

    def binding_destination(self, b: Binding) -> Destination | None:
        """The recorded source of a NATed contact (UDP), or the open
        connection a contact registered over (TCP, its flow), sent from the
        socket it registered on; None: resolve the contact (or its Path)."""
        if b.path or b.received is None:
            return None
        where = parse_socket(b.received)
        if where is None:
            return None
        transport, host, port = where
        listener = self._binding_listener(b, transport, host)
        if listener is None:
            return None
        if transport == "udp":
            return Destination(transport, (host, port), listener)
        # A stream: the phone's connection if it is still open (its source
        # port is ephemeral: nothing listens there once it has closed).
        conn = self.proxy.flow((host, port), listener) if listener.active else None
        if conn is None:
            return None
        return Destination(transport, (host, port), listener, conn)

    @staticmethod
    def registered_over_stream(b: Binding) -> bool:
        """``b`` is reached over the stream connection it registered on
        (no Path, a TCP source recorded)."""
        if b.path or b.received is None:
            return False
        where = parse_socket(b.received)
        return where is not None and where[0] != "udp"

    def contact_destination(self, b: Binding, uri: SipUri) -> Destination | None:
        """Where ``b``'s Contact is, from the socket it registered on when
        that one reaches it; None: the engine resolves the Contact itself."""
        dest = self.proxy.resolve(uri, self.proxy.now)
        if dest is None:
            return None
        listener = self.proxy.listeners_by_socket.get(b.socket)
        if listener is None or listener is dest.listener or not self.proxy.listeners.can_reach(
                listener, dest.transport, dest.listener.family, dest.addr[0]):
            return dest
        return Destination(dest.transport, dest.addr, listener)

    @staticmethod
    def _flow_failure(branch: Branch) -> bool:
        """A branch sent over an outbound flow that broke before it got an answer."""
        b = branch.binding
        return b is not None and b.outbound and branch.final is None and (
            branch.final_status == 503)

    def next_contacts(self, ctx: RequestContext) -> bool:
        """Fork to the next q-group; False when there is none left (480, or
        430 when every contact was an outbound flow that is gone)."""
        rc = ctx.rc
        assert rc is not None
        groups = rc.location
        assert groups is not None
        while groups:
            if self.fork(ctx, groups.pop(0)):
                return True
        if not rc.branches or all(b.final is None for b in rc.branches):
            if (rc.flows_failed or rc.branches) and all(
                    self._flow_failure(b) for b in rc.branches):
                # RFC 5626 5.3
                ctx.reply(430, b"Flow Failed")
            else:
                ctx.reply(480, b"Temporarily Unavailable")
            return True
        return False

    def route_to_next_hop(self, ctx: RequestContext) -> None:
        """The seed's route[5]: a node of the dispatcher's set (``ds_select_domain``:
        the Request-URI's host and port become the node's); the other usable
        nodes are kept, in the algorithm's order, for failover."""
        ds = self.services.dispatcher
        if not ds.sets:
            ctx.reply(404, b"Not Found (no next hop configured)")
            return
        order = ds.order(ds.set_id, self._hash_key(ctx) if ds.hashed else "")
        if not order:
            ctx.reply(503, b"Service Unavailable (no destination available)")
            return
        assert ctx.rc is not None
        ctx.rc.ds_rest = order[1:]
        if not self.ds_forward(ctx, order[0]):
            self.ds_next(ctx)

    def _hash_key(self, ctx: RequestContext) -> str:
        req = ctx.request
        name = self.services.dispatcher.selector.algorithm
        if name == "hash_callid":
            return req.call_id
        if name == "hash_from":
            return str(req.from_.uri)
        uri = req.to.uri if name == "hash_to" else req.uri
        return (uri.user or "") if isinstance(uri, SipUri) else str(uri)

    def ds_forward(self, ctx: RequestContext, dest: Node) -> bool:
        req = ctx.request
        key = (req.uri_raw, dest.key)
        new_uri = self._rewritten.get(key)
        if new_uri is None:
            hop = dest.uri
            uri = req.uri
            assert isinstance(uri, SipUri)
            params = dict(uri.params)
            if "transport" in hop.params:
                params["transport"] = hop.params["transport"]
            new_uri = SipUri(uri.scheme, uri.user, hop.host, hop.port, params, None,
                             uri.password)
            if len(self._rewritten) >= 4096:
                self._rewritten.clear()
            self._rewritten[key] = new_uri
        rc = ctx.rc
        assert rc is not None
        rc.ds_current = dest
        if ctx.forward(request_uri=new_uri, dest=self.proxy.node_address(dest, ctx),
                       timers=self.services.dispatcher.timers):
            self.services.dispatcher.sent(dest)
            d = rc.dialog
            if d is not None:
                self.services.dialogs.set_destination(d, dest.set_id, dest.key)
            return True
        self.services.dispatcher.failed(dest, "unusable")
        return False

    def ds_next(self, ctx: RequestContext) -> bool:
        """The seed's ds_next_domain in failure_route[1]: the next usable node,
        or 503 when none is left."""
        assert ctx.rc is not None
        rest = ctx.rc.ds_rest
        assert rest is not None
        left = ctx.rc.ds_current
        while rest:
            dest = rest.pop(0)
            if not dest.usable():
                continue
            if left is not None:
                metrics.DS_FAILOVERS.labels(str(left.set_id), left.key).inc()
                left = None
            if self.ds_forward(ctx, dest):
                return True
        ctx.reply(503, b"Service Unavailable (no destination left)")
        return True

    def route_relay(self, ctx: RequestContext) -> None:
        """The seed's route[1]: stateful relay to the Request-URI or Route."""
        if not ctx.forward():
            ctx.reply(503, b"Service Unavailable (next hop unusable)")

    def route_unmatched_cancel(self, ctx: RequestContext) -> None:
        """A CANCEL for no INVITE we know: 481. RFC 3261 16.10 lets a proxy
        relay it statelessly, but a CANCEL from anyone to anywhere is a free
        relay; the INVITEs we forward are ours to cancel."""
        metrics.REFUSED.inc("unmatched_cancel")
        ctx.reply(481)

    # -- failure handling --------------------------------------------------------

    def on_branch_failure(self, rc: ResponseContext, branch: Branch) -> None:
        """A branch ended with a failure (>= 300, or a timeout): a node that
        timed out or failed counts against its health (passive detection)."""
        dest = rc.ds_current
        status = branch.final_status
        if dest is not None and status in FAILOVER:
            if status == 408 and branch.provisional:
                return  # it rang too long (timer C): the node itself is alive
            self.services.dispatcher.failed(dest, str(status), by_call=True)

    def on_branch_reply(self, rc: ResponseContext, branch: Branch, status: int) -> None:
        """A node that answers (but with a failure of its own) is alive."""
        dest = rc.ds_current
        if dest is not None and status not in FAILOVER and (
                dest.failures or dest.state != ACTIVE):
            self.services.dispatcher.succeeded(dest)

    def failure_route(self, rc: ResponseContext) -> bool:
        """Every branch failed: True when the script forwarded a new branch or
        answered (the seed's failure_route; the dispatcher issue adds failover).
        A registered user whose contacts all failed: the next q-group, and
        when no contact answered at all, 480."""
        if rc.location is not None and rc.server is not None:
            ctx = self.proxy.context_for(rc)
            ctx.record_route = True
            ctx.nat = rc.nat
            return self.next_contacts(ctx)
        if rc.ds_rest is not None and rc.server is not None:
            best = self.proxy.best_status(rc)
            if best not in FAILOVER:
                return False  # the callee's answer (403, 486, 487...) goes back
            ctx = self.proxy.context_for(rc)
            ctx.record_route = True
            ctx.nat = rc.nat
            return self.ds_next(ctx)
        return False

    def on_reply(self, reply: Reply) -> None:
        """Every reply on its way upstream: the media relay rewrites its SDP."""
        if self.media is not None:
            self.media.on_reply(reply)

    def on_stray_reply(self, response: Response) -> None:
        if self.media is not None:
            self.media.on_stray_reply(response)

