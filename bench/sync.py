"""Sync-on-join benchmark: how fast a joining node pulls the cluster's
registrations from a peer (target: 20,000 per second, the figure
Kamailio's dmq_usrloc documents).

A ZooKeeper server and two hasip nodes on loopback. n1 starts with N
bindings in its SQLite location store (written there before it starts, so
it loads them as a restarted node does); n2 then joins, pulls the full
snapshot from n1 over the replication link (authenticated, MAC'd frames of
``replication.batch`` records), applies every record through the merge rule
and queues it for its own SQLite store. The figure is records per second of
the snapshot transfer as n2 logs it (its ``replication_synced`` event), and
n2's location digest is checked equal to n1's.

Run: .venv/bin/python bench/sync.py [--bindings 10000,50000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hasip.demo.node import NodeProcess, write_secret  # noqa: E402
from hasip.demo.node import control_get as control  # noqa: E402
from hasip.demo.zookeeper import ZooKeeper, zookeeper_missing  # noqa: E402
from hasip.location.backend import SqliteBackend  # noqa: E402
from hasip.location.binding import Binding  # noqa: E402
from tests.e2e.conftest import free_port, write_config  # noqa: E402


async def fill(path: Path, count: int) -> None:
    backend = SqliteBackend(str(path))
    await backend.open()
    now = time.time()
    batch: list[Binding] = []
    for n in range(count):
        batch.append(Binding(f"{100000 + n}@hasip", f"sip:{100000 + n}@198.18.1.{n % 250 + 1}:5060",
                             now + 3600, f"call-{n}", 2, socket="udp:127.0.0.1:5060",
                             user_agent="bench phone", updated=now, version=n + 1, node="n1"))
        if len(batch) == 5000:
            await backend.write(batch, [])
            batch = []
    if batch:
        await backend.write(batch, [])
    await backend.close()


def node_config(work: Path, name: str, zk: str, sip: int, metrics: int, control: int,
                repl: int) -> Path:
    return write_config(work / f"{name}.toml", {
        "node": {"name": name},
        "sip": {"listen": [f"udp:127.0.0.1:{sip}"]},
        "metrics": {"listen": f"127.0.0.1:{metrics}"},
        "control": {"listen": f"127.0.0.1:{control}", "token_file": str(work / "control.token")},
        "location": {"backend": "sqlite", "sqlite_path": str(work / f"{name}.sqlite")},
        "auth": {"demo_users": True, "secret": "bench-nonce-secret-of-the-cluster"},
        "cluster": {"zookeeper": zk, "zookeeper_user": "bench",
                    "zookeeper_password_file": str(work / "zookeeper.password")},
        "replication": {"listen": f"127.0.0.1:{repl}",
                        "secret": "bench-replication-secret"},
    })


def run(count: int) -> tuple[int, float, float, bool]:
    with tempfile.TemporaryDirectory(prefix="hasip-sync-") as tmp:
        work = Path(tmp)
        zk = ZooKeeper(work, "127.0.0.1", base_port=free_port()).start()
        token = write_secret(work / "control.token")
        write_secret(work / "zookeeper.password")
        nodes: list[NodeProcess] = []
        try:
            asyncio.run(fill(work / "n1.sqlite", count))
            ports = {n: [free_port() for _ in range(4)] for n in ("n1", "n2")}
            for name in ("n1", "n2"):
                sip, metrics, ctl, repl = ports[name]
                path = node_config(work, name, zk.hosts, sip, metrics, ctl, repl)
                node = NodeProcess(path, work, "127.0.0.1", sip,
                                   metrics_url=f"http://127.0.0.1:{metrics}/metrics")
                nodes.append(node.start(ready_timeout=120))
            text = nodes[1].log()
            m = re.search(r"event=replication_synced source=\S+ records=(\d+) seconds=([\d.]+) "
                          r"snapshot_seconds=([\d.]+) per_second=(\d+)", text)
            if not m:
                raise RuntimeError(f"n2 did not log its sync: {text[-2000:]}")
            one = control(ports["n1"][2], "/location", token)
            two = control(ports["n2"][2], "/location", token)
            same = one["digest"] == two["digest"] and two["bindings"] == count
            return int(m.group(1)), float(m.group(3)), float(m.group(4)), same
        finally:
            for node in nodes:
                node.kill()
            zk.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bindings", default="10000,50000,100000")
    args = p.parse_args()
    missing = zookeeper_missing()
    if missing:
        sys.exit(f"cannot run: {missing}")
    print(f"{'bindings':>9} {'records':>8} {'snapshot s':>10} {'records/s':>10}  equal")
    for count in (int(x) for x in args.bindings.split(",")):
        records, seconds, rate, same = run(count)
        print(f"{count:>9} {records:>8} {seconds:>10.3f} {rate:>10.0f}  "
              f"{'yes' if same else 'NO'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
