"""Call detail records: a row per ended dialog, written behind to the
location store's database (SQLite by default, MySQL when configured) --
the seed's statistics store.

Written once in the cluster: a dialog ended by a BYE, a failure or a
CANCEL is written by the node that saw it end (a LOCAL change); a peer's
end (REMOTE) is not written again; a dialog timed out is timed out by every
node (every node holds every dialog), and only the owner of the socket it
came in on (the VIP's owner, or the node whose own address it is) writes
it. The dialog id is the table's key and the insert ignores a duplicate,
so even two writers (an owner that changed during the timeout) store one
row.
"""

from __future__ import annotations

from collections.abc import Callable

from hasip.dialog.dialog import Dialog
from hasip.dialog.store import Change as DialogChange
from hasip.dialog.store import ended_here
from hasip.location.backend import Backend
from hasip.storage.writebehind import QueueMetrics, WriteBehind
from hasip.telemetry import metrics

CDR_METRICS = QueueMetrics(metrics.CDR_QUEUE, metrics.CDR_WRITES, metrics.CDR_WRITE_ERRORS,
                           metrics.CDR_DROPPED)


class CdrWriter(WriteBehind[Dialog]):
    def __init__(self, backend: Backend, max_pending: int = 1_000_000, batch: int = 500,
                 interval: float = 0.1) -> None:
        super().__init__("cdr", backend.name, backend.write_cdrs, _dialog_id, CDR_METRICS,
                         max_pending, batch, interval=interval)
        # Whether this node owns a socket ("udp:VIP:port"): set by the proxy,
        # which knows its listeners and which VIPs it holds.
        self.owns: Callable[[str], bool] = lambda _socket: True
        # The media relay queues a relayed call's CDR itself, once
        # rtpengine's figures for it are in (hasip/proxy/media.py).
        self.media_first = False

    def on_dialog(self, change: DialogChange) -> None:
        """Dialog store subscriber: queue the CDR of a dialog that ended here."""
        d = change.dialog
        if ended_here(change, self.owns) and not (d.media and self.media_first):
            self.queue(d)


def _dialog_id(d: Dialog) -> str:
    return d.id
