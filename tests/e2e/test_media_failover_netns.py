"""Media that survives the death of the node it went through, twice
(issue 15, point 3): the VIP cluster of tests/e2e/vipcluster.py, each node
with its own rtpengine on the VIPs' addresses (ip_nonlocal_bind: every
node's rtpengine binds the VIP ports of calls it does not carry yet). The
rtpengines share their calls through Redis keyspace notifications (each
writes its own database and subscribes to the others'), and Redis is not a
single point of failure: every node runs one, a replica of the one that
holds REDIS_VIP (on the control network), and ``python -m keepalive``
moves that VIP as it moves hasip's, promoting the Redis of the node that
takes it (--on-acquired).

Calls through VIP_A with RTP both ways (the caller plays audio, Asterisk
echoes it). kill -9 of n1 (everything on it: hasip, rtpengine, Redis, its
keepalive): n2 takes VIP_A and REDIS_VIP over, its rtpengine already holds
the calls on the same ports, and the audio resumes. More calls are set up
through n2 to an agent (their state reaches n3 through n2's Redis alone),
then n2 is killed too: n3 carries every call, and each is hung up through
it (the first by their callers, the second by the agent). The gap each call saw at each kill is
measured from a capture at the caller."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import rdpcap

from hasip.demo.sipp import Sipp
from tests.e2e.rtp import Capture, tcpdump_missing, write_stream
from tests.e2e.services import rtpengine_missing
from tests.e2e.vipcluster import (
    ASTERISK_IP,
    CLIENT_IP,
    ROOT,
    VIP_A,
    VIP_B,
    Cluster,
    cluster_missing,
    vip_cluster,
)

FIRST, SECOND = 20, 10                 # calls set up before the first kill, after it
AUDIO_S = 30.0                         # audio each caller has to play
CALLER_MPS, ASTERISK_MP = (16000, 16010), 17000   # SIPp takes mp to mp+3
NG = "127.0.0.1:2223"
REDIS_VIP = "198.19.0.100"             # the Redis primary, on the control network
NODES = ("n1", "n2", "n3")
REDIS_PRIORITY = {"n1": 100, "n2": 50, "n3": 10}


def _missing() -> str:
    for missing in (cluster_missing(), rtpengine_missing(), tcpdump_missing(),
                    "" if shutil.which("redis-server") else "redis-server is not installed"):
        if missing:
            return missing
    return ""


class Media:
    """Per node: Redis (a replica of REDIS_VIP's holder, promoted when the
    node takes REDIS_VIP), keepalive for REDIS_VIP, rtpengine."""

    def __init__(self) -> None:
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {n: [] for n in NODES}

    def start(self, c: Cluster) -> None:
        lab = c.lab
        for name in NODES:
            run = lab.run
            run(name, ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind"])
            self.procs[name].append(lab.popen(name, [
                "redis-server", "--bind", "0.0.0.0", "--port", "6379", "--save", "",
                # a replica's sync writes a dump: in the test's directory
                "--dir", str(c.workdir), "--dbfilename", f"redis-{name}.rdb",
                "--appendonly", "no", "--protected-mode", "no",
                "--replicaof", REDIS_VIP, "6379",
                # rtpengine relies on keyspace notifications
                "--notify-keyspace-events", "KA"], c.workdir / f"redis-{name}.log"))
            deadline = time.monotonic() + 10
            while run(name, ["redis-cli", "ping"]).stdout.strip() != "PONG":
                assert time.monotonic() < deadline, (c.workdir / f"redis-{name}.log").read_text()
                time.sleep(0.1)
        # n1's keepalive first, so that n1's Redis is the primary the
        # first kill takes away (no preemption: it keeps the VIP after)
        for name in NODES:
            self.procs[name].append(lab.popen(name, [
                sys.executable, "-m", "keepalive", "--node", name, "--zookeeper", c.zk.hosts,
                "--zookeeper-user", "hasip", "--zookeeper-password-file",
                str(c.zk_password_file), "--root", "/redis",
                "--vip", f"{REDIS_VIP}/24@ctl0,priority={REDIS_PRIORITY[name]}",
                "--check", "redis-cli ping", "--on-acquired", "redis-cli replicaof no one",
                "--on-released", f"redis-cli replicaof {REDIS_VIP} 6379"],
                c.workdir / f"keepalive-{name}.log", env={**os.environ, "PYTHONPATH": str(ROOT)}))
            if name == "n1":
                self.wait_primary(c, "n1", timeout=40.0)   # ZooKeeper may still be starting
        for i, name in enumerate(NODES, 1):
            others = [f"--subscribe-keyspace={j}" for j in (1, 2, 3) if j != i]
            self.procs[name].append(lab.popen(name, [
                "rtpengine", "--foreground", "--log-stderr", "--config-file=none",
                "--table=-1", f"--listen-ng={NG}", "--port-min=30000", "--port-max=30999",
                "--log-level=6", "--delete-delay=0", "--num-threads=2",
                f"--interface=vip_a/{VIP_A}", f"--interface=vip_b/{VIP_B}",
                f"--redis={REDIS_VIP}:6379/{i}", *others, "--active-switchover",
                # the Redis primary died with the node whose calls this one
                # takes over: fail fast rather than hold the media up
                "--redis-connect-timeout=200", "--redis-cmd-timeout=200"],
                c.workdir / f"rtpengine-{name}.log"))
        # Asterisk echoes the audio back (up before the nodes probe it)
        self.asterisk = Sipp("uas.xml", 5082, c.workdir, local_ip=ASTERISK_IP,
                             netns=lab.ns("ast"), extra=("-rtp_echo", "-mp", str(ASTERISK_MP)))
        self.asterisk.start()
        time.sleep(1.0)

    @staticmethod
    def wait_primary(c: Cluster, name: str, timeout: float = 15.0) -> None:
        """``name``'s Redis is the primary, reached at REDIS_VIP."""
        deadline = time.monotonic() + timeout
        while "role:master" not in c.lab.run(name, ["redis-cli", "-h", REDIS_VIP,
                                                    "info", "replication"]).stdout or (
                "role:master" not in c.lab.run(name, ["redis-cli", "info",
                                                      "replication"]).stdout):
            assert time.monotonic() < deadline, (c.workdir / f"keepalive-{name}.log").read_text()
            time.sleep(0.1)

    @staticmethod
    def subscriptions(c: Cluster, name: str) -> int:
        """How often ``name``'s rtpengine has (re)subscribed to the others'
        keyspace notifications."""
        path = c.workdir / f"rtpengine-{name}.log"
        return path.read_text(errors="replace").count("to subscribe to notifications")

    def wait_resubscribed(self, c: Cluster, name: str, before: int,
                          timeout: float = 15.0) -> None:
        """``name``'s rtpengine listens to the new Redis primary again:
        notifications are not replayed, so a call set up before it does is
        not learnt (rtpengine's keyspace sync, not ours)."""
        deadline = time.monotonic() + timeout
        while self.subscriptions(c, name) <= before:
            assert time.monotonic() < deadline, f"{name}'s rtpengine did not resubscribe"
            time.sleep(0.1)

    def kill(self, c: Cluster, name: str) -> float:
        """kill -9 of everything on ``name``; when it happened."""
        at = time.time()
        c.nodes[name].kill()
        for proc in self.procs[name]:
            proc.kill()
        return at


