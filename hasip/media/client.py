"""The asyncio side of the ng protocol: one UDP socket to every rtpengine
instance, the request table (hasip/media/ng.py) driven by the loop's clock,
pings that take instances out and back (hasip/media/instances.py), and
the metrics. The routing script's media hook awaits its coroutines through
the engine's waits; nothing here knows SIP."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hasip.media import commands
from hasip.media.instances import Instance, Instances, parse_instance
from hasip.media.ng import NgAnswer, NgError, NgRequests, NgTimeout, Pending
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger

log = get_logger("hasip.media")


class NoInstance(Exception):
    """No rtpengine instance is up."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: MediaClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.client._received(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a dead rtpengine: the request times out.
        pass


class MediaClient:
    """``rtpengine``: the ng sockets ("udp:HOST:PORT[=WEIGHT]", the
    config's media.rtpengine); the rest as in hasip.app.config.MediaConfig."""

    def __init__(self, rtpengine: list[str], timeout: float = 1.5, retransmit: float = 0.2,
                 ping_interval: float = 2.0, failures: int = 2, successes: int = 1) -> None:
        self.instances = Instances(
            [parse_instance(text, f"media.rtpengine[{i}]") for i, text in enumerate(rtpengine)],
            failures=failures, successes=successes)
        self.requests = NgRequests(retransmit=retransmit, timeout=timeout)
        self.ping_interval = ping_interval
        self._names = {i.address: i.name for i in self.instances.items}
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        for inst in self.instances.items:
            metrics.MEDIA_UP.labels(inst.name).set(1)

    @property
    def enabled(self) -> bool:
        return bool(self.instances.items)

    async def start(self) -> None:
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        family = 10 if any(":" in i.host for i in self.instances.items) else 2
        local = ("::", 0) if family == 10 else ("0.0.0.0", 0)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=local)
        self._transport = transport
        self._tasks.append(loop.create_task(self._ping_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for p in list(self.requests.pending.values()):
            if isinstance(p.waiter, asyncio.Future) and not p.waiter.done():
                p.waiter.set_exception(NgError("media client stopped"))
        self.requests.pending.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- requests -----------------------------------------------------------------

    async def command(self, inst: Instance, cmd: dict[str, Any]) -> NgAnswer:
        """Send ``cmd`` to ``inst`` and wait for its answer; NgTimeout or
        NgError (rtpengine said ``error``, or its answer was not ng). No
        answer, or one that is not ng, counts against the instance's
        health; any ng answer, ``error`` included, shows it alive."""
        loop = self._loop
        transport = self._transport
        if loop is None or transport is None:
            raise NgError("media client not started")
        future: asyncio.Future[NgAnswer] = loop.create_future()
        now = loop.time()
        p = self.requests.request(inst.address, cmd, now, future)
        transport.sendto(p.datagram, inst.address)
        self._arm()
        name = p.command
        try:
            answer = await future
        except (NgTimeout, NgError) as exc:
            result = "timeout" if isinstance(exc, NgTimeout) else "bad_answer"
            metrics.MEDIA_REQUESTS.labels(inst.name, name, result).inc()
            self._failed(inst, str(exc))
            raise
        except asyncio.CancelledError:
            self.requests.cancel(p.cookie)
            raise
        metrics.MEDIA_LATENCY.labels(name).observe(loop.time() - now)
        if self.instances.succeeded(inst):
            self._came_back(inst)
        if not answer.ok:
            metrics.MEDIA_REQUESTS.labels(inst.name, name, "error").inc()
            raise NgError(f"rtpengine {inst.name} refused {name}: {answer.error_reason}")
        metrics.MEDIA_REQUESTS.labels(inst.name, name, "ok").inc()
        return answer

    def _received(self, data: bytes, source: tuple[str, int]) -> None:
        loop = self._loop
        if loop is None:
            return
        event = self.requests.receive(data, source, loop.time())
        if event is None:
            return
        self._settle(event.pending, event.answer, event.error)

    @staticmethod
    def _settle(p: Pending, answer: NgAnswer | None, error: Exception | None) -> None:
        future = p.waiter
        if not isinstance(future, asyncio.Future) or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(answer)

    def _arm(self) -> None:
        loop = self._loop
        due = self.requests.next_deadline()
        if loop is None or due is None:
            return
        if self._timer is not None:
            if self._timer.when() <= due:
                return
            self._timer.cancel()
        self._timer = loop.call_at(due, self._poll)

    def _poll(self) -> None:
        self._timer = None
        loop = self._loop
        transport = self._transport
        if loop is None or transport is None:
            return
        for event in self.requests.poll(loop.time()):
            p = event.pending
            if event.send:
                metrics.MEDIA_RETRANSMISSIONS.labels(
                    self._names.get(p.target, f"udp:{p.target[0]}:{p.target[1]}")).inc()
                transport.sendto(p.datagram, p.target)
            else:
                self._settle(p, None, event.error)
        self._arm()

    # -- health ---------------------------------------------------------------------

    def _failed(self, inst: Instance, reason: str) -> None:
        if self.instances.failed(inst, reason):
            metrics.MEDIA_UP.labels(inst.name).set(0)
            log.warning("media_instance_down", instance=inst.name, reason=reason)

    def _came_back(self, inst: Instance) -> None:
        metrics.MEDIA_UP.labels(inst.name).set(1)
        log.info("media_instance_up", instance=inst.name)

    async def ping(self, inst: Instance) -> bool:
        try:
            await self.command(inst, commands.ping())
            return True
        except (NgError, NgTimeout):
            return False

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.gather(*(self.ping(i) for i in self.instances.items))
            await asyncio.sleep(self.ping_interval)

    # -- what the media hook uses ----------------------------------------------------------

    async def offer(self, call_id: str, cmd: dict[str, Any], sticky: str = ""
                    ) -> tuple[Instance, NgAnswer]:
        """An offer to the call's instance; a new call whose instance times
        out moves on to the next one up (a re-offer stays where it is)."""
        tried: set[str] = set()
        while True:
            inst = self.instances.choose(call_id, sticky, tried)
            if inst is None:
                raise NoInstance("no rtpengine instance is up" if not tried else
                                 f"no rtpengine instance answered ({', '.join(sorted(tried))})")
            tried.add(inst.name)
            try:
                return inst, await self.command(inst, cmd)
            except NgTimeout:
                if not sticky:
                    self._abandon(inst, cmd)
                if sticky:
                    raise           # the call's sessions are there: no other has them

    def _abandon(self, inst: Instance, cmd: dict[str, Any]) -> None:
        """A new call's offer timed out on ``inst``: a slow rtpengine may
        still make its session when it gets to the offer, so a delete
        follows it (and is taken after it, in order)."""
        loop = self._loop
        if loop is None:
            return

        async def delete() -> None:
            with contextlib.suppress(NgError, NgTimeout):
                await self.command(inst, commands.delete(str(cmd.get("call-id", "")),
                                                         str(cmd.get("from-tag", ""))))

        task = loop.create_task(delete())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def on(self, name: str, cmd: dict[str, Any]) -> NgAnswer:
        """A command for a call already on the instance called ``name``."""
        inst = self.instances.by_name(name)
        if inst is None:
            raise NgError(f"no rtpengine instance {name}")
        return await self.command(inst, cmd)
