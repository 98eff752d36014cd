"""CDRs are written once in the cluster: the node that saw a dialog end
writes it, a peer's end is not written again, a timeout is written by the
owner of the dialog's socket only, and a duplicate write stores one row
(real SQLite)."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

from hasip.dialog.cdr import CdrWriter
from hasip.dialog.dialog import ENDED_BYE
from hasip.dialog.store import LOCAL, DialogStore
from hasip.location.backend import SqliteBackend

VIP = "udp:198.18.0.100:5060"


def test_each_ended_dialog_is_written_once(tmp_path: Path) -> None:
    async def run() -> list[tuple[str, str]]:
        backend = SqliteBackend(str(tmp_path / "shared.sqlite"))
        await backend.open()
        clock = [1000.0]
        owner, other = DialogStore("n1", 60, lambda: clock[0]), DialogStore("n2", 60,
                                                                             lambda: clock[0])
        writers = {}
        for store, owns in ((owner, True), (other, False)):
            w = CdrWriter(backend)
            w.owns = lambda _s, owns=owns: owns
            store.subscribe(w.on_dialog)
            writers[store.node] = w
        # replication as the replicator does it: a copy of each LOCAL change
        owner.subscribe(lambda c: c.source == LOCAL and other.apply(c.op, replace(c.dialog)))
        byed = owner.create("c1", "f1", "sip:a@x", "sip:b@x", "sip:b@x", socket=VIP)
        timed = owner.create("c2", "f2", "sip:a@x", "sip:b@x", "sip:b@x", socket=VIP)
        assert byed is not None and timed is not None
        owner.confirm(byed, "t1", "sip:b@y", ())
        clock[0] += 5
        owner.end(byed, ENDED_BYE)               # n1 saw the BYE: n1 writes, n2 does not
        clock[0] += 100                          # c2 times out on both nodes
        assert [d.id for d in other.expire()] == [timed.id]
        assert [d.id for d in owner.expire()] == [timed.id]
        assert list(writers["n1"].pending) == [byed.id, timed.id]
        assert list(writers["n2"].pending) == []
        # two writers of one record (an owner change during the timeout): one row
        writers["n2"].queue(timed)
        for w in writers.values():
            assert await w.write_batch()
        await backend.close()
        db = sqlite3.connect(tmp_path / "shared.sqlite")
        return db.execute("SELECT dialog_id, end_reason FROM cdr ORDER BY started").fetchall()

    rows = asyncio.run(run())
    assert [r[1] for r in rows] == ["bye", "timeout"]
