"""The routing script as the engine sees it: the calls it makes into the
script (a request to route, a CANCEL for nothing we know, every reply on its
way upstream, a branch's failure, the point where every branch has failed,
the final answer). :class:`hasip.proxy.routing.Router` is hasip's script;
a test passes its own."""

from __future__ import annotations

from typing import Protocol

from hasip.proxy.context import Branch, Reply, RequestContext, ResponseContext
from hasip.sip.message import Response


class RoutingScript(Protocol):
    def route(self, ctx: RequestContext) -> None:
        """A request that matched no transaction: reply or forward (Kamailio's
        request_route)."""

    def route_unmatched_cancel(self, ctx: RequestContext) -> None:
        """A CANCEL that matches no INVITE transaction of ours."""

    def on_branch_reply(self, rc: ResponseContext, branch: Branch, status: int) -> None:
        """Any response of a branch, 100 included, before anything else
        (passive health checks of the destination)."""

    def on_reply(self, reply: Reply) -> None:
        """A response about to be relayed upstream, provisional or final
        (Kamailio's onreply_route): it may be changed, or held for an
        external answer (:meth:`Reply.hold`)."""

    def on_stray_reply(self, response: Response) -> None:
        """A response relayed statelessly (its transaction ended: a 2xx
        retransmission): it may be changed, not held."""

    def on_branch_failure(self, rc: ResponseContext, branch: Branch) -> None:
        """A branch ended with a failure (>= 300, a timeout or a transport
        error)."""

    def failure_route(self, rc: ResponseContext) -> bool:
        """Every branch failed: True when the script forwarded a new branch
        or answered (Kamailio's failure_route)."""

    def on_answered(self, rc: ResponseContext, response: Response, nat: bool) -> None:
        """The first 2xx of the context is relayed (a dialog is confirmed)."""

    def on_final(self, rc: ResponseContext, status: int) -> None:
        """The context's final answer went out, relayed or generated."""
