"""Audio for the media tests: an RTP stream for SIPp to play
(``play_pcap_audio``), written with scapy, and packet captures taken with
tcpdump and counted per flow, so that a test sees what each party really
received (not what a counter says)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.rtp import RTP
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

PTIME = 0.02          # 20 ms of PCMU per packet: 160 bytes


def write_stream(path: Path, packets: int) -> Path:
    """``packets`` RTP packets of PCMU silence, 20 ms apart. SIPp rewrites
    the addresses and ports when it plays them."""
    frames = []
    for seq in range(packets):
        frame = (Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=4000, dport=4002)
                 / RTP(version=2, payload_type=0, sequence=seq, timestamp=seq * 160,
                       sourcesync=0x11223344) / Raw(b"\xff" * 160))
        frame.time = 1_700_000_000 + seq * PTIME
        frames.append(frame)
    wrpcap(str(path), frames)
    return path


def tcpdump_missing() -> str:
    return "" if shutil.which("tcpdump") else "tcpdump is not installed"


class Capture:
    """tcpdump on ``interface`` (in ``netns``) with a BPF ``bpf`` filter,
    written to a file and read back with scapy."""

    def __init__(self, path: Path, interface: str, bpf: str, netns: str | None = None) -> None:
        self.path = path
        cmd = [shutil.which("tcpdump") or "tcpdump", "-i", interface, "-n", "-U", "-s", "128",
               "-w", str(path), bpf]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.cmd = cmd
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Capture:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        # tcpdump says "listening on ..." once the capture runs
        deadline = time.monotonic() + 5
        line = b""
        while time.monotonic() < deadline and b"listening" not in line:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError("tcpdump exited")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        time.sleep(0.2)    # the last packets reach the file (-U)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()

    def flows(self) -> Counter[tuple[str, int, str, int]]:
        """Packets per (source ip, source port, destination ip, destination port)."""
        counts: Counter[tuple[str, int, str, int]] = Counter()
        if not self.path.exists() or self.path.stat().st_size == 0:
            return counts
        for pkt in rdpcap(str(self.path)):
            if IP in pkt and UDP in pkt:
                counts[(pkt[IP].src, pkt[UDP].sport, pkt[IP].dst, pkt[UDP].dport)] += 1
        return counts

    def received(self, ip: str, port: int) -> dict[tuple[str, int], int]:
        """Packets that arrived at ``ip:port``, by where they came from."""
        return {(f[0], f[1]): n for f, n in self.flows().items() if (f[2], f[3]) == (ip, port)}
