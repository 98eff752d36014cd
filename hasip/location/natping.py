"""Keeping NAT bindings open: an OPTIONS to every NATed UDP contact each
``nat.ping_interval`` seconds, sent from the socket the contact registered
on (Kamailio nathelper's ``natping_interval`` with ``sipping``).

Pings go out through the node's own-request table (hasip/proxy/uac.py);
one not answered within an interval counts as failed. The shell calls
:meth:`NatPinger.ping_all` on its clock.

In a cluster every node holds every binding, but only the node that holds
a binding's socket (the owner of the VIP it registered through) can and
does ping it: no double work. A node that takes a VIP over pings that VIP's
bindings at once (``ping_address``), not an interval later.
"""

from __future__ import annotations

from hasip.location.binding import Binding, parse_socket
from hasip.location.store import LocationStore
from hasip.proxy.uac import OwnRequests
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import Destination, Listener

log = get_logger("hasip.natping")


class NatPinger:
    def __init__(self, store: LocationStore, listeners: dict[str, Listener], own: OwnRequests,
                 interval: float) -> None:
        self.store = store
        self.listeners = listeners
        self.own = own
        self.interval = interval

    def ping_all(self, now: float) -> int:
        """One round: a ping to every NATed binding whose socket is ours."""
        sent = 0
        for binding in list(self.store.all()):
            if binding.nat and self.ping(binding, now):
                sent += 1
        return sent

    def ping_address(self, address: str, now: float) -> int:
        """Ping now the NATed bindings registered through ``address`` (a VIP
        this node just took over)."""
        sent = 0
        for binding in list(self.store.all()):
            where = parse_socket(binding.socket) if binding.nat else None
            if where is not None and where[1] == address and self.ping(binding, now):
                sent += 1
        if sent:
            log.info("nat_pings_resumed", address=address, bindings=sent)
        return sent

    def ping(self, binding: Binding, now: float) -> bool:
        if binding.received is None:
            return False
        where = parse_socket(binding.received)
        listener = self.listeners.get(binding.socket)
        if where is None or listener is None or where[0] != "udp":
            return False  # TCP keeps its own connection open
        if not listener.active:
            return False  # a VIP another node owns: that node pings it
        if not self.own.send("OPTIONS", binding.contact,
                             Destination("udp", (where[1], where[2]), listener), now,
                             timeout=self.interval, on_result=self._result,
                             from_=f"<sip:keepalive@{listener.sent_by}>;tag={self.own.tag}"):
            return False
        metrics.NAT_PINGS.inc("sent")
        return True

    @staticmethod
    def _result(status: int | None, now: float) -> None:
        # Any answer means the NAT binding is open.
        metrics.NAT_PINGS.inc("failed" if status is None else "answered")
