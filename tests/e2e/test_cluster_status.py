"""The operator's view of the cluster (``hasip status``, and the snapshot
``failover`` and ``drain`` poll) is read from a ZooKeeper tree that the
nodes change under it: a handover request is deleted when its VIP has moved,
an owner's znode vanishes with its session, a node leaves. Reading it must
never fail on a znode that was there a moment ago (CI stop 22: ``drain``
died with NoNodeError when a handover znode went between its exists() and
its get())."""

from __future__ import annotations

import json
import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError

from hasip.cli.cluster import snapshot
from hasip.demo.zookeeper import ZooKeeper


def test_snapshot_of_a_tree_that_changes_under_it(zookeeper: ZooKeeper) -> None:
    root = "/churn"
    vips = [f"198.18.0.{n}" for n in range(100, 104)]
    writer, reader = (KazooClient(hosts=zookeeper.hosts, timeout=5.0) for _ in range(2))
    writer.start(timeout=15)
    reader.start(timeout=15)
    stop = threading.Event()
    churned = [0]

    def churn() -> None:
        """Handover, owner and member znodes appear and go, as fast as
        ZooKeeper takes them, until told to stop (bounded by the reader)."""
        owner = json.dumps({"node": "n1", "since": 1.0, "up": True}).encode()
        while not stop.is_set():
            for vip in vips:
                for path, data in ((f"{root}/vips/{vip}/handover", b'{"to": "n2"}'),
                                   (f"{root}/vips/{vip}/owner", owner),
                                   (f"{root}/vips/{vip}/candidates/n1", b""),
                                   (f"{root}/nodes/n1", b'{"healthy": true}')):
                    try:
                        writer.create(path, data, makepath=True)
                    except NodeExistsError:
                        writer.delete(path)
            churned[0] += 1

    thread = threading.Thread(target=churn, daemon=True)
    try:
        writer.create(f"{root}/drain", b"", makepath=True)
        thread.start()
        reads = 0
        deadline = time.monotonic() + 8.0
        while reads < 400 and time.monotonic() < deadline:
            snap = snapshot(reader, root)
            assert set(snap["vips"]) <= set(vips)
            for info in snap["vips"].values():
                assert info["owner"] in (None, "n1")
                assert info["handover_to"] in (None, "n2")
            reads += 1
        print(f"{reads} snapshots while the tree changed {churned[0]} times")
        assert reads >= 100 and churned[0] >= 20
    finally:
        stop.set()
        thread.join(5)
        for kz in (writer, reader):
            kz.stop()
            kz.close()
    assert not thread.is_alive()
