"""The node's dispatcher: its destination sets, the selection algorithm, and
the health thresholds; what the routing script asks (``order``) and tells
(``failed``/``succeeded``). Probing and live changes attach here (issue 4)."""

from __future__ import annotations

import time

from hasip import metrics
from hasip.config import Config
from hasip.dispatcher.destinations import (
    ACTIVE,
    DISABLED,
    INACTIVE,
    Destination,
    DestinationSet,
    ListFileError,
    Thresholds,
    parse_list,
)
from hasip.dispatcher.select import HASHED, Selector
from hasip.log import get_logger
from hasip.sip.transaction import Timers

log = get_logger("hasip.dispatcher")

# Final answers after which a call is tried on the next node (the seed's
# failure_route: everything but 403/486/487 there; here the node's own
# failures: timeouts and server errors, including our 503 for a transport
# error). Other answers (4xx, 6xx) are the callee's and go back to the caller.
FAILOVER = frozenset((408, *range(500, 600)))


STATES = {"active": ACTIVE, "inactive": INACTIVE, "disabled": DISABLED}


class DispatcherError(ValueError):
    """A live change that cannot be made (answered 400/404 by the control API)."""


class Dispatcher:
    def __init__(self, config: Config) -> None:
        self.config = config
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
        self.hold_down = config.dispatcher.hold_down
        t = config.timers
        # Branches to a node use timer B = dispatcher.answer_timeout when set.
        self.timers: Timers | None = None
        if config.dispatcher.answer_timeout:
            self.timers = Timers(t.t1, t.t2, t.t4, config.dispatcher.answer_timeout,
                                 t.invite_final)
        self.by_address: dict[tuple[str, int], Destination] = {}
        self._index()

    def _index(self) -> None:
        self.by_address = {}
        for dset in self.sets.values():
            for d in dset.destinations:
                self.by_address[(d.uri.host_ip, d.uri.default_port())] = d
                self._export(d)

    # -- live changes (the control API) -----------------------------------------

    def listing(self) -> list[dict[str, object]]:
        return [{"set": d.set_id, "uri": d.key, "flags": d.flags, "weight": d.weight,
                 "priority": d.priority, "maxload": d.max_calls,
                 "description": d.description, "failures": d.failures}
                for set_id in sorted(self.sets) for d in self.sets[set_id].destinations]

    def _find(self, set_id: int, uri: str) -> Destination:
        dset = self.sets.get(set_id)
        dest = dset.find(uri) if dset is not None else None
        if dest is None:
            raise DispatcherError(f"no destination {uri} in set {set_id}")
        return dest

    def add(self, set_id: int, uri: str, attrs: str = "") -> Destination:
        """A new node, in rotation at once; the prober checks it within an interval."""
        try:
            [dest] = parse_list(f"{set_id} {uri} 0 0 {attrs}".rstrip(), "add")
        except ListFileError as exc:
            raise DispatcherError(str(exc).removeprefix("add:1: ")) from None
        dset = self.sets.setdefault(set_id, DestinationSet(set_id))
        if dset.find(dest.key) is not None:
            raise DispatcherError(f"{dest.key} is already in set {set_id}")
        dest.origin = "api"
        dset.destinations.append(dest)
        self._index()
        log.info("destination_added", set=set_id, uri=dest.key)
        return dest

    def remove(self, set_id: int, uri: str) -> None:
        """Out of rotation for new calls; calls in progress go on (their
        in-dialog requests follow Record-Route, not the dispatcher)."""
        dest = self._find(set_id, uri)
        dest.draining = True
        self.sets[set_id].destinations.remove(dest)
        metrics.DS_UP.remove(str(set_id), dest.key)
        self._index()
        log.info("destination_removed", set=set_id, uri=dest.key)

    def set_state(self, set_id: int, uri: str, state: str) -> Destination:
        if state not in STATES:
            raise DispatcherError(f"state {state!r} is not one of {', '.join(STATES)}")
        dest = self._find(set_id, uri)
        dest.set_admin_state(STATES[state])
        metrics.DS_STATE_CHANGES.inc(dest.state)
        log.info("destination_state", uri=dest.key, state=dest.flags, why="admin")
        return dest

    def reload(self) -> int:
        """Re-read ``dispatcher.list_file`` (and keep the config's own list):
        nodes that stay keep their state. Returns the number of destinations."""
        path = self.config.dispatcher.list_file
        if not path:
            raise DispatcherError("no dispatcher.list_file to reload")
        try:
            with open(path, encoding="utf-8") as fh:
                fresh = parse_list(fh.read(), path)
        except OSError as exc:
            raise DispatcherError(f"cannot read {path}: {exc.strerror}") from None
        except ListFileError as exc:
            raise DispatcherError(str(exc)) from None
        inline = [d for d in self.config.dispatcher.destinations if d.origin == "config"]
        old = {(d.set_id, d.key): d for ds in self.sets.values() for d in ds.destinations}
        sets: dict[int, DestinationSet] = {}
        for dest in inline + fresh:
            kept = old.pop((dest.set_id, dest.key), None)
            if kept is not None:
                kept.weight, kept.priority = dest.weight, dest.priority
                kept.max_calls, kept.socket = dest.max_calls, dest.socket
                kept.description = dest.description
                dest = kept
            sets.setdefault(dest.set_id, DestinationSet(dest.set_id)).destinations.append(dest)
        for gone in old.values():
            gone.draining = True
            metrics.DS_UP.remove(str(gone.set_id), gone.key)
        self.sets = sets
        self._index()
        count = sum(len(ds.destinations) for ds in sets.values())
        log.info("dispatcher_reloaded", file=path, destinations=count)
        return count

    def order(self, set_id: int, key: str = "") -> list[Destination]:
        dset = self.sets.get(set_id)
        return self.selector.order(dset, key) if dset is not None else []

    def sent(self, dest: Destination) -> None:
        metrics.DS_CALLS.labels(str(dest.set_id), dest.key).inc()

    def failed(self, dest: Destination, why: str, by_call: bool = False) -> None:
        """A failure; ``by_call``: a real call failed (not a probe)."""
        metrics.DS_FAILURES.labels(str(dest.set_id), dest.key).inc()
        if not by_call:
            # Its probes fail too: it was down, not lying; the next answered
            # probe may bring it back.
            dest.held_until = 0.0
        if dest.failed(self.thresholds):
            metrics.DS_STATE_CHANGES.inc(dest.state)
            log.warning("destination_state", uri=dest.key, state=dest.flags, why=why)
            if by_call and dest.state == INACTIVE:
                dest.held_until = time.monotonic() + self.hold_down

    def succeeded(self, dest: Destination, by_probe: bool = False) -> None:
        if by_probe and dest.state == INACTIVE and dest.held_until > time.monotonic():
            return  # calls failed on it: an answered OPTIONS is not enough yet
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
