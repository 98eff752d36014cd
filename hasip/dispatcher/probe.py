"""Active health checks: an OPTIONS to every probed destination each
``dispatcher.probe_interval``; no accepted answer within
``dispatcher.probe_timeout`` (independent of the transaction timers) is a
failure, an accepted one a success, both fed to the destination's health
state machine (Kamailio's ds_ping_interval, ds_probing_threshold,
ds_inactive_threshold, ds_ping_reply_codes).

Probes go out through the node's own-request table (hasip/proxy/uac.py),
which hears their answers and their deadlines; the shell calls
:meth:`Prober.round` on its clock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from hasip.dispatcher.destinations import Destination
from hasip.dispatcher.dispatcher import Dispatcher
from hasip.proxy.uac import OwnRequests
from hasip.telemetry import metrics
from hasip.transport.base import Destination as Address

# Where to send a destination's probes (its ``socket`` attribute honoured).
Resolve = Callable[[Destination], Address | None]


class Prober:
    def __init__(self, dispatcher: Dispatcher, resolve: Resolve, own: OwnRequests,
                 interval: float, timeout: float, accepted: frozenset[int]) -> None:
        self.dispatcher = dispatcher
        self.resolve = resolve
        self.own = own
        self.interval = interval
        self.timeout = timeout
        self.accepted = accepted

    @property
    def period(self) -> float:
        """How often the shell calls :meth:`round` (0: never). Sets may come
        later (the control API, the cluster's shared sets): the rounds run
        from the start, and cost nothing while there is no destination."""
        if self.interval <= 0:
            return 0.0
        return min(self.interval, self.timeout) / 2

    def round(self, now: float) -> int:
        """Probe every destination that is due and ours to probe."""
        sent = 0
        for dset in self.dispatcher.sets.values():
            for dest in dset.destinations:
                if (dest.probing and dest.state != "D"
                        and self.dispatcher.probes_mine(dest)):
                    sent += self.probe(dest, now)
        return sent

    def probe(self, dest: Destination, now: float) -> int:
        """Send an OPTIONS unless one is in flight or the last was recent."""
        if dest.probe_due > now:
            return 0
        dest.probe_due = now + self.interval
        addr = self.resolve(dest)
        if addr is None:
            self.dispatcher.failed(dest, "unresolvable")
            return 0
        sent_by = addr.listener.sent_by
        if not self.own.send("OPTIONS", dest.uri.text, addr, now, timeout=self.timeout,
                             on_result=functools.partial(self._result, dest, now),
                             from_=f"<sip:dispatcher@{sent_by}>;tag={self.own.tag}"):
            return 0
        metrics.DS_PROBES.inc("sent")
        return 1

    def _result(self, dest: Destination, sent: float, status: int | None, now: float) -> None:
        if status is None:
            metrics.DS_PROBES.inc("timeout")
            self.dispatcher.failed(dest, "probe timeout")
            return
        metrics.DS_PROBE_LATENCY.observe(now - sent)
        dest.probe_rtt = now - sent
        if status in self.accepted or 200 <= status < 300:
            metrics.DS_PROBES.inc("ok")
            self.dispatcher.succeeded(dest, by_probe=True)
        else:
            metrics.DS_PROBES.inc("rejected")
            self.dispatcher.failed(dest, f"probe {status}")
