"""The node's dispatcher: its destination sets, the selection algorithm, and
the health thresholds; what the routing script asks (``order``) and tells
(``failed``/``succeeded``, from calls, probes and peers), live changes
(the control API, the cluster's shared sets)."""

from __future__ import annotations

import time
from collections.abc import Callable

from hasip.app.config import Config, socket_fault
from hasip.cluster.lamport import newer
from hasip.dialog.store import PUT
from hasip.dialog.store import Change as DialogChange
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
from hasip.sip.transaction import Timers
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger

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
            Destination(uri, self.set_id) for uri in config.routing.next_hop]
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
        self.by_key: dict[tuple[int, str], Destination] = {}
        # Removed destinations that still carry calls (listed until they end).
        self.draining: list[Destination] = []
        # Dialog id -> the destination its active-call count is on.
        self._counted: dict[str, Destination] = {}
        self.node = config.node.name
        # Health shared with the cluster: each state change is numbered (a
        # Lamport counter, as the stores'), handed to the subscribers (the
        # replicator) and applied from peers by ``apply_state``.
        self.state_version = 0
        self.state_subscribers: list[Callable[[Destination], None]] = []
        # Whether this node probes a destination (replication: one prober
        # per destination among the live nodes; alone: every one).
        self.probes_mine: Callable[[Destination], bool] = lambda _dest: True
        # Called after the sets changed (trust and ban exemptions follow them).
        self.changed: list[Callable[[], None]] = []
        self._index()

    def _state_changed(self, dest: Destination) -> None:
        self.state_version += 1
        dest.state_version, dest.state_node = self.state_version, self.node
        for callback in self.state_subscribers:
            callback(dest)

    def apply_state(self, set_id: int, uri: str, state: str, version: int, node: str) -> bool:
        """A peer's view of a destination's health (its prober's, or a
        failed call there), kept if newer by (version, node). True if kept."""
        if version > self.state_version:
            self.state_version = version
        dest = self.by_key.get((set_id, uri))
        if dest is None or not newer(version, node, dest.state_version, dest.state_node):
            return False
        dest.state_version, dest.state_node = version, node
        if dest.state != state:
            dest.state = state
            dest.failures = dest.successes = 0
            if state == INACTIVE and self.probes_mine(dest):
                # We probe it and did not see it fail: calls failed on a peer.
                # An answered OPTIONS is not enough to bring it back yet.
                dest.held_until = time.monotonic() + self.hold_down
            metrics.DS_STATE_CHANGES.inc(state)
            log.info("destination_state", uri=dest.key, state=dest.flags, why=f"peer {node}")
        return True

    def _index(self) -> None:
        self.by_address = {}
        self.by_key = {}
        for dset in self.sets.values():
            for d in dset.destinations:
                self.by_address[(d.uri.host_ip, d.uri.default_port())] = d
                self.by_key[(d.set_id, d.key)] = d
                self._export(d)
        for callback in self.changed:
            callback()

    # -- live changes (the control API) -----------------------------------------

    def listing(self) -> list[dict[str, object]]:
        """Every destination, then removed ones that still finish calls."""
        dests = [d for set_id in sorted(self.sets) for d in self.sets[set_id].destinations]
        return [{"set": d.set_id, "uri": d.key, "flags": d.flags, "weight": d.weight,
                 "priority": d.priority, "maxload": d.max_calls, "socket": d.socket,
                 "description": d.description, "failures": d.failures,
                 "active_calls": d.active_calls, "probe_rtt_ms": round(d.probe_rtt * 1000, 2),
                 "draining": d.draining}
                for d in dests + self.draining]

    # -- active calls (from the dialog store's change feed) ------------------------

    def on_dialog(self, change: DialogChange) -> None:
        """Keep each destination's active-call count: a dialog counts on the
        node it was last sent to while it is early or confirmed."""
        d = change.dialog
        old = self._counted.get(d.id)
        if change.op == PUT:
            if not d.ds_uri or (old is not None and old.key == d.ds_uri
                                and old.set_id == d.ds_set):
                return
            new = self.by_key.get((d.ds_set, d.ds_uri))
        else:
            new = None
        if old is new:
            return
        if old is not None:
            del self._counted[d.id]
            old.active_calls -= 1
            if old.draining and old.active_calls <= 0 and old in self.draining:
                self.draining.remove(old)
                metrics.DS_ACTIVE_CALLS.remove(str(old.set_id), old.key)
                log.info("destination_drained", set=old.set_id, uri=old.key)
        if new is not None:
            self._counted[d.id] = new
            new.active_calls += 1

    def _retire(self, dest: Destination) -> None:
        """Out of its set: no new calls; listed as draining while it has calls."""
        dest.draining = True
        metrics.DS_UP.remove(str(dest.set_id), dest.key)
        metrics.DS_PROBE_RTT.remove(str(dest.set_id), dest.key)
        if dest.active_calls > 0:
            self.draining.append(dest)
        else:
            metrics.DS_ACTIVE_CALLS.remove(str(dest.set_id), dest.key)

    def find(self, set_id: int, uri: str) -> Destination:
        dset = self.sets.get(set_id)
        dest = dset.find(uri) if dset is not None else None
        if dest is None:
            raise DispatcherError(f"no destination {uri} in set {set_id}")
        return dest

    def new_destination(self, set_id: int, uri: str, attrs: str = "") -> Destination:
        """A destination the operator asks for, checked (URI, attributes,
        socket, not in the set yet) but not added."""
        try:
            [dest] = parse_list(f"{set_id} {uri} 0 0 {attrs}".rstrip(), "add")
        except ListFileError as exc:
            raise DispatcherError(str(exc).removeprefix("add:1: ")) from None
        fault = socket_fault(self.config, dest)
        if fault:
            raise DispatcherError(fault)
        dset = self.sets.get(set_id)
        if dset is not None and dset.find(dest.key) is not None:
            raise DispatcherError(f"{dest.key} is already in set {set_id}")
        dest.origin = "api"
        return dest

    def add(self, set_id: int, uri: str, attrs: str = "") -> Destination:
        """A new node, in rotation at once; the prober checks it within an interval."""
        dest = self.new_destination(set_id, uri, attrs)
        dset = self.sets.setdefault(set_id, DestinationSet(set_id))
        dset.destinations.append(dest)
        self._index()
        log.info("destination_added", set=set_id, uri=dest.key)
        return dest

    def remove(self, set_id: int, uri: str) -> None:
        """Out of rotation for new calls; calls in progress go on (their
        in-dialog requests follow Record-Route, not the dispatcher)."""
        dest = self.find(set_id, uri)
        self.sets[set_id].destinations.remove(dest)
        self._retire(dest)
        self._index()
        log.info("destination_removed", set=set_id, uri=dest.key, active_calls=dest.active_calls)

    def set_state(self, set_id: int, uri: str, state: str) -> Destination:
        if state not in STATES:
            raise DispatcherError(f"state {state!r} is not one of {', '.join(STATES)}")
        dest = self.find(set_id, uri)
        dest.set_admin_state(STATES[state])
        metrics.DS_STATE_CHANGES.inc(dest.state)
        log.info("destination_state", uri=dest.key, state=dest.flags, why="admin")
        self._state_changed(dest)
        return dest

    def read_list_file(self) -> list[Destination]:
        """``dispatcher.list_file`` read and checked, with the config's own
        list in front: what a reload makes the sets."""
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
        for dest in fresh:
            fault = socket_fault(self.config, dest)
            if fault:
                raise DispatcherError(f"{path}: {fault}")
        inline = [d for d in self.config.dispatcher.destinations if d.origin == "config"]
        return inline + fresh

    def reload(self) -> int:
        """Re-read ``dispatcher.list_file`` (and keep the config's own list):
        nodes that stay keep their state. Returns the number of destinations."""
        count = self.replace(self.read_list_file())
        log.info("dispatcher_reloaded", file=self.config.dispatcher.list_file,
                 destinations=count)
        return count

    def replace(self, fresh: list[Destination]) -> int:
        """Make ``fresh`` the sets: nodes that stay keep their state and calls
        (their attributes updated), new ones start active, the others drain."""
        old = {(d.set_id, d.key): d for ds in self.sets.values() for d in ds.destinations}
        sets: dict[int, DestinationSet] = {}
        for dest in fresh:
            kept = old.pop((dest.set_id, dest.key), None)
            if kept is not None:
                kept.weight, kept.priority = dest.weight, dest.priority
                kept.max_calls, kept.socket = dest.max_calls, dest.socket
                kept.description = dest.description
                dest = kept
            sets.setdefault(dest.set_id, DestinationSet(dest.set_id)).destinations.append(dest)
        for gone in old.values():
            self._retire(gone)
        self.sets = sets
        self._index()
        return sum(len(ds.destinations) for ds in sets.values())

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
            self._state_changed(dest)

    def succeeded(self, dest: Destination, by_probe: bool = False) -> None:
        if by_probe and dest.state == INACTIVE and dest.held_until > time.monotonic():
            return  # calls failed on it: an answered OPTIONS is not enough yet
        if dest.succeeded(self.thresholds):
            metrics.DS_STATE_CHANGES.inc(dest.state)
            log.info("destination_state", uri=dest.key, state=dest.flags)
            self._state_changed(dest)

    @staticmethod
    def _export(dest: Destination) -> None:
        labels = (str(dest.set_id), dest.key)
        metrics.DS_UP.labels(*labels).set_function(
            lambda: 1.0 if dest.state in ("A", "T") else 0.0)
        metrics.DS_ACTIVE_CALLS.labels(*labels).set_function(lambda: dest.active_calls)
        metrics.DS_PROBE_RTT.labels(*labels).set_function(lambda: dest.probe_rtt)

    def is_destination(self, addr: tuple[str, int]) -> bool:
        """A request from one of our Asterisk nodes (its own address and port)."""
        return addr in self.by_address

    def addresses(self) -> set[str]:
        """The IP addresses of the nodes in the sets now."""
        return {ip for ip, _port in self.by_address}
