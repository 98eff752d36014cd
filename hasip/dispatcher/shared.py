"""Dispatcher sets shared by the cluster through ZooKeeper.

One znode, ``{cluster.root}/dispatcher``, holds the sets as a JSON document:

    {"format": 1,
     "destinations": ["1 sip:192.0.2.21:5060 0 0 weight=50;description=ast1", ...],
     "states": {"1 sip:192.0.2.21:5060": ["disabled", 3]}}

``destinations`` are lines of the seed's list format; ``states`` are the
operator's last ``set-state`` per destination with a serial number, so the
same state set again acts again on every node. The first node to start
writes its own configured sets there; from then on the document is the
truth for every node (a node's own ``destinations``/``list_file`` only seed
it). Every node watches the znode and applies each new version (nodes that
stay keep their health and calls; removed ones drain). A change made
through any node's control API (``hasip dispatcher add / remove / set-state
/ reload``) is a compare-and-set of the document on the version read, so
two operators at once cannot lose each other's change; it reaches every
node within one watch round trip.

Health (A/I/T from probes and calls) is not in the document: replication
carries it (hasip/replication, record type ``dst``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)

from hasip.app.config import socket_fault
from hasip.dispatcher.destinations import (
    Destination,
    ListFileError,
    format_line,
    parse_list,
)
from hasip.dispatcher.dispatcher import STATES, Dispatcher, DispatcherError
from hasip.telemetry.log import get_logger
from keepalive.zk import on_loop, wait

log = get_logger("hasip.dispatcher.shared")

FORMAT = 1
Doc = dict[str, Any]
States = dict[str, tuple[str, int]]


def encode(doc: Doc) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()


def decode(data: bytes, where: str) -> tuple[list[Destination], States]:
    """The document's destinations and states; DispatcherError naming the
    fault when it cannot be used (the node then keeps its current sets)."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DispatcherError(f"{where}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DispatcherError(f"{where}: not a format {FORMAT} dispatcher document")
    lines, states = doc.get("destinations", []), doc.get("states", {})
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise DispatcherError(f"{where}: destinations must be a list of lines")
    if not isinstance(states, dict) or not all(
            isinstance(v, list) and len(v) == 2 and v[0] in STATES and isinstance(v[1], int)
            for v in states.values()):
        raise DispatcherError(f"{where}: states must map destinations to [STATE, SERIAL] "
                              f"with STATE one of {', '.join(STATES)}")
    try:
        dests = parse_list("\n".join(lines), where)
    except ListFileError as exc:
        raise DispatcherError(str(exc)) from None
    return dests, {k: (v[0], v[1]) for k, v in states.items()}


def state_key(set_id: int, key: str) -> str:
    return f"{set_id} {key}"


