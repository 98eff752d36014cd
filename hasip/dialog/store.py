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

from hasip.dialog.dialog import (
    CONFIRMED,
    EARLY,
    ENDED_TIMEOUT,
    TERMINATED,
    Dialog,
)

PUT = "put"
END = "end"


@dataclass(slots=True, frozen=True)
class Change:
    seq: int
    op: str          # PUT (created or changed) or END (terminated)
    dialog: Dialog


Subscriber = Callable[[Change], None]


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

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    def __len__(self) -> int:
        return self.counts[EARLY] + self.counts[CONFIRMED]

    def __iter__(self) -> Iterator[Dialog]:
        for items in self.by_call_id.values():
            yield from items

    def _emit(self, op: str, dialog: Dialog) -> None:
        self.seq += 1
        dialog.version = self.seq
        dialog.node = self.node
        change = Change(self.seq, op, dialog)
        for callback in self._subscribers:
            callback(change)

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
        self.by_call_id.setdefault(call_id, []).append(d)
        self.counts[EARLY] += 1
        heapq.heappush(self._expiry, (d.expires, call_id, d.id))
        self._emit(PUT, d)
        return d

    def set_destination(self, d: Dialog, ds_set: int, ds_uri: str) -> None:
        """The dispatcher node the INVITE goes to now (changes on failover)."""
        if d.state == TERMINATED or (d.ds_set, d.ds_uri) == (ds_set, ds_uri):
            return
        d.ds_set, d.ds_uri = ds_set, ds_uri
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

    def end(self, d: Dialog, reason: str, status: int = 0) -> bool:
        """Terminate ``d``; False when it had ended already."""
        if d.state == TERMINATED:
            return False
        self.counts[d.state] -= 1
        d.state = TERMINATED
        d.ended = self.clock()
        d.end_reason = reason
        d.end_status = status
        items = self.by_call_id.get(d.call_id)
        if items is not None:
            items[:] = [x for x in items if x is not d]
            if not items:
                del self.by_call_id[d.call_id]
        self._emit(END, d)
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
                    self.end(d, ENDED_TIMEOUT)
                    ended.append(d)
                    break
        return ended
