"""A proxy engine on a virtual clock and a fake network: messages go in
with a source and a time, and what the engine sends comes out with its
destination. No sockets, no event loop (aioquic's way of testing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hasip.app.config import Config, MetricsConfig
from hasip.app.services import Services
from hasip.proxy.context import Branch, Reply, RequestContext, ResponseContext, Wait
from hasip.proxy.engine import Engine
from hasip.proxy.resolver import Resolver
from hasip.proxy.script import RoutingScript
from hasip.sip.message import Response
from hasip.sip.uri import parse_sip_uri
from hasip.transport.base import Source
from hasip.transport.listeners import Listeners

PROXY = ("198.18.0.1", 5060)
CALLER = ("198.18.1.1", 5060)
CALLEE_A = ("198.18.2.1", 5060)
CALLEE_B = ("198.18.2.2", 5060)


@dataclass
class Sent:
    data: bytes
    to: tuple[str, int]
    transport: str

    @property
    def first_line(self) -> str:
        return self.data.split(b"\r\n", 1)[0].decode()

    def header(self, name: str) -> list[str]:
        head = self.data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
        return [line.split(":", 1)[1].strip() for line in head
                if line.split(":", 1)[0].strip().lower() == name.lower()]


class ForkScript:
    """A routing script for the tests: every initial request goes to the
    targets given (parallel forking); in-dialog requests and ACKs follow
    the Request-URI; the hooks record what they saw."""

    def __init__(self, engine: Engine, targets: list[str]) -> None:
        self.engine = engine
        self.targets = targets
        self.replies: list[int] = []
        self.finals: list[int] = []
        self.failures: list[int] = []
        self.hold_next: Callable[[Reply], None] | None = None
        self.on_failure_route: Callable[[ResponseContext], bool] | None = None

    def route(self, ctx: RequestContext) -> None:
        if ctx.request.method == "ACK":
            ctx.forward_stateless()
            return
        if ctx.request.to.tag is None and self.engine.is_loop(ctx.request):
            ctx.reply(482)
            return
        for target in self.targets:
            ctx.forward(request_uri=parse_sip_uri(target))

    def route_unmatched_cancel(self, ctx: RequestContext) -> None:
        ctx.reply(481)

    def on_branch_reply(self, rc: ResponseContext, branch: Branch, status: int) -> None:
        pass

    def on_reply(self, reply: Reply) -> None:
        self.replies.append(reply.response.status)
        if self.hold_next is not None:
            self.hold_next(reply)

    def on_branch_failure(self, rc: ResponseContext, branch: Branch) -> None:
        self.failures.append(branch.final_status)

    def failure_route(self, rc: ResponseContext) -> bool:
        return self.on_failure_route(rc) if self.on_failure_route is not None else False

    def on_answered(self, rc: ResponseContext, response: Response, nat: bool) -> None:
        pass

    def on_stray_reply(self, response: Response) -> None:
        pass

    def on_final(self, rc: ResponseContext, status: int) -> None:
        self.finals.append(status)


class Lab:
    """One engine, its clock, and everything it sent."""

    def __init__(self, targets: list[str] | None = None,
                 script: Callable[[Engine], RoutingScript] | None = None,
                 config: Config | None = None, resolver: Resolver | None = None) -> None:
        self.config = config or Config(metrics=MetricsConfig(listen=None))
        self.config.auth.demo_users = True
        self.now = 1000.0
        listen = [("udp", PROXY[0], PROXY[1]), ("tcp", PROXY[0], PROXY[1])]
        self.listeners = Listeners(listen)
        self.config.sip.listen = [type(self.config.sip.listen[0])(t, h, p) for t, h, p in listen]
        services = Services.in_memory(self.config)
        self.fork: ForkScript | None = None

        def make(engine: Engine) -> RoutingScript:
            if script is not None:
                return script(engine)
            self.fork = ForkScript(engine, targets or [])
            return self.fork

        self.engine = Engine(self.config, services, self.listeners, make,
                             resolver or Resolver(), unique="lab")
        self.sent: list[Sent] = []
        self.waits: list[Wait] = []

    @property
    def udp(self):  # type: ignore[no-untyped-def]
        return self.listeners.all[0]

    def receive(self, data: bytes | str, source: tuple[str, int] = CALLER) -> list[Sent]:
        if isinstance(data, str):
            data = data.replace("\n", "\r\n").encode()
        self.engine.receive(data, Source(self.udp, source, None, self.now))
        return self.flush()

    def advance(self, seconds: float, step: float = 0.01) -> list[Sent]:
        """Move the clock, firing the engine's timer at each deadline on the way."""
        end = self.now + seconds
        out: list[Sent] = []
        while True:
            deadline = self.engine.get_timer()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.engine.handle_timer(self.now)
            out += self.flush()
        self.now = end
        return out

    def flush(self) -> list[Sent]:
        out = [Sent(data, dest.addr, dest.transport)
               for data, dest, _ in self.engine.take_outgoing()]
        self.waits += self.engine.take_waits()
        self.engine.latencies.clear()
        self.sent += out
        return out

    def fail_sending(self, to: tuple[str, int]) -> list[Sent]:
        """The transport could not send the last request to ``to`` (16.9)."""
        txn = next(t for t in self.engine.client_txns.values()
                   if t.owner is not None and isinstance(t.owner, Branch)
                   and t.owner.dest.addr == to)
        self.engine.transport_error(txn, self.now)
        return self.flush()


def invite(call: str = "c1", uri: str = "sip:agent@198.18.0.1", branch: str = "z9hG4bKcaller1",
           extra: str = "") -> str:
    return (f"INVITE {uri} SIP/2.0\n"
            f"Via: SIP/2.0/UDP 198.18.1.1:5060;branch={branch}\n"
            "Max-Forwards: 70\n"
            "From: <sip:caller@198.18.1.1>;tag=from1\n"
            "To: <sip:agent@198.18.0.1>\n"
            f"Call-ID: {call}\n"
            "CSeq: 1 INVITE\n"
            "Contact: <sip:caller@198.18.1.1>\n"
            f"{extra}"
            "Content-Length: 0\n\n")


def answer(request: Sent, status: str, to_tag: str = "callee", extra: str = "") -> str:
    """The answer a UAS writes to ``request``: Via, From, To (tagged),
    Call-ID, CSeq copied."""
    lines = [f"SIP/2.0 {status}"]
    head = request.data.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
    for line in head:
        name = line.split(":", 1)[0].strip().lower()
        if name in ("via", "from", "call-id", "cseq", "record-route"):
            lines.append(line)
        elif name == "to":
            tagged = to_tag and not status.startswith("100")
            lines.append(line + (f";tag={to_tag}" if tagged else ""))
    return "\n".join(lines) + "\n" + extra + "Content-Length: 0\n\n"


def cancel_of(invite_text: str) -> str:
    lines = invite_text.split("\n")
    out = ["CANCEL " + lines[0].split(" ")[1] + " SIP/2.0"]
    for line in lines[1:]:
        name = line.split(":", 1)[0].lower()
        if name in ("via", "from", "to", "call-id", "max-forwards"):
            out.append(line)
    out.append("CSeq: 1 CANCEL")
    return "\n".join(out) + "\nContent-Length: 0\n\n"


def lines(sent: list[Sent]) -> list[tuple[str, tuple[str, int]]]:
    """(start line, destination) of each message: the table's right column."""
    return [(s.first_line, s.to) for s in sent]
