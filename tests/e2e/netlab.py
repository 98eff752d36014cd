"""Network namespaces for cluster tests: a switch namespace with two
bridges, ``lan`` (clients and VIPs, 198.18.0.0/24) and ``ctl`` (the nodes'
link to ZooKeeper, 198.19.0.0/24), and one namespace per host with
``lan0``/``ctl0`` veths into them. Only addresses from 198.18.0.0/15; the
root namespace is not touched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def netns_missing() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 is not installed"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (VIPs are held on TUN devices)"
    return ""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Lab:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.switch = f"{tag}-sw"
        self.hosts: dict[str, str] = {}       # short name -> namespace
        self._index = 0
        self.procs: list[subprocess.Popen[bytes]] = []

    def ns(self, name: str) -> str:
        return self.hosts[name]

    def create(self) -> Lab:
        _ip("netns", "add", self.switch)
        for bridge in ("lan", "ctl"):
            _ip("-n", self.switch, "link", "add", bridge, "type", "bridge")
            _ip("-n", self.switch, "link", "set", bridge, "up")
        return self

    def add_host(self, name: str, lan: str | None = None, ctl: str | None = None) -> str:
        ns = f"{self.tag}-{name}"
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        self._index += 1
        for net, addr, dev in (("lan", lan, "lan0"), ("ctl", ctl, "ctl0")):
            if addr is None:
                continue
            port = f"{net[0]}{self._index}"
            _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", dev,
                "netns", ns)
            _ip("-n", self.switch, "link", "set", port, "master", net, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        self.hosts[name] = ns
        return ns

    def link(self, name: str, dev: str, up: bool) -> None:
        _ip("-n", self.ns(name), "link", "set", dev, "up" if up else "down")

    def mac(self, name: str, dev: str = "lan0") -> str:
        return self.run(name, ["cat", f"/sys/class/net/{dev}/address"]).stdout.strip()

    def run(self, name: str, cmd: list[str], timeout: float = 60.0,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns(name), *cmd], capture_output=True,
                              text=True, timeout=timeout, check=check)

    def popen(self, name: str, cmd: list[str], log: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(name), *cmd], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.procs.append(proc)
        return proc

    def destroy(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for ns in [*self.hosts.values(), self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
