"""The node's dispatcher: its destination sets, the selection algorithm, and
the health thresholds; what the routing script asks (``order``) and tells
(``failed``/``succeeded``). Probing and live changes attach here (issue 4)."""

from __future__ import annotations

from hasip import metrics
from hasip.config import Config
from hasip.dispatcher.destinations import Destination, DestinationSet, Thresholds
from hasip.dispatcher.select import HASHED, Selector
from hasip.log import get_logger

log = get_logger("hasip.dispatcher")

# Final answers after which a call is tried on the next node (the seed's
# failure_route: everything but 403/486/487 there; here the node's own
# failures: timeouts and server errors, including our 503 for a transport
# error). Other answers (4xx, 6xx) are the callee's and go back to the caller.
FAILOVER = frozenset((408, *range(500, 600)))


class Dispatcher:
    def __init__(self, config: Config) -> None:
        self.set_id = config.dispatcher.set
        self.sets: dict[int, DestinationSet] = {}
        # Without dispatcher destinations, routing.next_hop is the set.
        dests = config.dispatcher.destinations or [
            Destination(uri, self.set_id) for uri in config.next_hop]
        for dest in dests:
            self.sets.setdefault(dest.set_id, DestinationSet(dest.set_id)).destinations.append(
                dest)
        self.selector = Selector(config.dispatcher.algorithm)
        self.hashed = self.selector.algorithm in HASHED
        self.thresholds = Thresholds(config.dispatcher.failures, config.dispatcher.successes)
        self.by_address: dict[tuple[str, int], Destination] = {}
        for dset in self.sets.values():
            for d in dset.destinations:
                self.by_address[(d.uri.host_ip, d.uri.default_port())] = d
                self._export(d)

    def order(self, set_id: int, key: str = "") -> list[Destination]:
        dset = self.sets.get(set_id)
        return self.selector.order(dset, key) if dset is not None else []

    def failed(self, dest: Destination, why: str) -> None:
        if dest.failed(self.thresholds):
            metrics.DS_STATE_CHANGES.inc(dest.state)
            log.warning("destination_state", uri=dest.key, state=dest.flags, why=why)

    def succeeded(self, dest: Destination) -> None:
        if dest.succeeded(self.thresholds):
            metrics.DS_STATE_CHANGES.inc(dest.state)
            log.info("destination_state", uri=dest.key, state=dest.flags)

    @staticmethod
    def _export(dest: Destination) -> None:
        metrics.DS_UP.labels(str(dest.set_id), dest.key).set_function(
            lambda: 1.0 if dest.state in ("A", "T") else 0.0)

    def is_destination(self, addr: tuple[str, int]) -> bool:
        """A request from one of our Asterisk nodes (its own address and port)."""
        return addr in self.by_address
