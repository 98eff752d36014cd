"""keepalive on its own (``python -m keepalive``), in front of a service it
checks with a command, in network namespaces with a real ZooKeeper: the
health check decides who contends (an unhealthy owner gives its VIPs up),
an IPv6 VIP moves with an unsolicited neighbour advertisement, and an
address someone else already answers ARP for is refused (RFC 5227) until
it is free.

Addresses: 198.18.0.0/15 for IPv4 and, for IPv6, 2001:2::/48, the IPv6
benchmarking range (RFC 5180) that is that range's counterpart."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hasip.demo.node import write_secret
from hasip.demo.zookeeper import ZooKeeper, zookeeper_missing
from tests.e2e.netlab import Lab, netns_missing

ROOT = Path(__file__).resolve().parents[2]
ZK_IP = "198.19.0.10"
VIP4 = "198.18.0.100"
VIP6 = "2001:2::100"
TAKEN = "198.18.0.102"      # an address the client namespace already uses


class Pair:
    """Two keepalive nodes, k1 (preferred) and k2, and a client."""

    def __init__(self, lab: Lab, zk: ZooKeeper, workdir: Path) -> None:
        self.lab, self.zk, self.workdir = lab, zk, workdir
        self.password_file = workdir / "zookeeper.password"
        write_secret(self.password_file)

    def start(self, node: str, vips: list[str]) -> None:
        self.lab.popen(node, [sys.executable, "-m", "keepalive", "--node", node,
                              "--zookeeper", self.zk.hosts, "--zookeeper-user", "keepalive",
                              "--zookeeper-password-file", str(self.password_file), "--check",
                              f"test -e {self.workdir / node}.ok", "--check-interval", "0.2",
                              "--fall", "1", "--metrics", "127.0.0.1:9100",
                              *[a for v in vips for a in ("--vip", v)]],
                       self.workdir / f"{node}.log", env={**os.environ, "PYTHONPATH": str(ROOT)})

    def healthy(self, node: str, ok: bool) -> None:
        flag = self.workdir / f"{node}.ok"
        if ok:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def holds(self, node: str, address: str) -> bool:
        out = self.lab.run(node, ["ip", "-o", "addr"]).stdout
        return f" {address}/" in out

    def wait_holder(self, address: str, node: str | None, timeout: float = 15.0) -> None:
        """Until exactly ``node`` (None: nobody) holds ``address``."""
        deadline = time.monotonic() + timeout
        holders: list[str] = []
        while time.monotonic() < deadline:
            holders = [n for n in ("k1", "k2") if self.holds(n, address)]
            if holders == ([node] if node else []):
                return
            time.sleep(0.1)
        raise AssertionError(f"{address} held by {holders}, wanted {node}\n"
                             + "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in ("k1", "k2")))

    def log(self, node: str) -> str:
        path = self.workdir / f"{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def metric(self, node: str, name: str) -> float:
        code = ("import urllib.request,re,sys;t=urllib.request.urlopen("
                "'http://127.0.0.1:9100/metrics',timeout=5).read().decode();"
                f"print(sum(float(v) for v in re.findall(r'^{name}(?:\\{{[^}}]*\\}})? (\\S+)$',"
                "t,re.M)))")
        res = self.lab.run(node, [sys.executable, "-c", code])
        assert res.returncode == 0, res.stderr
        return float(res.stdout)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    for missing in (netns_missing(), zookeeper_missing()):
        if missing:
            pytest.skip(missing)
    lab = Lab(f"hq{os.getpid() % 10000}").create()
    zk: ZooKeeper | None = None
    try:
        lab.add_host("zk", ctl=ZK_IP)
        lab.add_host("k1", lan="198.18.0.11", ctl="198.19.0.11")
        lab.add_host("k2", lan="198.18.0.12", ctl="198.19.0.12")
        lab.add_host("client", lan="198.18.0.50")
        for host, addr in (("k1", "2001:2::11"), ("k2", "2001:2::12"), ("client", "2001:2::50")):
            lab.run(host, ["ip", "addr", "add", f"{addr}/64", "dev", "lan0", "nodad"],
                    check=True)
        zk = ZooKeeper(tmp_path, ZK_IP, netns=lab.ns("zk")).start()
        yield Pair(lab, zk, tmp_path)
    finally:
        lab.destroy()
        if zk is not None:
            zk.stop()


def _neighbour_mac(pair: Pair, address: str) -> str:
    out = pair.lab.run("client", ["ip", "neigh", "show", address]).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else ""


def _touch_from_client(pair: Pair, address: str) -> None:
    """One datagram from the client, so it resolves the address (ARP/ND)."""
    family = "AF_INET6" if ":" in address else "AF_INET"
    pair.lab.run("client", [sys.executable, "-c",
                            f"import socket;s=socket.socket(socket.{family},socket.SOCK_DGRAM);"
                            f"s.sendto(b'x',('{address}',9))"])


def test_health_check_decides_who_holds_the_vips_ipv4_and_ipv6(pair: Pair) -> None:
    vips = [f"{VIP4}/24@lan0,priority={{p}}", f"{VIP6}/64@lan0,priority={{p}}"]
    pair.healthy("k1", True)
    pair.healthy("k2", True)
    pair.start("k1", [v.format(p=100) for v in vips])
    pair.wait_holder(VIP4, "k1")
    pair.wait_holder(VIP6, "k1")
    pair.start("k2", [v.format(p=50) for v in vips])
    time.sleep(1.0)
    assert pair.holds("k1", VIP4) and not pair.holds("k2", VIP4)
    for vip in (VIP4, VIP6):
        _touch_from_client(pair, vip)
    time.sleep(0.5)
    assert _neighbour_mac(pair, VIP6) == pair.lab.mac("k1")
    # k1's service fails its check: k1 gives both VIPs up, k2 takes them,
    # and the client's neighbour entry follows (unsolicited NA, GARP)
    pair.healthy("k1", False)
    pair.wait_holder(VIP4, "k2")
    pair.wait_holder(VIP6, "k2")
    time.sleep(0.5)
    assert _neighbour_mac(pair, VIP6) == pair.lab.mac("k2")
    assert _neighbour_mac(pair, VIP4) == pair.lab.mac("k2")
    # k2 unhealthy too: nobody holds them; k1 back: it takes them
    pair.healthy("k2", False)
    pair.wait_holder(VIP4, None)
    pair.wait_holder(VIP6, None)
    pair.healthy("k1", True)
    pair.wait_holder(VIP4, "k1")
    pair.wait_holder(VIP6, "k1")


@pytest.mark.allow_errors("event=vip_conflict", reason="another host answers ARP for the VIP: "
                         "the conflict is an error for the operator, and this test checks it")
def test_an_address_someone_answers_arp_for_is_refused_until_it_is_free(pair: Pair) -> None:
    pair.lab.run("client", ["ip", "addr", "add", f"{TAKEN}/24", "dev", "lan0"], check=True)
    pair.healthy("k1", True)
    pair.start("k1", [f"{TAKEN}/24@lan0,priority=100"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "vip_conflict" not in pair.log("k1"):
        time.sleep(0.2)
    log = pair.log("k1")
    assert "vip_conflict" in log and f"answered_by={pair.lab.mac('client')}" in log, log[-2000:]
    assert not pair.holds("k1", TAKEN)
    assert pair.metric("k1", "keepalive_conflicts_total") >= 1
    # the other host lets the address go: k1 takes it
    pair.lab.run("client", ["ip", "addr", "del", f"{TAKEN}/24", "dev", "lan0"], check=True)
    pair.wait_holder(TAKEN, "k1")