@pytest.fixture
def media_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, Media]]:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    media = Media()
    yield from ((c, media) for c in vip_cluster(
        tmp_path, 1, replication=True,
        extra_config={"media": {"rtpengine": [f"udp:{NG}"], "relay": "always",
                                "interfaces": {VIP_A: "vip_a", VIP_B: "vip_b"}},
                      "dispatcher": {"destinations": [f"1 sip:{ASTERISK_IP}:5082"]}},
        before_nodes=media.start))


def ng_calls(c: Cluster, node: str) -> list[str]:
    """The Call-IDs ``node``'s rtpengine holds (its own ``list``)."""
    code = ("import os,socket,sys;from hasip.media.bencode import decode,encode;"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);"
            f"s.sendto(b'c1 '+encode({{'command':'list'}}),('127.0.0.1',{NG.split(':')[1]}));"
            "d=decode(s.recv(65536).split(b' ',1)[1]);"
            "print('\\n'.join(x.decode() for x in d[b'calls']))")
    res = c.lab.run(node, [sys.executable, "-c", code], timeout=30)
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line]


def flows(path: Path) -> dict[tuple[int, int], list[float]]:
    """Arrival times of the packets each rtpengine port sent the caller, by
    (that port, the caller's media port): one flow per call."""
    got: dict[tuple[int, int], list[float]] = defaultdict(list)
    for pkt in rdpcap(str(path)):
        if IP in pkt and UDP in pkt and pkt[IP].src == VIP_A:
            got[(pkt[UDP].sport, pkt[UDP].dport)].append(float(pkt.time))
    return got


