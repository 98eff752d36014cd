"""Replication under load: registrations and calls at a steady rate
through one node of three, and how late their changes reach the other two
(target: p99 under 50 ms on loopback).

A ZooKeeper server and three hasip nodes on loopback with replication on;
SIPp phones register (digest, distinct users) and a SIPp caller places
calls (answered by a SIPp node behind the dispatcher) through n1. The lag
is n2's and n3's ``hasip_replication_lag_seconds{peer="n1"}`` histogram:
from n1 sending a change to the peer applying it. At the end every node's
location and dialog digests are compared.

Run: .venv/bin/python bench/replication.py [--registrations 200] [--calls 50] [--duration 10]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hasip.demo.node import NodeProcess, write_secret  # noqa: E402
from hasip.demo.node import control_get as control  # noqa: E402
from hasip.demo.sipp import Sipp  # noqa: E402
from hasip.demo.zookeeper import ZooKeeper, zookeeper_missing  # noqa: E402
from tests.e2e.conftest import free_port, write_config  # noqa: E402

NODES = ("n1", "n2", "n3")


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile from cumulative (upper bound, count) buckets, linear
    inside a bucket (as Prometheus' histogram_quantile)."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    want = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= want:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (want - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def lag_buckets(metrics_port: int, peer: str) -> list[tuple[float, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = []
    for m in re.finditer(r'^hasip_replication_lag_seconds_bucket\{le="([^"]+)",peer="'
                         + re.escape(peer) + r'"\} (\S+)$', text, re.M):
        found.append((float(m.group(1)), float(m.group(2))))
    return sorted(found)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--registrations", type=int, default=200, help="per second")
    p.add_argument("--calls", type=int, default=50, help="per second")
    p.add_argument("--duration", type=float, default=10.0)
    args = p.parse_args()
    missing = zookeeper_missing()
    if missing:
        sys.exit(f"cannot run: {missing}")
    with tempfile.TemporaryDirectory(prefix="hasip-repl-") as tmp:
        work = Path(tmp)
        phones = int(args.registrations * args.duration)
        users, inf = work / "users.htdigest", work / "phones.csv"
        with open(users, "w") as u, open(inf, "w") as f:
            f.write("SEQUENTIAL\n")
            for n in range(30000, 30000 + phones):
                u.write(f"{n}:hasip:{hashlib.md5(f'{n}:hasip:pw{n}'.encode()).hexdigest()}\n")
                f.write(f"{n};[authentication username={n} password=pw{n}]\n")
        zk = ZooKeeper(work, "127.0.0.1", base_port=free_port()).start()
        token = write_secret(work / "control.token")
        write_secret(work / "zookeeper.password")
        procs: list[NodeProcess] = []
        sipps: list[Sipp] = []
        try:
            answer_port = free_port()
            sipps.append(Sipp("uas.xml", answer_port, work).start())
            ports = {n: [free_port() for _ in range(4)] for n in NODES}
            for name in NODES:
                sip, metrics_port, ctl, repl = ports[name]
                path = write_config(work / f"{name}.toml", {
                    "node": {"name": name},
                    "sip": {"listen": [f"udp:127.0.0.1:{sip}"]},
                    "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
                    "control": {"listen": f"127.0.0.1:{ctl}",
                                "token_file": str(work / "control.token")},
                    "location": {"backend": "sqlite",
                                 "sqlite_path": str(work / f"{name}.sqlite")},
                    "auth": {"users_file": str(users), "secret": "bench-nonce-secret",
                             "trusted": ["127.0.0.2/32"]},
                    "dispatcher": {"destinations": [f"1 sip:127.0.0.1:{answer_port}"]},
                    "cluster": {"zookeeper": zk.hosts, "zookeeper_user": "bench",
                                "zookeeper_password_file": str(work / "zookeeper.password")},
                    "replication": {"listen": f"127.0.0.1:{repl}",
                                    "secret": "bench-replication-secret"},
                })
                procs.append(NodeProcess(path, work, "127.0.0.1", sip,
                                         metrics_url=f"http://127.0.0.1:{metrics_port}/metrics"
                                         ).start(ready_timeout=60))
            n1 = ports["n1"][0]
            calls = int(args.calls * args.duration)
            print(f"{phones} registrations at {args.registrations}/s and {calls} calls at "
                  f"{args.calls}/s through n1 ...", flush=True)
            reg = Sipp("register_many.xml", free_port(), work, remote=f"127.0.0.1:{n1}",
                       calls=phones, rate=args.registrations,
                       extra=("-inf", str(inf), "-key", "contact_port", "5999", "-key",
                              "expires", "3600")).start()
            caller = Sipp("uac.xml", free_port(), work, remote=f"127.0.0.1:{n1}", calls=calls,
                          rate=args.calls, local_ip="127.0.0.2").start()
            sipps += [reg, caller]
            reg.wait(args.duration * 4 + 30)
            caller.wait(args.duration * 4 + 30)
            time.sleep(1.0)
            ok_regs, ok_calls = reg.counter("SuccessfulCall(C)"), caller.counter(
                "SuccessfulCall(C)")
            print(f"registered {ok_regs}/{phones}, calls completed {ok_calls}/{calls}")
            for name in ("n2", "n3"):
                buckets = lag_buckets(ports[name][1], "n1")
                count = buckets[-1][1] if buckets else 0
                print(f"{name}: {count:.0f} frames from n1, lag p50 "
                      f"{quantile(buckets, 0.5) * 1000:.2f} ms, p99 "
                      f"{quantile(buckets, 0.99) * 1000:.2f} ms")
            views = {n: (control(ports[n][2], "/location", token),
                         control(ports[n][2], "/dialogs", token)) for n in NODES}
            same = (len({v[0]["digest"] for v in views.values()}) == 1
                    and len({v[1]["digest"] for v in views.values()}) == 1)
            print(f"bindings {[v[0]['bindings'] for v in views.values()]}, dialogs "
                  f"{[v[1]['dialogs'] for v in views.values()]}: "
                  f"{'equal on every node' if same else 'DIFFERENT'}")
        finally:
            for s in sipps:
                s.stop()
            for proc in procs:
                proc.kill()
            zk.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
