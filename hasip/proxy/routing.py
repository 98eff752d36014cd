"""The routing script: the seed's Kamailio route blocks as Python, one
method per block. Each takes a :class:`RequestContext` and either replies or
forwards; what the blocks do, not how, lives here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hasip.log import get_logger
from hasip.sip.headers import parse_name_addr
from hasip.sip.uri import SipUri

if TYPE_CHECKING:
    from hasip.proxy.core import Branch, Proxy, RequestContext, ResponseContext

log = get_logger("hasip.routing")

# Requests that create a dialog and must not be sent along a preloaded Route
# to somewhere else (the seed's 403 rule).
_DIALOG_CREATING = ("INVITE", "REFER")


class Router:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.config = proxy.config
        self.next_hops = list(proxy.config.next_hop)
        self._next = 0
        # Request-URIs rewritten to a next hop, by (Request-URI, hop index).
        self._rewritten: dict[tuple[bytes, int], SipUri] = {}

    # -- route (main) ----------------------------------------------------------

    def route(self, ctx: RequestContext) -> None:
        """The main route block: checks, then in-dialog or initial handling."""
        req = ctx.request
        method = req.method
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
        had_route = self.loose_route(ctx)
        if had_route or not self.proxy.is_myself(req.uri):
            if req.method == "ACK":
                ctx.forward_stateless()
            elif not ctx.forward():
                ctx.reply(503, b"Service Unavailable (next hop unusable)")
            return
        if req.method == "ACK":
            return  # an ACK for a dialog we do not route: nothing to do
        ctx.reply(404, b"Not Here")

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
        if b"route" in req.keys:
            self.loose_route(ctx)
            if b"route" in req.keys:
                if method in _DIALOG_CREATING:
                    ctx.reply(403, b"Forbidden (Route without To tag)")
                    return
                self.route_relay(ctx)
                return
        if method == "ACK":
            if not self.proxy.is_myself(req.uri):
                ctx.forward_stateless()
            return
        if method != "REGISTER":
            ctx.record_route = True
        if not self.proxy.is_myself(req.uri):
            self.route_relay(ctx)
        elif method == "INVITE":
            self.route_invite(ctx)
        elif method == "REGISTER":
            self.route_register(ctx)
        else:
            self.route_to_next_hop(ctx)

    def route_invite(self, ctx: RequestContext) -> None:
        """The seed's route[3]; location lookup arrives with the registrar."""
        self.route_to_next_hop(ctx)

    def route_register(self, ctx: RequestContext) -> None:
        """The seed's route[2]; until the registrar lands, REGISTER goes on."""
        self.route_to_next_hop(ctx)

    def route_to_next_hop(self, ctx: RequestContext) -> None:
        """The static next hops, round-robin; the dispatcher replaces this.
        Like ``ds_select_domain`` the Request-URI's host and port become the
        next hop's."""
        hops = self.next_hops
        if not hops:
            ctx.reply(404, b"Not Found (no next hop configured)")
            return
        index = self._next % len(hops)
        self._next += 1
        req = ctx.request
        key = (req.uri_raw, index)
        new_uri = self._rewritten.get(key)
        if new_uri is None:
            hop = hops[index]
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
        if not ctx.forward(request_uri=new_uri):
            ctx.reply(503, b"Service Unavailable (next hop unusable)")

    def route_relay(self, ctx: RequestContext) -> None:
        """The seed's route[1]: stateful relay to the Request-URI or Route."""
        if not ctx.forward():
            ctx.reply(503, b"Service Unavailable (next hop unusable)")

    def route_unmatched_cancel(self, ctx: RequestContext) -> None:
        """A CANCEL for no INVITE we know: relayed statelessly if it is not for
        us (RFC 3261 16.10), else 481."""
        req = ctx.request
        if b"route" in req.keys or not self.proxy.is_myself(req.uri):
            self.loose_route(ctx)
            if ctx.forward_stateless():
                return
        ctx.reply(481)

    # -- failure handling --------------------------------------------------------

    def on_branch_failure(self, rc: ResponseContext, branch: Branch) -> None:
        """A branch ended with a failure (>= 300, or a timeout). Passive health
        detection hooks in here."""

    def failure_route(self, rc: ResponseContext) -> bool:
        """Every branch failed: True when the script forwarded a new branch
        (the seed's failure_route; the dispatcher issue adds failover)."""
        return False
