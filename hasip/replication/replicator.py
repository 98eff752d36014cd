"""State replication between the nodes of a cluster: every registration and
dialog change made on one node reaches every other, a node that joins pulls
the cluster's state before it serves, and a link that drops is repaired.

Topology: a full mesh, one connection per pair (the node whose name sorts
first dials; peers and their replication addresses come from the
ZooKeeper membership). Each node sends only the changes it made itself
(source LOCAL; a peer's changes reach everyone from the peer, and every
node expires bindings and dialogs by the same clock) on every link, as a
stream numbered 1, 2, 3 ... within the node's epoch (a random id per
process start). A receiver keeps, per origin, the epoch and the last
number it applied; a frame that does not follow on is a gap, and the
receiver asks the origin for everything after its position (SYNC since):
the origin resends from its log of recent changes, or, when the log does
not reach back, every record whose last change it made. Conflicts resolve
by the stores' merge rule (Lamport version, then node name), so applying a
record twice, late or out of order changes nothing.

Join: the node connects to its live peers, asks one for a full snapshot
(all records it holds, with its positions for every origin when the
snapshot began), then asks each peer for its own changes since those
positions; only then is it synced, reports it in its membership data and
contends for VIPs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from hasip.app.config import ReplicationConfig
from hasip.dialog.dialog import Dialog
from hasip.dialog.store import END, DialogStore
from hasip.dialog.store import LOCAL as DIALOG_LOCAL
from hasip.dialog.store import PUT as DIALOG_PUT
from hasip.dialog.store import Change as DialogChange
from hasip.dispatcher.destinations import Destination
from hasip.dispatcher.dispatcher import Dispatcher
from hasip.location.binding import Binding
from hasip.location.store import DELETE as LOC_DELETE
from hasip.location.store import LOCAL as LOC_LOCAL
from hasip.location.store import PUT as LOC_PUT
from hasip.location.store import Change as LocationChange
from hasip.location.store import LocationStore
from hasip.replication import records as rec
from hasip.replication.link import Link
from hasip.replication.protocol import (
    ACK,
    RECORDS,
    SYNC,
    SYNC_DONE,
    ProtocolError,
)
from hasip.security.guard import BANNED, Ban, SourceGuard
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.util.tasks import cancel
from keepalive.zk import wait

log = get_logger("hasip.replication")

DISCOVERY_INTERVAL = 0.5
PROGRESS_EVERY = 5000


class Replicator:
    def __init__(self, config: ReplicationConfig, node: str, location: LocationStore,
                 dialogs: DialogStore, dispatcher: Dispatcher, zk: KazooClient,
                 members_path: str, advertise: Callable[[dict[str, Any]], None],
                 guard: SourceGuard | None = None) -> None:
        assert config.listen is not None
        self.config = config
        self.node = node
        self.location = location
        self.dialogs = dialogs
        self.dispatcher = dispatcher
        self.guard = guard
        self.zk = zk
        self.members_path = members_path
        self.advertise = advertise          # puts our fields in the membership data
        self.secret = config.secret.encode()
        self._tls = tls_contexts(config)
        self.epoch = os.urandom(6).hex()
        self.seq = 0                        # our stream's last number
        self.log: deque[tuple[int, dict[str, Any]]] = deque(maxlen=config.log_size)
        self.outbox: list[dict[str, Any]] = []
        self.links: dict[str, Link] = {}
        # origin -> (epoch, last number applied in order)
        self.positions: dict[str, tuple[str, int]] = {}
        self.repairing: set[str] = set()
        self._done: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.synced = False
        self.sync_state: dict[str, Any] = {"state": "waiting", "records": 0}
        self.members: dict[str, dict[str, Any]] = {}
        self._dialing: set[str] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flush_scheduled = False
        self._sync_count = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        location.subscribe(self._on_location)
        dialogs.subscribe(self._on_dialog)
        dispatcher.state_subscribers.append(self._on_destination)
        dispatcher.probes_mine = self.probes_mine
        if guard is not None:
            guard.subscribers.append(self._on_ban)

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        host, port = self.config.listen  # type: ignore[misc]
        self._server = await asyncio.start_server(self._accept, host, port,
                                                  ssl=self._tls[0])
        self.advertise({"replication": f"{host}:{port}", "sync": self.sync_state})
        self._tasks.append(self.loop.create_task(self._discover()))
        log.info("replication_listening", address=f"{host}:{port}", epoch=self.epoch)

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel(task)
        if self._server is not None:
            self._server.close()
        for link in list(self.links.values()):
            link.close()

    # -- what we send: our own changes -------------------------------------------------

    def _on_location(self, change: LocationChange) -> None:
        if change.source == LOC_LOCAL:
            op = rec.DELETE if change.op == LOC_DELETE else rec.PUT
            self._queue(rec.binding_record(op, change.binding))

    def _on_dialog(self, change: DialogChange) -> None:
        if change.source == DIALOG_LOCAL:
            op = rec.DELETE if change.op == END else rec.PUT
            self._queue(rec.dialog_record(op, change.dialog))

    def _on_destination(self, dest: Destination) -> None:
        self._queue(_destination_record(dest))

    def _on_ban(self, op: str, ban: Ban, local: bool) -> None:
        """A ban (or lift) decided here: every node drops the source."""
        if local:
            self._queue(rec.ban_record(op, ban, _wall_offset()))

    def probes_mine(self, dest: Destination) -> bool:
        """One prober per destination: the live member that hashes highest
        with it (rendezvous hashing), so a node that leaves moves only its
        own destinations to others. Alone (or before the membership is
        read), this node probes everything."""
        live = [n for n, info in self.members.items() if info.get("replication")]
        if not live:
            return True
        return max(live, key=lambda n: _weight(n, dest.key)) == self.node

    def _queue(self, record: dict[str, Any]) -> None:
        self.seq += 1
        self.log.append((self.seq, record))
        self.outbox.append(record)
        if not self._flush_scheduled and self.loop is not None:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Everything queued in one loop iteration goes out as one frame."""
        self._flush_scheduled = False
        batch, self.outbox = self.outbox, []
        if not batch:
            return
        body = {"origin": self.node, "epoch": self.epoch,
                "seqs": [self.seq - len(batch) + 1, self.seq], "at": time.time(),
                "records": batch}
        for link in list(self.links.values()):
            if link.send(RECORDS, body):
                metrics.REPL_RECORDS.inc(link.peer, "sent", amount=len(batch))

    # -- links -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_link(Link(reader, writer, self.node, self.epoch, self.secret))

    async def _dial(self, peer: str, address: str) -> None:
        """Connect to ``peer`` and serve the link; ``peer`` stays in
        ``_dialing`` (not redialled) until this ends, after a pause when it
        failed."""
        host, _, port = address.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port), ssl=self._tls[1]), 3.0)
            if not await self._serve_link(Link(reader, writer, self.node, self.epoch,
                                               self.secret)):
                await asyncio.sleep(5.0)   # a peer we cannot trust: do not hammer it
        except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
            log.info("replication_dial_failed", peer=peer, address=address, error=str(exc))
            await asyncio.sleep(0.5)
        finally:
            self._dialing.discard(peer)

    async def _serve_link(self, link: Link) -> bool:
        """Handshake, then frames until the link ends; False when the
        handshake failed."""
        try:
            await asyncio.wait_for(link.handshake(), 5.0)
        except (ProtocolError, ConnectionError, TimeoutError, OSError) as exc:
            metrics.REPL_AUTH_FAILURES.inc()
            log.warning("replication_handshake_failed", peer=link.peer or "?", error=str(exc))
            link.close()
            return False
        old = self.links.get(link.peer)
        if old is not None:
            old.close()
        self.links[link.peer] = link
        metrics.REPL_PEERS.set(len(self.links))
        log.info("replication_link_up", peer=link.peer, peer_epoch=link.peer_epoch)
        if self.synced:
            self._ask_since(link)          # catch up on what we missed from it
        try:
            await link.run(self._on_frame)
        except (ProtocolError, ConnectionError, OSError) as exc:
            log.warning("replication_link_down", peer=link.peer, error=str(exc))
        finally:
            if self.links.get(link.peer) is link:
                del self.links[link.peer]
                metrics.REPL_PEERS.set(len(self.links))
            self.repairing.discard(link.peer)
            future = self._done.pop(link.peer, None)
            if future is not None and not future.done():
                future.set_exception(ConnectionError(f"link to {link.peer} lost"))
        return True

    def _ask_since(self, link: Link) -> None:
        epoch, seq = self.positions.get(link.peer, ("", 0))
        self.repairing.add(link.peer)
        link.send(SYNC, {"full": False, "epoch": epoch, "since": seq})

    async def _discover(self) -> None:
        """Dial the live members that sort after us and have no link yet."""
        assert self.loop is not None
        while True:
            try:
                names = await wait(self.zk.get_children_async(self.members_path))
                members: dict[str, dict[str, Any]] = {}
                for name in names:
                    try:
                        data, _ = await wait(self.zk.get_async(f"{self.members_path}/{name}"))
                        members[name] = json.loads(data)
                    except (NoNodeError, ValueError):
                        continue
                self.members = members
                for name, info in members.items():
                    address = info.get("replication")
                    if (name > self.node and isinstance(address, str) and name not in self.links
                            and name not in self._dialing):
                        self._dialing.add(name)
                        self.loop.create_task(self._dial(name, address))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("replication_discovery_failed", error=repr(exc))
            await asyncio.sleep(DISCOVERY_INTERVAL)

    # -- what we receive ---------------------------------------------------------------

    async def _on_frame(self, link: Link, kind: int, body: dict[str, Any]) -> None:
        if kind == RECORDS:
            self._on_records(link, body)
        elif kind == SYNC:
            await self._serve_sync(link, body)
        elif kind == SYNC_DONE:
            self._on_sync_done(link, body)
        elif kind == ACK:
            pass

    def _on_records(self, link: Link, body: dict[str, Any]) -> None:
        records = body.get("records") or []
        applied = 0
        for record in records:
            if self._apply(record):
                applied += 1
        peer = link.peer
        metrics.REPL_RECORDS.inc(peer, "applied", amount=applied)
        metrics.REPL_RECORDS.inc(peer, "stale", amount=len(records) - applied)
        if body.get("repair"):
            # sent for a sync or a gap, not as they happened
            metrics.REPL_RECORDS.inc(peer, "repaired", amount=len(records))
        if not self.synced:
            self._sync_progress(len(records))
        seqs = body.get("seqs")
        if not seqs:
            return                           # a snapshot's records
        at = body.get("at")
        if isinstance(at, (int, float)):
            metrics.REPL_LAG.labels(peer).observe(max(0.0, time.time() - at))
        origin, epoch = str(body.get("origin", "")), str(body.get("epoch", ""))
        first, last = int(seqs[0]), int(seqs[1])
        known_epoch, known = self.positions.get(origin, ("", 0))
        if epoch == known_epoch and first <= known + 1:
            self.positions[origin] = (epoch, max(known, last))
        elif epoch != known_epoch and first == 1 and origin not in self.repairing:
            self.positions[origin] = (epoch, last)        # it restarted: a new stream
        elif origin not in self.repairing and self.synced:
            metrics.REPL_GAPS.labels(origin).inc()
            log.warning("replication_gap", peer=origin, have=known, got=first)
            self._ask_since(link)

    def _apply(self, record: dict[str, Any]) -> bool:
        kind, op, data = record.get("t"), record.get("op"), record.get("d")
        if not isinstance(data, dict):
            return False
        try:
            if kind == rec.BINDING:
                b = rec.build(Binding, data)
                return self.location.apply(LOC_DELETE if op == rec.DELETE else LOC_PUT, b)
            if kind == rec.DIALOG:
                d = rec.build(Dialog, data)
                return self.dialogs.apply(END if op == rec.DELETE else DIALOG_PUT, d)
            if kind == rec.DESTINATION:
                return self.dispatcher.apply_state(int(data["set"]), str(data["uri"]),
                                                   str(data["state"]), int(record["v"]),
                                                   str(record["n"]))
            if kind == rec.BAN and self.guard is not None:
                return self.guard.apply(str(op), rec.ban_from(record, _wall_offset()),
                                        time.monotonic())
        except (TypeError, ValueError, KeyError) as exc:
            log.warning("replication_bad_record", kind=kind, error=str(exc))
        return False

    async def _serve_sync(self, link: Link, body: dict[str, Any]) -> None:
        """A peer asks for everything (a joiner) or for our changes since a
        position (a gap, a link back up)."""
        positions = {**self.positions, self.node: (self.epoch, self.seq)}
        since = int(body.get("since", 0) or 0)
        epoch = str(body.get("epoch", ""))
        started = time.monotonic()
        if body.get("full"):
            sent = await self._send_snapshot(link, lambda _node: True)
            what = "full"
        elif epoch in (self.epoch, "") and (not self.log or self.log[0][0] <= since + 1) and (
                since <= self.seq) and (epoch == self.epoch or since == 0):
            entries = [(s, r) for s, r in list(self.log) if s > since]
            sent = 0
            for i in range(0, len(entries), self.config.batch):
                chunk = entries[i:i + self.config.batch]
                link.send(RECORDS, {"origin": self.node, "epoch": self.epoch,
                                    "seqs": [chunk[0][0], chunk[-1][0]], "repair": True,
                                    "records": [r for _, r in chunk]})
                sent += len(chunk)
                await link.drain()
            what = "log"
        else:
            sent = await self._send_snapshot(link, lambda node: node == self.node)
            what = "own records"
        link.send(SYNC_DONE, {"positions": {k: list(v) for k, v in positions.items()}})
        log.info("replication_sync_served", peer=link.peer, kind=what, since=since,
                 records=sent, ms=round((time.monotonic() - started) * 1000, 1))

    async def _send_snapshot(self, link: Link, mine: Callable[[str], bool]) -> int:
        items: list[dict[str, Any]] = []
        for b in list(self.location.all()):
            if mine(b.node):
                items.append(rec.binding_record(rec.PUT, b))
        for (aor, ruid), (version, node, until) in list(self.location.tombstones.items()):
            if mine(node):
                items.append(rec.record(rec.BINDING, rec.DELETE, version, node,
                                        {"aor": aor, "ruid": ruid, "contact": "",
                                         "expires": until, "call_id": "", "cseq": 0,
                                         "version": version, "node": node}))
        for d in list(self.dialogs):
            if mine(d.node):
                items.append(rec.dialog_record(rec.PUT, d))
        for dest in list(self.dispatcher.by_key.values()):
            if dest.state_version and mine(dest.state_node):
                items.append(_destination_record(dest))
        if self.guard is not None:
            offset = _wall_offset()
            for ban in self.guard.active(time.monotonic()):
                if mine(ban.node):
                    items.append(rec.ban_record(BANNED, ban, offset))
        batch = self.config.batch
        for i in range(0, len(items), batch):
            link.send(RECORDS, {"origin": self.node, "epoch": self.epoch, "seqs": None,
                                "repair": True, "records": items[i:i + batch]})
            await link.drain()
        return len(items)

    def _on_sync_done(self, link: Link, body: dict[str, Any]) -> None:
        positions = body.get("positions") or {}
        for origin, value in positions.items():
            if origin == self.node:
                continue
            try:
                epoch, seq = str(value[0]), int(value[1])
            except (TypeError, ValueError, IndexError):
                continue
            known_epoch, known = self.positions.get(origin, ("", 0))
            if known_epoch != epoch or seq > known:
                self.positions[origin] = (epoch, seq)
        self.repairing.discard(link.peer)
        future = self._done.pop(link.peer, None)
        if future is not None and not future.done():
            future.set_result(positions)

    # -- join --------------------------------------------------------------------------

    def _sync_progress(self, count: int) -> None:
        before = self._sync_count
        self._sync_count += count
        self.sync_state["records"] = self._sync_count
        if before // PROGRESS_EVERY != self._sync_count // PROGRESS_EVERY:
            log.info("replication_sync_progress", records=self._sync_count)
            self.advertise({"sync": dict(self.sync_state)})

    async def _request(self, link: Link, body: dict[str, Any]) -> None:
        assert self.loop is not None
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._done[link.peer] = future
        link.send(SYNC, body)
        await asyncio.wait_for(future, self.config.sync_timeout)

    async def join(self) -> None:
        """Pull the cluster's state: a full snapshot from one peer, then each
        peer's own changes since the snapshot's positions."""
        started = time.monotonic()
        self.sync_state.update(state="syncing", records=0)
        self.advertise({"sync": dict(self.sync_state)})
        # Wait for the members that advertise replication to be linked (the
        # ones that sort before us dial us).
        deadline = time.monotonic() + self.config.sync_timeout
        await asyncio.sleep(DISCOVERY_INTERVAL)
        complete = False
        peers: set[str] = set()
        while time.monotonic() < deadline:
            peers = {n for n, info in self.members.items()
                     if n != self.node and info.get("replication")}
            if peers <= set(self.links):
                complete = True
                break
            await asyncio.sleep(0.05)
        if not complete:
            log.error("replication_peers_unreachable", peers=",".join(sorted(peers - set(
                self.links))), waited=self.config.sync_timeout)
        links = dict(self.links)
        source = ""
        transfer = 0.0
        if links:
            source = sorted(links)[0]
            try:
                t0 = time.monotonic()
                await self._request(links[source], {"full": True})
                transfer = time.monotonic() - t0
                for name, link in links.items():
                    if name != source and not link.closed:
                        epoch, seq = self.positions.get(name, ("", 0))
                        await self._request(link, {"full": False, "epoch": epoch,
                                                   "since": seq})
            except (TimeoutError, ConnectionError) as exc:
                complete = False
                log.error("replication_sync_failed", peer=source, error=str(exc))
        took = time.monotonic() - started
        # A node that could not reach every peer serves with what it got
        # (availability first; each link that comes up later repairs its
        # part) and says so: state "partial" in the membership and status.
        self.synced = True
        self.sync_state.update(state="synced" if complete else "partial",
                               seconds=round(took, 3), source=source)
        self.advertise({"sync": dict(self.sync_state)})
        metrics.REPL_SYNCED.set(1 if complete else 0)
        metrics.REPL_SYNC_RECORDS.set(self._sync_count)
        metrics.REPL_SYNC_SECONDS.set(took)
        rate = self._sync_count / transfer if transfer > 0 else 0.0
        log.info("replication_synced", source=source or "none (first node)",
                 records=self._sync_count, seconds=round(took, 3),
                 snapshot_seconds=round(transfer, 3), per_second=round(rate))
        # Links that came up while we synced catch up now.
        for name, link in self.links.items():
            if name not in links:
                self._ask_since(link)


def tls_contexts(config: ReplicationConfig) -> tuple[ssl.SSLContext | None,
                                                     ssl.SSLContext | None]:
    """(server, client) contexts for mutual TLS with the cluster's CA, or
    (None, None) without TLS. Peers are checked against the CA, not by
    host name (they are addressed by IP; the shared secret names them)."""
    if not config.tls_cert:
        return None, None
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=config.tls_ca)
    server.load_cert_chain(config.tls_cert, config.tls_key)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls_ca)
    client.load_cert_chain(config.tls_cert, config.tls_key)
    client.check_hostname = False
    return server, client


def _wall_offset() -> float:
    """Wall-clock time minus the monotonic clock the guard keeps (the event
    loop's): bans cross the network in wall-clock time."""
    return time.time() - time.monotonic()


def _destination_record(dest: Destination) -> dict[str, Any]:
    return rec.record(rec.DESTINATION, rec.PUT, dest.state_version, dest.state_node,
                      {"set": dest.set_id, "uri": dest.key, "state": dest.state})


def _weight(node: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{node}|{key}".encode(), digest_size=8).digest(),
                          "big")