def gaps_at(times: list[float], at: float) -> float:
    """The longest silence in a call's audio that began between a second
    before ``at`` and four seconds after (inf when it never came back)."""
    around = [b - a for a, b in pairwise(sorted(times)) if at - 1 <= a <= at + 4]
    if not around or max(times) < at + 3:
        return float("inf")
    return max(around)


def figures(gaps: list[float]) -> str:
    return (f"min {min(gaps):.3f} s, median {statistics.median(gaps):.3f} s, "
            f"max {max(gaps):.3f} s")


def test_media_of_established_calls_survives_two_node_deaths(media_cluster, tmp_path) -> None:
    cluster, media = media_cluster
    lab = cluster.lab
    write_stream(tmp_path / "rtp.pcap", int(AUDIO_S / 0.02))
    kills: dict[str, float] = {}

    def caller(scenario: str, port: int, mp: int, calls: int, length_s: float = 0.0,
               service: str = "service") -> Sipp:
        return Sipp(scenario, port, tmp_path, remote=f"{VIP_A}:5060", calls=calls,
                    rate=10, call_length_ms=int(length_s * 1000), local_ip=CLIENT_IP,
                    netns=lab.ns("client"), service=service, extra=("-mp", str(mp)))

    # An agent (1010, registered through VIP_A) who hangs up the second
    # calls 10 s after answering, after n2's death: the callee's BYE too
    # goes through the node that took over.
    reg = Sipp("register.xml", 5084, tmp_path, remote=f"{VIP_A}:5060", calls=1,
               service="1010", local_ip=ASTERISK_IP, netns=lab.ns("ast"),
               extra=("-au", "1010", "-ap", "demo1010", "-key", "contact_port", "5084",
                      "-key", "expires", "300"))
    with reg:
        assert reg.wait(20) == 0, reg.errors()
    agent = Sipp("uas_hangup.xml", 5084, tmp_path, local_ip=ASTERISK_IP, netns=lab.ns("ast"),
                 call_length_ms=10000, extra=("-rtp_echo", "-mp", str(ASTERISK_MP + 10)))
    try:
        bpf = " or ".join(f"dst port {mp}" for mp in CALLER_MPS)
        with agent, Capture(tmp_path / "caller.pcap", "lan0", f"udp and ({bpf})",
                            netns=lab.ns("client")), caller(
                "uac_media.xml", 5070, CALLER_MPS[0], FIRST, 24.0) as first:
            time.sleep(5.0)                  # every call is up, with audio
            subscribed = media.subscriptions(cluster, "n3")
            kills["n1"] = media.kill(cluster, "n1")
            cluster.wait_owners({VIP_A: "n2"}, timeout=15)
            media.wait_primary(cluster, "n2")
            media.wait_resubscribed(cluster, "n3", subscribed)
            with caller("uac_media_callee_hangs_up.xml", 5072, CALLER_MPS[1], SECOND,
                        service="1010") as second:
                time.sleep(4.0)              # set up through n2, its Redis the primary
                kills["n2"] = media.kill(cluster, "n2")
                cluster.wait_owners({VIP_A: "n3"}, timeout=15)
                assert second.wait(60) == 0, second.errors()
            assert first.wait(60) == 0, first.errors()
        assert agent.counter("SuccessfulCall(C)") == SECOND, agent.errors()
        per_call = flows(tmp_path / "caller.pcap")
    finally:
        media.asterisk.stop()
    firsts = {k: v for k, v in per_call.items() if k[1] == CALLER_MPS[0]}
    seconds = {k: v for k, v in per_call.items() if k[1] == CALLER_MPS[1]}
    assert (len(firsts), len(seconds)) == (FIRST, SECOND), sorted(per_call)
    results = {"first calls, n1 killed": [gaps_at(t, kills["n1"]) for t in firsts.values()],
               "first calls, n2 killed": [gaps_at(t, kills["n2"]) for t in firsts.values()],
               "second calls, n2 killed": [gaps_at(t, kills["n2"]) for t in seconds.values()]}
    for what, gaps in results.items():
        print(f"{what}: media gap {figures(gaps)}")
    for gaps in results.values():
        assert max(gaps) < 2.0
    # every call was hung up through n3 (the first ones by their callers, the
    # second by the agent), which deleted what its rtpengine held
    deadline = time.monotonic() + 5
    while (left := ng_calls(cluster, "n3")) != []:
        assert time.monotonic() < deadline, left
        time.sleep(0.2)
