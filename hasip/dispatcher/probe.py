"""Active health checks: an OPTIONS to every probed destination each
``dispatcher.probe_interval``; no accepted answer within
``dispatcher.probe_timeout`` (independent of the transaction timers) is a
failure, an accepted one a success, both fed to the destination's health
state machine (Kamailio's ds_ping_interval, ds_probing_threshold,
ds_inactive_threshold, ds_ping_reply_codes).

Probes are stateless datagrams or stream writes; answers are matched by
their branch, which starts with ``BRANCH_PREFIX``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from hasip.dispatcher.destinations import Destination
from hasip.dispatcher.dispatcher import Dispatcher
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger
from hasip.transport.base import Destination as Address
from hasip.util.tasks import cancel

log = get_logger("hasip.probe")

BRANCH_PREFIX = "z9hG4bKdp"

# Where to send a destination's probes (its ``socket`` attribute honoured).
Resolve = Callable[[Destination], Address | None]
Send = Callable[[bytes, Address], object]


class Prober:
    def __init__(self, dispatcher: Dispatcher, resolve: Resolve, send: Send, interval: float,
                 timeout: float, accepted: frozenset[int]) -> None:
        self.dispatcher = dispatcher
        self.resolve = resolve
        self.send = send
        self.interval = interval
        self.timeout = timeout
        self.accepted = accepted
        # branch -> (destination, sent at)
        self.outstanding: dict[str, tuple[Destination, float]] = {}
        self._tag = os.urandom(4).hex()
        self._counter = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0 and self.dispatcher.sets:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.expire(loop.time())
                for dset in self.dispatcher.sets.values():
                    for dest in dset.destinations:
                        if (dest.probing and dest.state != "D"
                                and self.dispatcher.probes_mine(dest)):
                            self.probe(dest, loop.time())
            except Exception:
                log.error("probe_round_failed", exc_info=True)
            await asyncio.sleep(min(self.interval, self.timeout) / 2)

    def probe(self, dest: Destination, now: float) -> None:
        """Send an OPTIONS unless one is in flight or the last was recent."""
        if dest.probe_due > now:
            return
        dest.probe_due = now + self.interval
        addr = self.resolve(dest)
        if addr is None:
            self.dispatcher.failed(dest, "unresolvable")
            return
        self._counter += 1
        branch = f"{BRANCH_PREFIX}{self._tag}{self._counter:x}"
        sent_by = addr.listener.sent_by
        target = dest.uri.text
        data = (f"OPTIONS {target} SIP/2.0\r\n"
                f"Via: SIP/2.0/{addr.transport.upper()} {sent_by};branch={branch};rport\r\n"
                f"From: <sip:dispatcher@{sent_by}>;tag={self._tag}\r\n"
                f"To: <{target}>\r\n"
                f"Call-ID: {branch}@{sent_by}\r\n"
                f"CSeq: 1 OPTIONS\r\n"
                f"Max-Forwards: 70\r\n"
                f"Content-Length: 0\r\n\r\n").encode("latin-1", "replace")
        self.outstanding[branch] = (dest, now)
        self.send(data, addr)
        metrics.DS_PROBES.inc("sent")

    def answered(self, branch: str, status: int, now: float) -> bool:
        """A response to one of our probes (True when it was one)."""
        entry = self.outstanding.pop(branch, None)
        if entry is None:
            return False
        dest, sent = entry
        if status < 200:
            self.outstanding[branch] = entry  # provisional: wait for the final one
            return True
        metrics.DS_PROBE_LATENCY.observe(now - sent)
        dest.probe_rtt = now - sent
        if status in self.accepted or 200 <= status < 300:
            metrics.DS_PROBES.inc("ok")
            self.dispatcher.succeeded(dest, by_probe=True)
        else:
            metrics.DS_PROBES.inc("rejected")
            self.dispatcher.failed(dest, f"probe {status}")
        return True

    def expire(self, now: float) -> None:
        """Probes unanswered for ``timeout`` are failures."""
        late = [b for b, (_, sent) in self.outstanding.items() if now - sent >= self.timeout]
        for branch in late:
            dest, _ = self.outstanding.pop(branch)
            metrics.DS_PROBES.inc("timeout")
            self.dispatcher.failed(dest, "probe timeout")
