"""In-dialog OPTIONS keepalives to both ends of confirmed dialogs
(Kamailio dialog's ``ka_timer``/``ka_failed_limit``), so a call whose
phone or Asterisk node vanished without a BYE ends within seconds instead
of at ``dialog.timeout``.

Every ``dialog.keepalive_interval`` the node sends, for each confirmed
dialog that came in on a socket it holds (in a cluster: the VIP's owner
only, no double work), an OPTIONS inside the dialog to each end: to the
callee as if from the caller and the other way round, with the tags, the
Call-ID and the last CSeq seen from that side (not lower than the UA's
remote sequence number: RFC 3261 12.2.2 accepts it), along the part of
the route set beyond this node. A 481 (the UA does not know the dialog),
a 408, or ``dialog.keepalive_failures`` unanswered rounds in a row end the
dialog (reason ``keepalive``) and a BYE goes to the end that is still
there. Requests are stateless; answers match by branch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from hasip.dialog.dialog import CONFIRMED, ENDED_KEEPALIVE, Dialog
from hasip.dialog.store import DialogStore
from hasip.sip.errors import SipParseError
from hasip.sip.headers import parse_name_addr, split_list
from hasip.sip.uri import SipUri, parse_sip_uri
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import Destination, Listener
from hasip.util.tasks import Periodic

log = get_logger("hasip.dialog")

BRANCH_PREFIX = "z9hG4bKka"
CALLER, CALLEE = "caller", "callee"

Resolve = Callable[[SipUri, Listener], Destination | None]
Send = Callable[[bytes, Destination], object]


@dataclass
class _Leg:
    """What a keepalive to one end of a dialog needs."""

    target: str                    # Request-URI: that end's Contact
    routes: list[str]              # Route values beyond this node, next hop first
    from_: str                     # the other end's identity and tag
    to: str                        # this end's identity and tag
    cseq: int


class DialogKeepalive:
    def __init__(self, dialogs: DialogStore, listeners: dict[str, Listener],
                 my_sent_by: set[str], resolve: Resolve, send: Send, interval: float,
                 failures: int = 2) -> None:
        self.dialogs = dialogs
        self.listeners = listeners
        self.my_sent_by = my_sent_by
        self.resolve = resolve
        self.send = send
        self.interval = interval
        self.failures = failures
        # branch -> (dialog id, side); answered ones are removed
        self.outstanding: dict[str, tuple[str, str]] = {}
        self.missed: dict[tuple[str, str], int] = {}     # unanswered rounds in a row
        self._tag = os.urandom(4).hex()
        self._counter = 0
        self._rounds = Periodic(interval, self.round, "dialog_keepalive")

    def start(self) -> None:
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()

    def round(self) -> int:
        """Count last round's unanswered keepalives, send this round's."""
        for dialog_id, side in self.outstanding.values():
            key = (dialog_id, side)
            self.missed[key] = self.missed.get(key, 0) + 1
            metrics.DIALOG_KEEPALIVES.inc("timeout")
        self.outstanding.clear()
        sent = 0
        for d in list(self.dialogs):
            for side in (CALLER, CALLEE):
                if self.missed.get((d.id, side), 0) >= self.failures:
                    self._dead(d, side, "no answer")
                    break
            else:
                if d.state == CONFIRMED:
                    listener = self.listeners.get(d.socket)
                    if listener is not None and listener.active:
                        sent += self._ping(d, listener, CALLER) + self._ping(d, listener, CALLEE)
        live = {d.id for d in self.dialogs}
        self.missed = {k: v for k, v in self.missed.items() if k[0] in live}
        return sent

    def _ping(self, d: Dialog, listener: Listener, side: str) -> int:
        leg = self._leg(d, side)
        if leg is None:
            return 0
        self._counter += 1
        branch = f"{BRANCH_PREFIX}{self._tag}{self._counter:x}"
        if self._send(d, listener, leg, "OPTIONS", branch):
            self.outstanding[branch] = (d.id, side)
            metrics.DIALOG_KEEPALIVES.inc("sent")
            return 1
        return 0

    def answered(self, branch: str, status: int) -> bool:
        """A response to one of our keepalives (True when it was one)."""
        entry = self.outstanding.pop(branch, None)
        if entry is None:
            return branch.startswith(BRANCH_PREFIX)   # a late one, or a BYE's answer
        dialog_id, side = entry
        if status in (408, 481):
            metrics.DIALOG_KEEPALIVES.inc(str(status))
            d = self.dialogs.by_id.get(dialog_id)
            if d is not None:
                self._dead(d, side, str(status))
            return True
        metrics.DIALOG_KEEPALIVES.inc("answered")
        self.missed.pop((dialog_id, side), None)
        return True

    def _dead(self, d: Dialog, side: str, why: str) -> None:
        """``side`` is gone: end the dialog, BYE the other end."""
        listener = self.listeners.get(d.socket)
        other = CALLEE if side == CALLER else CALLER
        log.warning("dialog_keepalive_failed", call_id=d.call_id, dialog=d.id, side=side,
                    why=why)
        if self.dialogs.end(d, ENDED_KEEPALIVE) and listener is not None:
            leg = self._leg(d, other)
            if leg is not None:
                self._counter += 1
                leg.cseq += 1
                self._send(d, listener, leg, "BYE",
                           f"{BRANCH_PREFIX}{self._tag}{self._counter:x}")
        self.missed.pop((d.id, CALLER), None)
        self.missed.pop((d.id, CALLEE), None)

    def _leg(self, d: Dialog, side: str) -> _Leg | None:
        entries = [v for line in d.route_set for v in split_list(line)]
        ours = [i for i, v in enumerate(entries) if self._is_ours(v)]
        if side == CALLEE:
            # Record-Route lists the callee's side first: the hops between us
            # and the callee are above our entry, the nearest just above it.
            routes = list(reversed(entries[:ours[0]])) if ours else list(reversed(entries))
            target = d.callee_contact
            from_, to = f"<{d.from_uri}>;tag={d.from_tag}", f"<{d.to_uri}>;tag={d.to_tag}"
            cseq = d.caller_cseq or 1
        else:
            routes = entries[ours[-1] + 1:] if ours else entries
            target = d.caller_contact
            from_, to = f"<{d.to_uri}>;tag={d.to_tag}", f"<{d.from_uri}>;tag={d.from_tag}"
            cseq = d.callee_cseq or 1
        if not target:
            return None
        try:
            uri = parse_name_addr(target, "Contact").uri_text
        except SipParseError:
            return None
        return _Leg(uri, routes, from_, to, cseq)

    def _is_ours(self, value: str) -> bool:
        try:
            uri = parse_name_addr(value, "Record-Route").uri
        except SipParseError:
            return False
        return isinstance(uri, SipUri) and (
            f"{uri.host.lower()}:{uri.default_port()}" in self.my_sent_by)

    def _send(self, d: Dialog, listener: Listener, leg: _Leg, method: str, branch: str) -> bool:
        hop_text = leg.routes[0] if leg.routes else leg.target
        try:
            hop = parse_sip_uri(parse_name_addr(hop_text, "Route").uri_text
                                if leg.routes else hop_text)
        except SipParseError:
            return False
        dest = self.resolve(hop, listener)
        if dest is None:
            return False
        route_lines = "".join(f"Route: {r}\r\n" for r in leg.routes)
        data = (f"{method} {leg.target} SIP/2.0\r\n"
                f"Via: SIP/2.0/{dest.transport.upper()} {listener.sent_by};branch={branch}"
                f";rport\r\n{route_lines}"
                f"From: {leg.from_}\r\nTo: {leg.to}\r\n"
                f"Call-ID: {d.call_id}\r\nCSeq: {leg.cseq} {method}\r\n"
                f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode("latin-1", "replace")
        self.send(data, dest)
        return True
