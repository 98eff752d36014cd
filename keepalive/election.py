"""One VIP's election and ownership on one node.

ZooKeeper layout under ``ROOT/vips/NAME``:

- ``candidates/NODE_PRIORITY_SEQ``: ephemeral sequential, one per contending node;
- ``owner``: ephemeral, ``{"node", "since"}``; whoever created it owns the VIP
  (creation is atomic: never two owners), and only then puts the address up;
- ``handover``: persistent, ``{"to": NODE}``, written by ``hasip failover``;
- ``handover-ready``: ephemeral, written by the handover's target when it is
  ready; the owner lets go only then;
- ``released``: ``{"node", "at"}`` of the last release, for measuring the gap.

Everything runs on the event loop except :meth:`fence`, which kazoo's thread
calls when the session is in doubt: it drops the address at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from keepalive import metrics
from keepalive.announce import Announcer
from keepalive.config import KeepaliveConfig, VipSpec
from keepalive.holder import AddressHolder, HoldError
from keepalive.ranking import candidate_prefix, may_acquire, predecessor, ranked, should_yield
from keepalive.zk import on_loop, wait


class ElectionHost(Protocol):
    """What an election needs from the node it runs in (the manager, which
    owns the ZooKeeper session and the membership record)."""

    config: KeepaliveConfig
    zk: KazooClient
    loop: asyncio.AbstractEventLoop
    connected: bool
    session_id: int
    healthy: bool
    draining: bool

    def log(self, event: str, level: str = "info", **fields: Any) -> None: ...

    def hooks_acquired(self, election: VipElection) -> None: ...
    def hooks_released(self, election: VipElection) -> None: ...
    def publish(self) -> None: ...

# Re-evaluate at least this often even without a watch firing (a safety net).
_PERIOD = 1.0


class VipElection:
    def __init__(self, node: ElectionHost, spec: VipSpec) -> None:
        self.node = node
        self.spec = spec
        self.name = spec.name
        base = f"{node.config.root}/vips/{spec.name}"
        self.base = base
        self.candidates = base + "/candidates"
        self.owner_path = base + "/owner"
        self.handover_path = base + "/handover"
        self.ready_path = base + "/handover-ready"
        self.released_path = base + "/released"
        self.holder = AddressHolder(spec.address, spec.prefix, spec.interface, spec.hold)
        self.announcer: Announcer | None = None
        self.candidate: str | None = None      # our candidate znode's name
        self.owned = False                     # we hold the lock and the address
        self.vacant_since: float | None = None
        self.better_since: float | None = None
        self.handover_since: float | None = None
        self.refused_until = 0.0               # after an ARP conflict
        self.handover_failed = False           # a drain's handover timed out
        # Moved here by an operator (failover, drain): no preemption takes it
        # back until it moves again.
        self.pinned = False
        self._wake = asyncio.Event()
        self._garp: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.log = node.log
        metrics.VIP_OWNED.labels(self.name).set(0)

    # -- life --------------------------------------------------------------

    def start(self) -> None:
        self.announcer = Announcer(self.spec.address, self.spec.interface)
        self.holder.remove_stale()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def poke(self) -> None:
        self._wake.set()

    def watch(self) -> Callable[..., None]:
        return on_loop(self.node.loop, self.poke)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), _PERIOD)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # ZooKeeper trouble: the next round retries
                self.log("election_error", vip=self.name, error=repr(exc))
                await asyncio.sleep(0.05)
                self.poke()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self.release("stopping")
        if self.candidate and self.node.connected:
            try:
                await wait(self.node.zk.delete_async(f"{self.candidates}/{self.candidate}"))
            except Exception:
                pass
        self.candidate = None

    # -- the decision --------------------------------------------------------

    async def evaluate(self) -> None:
        """One round: read the lock, the candidates and any handover once,
        then act. The owner watches the candidates (a better one joining, a
        handover target appearing); the others watch their predecessor."""
        node = self.node
        if not node.connected:
            return
        zk = node.zk
        me = node.config.node
        stat = await wait(zk.exists_async(self.owner_path, watch=self.watch()))
        mine = stat is not None and stat.ephemeralOwner == node.session_id
        contending = node.healthy and not node.draining
        may_hand_over = node.draining and node.healthy and self.owned
        if not contending and not may_hand_over:
            if self.owned or mine:
                await self.release("draining" if node.draining else "unhealthy")
            await self._withdraw()
            return
        if contending and self.candidate is None:
            path = await wait(zk.create_async(
                f"{self.candidates}/{candidate_prefix(me, self.spec.priority)}", b"",
                ephemeral=True, sequence=True, makepath=True))
            self.candidate = path.rsplit("/", 1)[1]
        children = await wait(zk.get_children_async(self.candidates,
                                                    watch=self.watch() if mine else None))
        order = ranked(children)
        handover_to = await self._handover_target()
        if not contending and not await self._drain_handover(order, handover_to):
            await self.release("draining")
            await self._withdraw()
            return
        if self.candidate is None or self.candidate not in children:
            # Our session was replaced: the znode went with the old one.
            self.candidate = None
            self.poke()
            return
        if mine:
            await self._as_owner(order, handover_to)
            return
        if self.owned:
            # The lock is not ours any more (a new session): the address goes.
            await self.release("lost the lock")
        if stat is not None:
            self.vacant_since = None
            if handover_to == me:
                await self._ready_for_handover()
            return
        if self.vacant_since is None:
            self.vacant_since = time.monotonic()
        if may_acquire(order, me, handover_to):
            if time.monotonic() >= self.refused_until:
                metrics.ELECTIONS.labels(self.name).inc()
                await self.acquire(handover_to == me)
            return
        ahead = predecessor(order, self.candidate)
        if ahead is not None:
            await wait(zk.exists_async(f"{self.candidates}/{ahead.name}", watch=self.watch()))

    async def _lock_is_mine(self) -> bool:
        stat = await wait(self.node.zk.exists_async(self.owner_path))
        return stat is not None and stat.ephemeralOwner == self.node.session_id

    async def _as_owner(self, order: list[Any], handover_to: str | None) -> None:
        """We hold the lock: hold the address too, and see whether to let go."""
        me = self.node.config.node
        if not self.owned:
            # Back after a suspended connection with the session alive.
            await self._take()
        if handover_to and handover_to != me:
            ready = await self._ready_node()
            if ready == handover_to:
                await self.release("handover", to=handover_to)
                return
            if self.handover_since is None:
                self.handover_since = time.monotonic()
            elif time.monotonic() - self.handover_since > self.node.config.timing.handover_timeout:
                self.log("handover_timeout", vip=self.name, to=handover_to)
                await self._clear_handover()
                self.handover_failed = True
            return
        self.handover_since = None
        better = None if self.pinned else should_yield(order, me, self.node.config.timing.preempt)
        if better is None:
            self.better_since = None
            return
        now = time.monotonic()
        if self.better_since is None:
            self.better_since = now
        if now - self.better_since >= self.node.config.timing.preempt_delay:
            await self.release("preempted", to=better.node)

    # -- taking and letting go -------------------------------------------------------

    async def acquire(self, by_handover: bool) -> None:
        zk = self.node.zk
        data = json.dumps({"node": self.node.config.node, "since": time.time(),
                           "up": False}).encode()
        try:
            await wait(zk.create_async(self.owner_path, data, ephemeral=True, makepath=True))
        except NodeExistsError:
            self.poke()
            return
        assert self.announcer is not None
        loop = asyncio.get_running_loop()
        # A handover's owner let go before it released the lock: no probe
        # (it would only lengthen the gap). Otherwise the owner may have died
        # holding the address: check that nobody still answers for it.
        window = 0.0 if by_handover else self.node.config.timing.conflict_window
        answering = await loop.run_in_executor(None, self.announcer.probe, window)
        if answering:
            metrics.CONFLICTS.labels(self.name).inc()
            self.log("vip_conflict", vip=self.name, address=self.spec.address,
                     answered_by=",".join(answering), level="error")
            await wait(zk.delete_async(self.owner_path))
            self.refused_until = time.monotonic() + 1.0
            return
        await self._take()
        if self.owned:
            # When the address went up (the gap a failover reports ends here).
            data = json.dumps({"node": self.node.config.node, "since": time.time(),
                               "up": True}).encode()
            await wait(zk.set_async(self.owner_path, data))
        if by_handover and self.owned:
            self.pinned = True
            await self._clear_handover()

    async def _take(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.holder.acquire)
        except HoldError as exc:
            self.log("vip_hold_failed", vip=self.name, error=str(exc), level="error")
            await wait(self.node.zk.delete_async(self.owner_path))
            self.refused_until = time.monotonic() + 1.0
            return
        self.owned = True
        self.handover_failed = False
        metrics.VIP_OWNED.labels(self.name).set(1)
        metrics.TAKEOVERS.labels(self.name).inc()
        self.node.hooks_acquired(self)
        if self._garp is not None:
            self._garp.cancel()
        self._garp = loop.create_task(self._announce())
        took = time.monotonic() - (self.vacant_since or time.monotonic())
        metrics.TAKEOVER_SECONDS.observe(took)
        self.vacant_since = None
        self.log("vip_acquired", vip=self.name, address=self.spec.address,
                 took_ms=round(took * 1000, 1))
        self.node.publish()

    async def _announce(self) -> None:
        cfg = self.node.config.timing
        assert self.announcer is not None
        loop = asyncio.get_running_loop()
        for i in range(cfg.garp_count):
            if not self.owned:
                return
            sent = await loop.run_in_executor(None, self.announcer.announce)
            metrics.GARP_SENT.labels(self.name).inc(sent)
            if i + 1 < cfg.garp_count:
                await asyncio.sleep(cfg.garp_interval)
        while cfg.garp_refresh > 0 and self.owned:
            await asyncio.sleep(cfg.garp_refresh)
            if self.owned:
                metrics.GARP_SENT.labels(self.name).inc(
                    await loop.run_in_executor(None, self.announcer.announce))

    async def release(self, reason: str, to: str = "") -> None:
        """Stop answering, drop the address, then the lock (in that order)."""
        was = self.owned
        self.fence()
        if was:
            metrics.RELEASES.labels(self.name, reason).inc()
            self.log("vip_released", vip=self.name, reason=reason, to=to or None)
        if not self.node.connected:
            return
        zk = self.node.zk
        try:
            if await self._lock_is_mine():
                record = json.dumps({"node": self.node.config.node, "at": time.time(),
                                     "reason": reason}).encode()
                try:
                    await wait(zk.create_async(self.released_path, record, makepath=True))
                except NodeExistsError:
                    await wait(zk.set_async(self.released_path, record))
                await wait(zk.delete_async(self.owner_path))
        except NoNodeError:
            pass
        self.node.publish()

    def fence(self) -> None:
        """Drop the address now; from any thread (kazoo's, when the session
        is suspended: ownership is in doubt)."""
        self.owned = False
        self.pinned = False
        self.node.hooks_released(self)
        self.holder.release()
        metrics.VIP_OWNED.labels(self.name).set(0)
        garp = self._garp
        if garp is not None:
            self._garp = None
            self.node.loop.call_soon_threadsafe(garp.cancel)

    async def _withdraw(self) -> None:
        if self.candidate is None:
            return
        try:
            await wait(self.node.zk.delete_async(f"{self.candidates}/{self.candidate}"))
        except NoNodeError:
            pass
        self.candidate = None

    # -- handover (hasip failover / drain) ----------------------------------------------

    async def _read_watched(self, path: str) -> bytes | None:
        """A znode's data (None: absent), watched either way; the common case
        (absent) costs one round trip."""
        zk = self.node.zk
        if await wait(zk.exists_async(path, watch=self.watch())) is None:
            return None
        try:
            data, _ = await wait(zk.get_async(path))
        except NoNodeError:
            return None   # gone meanwhile: the exists watch fires
        return bytes(data or b"")

    async def _handover_target(self) -> str | None:
        data = await self._read_watched(self.handover_path)
        if data is None:
            return None
        try:
            target = json.loads(data or b"{}").get("to")
        except ValueError:
            return None
        return str(target) if target else None

    async def _ready_node(self) -> str | None:
        data = await self._read_watched(self.ready_path)
        return data.decode() if data else None

    async def _ready_for_handover(self) -> None:
        """We are the target: say so (the owner then lets go)."""
        try:
            await wait(self.node.zk.create_async(self.ready_path,
                                                 self.node.config.node.encode(),
                                                 ephemeral=True, makepath=True))
            self.log("handover_ready", vip=self.name)
        except NodeExistsError:
            pass

    async def _clear_handover(self) -> None:
        for path in (self.ready_path, self.handover_path):
            try:
                await wait(self.node.zk.delete_async(path))
            except NoNodeError:
                pass
        self.handover_since = None

    async def request_handover(self, to: str) -> None:
        data = json.dumps({"to": to, "at": time.time()}).encode()
        try:
            await wait(self.node.zk.create_async(self.handover_path, data, makepath=True))
        except NodeExistsError:
            await wait(self.node.zk.set_async(self.handover_path, data))

    async def _drain_handover(self, order: list[Any], handover_to: str | None) -> bool:
        """Draining owner: hand the VIP to the next candidate, so the gap is a
        handover's. False when nobody can take it, or it took too long: then
        the VIP is simply released."""
        others = [c for c in order if c.node != self.node.config.node]
        if not others or self.handover_failed:
            return False
        if handover_to is None:
            await self.request_handover(others[0].node)
        return True