class SharedSets:
    def __init__(self, zk: KazooClient, path: str, dispatcher: Dispatcher) -> None:
        self.zk = zk
        self.path = path
        self.dispatcher = dispatcher
        self.version = -1                    # the znode version applied last
        self._states: States = {}            # the states of that version
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refreshing = False
        self._again = False

    async def start(self) -> None:
        """Seed the document from this node's sets if there is none, then
        apply the cluster's and watch it."""
        self._loop = asyncio.get_running_loop()
        lines = [format_line(d) for ds in self.dispatcher.sets.values()
                 for d in ds.destinations]
        doc = {"format": FORMAT, "states": {}, "destinations": lines}
        try:
            await wait(self.zk.ensure_path_async(self.path.rsplit("/", 1)[0]))
            await wait(self.zk.create_async(self.path, encode(doc)))
            log.info("dispatcher_sets_seeded", path=self.path,
                     destinations=len(lines))
        except NodeExistsError:
            pass
        await self.refresh()

    def resync(self) -> None:
        """Read again and re-arm the watch (after a new ZooKeeper session,
        whose watches are gone)."""
        if self._loop is not None:
            self._loop.create_task(self.refresh())

    async def refresh(self) -> None:
        if self._refreshing:
            self._again = True
            return
        self._refreshing = True
        try:
            while True:
                self._again = False
                assert self._loop is not None
                try:
                    data, stat = await wait(self.zk.get_async(
                        self.path, watch=on_loop(self._loop, self.resync)))
                except NoNodeError:
                    log.warning("dispatcher_sets_missing", path=self.path)
                    return
                except (ConnectionLoss, SessionExpiredError) as exc:
                    # The session went away under the read: the reconnection
                    # reads again (connected hook), or asked already meanwhile.
                    log.warning("dispatcher_sets_read_interrupted", path=self.path,
                                error=type(exc).__name__)
                    if self._again:
                        continue
                    return
                self.apply(data, stat.version)
                if not self._again:
                    return
        except Exception:
            log.error("dispatcher_sets_read_failed", path=self.path, exc_info=True)
        finally:
            self._refreshing = False

    def apply(self, data: bytes, version: int) -> None:
        """Make a version of the document this node's sets (once per version)."""
        if version <= self.version:
            return
        try:
            dests, states = decode(data, f"zookeeper:{self.path}")
        except DispatcherError as exc:
            log.error("dispatcher_sets_invalid", version=version, error=str(exc))
            self.version = version
            return
        for dest in dests:
            dest.origin = "cluster"
            fault = socket_fault(self.dispatcher.config, dest)
            if fault:
                # Another node's socket: this node sends from its own choice.
                log.warning("dispatcher_socket_ignored", uri=dest.key, error=fault)
                dest.socket = ""
        count = self.dispatcher.replace(dests)
        for key, (state, serial) in states.items():
            if self._states.get(key) == (state, serial):
                continue   # an operator's state is applied once, when it is set
            set_id, _, uri = key.partition(" ")
            try:
                self.dispatcher.set_state(int(set_id), uri, state)
            except (DispatcherError, ValueError):
                pass       # a state for a destination since removed
        self._states = states
        self.version = version
        log.info("dispatcher_sets_applied", version=version, destinations=count)

    async def change(self, edit: Callable[[list[Destination], States], None]) -> None:
        """Read the document, let ``edit`` change its destinations and states
        in place (raising DispatcherError to refuse), write it back if nobody
        wrote in between (else again), and apply it here at once."""
        for _ in range(20):
            data, stat = await wait(self.zk.get_async(self.path))
            dests, states = decode(data, f"zookeeper:{self.path}")
            edit(dests, states)
            doc = {"format": FORMAT, "states": {k: list(v) for k, v in states.items()},
                   "destinations": [format_line(d) for d in dests]}
            out = encode(doc)
            try:
                new = await wait(self.zk.set_async(self.path, out, version=stat.version))
            except BadVersionError:
                continue
            self.apply(out, new.version)
            return
        raise DispatcherError("the shared sets kept changing under this change; try again")

    # -- the control API's changes ------------------------------------------------

    async def add(self, set_id: int, uri: str, attrs: str = "") -> None:
        dest = self.dispatcher.new_destination(set_id, uri, attrs)

        def edit(dests: list[Destination], _states: States) -> None:
            if any(d.set_id == set_id and d.key == dest.key for d in dests):
                raise DispatcherError(f"{dest.key} is already in set {set_id}")
            dests.append(dest)

        await self.change(edit)

    async def remove(self, set_id: int, uri: str) -> None:
        key = self.dispatcher.find(set_id, uri).key

        def edit(dests: list[Destination], states: States) -> None:
            before = len(dests)
            dests[:] = [d for d in dests if not (d.set_id == set_id and d.key == key)]
            if len(dests) == before:
                raise DispatcherError(f"no destination {uri} in set {set_id}")
            states.pop(state_key(set_id, key), None)

        await self.change(edit)

    async def set_state(self, set_id: int, uri: str, state: str) -> None:
        if state not in STATES:
            raise DispatcherError(f"state {state!r} is not one of {', '.join(STATES)}")
        key = self.dispatcher.find(set_id, uri).key

        def edit(_dests: list[Destination], states: States) -> None:
            # A new serial: the same state set again acts again (an inactive
            # node probes back to active; setting it inactive again takes it
            # out again).
            serial = states.get(state_key(set_id, key), ("", 0))[1] + 1
            states[state_key(set_id, key)] = (state, serial)

        await self.change(edit)

    async def reload(self) -> int:
        fresh = self.dispatcher.read_list_file()

        def edit(dests: list[Destination], _states: States) -> None:
            dests[:] = fresh

        await self.change(edit)
        return sum(len(ds.destinations) for ds in self.dispatcher.sets.values())
