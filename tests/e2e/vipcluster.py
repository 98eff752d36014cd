"""A VIP cluster in network namespaces, shared by the cluster tests and
``bench/failover.py``: three hasip nodes, two VIPs, a real ZooKeeper (one
server or an ensemble of three) on its own bridge, a client namespace and a
SIPp answering node standing in for Asterisk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hasip.demo.node import write_secret
from hasip.demo.sipp import Sipp, sipp_binary
from hasip.demo.zookeeper import ZooKeeper, zookeeper_missing
from tests.e2e.conftest import write_config
from tests.e2e.netlab import Lab, netns_missing

ROOT = Path(__file__).resolve().parents[2]
ZK_IP = "198.19.0.10"
CLIENT_IP = "198.18.0.50"
ASTERISK_IP = "198.18.0.60"        # a SIPp answering node stands in for Asterisk
VIP_A, VIP_B = "198.18.0.100", "198.18.0.101"
# VIP_A prefers n1, then n2, then n3; VIP_B prefers n2, n3, n1 (active-active).
PRIORITIES = {"n1": (100, 10), "n2": (50, 100), "n3": (10, 50)}


class Cluster:
    def __init__(self, lab: Lab, zk: ZooKeeper, workdir: Path, replication: bool = False,
                 users_file: Path | None = None) -> None:
        self.lab = lab
        self.zk = zk
        self.workdir = workdir
        self.replication = replication
        self.users_file = users_file
        self.replication_extra: dict = {}     # more [replication] keys for every node
        self.extra_listen: list[str] = []     # more sip.listen entries for every node
        self.extra_config: dict[str, dict] = {}   # more sections (keys) for every node
        # auth.trusted of every node: the whole LAN unless a test says otherwise.
        self.trusted = ["198.18.0.0/24"]
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        # Every node's control API token, and the cluster's ZooKeeper password.
        self.token_file = workdir / "control.token"
        self.token = write_secret(self.token_file)
        self.zk_password_file = workdir / "zookeeper.password"
        write_secret(self.zk_password_file)
        self.asterisk = Sipp("uas.xml", 5080, workdir, local_ip=ASTERISK_IP,
                             netns=lab.ns("ast")).start()

    def start_node(self, name: str, destinations: list[str] | None = None,
                   replication: dict | None = None) -> None:
        index = int(name[1:])
        prio_a, prio_b = PRIORITIES[name]
        cfg = {
            "node": {"name": name},
            "sip": {"listen": [f"udp:{VIP_A}:5060", f"udp:{VIP_B}:5060",
                               f"udp:198.18.0.1{index}:5060", *self.extra_listen]},
            "metrics": {"listen": "127.0.0.1:9060"},
            "control": {"listen": "127.0.0.1:9061", "token_file": str(self.token_file)},
            "location": {"backend": "memory"},
            "auth": {"trusted": self.trusted},
            "dispatcher": {"destinations": destinations or [f"1 sip:{ASTERISK_IP}:5080"]},
            # Preemption (after 0.5 s) spreads the VIPs over the nodes
            # whatever order they start in.
            "cluster": {"zookeeper": self.zk.hosts, "zookeeper_user": "hasip",
                        "zookeeper_password_file": str(self.zk_password_file),
                        "preempt": True, "preempt_delay": 0.5,
                        "vips": [f"{VIP_A}/24@lan0,priority={prio_a}",
                                 f"{VIP_B}/24@lan0,priority={prio_b}"]},
        }
        auth = cfg["auth"]
        auth["secret"] = "nonces-of-the-whole-cluster"     # any node checks any node's nonce
        if self.users_file is not None:
            auth["users_file"] = str(self.users_file)
        else:
            auth["demo_users"] = True
        if self.replication:
            # Each node's own SQLite store (bindings and CDRs).
            cfg["location"] = {"backend": "sqlite",
                               "sqlite_path": str(self.workdir / f"{name}.sqlite")}
            cfg["replication"] = {"listen": f"198.18.0.1{index}:5090",
                                  "secret": "replication-secret-of-the-cluster",
                                  **self.replication_extra, **(replication or {})}
        for section, values in self.extra_config.items():
            cfg.setdefault(section, {}).update(values)
        path = write_config(self.workdir / f"{name}.toml", cfg)
        self.nodes[name] = self.lab.popen(name, [sys.executable, "-m", "hasip", "run", "-c",
                                                 str(path)], self.workdir / f"{name}.log",
                                          env={**os.environ, "PYTHONPATH": str(ROOT)})

    def log(self, name: str, tail: int = 3000) -> str:
        """The end of ``name``'s log (all of it with ``tail=0``)."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def hasip(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A ``hasip`` operator command, run where ZooKeeper is reachable, with
        the cluster's credentials."""
        return self.lab.run("zk", [sys.executable, "-m", "hasip", *args, "--zookeeper",
                                   self.zk.hosts, "--zookeeper-user", "hasip",
                                   "--zookeeper-password-file", str(self.zk_password_file)],
                            timeout=timeout)

    def dispatcher(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``hasip dispatcher ...`` against ``node``'s control API, with its
        own configuration (address and token)."""
        return self.lab.run(node, [sys.executable, "-m", "hasip", "dispatcher", "-c",
                                   str(self.workdir / f"{node}.toml"), *args], timeout=30)

    def destinations(self, node: str) -> dict[str, str]:
        """``node``'s dispatcher view: URI -> flags ({} while it does not answer)."""
        res = self.dispatcher(node, "list", "--json")
        if res.returncode != 0:
            return {}
        return {d["uri"]: d["flags"] for d in json.loads(res.stdout)
                if not d["draining"]}

    def control(self, node: str, path: str) -> dict:
        """GET ``path`` of ``node``'s control API ({} while it does not answer)."""
        code = ("import urllib.request as u;print(u.urlopen(u.Request("
                f"'http://127.0.0.1:9061{path}',headers={{'Authorization':"
                f"'Bearer {self.token}'}}),timeout=10).read().decode())")
        res = self.lab.run(node, [sys.executable, "-c", code], timeout=30)
        return json.loads(res.stdout) if res.returncode == 0 else {}

    def status(self) -> dict:
        res = self.hasip("status", "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def owners(self) -> dict[str, str | None]:
        """Who holds each VIP's lock with the address up."""
        return {vip: info["owner"] if info["up"] else None
                for vip, info in self.status()["vips"].items()}

    def wait_owners(self, want: dict[str, str], timeout: float = 20.0) -> dict[str, str | None]:
        deadline = time.monotonic() + timeout
        got: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            got = self.owners()
            if all(got.get(v) == n and self.holders(v) == [n] for v, n in want.items()):
                return got
            time.sleep(0.2)
        logs = "\n".join(f"--- {n}\n{self.log(n)}" for n in self.nodes)
        raise AssertionError(f"owners {got}, wanted {want}\n{logs}")

    def holders(self, vip: str) -> list[str]:
        """The nodes whose namespace holds the address now."""
        return [n for n in self.nodes
                if f" {vip}/" in self.lab.run(n, ["ip", "-o", "-4", "addr"]).stdout]

    def client(self, target: str, duration: float, interval: float = 0.02
               ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.lab.ns("client"), sys.executable, "-m",
             "tests.e2e.vipclient", target, "--duration", str(duration), "--interval",
             str(interval)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})

    def arp_mac(self, vip: str) -> str:
        out = self.lab.run("client", ["ip", "neigh", "show", vip]).stdout.split()
        return out[out.index("lladdr") + 1] if "lladdr" in out else ""


def cluster_missing() -> str:
    """Why the cluster cannot run here ("" when it can)."""
    for missing in (netns_missing(), zookeeper_missing(),
                    "" if sipp_binary() else "sipp is not installed (sip-tester)"):
        if missing:
            return missing
    return ""


def vip_cluster(tmp_path: Path, zk_servers: int, replication: bool = False,
                users_file: Path | None = None,
                nodes: tuple[str, ...] = ("n1", "n2", "n3"),
                replication_extra: dict | None = None,
                trusted: list[str] | None = None,
                extra_listen: list[str] | None = None,
                extra_config: dict[str, dict] | None = None,
                before_nodes: Callable[[Cluster], None] | None = None) -> Iterator[Cluster]:
    """The running cluster (``nodes`` started), VIP_A on n1 and VIP_B on n2;
    torn down after. ``before_nodes`` runs once the namespaces are up
    (services the nodes use: rtpengine)."""
    lab = Lab(f"hk{os.getpid() % 10000}").create()
    zk: ZooKeeper | None = None
    c: Cluster | None = None
    try:
        lab.add_host("zk", ctl=ZK_IP)
        for i in (1, 2, 3):
            lab.add_host(f"n{i}", lan=f"198.18.0.1{i}", ctl=f"198.19.0.1{i}")
        lab.add_host("client", lan=CLIENT_IP)
        lab.add_host("ast", lan=ASTERISK_IP)
        zk = ZooKeeper(tmp_path, ZK_IP, count=zk_servers, netns=lab.ns("zk")).start()
        c = Cluster(lab, zk, tmp_path, replication, users_file)
        c.replication_extra = replication_extra or {}
        c.extra_listen = extra_listen or []
        c.extra_config = extra_config or {}
        if before_nodes is not None:
            before_nodes(c)
        if trusted is not None:
            c.trusted = trusted
        for name in nodes:
            c.start_node(name)
        c.wait_owners({VIP_A: "n1", VIP_B: "n2"})
        yield c
    finally:
        if c is not None:
            c.asterisk.stop()
        lab.destroy()
        if zk is not None:
            zk.stop()
