"""The location service in memory: bindings by address-of-record, expiry,
and a change feed.

Every change (a binding put or deleted) gets the next sequence number and is
handed to each subscriber: the durable store's write-behind queue and the
replication stream to peer nodes. Lookups never wait for either.

Versions are a Lamport clock shared with the peers: ``apply`` (a peer's
change) moves the counter past the version it brings, and keeps the change
only if it is newer by the merge rule (version, then node). A deletion
leaves a tombstone until the binding would have expired, so an older put
arriving late (a snapshot, a resend) cannot bring it back.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hasip.lamport import newer
from hasip.location.binding import Binding

PUT = "put"
DELETE = "delete"

# Where a change comes from: this node's registrar, a peer (replication), or
# this node's own expiry (every node expires by the same clock: not sent).
LOCAL = "local"
REMOTE = "remote"
EXPIRY = "expiry"


@dataclass(slots=True, frozen=True)
class Change:
    seq: int
    op: str          # PUT or DELETE
    binding: Binding
    source: str = LOCAL


Subscriber = Callable[[Change], None]


class LocationStore:
    def __init__(self, node: str = "", clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.clock = clock
        self.by_aor: dict[str, list[Binding]] = {}
        self.seq = 0
        self._subscribers: list[Subscriber] = []
        self._expiry: list[tuple[float, str, str]] = []   # (expires, aor, ruid)
        # (aor, ruid) -> (version, node, until) of a deleted binding
        self.tombstones: dict[tuple[str, str], tuple[int, str, float]] = {}

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_aor.values())

    def aor_count(self) -> int:
        return len(self.by_aor)

    def bindings(self, aor: str, now: float | None = None) -> list[Binding]:
        """Current bindings of ``aor``, highest q first (RFC 3261 16.6)."""
        found = self.by_aor.get(aor)
        if not found:
            return []
        t = self.clock() if now is None else now
        live = [b for b in found if b.expires > t]
        if len(live) > 1:
            live.sort(key=lambda b: -b.q)
        return live

    def all(self) -> Iterable[Binding]:
        for items in self.by_aor.values():
            yield from items

    def _emit(self, op: str, binding: Binding, source: str = LOCAL) -> None:
        change = Change(binding.version, op, binding, source)
        for callback in self._subscribers:
            callback(change)

    def find(self, aor: str, ruid: str) -> Binding | None:
        return next((b for b in self.by_aor.get(aor, ()) if b.ruid == ruid), None)

    def put(self, binding: Binding, now: float | None = None) -> None:
        """Add or replace (same ruid) a binding; stamps version and time."""
        self.seq += 1
        binding.version = self.seq
        binding.updated = self.clock() if now is None else now
        binding.node = self.node
        self.tombstones.pop((binding.aor, binding.ruid), None)
        self._store(binding)
        self._emit(PUT, binding)

    def apply(self, op: str, binding: Binding, now: float | None = None) -> bool:
        """A peer's change, kept if newer than what this node has (binding
        or tombstone); subscribers see it with source REMOTE. True if kept."""
        if binding.version > self.seq:
            self.seq = binding.version
        key = (binding.aor, binding.ruid)
        current = self.find(binding.aor, binding.ruid)
        if current is not None and not newer(binding.version, binding.node,
                                             current.version, current.node):
            return False
        tomb = self.tombstones.get(key)
        if tomb is not None and not newer(binding.version, binding.node, tomb[0], tomb[1]):
            return False
        if op == DELETE:
            self.tombstones[key] = (binding.version, binding.node, binding.expires)
            if current is None:
                return True
            self._remove(current)
            self._emit(DELETE, binding, REMOTE)
            return True
        t = self.clock() if now is None else now
        if binding.expires <= t:
            return False
        self.tombstones.pop(key, None)
        self._store(binding)
        self._emit(PUT, binding, REMOTE)
        return True

    def _remove(self, binding: Binding) -> None:
        items = self.by_aor.get(binding.aor)
        if items is None:
            return
        items[:] = [b for b in items if b.ruid != binding.ruid]
        if not items:
            del self.by_aor[binding.aor]

    def _store(self, binding: Binding) -> None:
        items = self.by_aor.setdefault(binding.aor, [])
        for i, old in enumerate(items):
            if old.ruid == binding.ruid:
                items[i] = binding
                break
        else:
            items.append(binding)
        heapq.heappush(self._expiry, (binding.expires, binding.aor, binding.ruid))

    def delete(self, binding: Binding, source: str = LOCAL) -> bool:
        items = self.by_aor.get(binding.aor)
        if not items:
            return False
        for i, old in enumerate(items):
            if old.ruid == binding.ruid:
                del items[i]
                if not items:
                    del self.by_aor[binding.aor]
                self.seq += 1
                old.version = self.seq
                old.node = self.node
                self.tombstones[(old.aor, old.ruid)] = (old.version, old.node, old.expires)
                self._emit(DELETE, old, source)
                return True
        return False

    def load(self, bindings: Iterable[Binding], now: float | None = None) -> int:
        """Bindings from the durable store at start: added without emitting
        changes (they are stored already); a binding we hold that is newer wins."""
        t = self.clock() if now is None else now
        count = 0
        for b in bindings:
            if b.expires <= t:
                continue
            current = next((x for x in self.by_aor.get(b.aor, ()) if x.ruid == b.ruid), None)
            if current is not None and current.updated >= b.updated:
                continue
            self._store(b)
            count += 1
        return count

    def expire(self, now: float | None = None, limit: int = 10_000) -> int:
        """Delete bindings whose time is up (at most ``limit`` per call)."""
        t = self.clock() if now is None else now
        heap = self._expiry
        removed = 0
        while heap and heap[0][0] <= t and removed < limit:
            _expires, aor, ruid = heapq.heappop(heap)
            for b in self.by_aor.get(aor, ()):
                if b.ruid == ruid and b.expires <= t:
                    self.delete(b, EXPIRY)
                    removed += 1
                    break
        if len(self.tombstones) > 1024 and removed < limit:
            self.tombstones = {k: v for k, v in self.tombstones.items() if v[2] > t}
        return removed
