"""Keeping NAT bindings open: an OPTIONS to every NATed UDP contact each
``nat.ping_interval`` seconds, sent from the socket the contact registered
on (Kamailio nathelper's ``natping_interval`` with ``sipping``).

Pings are stateless; a reply is matched by its branch. A ping not answered
before the next round counts as failed.

In a cluster every node holds every binding, but only the node that holds
a binding's socket (the owner of the VIP it registered through) can and
does ping it: no double work. A node that takes a VIP over pings that VIP's
bindings at once (``ping_address``), not an interval later.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from hasip.location.binding import Binding, parse_socket
from hasip.location.store import LocationStore
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import Destination, Listener
from hasip.util.tasks import Periodic

log = get_logger("hasip.natping")

BRANCH_PREFIX = "z9hG4bKnp"

Send = Callable[[bytes, Destination], object]


class NatPinger:
    def __init__(self, store: LocationStore, listeners: dict[str, Listener], send: Send,
                 interval: float) -> None:
        self.store = store
        self.listeners = listeners
        self.send = send
        self.interval = interval
        self.outstanding: set[str] = set()
        self._tag = os.urandom(4).hex()
        self._counter = 0
        self._rounds = Periodic(interval, self.ping_all, "nat_ping")

    def start(self) -> None:
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()

    def ping_all(self) -> int:
        """One round: count the unanswered pings of the last one, send new ones."""
        if self.outstanding:
            metrics.NAT_PINGS.inc("failed", amount=len(self.outstanding))
            self.outstanding.clear()
        sent = 0
        for binding in list(self.store.all()):
            if binding.nat and self.ping(binding):
                sent += 1
        return sent

    def ping_address(self, address: str) -> int:
        """Ping now the NATed bindings registered through ``address`` (a VIP
        this node just took over)."""
        sent = 0
        for binding in list(self.store.all()):
            where = parse_socket(binding.socket) if binding.nat else None
            if where is not None and where[1] == address and self.ping(binding):
                sent += 1
        if sent:
            log.info("nat_pings_resumed", address=address, bindings=sent)
        return sent

    def ping(self, binding: Binding) -> bool:
        if binding.received is None:
            return False
        where = parse_socket(binding.received)
        listener = self.listeners.get(binding.socket)
        if where is None or listener is None or where[0] != "udp":
            return False  # TCP keeps its own connection open
        if not listener.active:
            return False  # a VIP another node owns: that node pings it
        self._counter += 1
        branch = f"{BRANCH_PREFIX}{self._tag}{self._counter:x}"
        sent_by = listener.sent_by
        data = (f"OPTIONS {binding.contact} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {sent_by};branch={branch};rport\r\n"
                f"From: <sip:keepalive@{sent_by}>;tag={self._tag}\r\n"
                f"To: <{binding.contact}>\r\n"
                f"Call-ID: {branch}@{sent_by}\r\n"
                f"CSeq: 1 OPTIONS\r\n"
                f"Max-Forwards: 70\r\n"
                f"Content-Length: 0\r\n\r\n").encode("latin-1", "replace")
        self.send(data, Destination("udp", (where[1], where[2]), listener))
        self.outstanding.add(branch)
        metrics.NAT_PINGS.inc("sent")
        return True

    def answered(self, branch: str) -> bool:
        """A response to one of our pings (any status keeps the binding open)."""
        if branch in self.outstanding:
            self.outstanding.discard(branch)
            metrics.NAT_PINGS.inc("answered")
            return True
        return False
