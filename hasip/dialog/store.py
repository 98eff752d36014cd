"""Dialogs in memory: lookup for in-dialog requests, the life cycle the
proxy drives (create, set destination, confirm, end), timeouts, and a change
feed like the location store's.

Subscribers see every change with a sequence number: the dispatcher keeps
its per-destination active-call counts from it, CDRs and replication to
peers will hang off it too. Nothing on the SIP path waits for a subscriber.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hasip.cluster.lamport import newer
from hasip.dialog.dialog import (
    CONFIRMED,
    EARLY,
    ENDED_TIMEOUT,
    TERMINATED,
    Dialog,
)

PUT = "put"
END = "end"

# Where a change comes from (as in the location store): this node, a peer,
# or this node's own timeout (every node times a dialog out by one clock).
LOCAL = "local"
REMOTE = "remote"
EXPIRY = "expiry"

TOMBSTONE_TIME = 300.0   # an ended dialog's id is remembered this long


@dataclass(slots=True, init=False)
class Change:
    seq: int
    op: str          # PUT (created or changed) or END (terminated)
    dialog: Dialog
    source: str

    def __init__(self, seq: int, op: str, dialog: Dialog, source: str = LOCAL) -> None:
        self.seq = seq
        self.op = op
        self.dialog = dialog
        self.source = source


Subscriber = Callable[[Change], None]


def ended_here(change: Change, owns: Callable[[str], bool]) -> bool:
    """A dialog end this node acts on (writes its CDR, deletes its media
    session): one it saw (LOCAL), or a timeout, which every node sees, of
    a dialog on a socket it owns (the VIP it came in on)."""
    return change.op == END and (change.source == LOCAL or (
        change.source == EXPIRY and owns(change.dialog.socket)))


class DialogStore:
    def __init__(self, node: str = "", timeout: float = 43200.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.timeout = timeout
        self.clock = clock
        self.by_call_id: dict[str, list[Dialog]] = {}
        self.seq = 0
        self.counts = {EARLY: 0, CONFIRMED: 0}
        self._subscribers: list[Subscriber] = []
        self._expiry: list[tuple[float, str, str]] = []   # (expires, call_id, id)
        self.by_id: dict[str, Dialog] = {}
        # id -> (version, node, until) of an ended dialog
        self.tombstones: dict[str, tuple[int, str, float]] = {}

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    def __len__(self) -> int:
        return self.counts[EARLY] + self.counts[CONFIRMED]

    def __iter__(self) -> Iterator[Dialog]:
        for items in self.by_call_id.values():
            yield from items

    def _emit(self, op: str, dialog: Dialog, source: str = LOCAL) -> None:
        if source != REMOTE:
            self.seq += 1
            dialog.version = self.seq
            dialog.node = self.node
        change = Change(dialog.version, op, dialog, source)
        for callback in self._subscribers:
            callback(change)

    def apply(self, op: str, d: Dialog) -> bool:
        """A peer's change (replication), kept if newer than what this node
        holds by the merge rule (version, then node); the counter moves past
        its version (Lamport). True if kept."""
        if d.version > self.seq:
            self.seq = d.version
        current = self.by_id.get(d.id)
        if current is not None and not newer(d.version, d.node, current.version, current.node):
            return False
        tomb = self.tombstones.get(d.id)
        if tomb is not None and not newer(d.version, d.node, tomb[0], tomb[1]):
            return False
        if current is not None:
            self._unlink(current)
        if op == END or d.state == TERMINATED:
            self.tombstones[d.id] = (d.version, d.node, self.clock() + TOMBSTONE_TIME)
            if current is None:
                return True
            d.state = TERMINATED
            self._emit(END, d, REMOTE)
            return True
        self._link(d)
        heapq.heappush(self._expiry, (d.expires, d.call_id, d.id))
        self._emit(PUT, d, REMOTE)
        return True

    def _link(self, d: Dialog) -> None:
        self.by_call_id.setdefault(d.call_id, []).append(d)
        self.by_id[d.id] = d
        self.counts[d.state] += 1

    def _unlink(self, d: Dialog) -> None:
        items = self.by_call_id.get(d.call_id)
        if items is not None:
            items[:] = [x for x in items if x.id != d.id]
            if not items:
                del self.by_call_id[d.call_id]
        if self.by_id.get(d.id) is d:
            del self.by_id[d.id]
            if d.state in self.counts:
                self.counts[d.state] -= 1

    # -- the life cycle ------------------------------------------------------

    def create(self, call_id: str, from_tag: str, from_uri: str, to_uri: str,
               request_uri: str, contact: str = "", cseq: int = 0, socket: str = "",
               nat: bool = False, user: str = "") -> Dialog | None:
        """A new early dialog; None when one with this Call-ID and From tag
        is in progress already (the INVITE spiralled back through us)."""
        for d in self.by_call_id.get(call_id, ()):
            if d.from_tag == from_tag and d.state == EARLY:
                return None
        now = self.clock()
        d = Dialog(call_id, from_tag, from_uri, to_uri, request_uri, contact, cseq,
                   socket=socket, nat=nat, user=user, started=now,
                   expires=now + self.timeout)
        self._link(d)
        heapq.heappush(self._expiry, (d.expires, call_id, d.id))
        self._emit(PUT, d)
        return d

    def set_destination(self, d: Dialog, ds_set: int, ds_uri: str) -> None:
        """The dispatcher node the INVITE goes to now (changes on failover)."""
        if d.state == TERMINATED or (d.ds_set, d.ds_uri) == (ds_set, ds_uri):
            return
        d.ds_set, d.ds_uri = ds_set, ds_uri
        self._emit(PUT, d)

    def set_media(self, d: Dialog, instance: str, late: bool = False) -> None:
        """The call's media goes through rtpengine ``instance`` (replicated:
        a peer that ends the dialog deletes the session there)."""
        if d.state == TERMINATED or (d.media, d.media_late) == (instance, late):
            return
        d.media, d.media_late = instance, late
        self._emit(PUT, d)

    def confirm(self, d: Dialog, to_tag: str, contact: str, route_set: tuple[str, ...],
                nat: bool = False) -> None:
        """The first 2xx: the dialog is established (later 2xx of other
        forks are the caller's to end)."""
        if d.state != EARLY:
            return
        d.state = CONFIRMED
        d.to_tag = to_tag
        d.callee_contact = contact
        d.route_set = route_set
        d.nat = d.nat or nat
        d.answered = self.clock()
        self.counts[EARLY] -= 1
        self.counts[CONFIRMED] += 1
        self._emit(PUT, d)

    def end(self, d: Dialog, reason: str, status: int = 0, source: str = LOCAL) -> bool:
        """Terminate ``d``; False when it had ended already."""
        if d.state == TERMINATED:
            return False
        self._unlink(d)
        d.state = TERMINATED
        d.ended = self.clock()
        d.end_reason = reason
        d.end_status = status
        self._emit(END, d, source)
        self.tombstones[d.id] = (d.version, d.node, d.ended + TOMBSTONE_TIME)
        return True

    # -- lookups and timeouts ---------------------------------------------------

    def find(self, call_id: str, from_tag: str | None, to_tag: str | None) -> Dialog | None:
        """The dialog an in-dialog request (either direction) belongs to."""
        for d in self.by_call_id.get(call_id, ()):
            if d.matches(from_tag, to_tag):
                return d
        return None

    def expire(self, now: float | None = None, limit: int = 10_000) -> list[Dialog]:
        """End dialogs whose timeout passed (at most ``limit`` per call)."""
        t = self.clock() if now is None else now
        heap = self._expiry
        ended: list[Dialog] = []
        while heap and heap[0][0] <= t and len(ended) < limit:
            _expires, call_id, dialog_id = heapq.heappop(heap)
            for d in self.by_call_id.get(call_id, ()):
                if d.id == dialog_id:
                    self.end(d, ENDED_TIMEOUT, source=EXPIRY)
                    ended.append(d)
                    break
        if len(self.tombstones) > 1024 and len(ended) < limit:
            self.tombstones = {k: v for k, v in self.tombstones.items() if v[2] > t}
        return ended
