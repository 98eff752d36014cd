"""VIP takeover benchmark: three hasip nodes, two VIPs and a real ZooKeeper
in network namespaces (the harness of tests/e2e/test_cluster_netns.py),
shipped timing defaults but preemption after 0.5 s (the nodes' logs go to
the run's temporary directory).

Each run sends OPTIONS to VIP_A every ``--interval`` from the client
namespace and then either
  kill   kill -9 the owner: takeover = first answer after the kill - the kill
  move   ``hasip failover VIP_A --to NODE``: gap = the longest time between
         two consecutive answers around the move (what a client sees), and
         the release-to-takeover gap the command reports
and prints min / median / max over the runs.

Run (root, sipp and ZooKeeper installed, as for the tests):
    .venv/bin/python bench/failover.py [--runs 10] [--kind kill,move]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.vipcluster import VIP_A, Cluster, cluster_missing, vip_cluster  # noqa: E402


def _answers(out: str) -> list[float]:
    return sorted(answered for _, answered in json.loads(out)["answered"])


def _settle(cluster: Cluster, timeout: float = 30.0) -> str:
    """Wait until every node is a candidate for VIP_A and it has an owner
    with the address up; returns the owner."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = cluster.status()["vips"][VIP_A]
        if info["up"] and sorted(info["candidates"]) == sorted(cluster.nodes):
            owner = str(info["owner"])
            if cluster.holders(VIP_A) == [owner]:
                return owner
        time.sleep(0.2)
    raise RuntimeError("the cluster did not settle")


def kill_run(cluster: Cluster, interval: float) -> float:
    """kill -9 of VIP_A's owner -> first answer through VIP_A; the killed
    node is restarted and the cluster settles before the next run."""
    owner = _settle(cluster)
    probe = cluster.client(f"{VIP_A}:5060", 4.0, interval)
    time.sleep(1.0)
    killed_at = time.time()
    cluster.nodes[owner].kill()
    out, _ = probe.communicate(timeout=30)
    after = [t for t in _answers(out) if t > killed_at]
    cluster.nodes[owner].wait(5)
    cluster.start_node(owner)
    _settle(cluster)
    if not after:
        raise RuntimeError("no answer through the VIP after the kill")
    return after[0] - killed_at


def move_run(cluster: Cluster, interval: float) -> tuple[str, float, float]:
    """``hasip failover`` of VIP_A to another node: (the target, the longest
    silence the client saw, the release-to-takeover gap the command
    reported; seconds)."""
    owner = _settle(cluster)
    target = "n3" if owner != "n3" else "n1"
    probe = cluster.client(f"{VIP_A}:5060", 2.0, interval)
    time.sleep(0.7)
    res = cluster.hasip("failover", VIP_A, "--to", target)
    out, _ = probe.communicate(timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"failover failed: {res.stderr or res.stdout}")
    answers = _answers(out)
    silence = max((b - a for a, b in pairwise(answers)), default=0.0)
    m = re.search(r"gap between release and takeover ([\d.]+) ms", res.stdout)
    reported = float(m.group(1)) / 1000 if m else float("nan")
    return target, silence, reported


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{name:<44} min {min(ms):7.1f}  median {statistics.median(ms):7.1f}  "
            f"max {max(ms):7.1f} ms  ({len(ms)} runs)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--kind", default="kill,move", help="kill, move or both")
    p.add_argument("--interval", type=float, default=0.01, help="client OPTIONS interval (s)")
    args = p.parse_args()
    missing = cluster_missing()
    if missing:
        sys.exit(f"cannot run: {missing}")
    kinds = args.kind.split(",")
    kills: list[float] = []
    silences: list[float] = []
    reported: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hasip-failover-") as tmp:
        gen = vip_cluster(Path(tmp), 1)
        cluster = next(gen)
        try:
            for i in range(args.runs):
                if "kill" in kinds:
                    kills.append(kill_run(cluster, args.interval))
                    print(f"run {i + 1}/{args.runs}: kill -9 -> first answer "
                          f"{kills[-1] * 1000:.0f} ms", flush=True)
                if "move" in kinds:
                    target, silence, gap = move_run(cluster, args.interval)
                    silences.append(silence)
                    reported.append(gap)
                    print(f"run {i + 1}/{args.runs}: failover to {target}: client saw "
                          f"{silence * 1000:.0f} ms without an answer, release->takeover "
                          f"{gap * 1000:.1f} ms", flush=True)
        finally:
            gen.close()
    print()
    if kills:
        print(summary("kill -9 of the owner -> first answer", kills))
    if silences:
        print(summary("hasip failover: longest silence (client)", silences))
        print(summary("hasip failover: release -> takeover", reported))


if __name__ == "__main__":
    main()
