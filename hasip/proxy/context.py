"""What the engine keeps per request and hands the routing script: a
response context per server transaction (RFC 3261 16.7) with its branches
(16.6), a request context with the operations the script may apply, a reply
on its way upstream (the reply hook's argument), and a wait (an external
answer the engine is held for, run by the shell).

The routing script's own per-call state is typed fields of
:class:`ResponseContext` (the dialog it tracks, the contacts and
dispatcher destinations left for failover), not a dictionary."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from hasip.dialog.dialog import Dialog
from hasip.dispatcher.destinations import Destination as Node
from hasip.location.binding import Binding
from hasip.sip.message import Request, Response
from hasip.sip.transaction import ClientTransaction, ServerTransaction, Timers
from hasip.sip.uri import SipUri
from hasip.transport.base import Destination, Listener, Source

T = TypeVar("T")


class Operations(Protocol):
    """The engine's side of a request context (what ``ctx.reply`` and
    ``ctx.forward`` call)."""

    def reply(self, ctx: RequestContext, status: int, reason: bytes | None = None,
              extra: list[bytes] | None = None) -> None: ...

    def forward(self, ctx: RequestContext, request_uri: SipUri | None = None,
                next_hop: SipUri | None = None, dest: Destination | None = None,
                routes: tuple[str, ...] = (), nat: bool = False,
                timers: Timers | None = None) -> bool: ...

    def forward_stateless(self, ctx: RequestContext) -> bool: ...

    def suspend(self, ctx: RequestContext, pending: Awaitable[Any],
                resume: Callable[[Any], None]) -> None: ...

    def stateful(self, rc: ResponseContext) -> None: ...


class Wait:
    """An awaitable the engine handed out (a RADIUS answer, a DNS lookup, a
    media relay's answer) and what to do with its result. The shell awaits
    it and calls :meth:`Engine.resume <hasip.proxy.engine.Engine.resume>`;
    a test resolves it by hand."""

    __slots__ = ("awaitable", "call_id", "on_error", "on_result")

    def __init__(self, awaitable: Awaitable[Any], on_result: Callable[[Any], None],
                 on_error: Callable[[BaseException], None], call_id: str = "") -> None:
        self.awaitable = awaitable
        self.on_result = on_result
        self.on_error = on_error
        self.call_id = call_id


class MediaLeg:
    """A request's SDP exchange through the media relay: the rtpengine
    instance, and whether the request had no SDP so that its answer
    carries the offer (a late offer)."""

    __slots__ = ("instance", "late")

    def __init__(self, instance: str, late: bool = False) -> None:
        self.instance = instance
        self.late = late


class Branch:
    """One client transaction of a response context (RFC 3261 16.6)."""

    __slots__ = ("binding", "cancel_pending", "cancelled", "dest", "final", "final_status",
                 "held", "nat", "provisional", "rc", "request", "txn")

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
        # Responses waiting behind one the reply hook holds (in order).
        self.held: list[Response] | None = None
        # The registered contact this branch goes to (location lookups).
        self.binding: Binding | None = None


class ResponseContext:
    """A server transaction and the branches forwarded for it (RFC 3261 16.7)."""

    __slots__ = ("branches", "cancelled", "dialog", "ds_current", "ds_rest", "final_sent",
                 "flows_failed", "key", "location", "media", "nat", "reply_dest", "request",
                 "server", "source")

    def __init__(self, server: ServerTransaction | None, request: Request, source: Source,
                 reply_dest: Destination, key: tuple[str, ...] | None = None) -> None:
        self.server = server
        self.request = request
        self.source = source
        self.reply_dest = reply_dest
        # The server transaction's key (RFC 3261 17.2.3): the transaction is
        # made only when the request needs one (Engine.stateful); until then
        # answers go out statelessly, as Kamailio's sl does.
        self.key = key if key is not None else (server.key if server is not None else None)
        self.branches: list[Branch] = []
        self.final_sent = False
        self.cancelled = False
        # -- the routing script's state for this request --
        # A party of the call is behind NAT (Record-Route ;nat=yes).
        self.nat = False
        # The dialog this INVITE may create (Kamailio's dlg_manage).
        self.dialog: Dialog | None = None
        # A location lookup: the q-groups of contacts not tried yet.
        self.location: list[list[Binding]] | None = None
        # Outbound (RFC 5626) contacts not tried because their flow is gone.
        self.flows_failed = 0
        # A dispatcher choice: the destination tried now, the ones left.
        self.ds_current: Node | None = None
        self.ds_rest: list[Node] | None = None
        # The SDP exchange through the media relay (hasip/proxy/media.py).
        self.media: MediaLeg | None = None

    def pending(self) -> bool:
        """A branch has no final answer yet, or one the reply hook holds."""
        return any(b.final_status == 0 or b.held is not None for b in self.branches)


class RequestContext:
    """What the routing script gets for one request: the message, where it came
    from, and the operations it may apply (reply, record-route, forward)."""

    __slots__ = ("nat", "ops", "rc", "record_route", "request", "rr_token", "send_socket",
                 "source", "trusted", "user")

    def __init__(self, ops: Operations, request: Request, source: Source,
                 rc: ResponseContext | None) -> None:
        self.ops = ops
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
        self.ops.reply(self, status, reason, extra)

    def forward(self, request_uri: SipUri | None = None, next_hop: SipUri | None = None,
                dest: Destination | None = None, routes: tuple[str, ...] = (),
                nat: bool = False, timers: Timers | None = None) -> bool:
        return self.ops.forward(self, request_uri, next_hop, dest, routes, nat, timers)

    def suspend(self, pending: Awaitable[T], resume: Callable[[T], None]) -> None:
        """Wait for ``pending`` (a RADIUS answer...) off the hot path, then call
        ``resume`` with its result unless the request was answered meanwhile
        (a CANCEL). The server transaction absorbs retransmissions."""
        self.ops.suspend(self, pending, resume)

    def force_rport(self) -> None:
        """Answer to the packet's source port whatever the Via says (RFC 3581)."""
        rc = self.rc
        src = self.source
        if rc is not None and src.conn is None:
            rc.reply_dest = Destination("udp", src.addr, src.listener)

    def forward_stateless(self) -> bool:
        return self.ops.forward_stateless(self)

    def stateful(self) -> None:
        """Keep a server transaction from now on (Kamailio's t_newtran):
        retransmissions are absorbed and answers retransmitted. Forwarding
        and suspending make one themselves; the registrar asks for one
        before it changes a binding."""
        if self.rc is not None:
            self.ops.stateful(self.rc)


class Reply:
    """A response on its way upstream, for the routing script's reply hook:
    the hook may change :attr:`response` (its SDP, a header) and may
    :meth:`hold` it for an external answer (a media relay's), in which case
    it and every later response of its branch wait, in order."""

    __slots__ = ("branch", "rc", "response", "wait")

    def __init__(self, rc: ResponseContext, branch: Branch, response: Response) -> None:
        self.rc = rc
        self.branch = branch
        self.response = response
        self.wait: tuple[Awaitable[Any], Callable[[Any], None]] | None = None

    def hold(self, pending: Awaitable[T], resume: Callable[[T], None]) -> None:
        """Relay this response only after ``pending`` finished and ``resume``
        ran with its result (``resume`` may change the response). Should
        ``pending`` fail, the response goes on unchanged."""
        self.wait = (pending, resume)
