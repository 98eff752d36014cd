"""The routing script's media relay (Kamailio's ``rtpengine_manage``): which
calls go through rtpengine, and the offer and answer of each SDP exchange.

* An initial INVITE with SDP is an offer: the request waits for rtpengine's
  SDP (the engine's ``suspend``), which replaces its body for every branch.
  Without SDP (a late offer) the 2xx or reliable 18x carries the offer and
  the ACK or PRACK the answer.
* An 18x or 2xx with SDP answering an offer is held (``Reply.hold``) until
  rtpengine rewrote it; a 2xx retransmitted after its transaction ended
  (relayed statelessly) gets the same rewritten SDP again.
* In-dialog INVITE, UPDATE and PRACK offer and answer the same way, on the
  instance that holds the call.
* The session is deleted when the dialog ends (BYE, a failed or cancelled
  INVITE, a timeout, a dead end) by the node that saw it end; rtpengine's
  figures for the call go into the dialog (the CDR) before it is queued.

Which side of an exchange is behind NAT decides ``trust-address`` (its SDP
address is where it receives) against ``received-from`` (the source of its
SIP message; rtpengine then learns the real one from its first packets).

Sans-IO like the rest of the script: the rtpengine client's coroutines are
handed to the engine as waits; deletes, which no SIP message waits for, go
to an injected ``spawn``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from hasip.app.config import MediaConfig
from hasip.dialog.dialog import Dialog
from hasip.dialog.store import Change as DialogChange
from hasip.dialog.store import DialogStore, ended_here
from hasip.location.binding import parse_socket
from hasip.media import commands
from hasip.media.commands import Options, Side
from hasip.media.instances import Instance
from hasip.media.ng import NgAnswer
from hasip.proxy.context import MediaLeg, Reply, RequestContext
from hasip.proxy.nat import is_private
from hasip.sip.message import Response, SipMessage
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger

log = get_logger("hasip.media")

NEVER, ALWAYS, NAT = "never", "always", "nat"
CONTINUE, REJECT = "continue", "reject"

# Answers rewritten lately, for 2xx retransmissions relayed statelessly.
_ANSWERS_KEPT = 4096


class Relay(Protocol):
    """What the hook needs of :class:`hasip.media.client.MediaClient`."""

    async def offer(self, call_id: str, cmd: dict[str, Any], sticky: str = ""
                    ) -> tuple[Instance, NgAnswer]: ...

    async def on(self, name: str, cmd: dict[str, Any]) -> NgAnswer: ...


def sdp_of(msg: SipMessage) -> bytes | None:
    """The body when it is a session description (RFC 4566); None else."""
    body = msg.body
    if not body:
        return None
    ctype = msg.get(b"content-type")
    if ctype is None or ctype.split(b";", 1)[0].strip().lower() != b"application/sdp":
        return None
    return body


def sdp_address(sdp: bytes) -> str | None:
    """The session's (else the first media's) connection address."""
    for line in sdp.split(b"\n"):
        if line.startswith(b"c="):
            parts = line[2:].strip().split()
            if len(parts) >= 3:
                return parts[2].split(b"/", 1)[0].decode("latin-1")
    return None


def _private_sdp(sdp: bytes, source_ip: str) -> bool:
    """The SDP names a private address other than where the message came
    from (Kamailio's nat_uac_test 8)."""
    addr = sdp_address(sdp)
    return addr is not None and addr != source_ip and is_private(addr)


class MediaHook:
    def __init__(self, config: MediaConfig, relay: Relay, dialogs: DialogStore,
                 owns: Callable[[str], bool], spawn: Callable[[Awaitable[None]], None]) -> None:
        self.config = config
        self.relay = relay
        self.dialogs = dialogs
        self.owns = owns
        self.spawn = spawn
        self.options = Options(replace=list(config.replace), trust_address=config.trust_address,
                               ice=config.ice)
        # Our socket ("udp:VIP:5060") -> the offer's options on it (its
        # rtpengine interface as the direction, by media.interfaces).
        self._by_socket: dict[str, Options] = {}
        # A dialog whose session was deleted (stats filled in) goes on to
        # the CDR writer through this (set by whoever keeps CDRs).
        self.deleted: Callable[[Dialog], None] = lambda _d: None
        # Call-ID -> (To tag, callee's SDP) -> the SDP rtpengine made of it.
        self._answers: dict[str, dict[tuple[str, bytes], bytes]] = {}
        dialogs.subscribe(self.on_dialog)

    # -- which calls --------------------------------------------------------------

    def relays(self, caller_nat: bool, callee_nat: bool) -> bool:
        policy = self.config.relay
        return policy == ALWAYS or (policy == NAT and (caller_nat or callee_nat))

    def _options(self, socket: str) -> Options:
        opts = self._by_socket.get(socket)
        if opts is None:
            where = parse_socket(socket)
            name = self.config.interfaces.get(where[1]) if where is not None else None
            opts = replace(self.options, direction=(name, name)) if name else self.options
            if len(self._by_socket) < 1024:    # our sockets: a handful
                self._by_socket[socket] = opts
        return opts

    def _side(self, nat: bool, sdp: bytes, source_ip: str) -> Side:
        return Side(nat or _private_sdp(sdp, source_ip), source_ip)

    # -- requests -------------------------------------------------------------------------

    def initial(self, ctx: RequestContext, callee_nat: bool,
                then: Callable[[RequestContext], None]) -> None:
        """An initial INVITE about to be routed: offer its SDP when the call
        is relayed, then ``then`` (routing goes on)."""
        rc = ctx.rc
        req = ctx.request
        d = rc.dialog if rc is not None else None
        sdp = sdp_of(req)
        src_ip = ctx.source.addr[0]
        caller_nat = ctx.nat or (sdp is not None and _private_sdp(sdp, src_ip))
        if rc is None or d is None or not self.relays(caller_nat, callee_nat):
            then(ctx)
            return
        if sdp is None and req.body:
            # a body we do not relay (multipart SDP): not a late offer either
            log.info("media_body_not_sdp", call_id=req.call_id,
                     content_type=(req.get(b"content-type") or b"").decode("latin-1"))
            metrics.MEDIA_CALLS.inc("not_sdp")
            then(ctx)
            return
        metrics.MEDIA_CALLS.inc("relayed")
        if sdp is None:
            rc.media = MediaLeg("", late=True)   # the 2xx offers, the ACK answers
            then(ctx)
            return
        cmd = commands.offer(req.call_id, req.from_.tag or "", sdp,
                             self._side(caller_nat, sdp, src_ip),
                             self._options(ctx.source.listener.socket))
        ctx.suspend(self._first_offer(d, cmd),
                    lambda result: self._offered(ctx, d, result, then))

    def in_dialog(self, ctx: RequestContext, d: Dialog | None,
                  then: Callable[[RequestContext], None]) -> None:
        """A request within a relayed dialog: INVITE, UPDATE or PRACK with
        SDP offers (or, after a late offer, PRACK answers); an ACK with SDP
        answers the 2xx's offer; then ``then`` (it is forwarded)."""
        req = ctx.request
        method = req.method
        sdp = sdp_of(req)
        rc = ctx.rc
        if d is None or not d.media or method not in ("INVITE", "UPDATE", "PRACK", "ACK"):
            then(ctx)
            return
        if sdp is None:
            if method == "INVITE" and rc is not None and not req.body:
                rc.media = MediaLeg(d.media, late=True)
            then(ctx)
            return
        side = self._side(ctx.nat, sdp, ctx.source.addr[0])
        from_tag, to_tag = req.from_.tag or "", req.to.tag or ""
        if method == "ACK" or (method == "PRACK" and d.media_late and not d.answered):
            # the answer to an offer in the 2xx (or reliable 18x): the
            # offerer is the callee, whose tag is this request's To tag
            cmd = commands.answer(req.call_id, to_tag, from_tag, sdp, side, self.options)
        else:
            cmd = commands.offer(req.call_id, from_tag, sdp, side, self._options(d.socket),
                                 to_tag=to_tag)
            if rc is not None:
                rc.media = MediaLeg(d.media)
        ctx.suspend(self._command(d.media, cmd),
                    lambda result: self._rewritten(ctx, cmd["command"], result, then))

    async def _offer(self, call_id: str, cmd: dict[str, Any], sticky: str
                     ) -> tuple[Instance, NgAnswer] | Exception:
        try:
            return await self.relay.offer(call_id, cmd, sticky)
        except Exception as exc:   # every failure is the policy's to handle
            return exc

    async def _first_offer(self, d: Dialog, cmd: dict[str, Any]
                           ) -> tuple[Instance, NgAnswer] | Exception:
        """A new call's offer. Should the call end while it is out (a
        CANCEL; the engine then drops the answer), the session it made is
        deleted: nobody else knows of it."""
        result = await self._offer(d.call_id, cmd, "")
        if not d.active and not isinstance(result, Exception):
            inst = result[0]
            log.info("media_offer_outlived_call", call_id=d.call_id, instance=inst.name)
            try:
                await self.relay.on(inst.name, commands.delete(d.call_id, d.from_tag))
            except Exception as exc:   # logged: rtpengine's own timeout ends it
                self._failed("delete", d.call_id, exc)
        return result

    async def _command(self, name: str, cmd: dict[str, Any]) -> NgAnswer | Exception:
        try:
            return await self.relay.on(name, cmd)
        except Exception as exc:
            return exc

    def _offered(self, ctx: RequestContext, d: Dialog,
                 result: tuple[Instance, NgAnswer] | Exception,
                 then: Callable[[RequestContext], None]) -> None:
        rc = ctx.rc
        assert rc is not None
        if isinstance(result, Exception) or result[1].sdp is None:
            self._failed("offer", ctx.request.call_id, result)
            if self.config.on_failure == REJECT:
                metrics.MEDIA_CALLS.inc("rejected")
                ctx.reply(503, b"Service Unavailable (media relay)", [b"Retry-After: 5"])
                return
            metrics.MEDIA_CALLS.inc("unrelayed")
            then(ctx)
            return
        inst, answer = result
        assert answer.sdp is not None
        ctx.request.set_body(answer.sdp)
        rc.media = MediaLeg(inst.name)
        self.dialogs.set_media(d, inst.name)
        then(ctx)

    def _rewritten(self, ctx: RequestContext, what: str, result: NgAnswer | Exception,
                   then: Callable[[RequestContext], None]) -> None:
        if isinstance(result, Exception) or result.sdp is None:
            # An in-dialog exchange of a relayed call: its media already
            # goes through rtpengine, so the request goes on as it is.
            self._failed(what, ctx.request.call_id, result)
        else:
            ctx.request.set_body(result.sdp)
        then(ctx)

    def _failed(self, what: str, call_id: str, result: object) -> None:
        reason = (f"{type(result).__name__}: {result}" if isinstance(result, Exception)
                  else "answer without SDP")
        metrics.MEDIA_FAILURES.inc(what)
        log.warning("media_relay_failed", command=what, call_id=call_id, reason=reason,
                    policy=self.config.on_failure)

    # -- replies ------------------------------------------------------------------------------

    def on_reply(self, reply: Reply) -> None:
        """An 18x or 2xx with SDP to a relayed request: rtpengine's answer
        (or, after a late offer, its offer) replaces the SDP before it goes
        upstream."""
        rc = reply.rc
        leg = rc.media
        resp = reply.response
        if leg is None or not 180 <= resp.status < 300:
            return
        sdp = sdp_of(resp)
        if sdp is None:
            return
        req = rc.request
        call_id = req.call_id
        from_tag, to_tag = resp.from_.tag or "", resp.to.tag or ""
        dest = reply.branch.dest
        side = self._side(reply.branch.nat, sdp, dest.addr[0])
        if leg.late:
            # the reply offers: its sender's tag is the To tag
            socket = rc.dialog.socket if rc.dialog is not None else rc.source.listener.socket
            cmd = commands.offer(call_id, to_tag, sdp, side, self._options(socket),
                                 to_tag=from_tag)
            reply.hold(self._offer(call_id, cmd, leg.instance),
                       lambda result: self._late_offered(reply, result))
            return
        cmd = commands.answer(call_id, from_tag, to_tag, sdp, side, self.options)
        reply.hold(self._command(leg.instance, cmd),
                   lambda result: self._reply_rewritten(reply, sdp, result))

    def _late_offered(self, reply: Reply, result: tuple[Instance, NgAnswer] | Exception) -> None:
        rc = reply.rc
        leg = rc.media
        if isinstance(result, Exception) or result[1].sdp is None:
            self._failed("offer", rc.request.call_id, result)
            return
        inst, answer = result
        assert leg is not None and answer.sdp is not None
        self._keep(reply.response, answer.sdp)
        leg.instance = inst.name
        d = rc.dialog if rc.dialog is not None else self.dialogs.find(
            rc.request.call_id, rc.request.from_.tag, reply.response.to.tag)
        if d is not None:
            self.dialogs.set_media(d, inst.name, late=True)

    def _reply_rewritten(self, reply: Reply, sdp: bytes, result: NgAnswer | Exception) -> None:
        if isinstance(result, Exception) or result.sdp is None:
            # The caller gets the callee's own SDP: media may flow one way
            # only (the callee was offered rtpengine's address).
            self._failed("answer", reply.rc.request.call_id, result)
            return
        self._keep(reply.response, result.sdp)

    def _keep(self, resp: Response, new_sdp: bytes) -> None:
        """Rewrite ``resp``'s SDP, remembering it for retransmissions of a 2xx."""
        if resp.status >= 200:
            answers = self._answers
            call = answers.get(resp.call_id)
            if call is None:
                if len(answers) >= _ANSWERS_KEPT:
                    del answers[next(iter(answers))]
                call = answers[resp.call_id] = {}
            call[(resp.to.tag or "", resp.body)] = new_sdp
        resp.set_body(new_sdp)

    def on_stray_reply(self, resp: Response) -> None:
        """A 2xx retransmitted after its transaction ended: the SDP it
        carried the first time was rewritten, so is this copy."""
        if not resp.body or resp.status < 200 or resp.status >= 300 or not self._answers:
            return
        call = self._answers.get(resp.call_id)
        new_sdp = call.get((resp.to.tag or "", resp.body)) if call is not None else None
        if new_sdp is not None:
            resp.set_body(new_sdp)

    # -- the end of a call ------------------------------------------------------------------

    def on_dialog(self, change: DialogChange) -> None:
        """Dialog store subscriber: a relayed dialog that ended here (or
        timed out on the node owning its socket) has its session deleted."""
        d = change.dialog
        if d.media and ended_here(change, self.owns):
            self.spawn(self._delete(d))

    async def _delete(self, d: Dialog) -> None:
        self._answers.pop(d.call_id, None)
        try:
            # with the caller's tag, as Kamailio sends it: rtpengine then
            # answers with the call's totals (and still ends every leg)
            answer = await self.relay.on(d.media, commands.delete(
                d.call_id, d.from_tag, delay=self.config.delete_delay))
        except Exception as exc:   # logged; the CDR is written regardless
            self._failed("delete", d.call_id, exc)
        else:
            stats = commands.media_stats(answer.data)
            d.media_packets, d.media_bytes, d.media_errors = (stats.packets, stats.bytes,
                                                             stats.errors)
            d.media_lost, d.media_jitter, d.media_mos = stats.lost, stats.jitter, stats.mos
            log.info("media_deleted", call_id=d.call_id, dialog=d.id, instance=d.media,
                     packets=stats.packets, bytes=stats.bytes, lost=stats.lost, mos=stats.mos)
        self.deleted(d)

