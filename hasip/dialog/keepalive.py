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
there. Requests go out through the node's own-request table
(hasip/proxy/uac.py), which hears their answers and their deadlines; the
shell calls :meth:`DialogKeepalive.round` on its clock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from hasip.dialog.dialog import CONFIRMED, ENDED_KEEPALIVE, Dialog
from hasip.dialog.store import DialogStore
from hasip.proxy.uac import OwnRequests
from hasip.sip.errors import SipParseError
from hasip.sip.headers import parse_name_addr, split_list
from hasip.sip.uri import SipUri, parse_sip_uri
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import Destination, Listener

log = get_logger("hasip.dialog")

CALLER, CALLEE = "caller", "callee"

Resolve = Callable[[SipUri, Listener], Destination | None]

# How long the answer to a dialog-ending BYE is waited for (timer F).
BYE_TIMEOUT = 32.0


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
                 my_sent_by: set[str], resolve: Resolve, own: OwnRequests, interval: float,
                 failures: int = 2) -> None:
        self.dialogs = dialogs
        self.listeners = listeners
        self.my_sent_by = my_sent_by
        self.resolve = resolve
        self.own = own
        self.interval = interval
        self.failures = failures
        self.missed: dict[tuple[str, str], int] = {}     # unanswered rounds in a row

    def round(self, now: float) -> int:
        """End the dialogs an end of which missed too many rounds, send this
        round's keepalives (a keepalive's deadline comes before the next
        round: a tenth of an interval earlier, so that the loop's clock
        resolution never lets a round start before it)."""
        self.own.expire(now)        # last round's, before they are counted
        sent = 0
        for d in list(self.dialogs):
            for side in (CALLER, CALLEE):
                if self.missed.get((d.id, side), 0) >= self.failures:
                    self._dead(d, side, "no answer", now)
                    break
            else:
                if d.state == CONFIRMED:
                    listener = self.listeners.get(d.socket)
                    if listener is not None and listener.active:
                        sent += (self._ping(d, listener, CALLER, now)
                                 + self._ping(d, listener, CALLEE, now))
        live = {d.id for d in self.dialogs}
        self.missed = {k: v for k, v in self.missed.items() if k[0] in live}
        return sent

    def _ping(self, d: Dialog, listener: Listener, side: str, now: float) -> int:
        leg = self._leg(d, side)
        if leg is None:
            return 0
        if self._send(d, listener, leg, "OPTIONS", now, self.interval * 0.9,
                      functools.partial(self._answered, d.id, side)):
            metrics.DIALOG_KEEPALIVES.inc("sent")
            return 1
        return 0

    def _answered(self, dialog_id: str, side: str, status: int | None, now: float) -> None:
        if status is None:
            key = (dialog_id, side)
            self.missed[key] = self.missed.get(key, 0) + 1
            metrics.DIALOG_KEEPALIVES.inc("timeout")
            return
        if status in (408, 481):
            metrics.DIALOG_KEEPALIVES.inc(str(status))
            d = self.dialogs.by_id.get(dialog_id)
            if d is not None:
                self._dead(d, side, str(status), now)
            return
        metrics.DIALOG_KEEPALIVES.inc("answered")
        self.missed.pop((dialog_id, side), None)

    def _dead(self, d: Dialog, side: str, why: str, now: float) -> None:
        """``side`` is gone: end the dialog, BYE the other end."""
        listener = self.listeners.get(d.socket)
        other = CALLEE if side == CALLER else CALLER
        log.warning("dialog_keepalive_failed", call_id=d.call_id, dialog=d.id, side=side,
                    why=why)
        if self.dialogs.end(d, ENDED_KEEPALIVE) and listener is not None:
            leg = self._leg(d, other)
            if leg is not None:
                leg.cseq += 1
                self._send(d, listener, leg, "BYE", now, BYE_TIMEOUT, None)
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

    def _send(self, d: Dialog, listener: Listener, leg: _Leg, method: str, now: float,
              timeout: float, on_result: Callable[[int | None, float], None] | None) -> bool:
        hop_text = leg.routes[0] if leg.routes else leg.target
        try:
            hop = parse_sip_uri(parse_name_addr(hop_text, "Route").uri_text
                                if leg.routes else hop_text)
        except SipParseError:
            return False
        dest = self.resolve(hop, listener)
        if dest is None:
            return False
        return self.own.send(method, leg.target, dest, now, timeout=timeout,
                             on_result=on_result, from_=leg.from_, to=leg.to,
                             call_id=d.call_id, cseq=leg.cseq, routes=leg.routes)
