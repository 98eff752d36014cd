"""Media that survives the death of the node it went through (issue 15,
point 3): the VIP cluster of tests/e2e/vipcluster.py, each node with its
own rtpengine on the VIPs' addresses (ip_nonlocal_bind: every node's
rtpengine binds the VIP ports of calls it does not carry yet), the
rtpengines sharing their calls through Redis keyspace notifications (each
writes its own database and subscribes to the others'). Calls through
VIP_A with RTP both ways (the caller plays audio, Asterisk echoes it);
kill -9 of n1 (hasip and its rtpengine): n2 takes VIP_A over, its rtpengine
already holds the calls on the same ports, and the audio resumes. The gap
each call saw is measured from a capture at the caller."""

from __future__ import annotations

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
    VIP_A,
    VIP_B,
    ZK_IP,
    Cluster,
    cluster_missing,
    vip_cluster,
)

CALLS = 20
AUDIO_S = 14.0                      # each caller plays this much audio
CALLER_MP, ASTERISK_MP = 16000, 17000
NG = "127.0.0.1:2223"


def _missing() -> str:
    for missing in (cluster_missing(), rtpengine_missing(), tcpdump_missing(),
                    "" if shutil.which("redis-server") else "redis-server is not installed"):
        if missing:
            return missing
    return ""


class Media:
    """Redis on the control network, an rtpengine in every node's namespace."""

    def __init__(self) -> None:
        self.rtpengines: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, c: Cluster) -> None:
        lab = c.lab
        self.redis = lab.popen("zk", ["redis-server", "--bind", ZK_IP, "--port", "6379",
                                      "--save", "", "--appendonly", "no",
                                      "--protected-mode", "no",
                                      # rtpengine relies on keyspace notifications
                                      "--notify-keyspace-events", "KA"], c.workdir / "redis.log")
        deadline = time.monotonic() + 10
        while lab.run("zk", ["redis-cli", "-h", ZK_IP, "ping"]).stdout.strip() != "PONG":
            assert time.monotonic() < deadline, (c.workdir / "redis.log").read_text()
            time.sleep(0.1)
        for i in (1, 2, 3):
            name = f"n{i}"
            lab.run(name, ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind"])
            others = [f"--subscribe-keyspace={j}" for j in (1, 2, 3) if j != i]
            cmd = ["rtpengine", "--foreground", "--log-stderr", "--config-file=none",
                   "--table=-1", f"--listen-ng={NG}", "--port-min=30000", "--port-max=30999",
                   "--log-level=6", "--delete-delay=0", "--num-threads=2",
                   f"--interface=vip_a/{VIP_A}", f"--interface=vip_b/{VIP_B}",
                   f"--redis={ZK_IP}:6379/{i}", *others, "--active-switchover"]
            self.rtpengines[name] = lab.popen(name, cmd, c.workdir / f"rtpengine-{name}.log")
        # Asterisk echoes the audio back (up before the nodes probe it)
        self.asterisk = Sipp("uas.xml", 5082, c.workdir, local_ip=ASTERISK_IP,
                             netns=lab.ns("ast"), extra=("-rtp_echo", "-mp", str(ASTERISK_MP)))
        self.asterisk.start()
        time.sleep(1.0)


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


def flows(path: Path) -> dict[int, list[float]]:
    """Arrival times of the packets each rtpengine port sent the caller."""
    got: dict[int, list[float]] = defaultdict(list)
    for pkt in rdpcap(str(path)):
        if IP in pkt and UDP in pkt and pkt[IP].src == VIP_A:
            got[pkt[UDP].sport].append(float(pkt.time))
    return got


def test_kill_of_the_vip_owner_keeps_the_media_of_established_calls(
        media_cluster, tmp_path) -> None:
    cluster, media = media_cluster
    lab = cluster.lab
    write_stream(tmp_path / "rtp.pcap", int(AUDIO_S / 0.02))
    try:
        with Capture(tmp_path / "caller.pcap", "lan0", f"udp and dst port {CALLER_MP}",
                     netns=lab.ns("client")):
            caller = Sipp("uac_media.xml", 5070, tmp_path, remote=f"{VIP_A}:5060",
                          calls=CALLS, rate=10, call_length_ms=int(AUDIO_S * 1000) + 1000,
                          local_ip=CLIENT_IP, netns=lab.ns("client"),
                          extra=("-mp", str(CALLER_MP)))
            with caller:
                time.sleep(5.0)                  # every call is up, with audio
                killed_at = time.time()
                cluster.nodes["n1"].kill()
                media.rtpengines["n1"].kill()
                cluster.wait_owners({VIP_A: "n2"}, timeout=15)
                assert caller.wait(60) == 0, caller.errors()
        per_call = flows(tmp_path / "caller.pcap")
    finally:
        media.asterisk.stop()
    gaps = []
    for port, times in sorted(per_call.items()):
        times.sort()
        around = [b - a for a, b in pairwise(times)
                  if a <= killed_at + 10 and b >= killed_at - 1]
        gaps.append(max(around) if around else float("inf"))
        assert times[-1] > killed_at + 3, f"call on port {port} had no audio after the kill"
    print(f"{len(per_call)} calls; media gap at the kill: min {min(gaps):.3f} s, median "
          f"{statistics.median(gaps):.3f} s, max {max(gaps):.3f} s")
    assert len(per_call) == CALLS
    assert max(gaps) < 2.0
    # every call was hung up through n2, which deleted what its rtpengine held
    deadline = time.monotonic() + 5
    while (left := {n: ng_calls(cluster, n) for n in ("n2", "n3")}) != {"n2": [], "n3": []}:
        assert time.monotonic() < deadline, left
        time.sleep(0.2)
