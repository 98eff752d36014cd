"""A private ZooKeeper for the demo, the tests and the benchmarks: one
server, or a three-server ensemble, from Debian's ``zookeeper`` package,
optionally inside a network namespace, with a short tickTime so that
sessions of ~1 s are allowed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

JARS = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


def zookeeper_missing() -> str:
    if shutil.which("java") is None or not Path("/usr/share/java/zookeeper.jar").exists():
        return "ZooKeeper is not installed (Debian package zookeeperd)"
    return ""


class ZooKeeper:
    def __init__(self, workdir: Path, host: str, count: int = 1, base_port: int = 2181,
                 netns: str | None = None, tick_ms: int = 100) -> None:
        self.workdir = workdir
        self.host = host
        self.count = count
        self.netns = netns
        self.ports = [base_port + i for i in range(count)]
        self.tick_ms = tick_ms
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count

    @property
    def hosts(self) -> str:
        return ",".join(f"{self.host}:{p}" for p in self.ports)

    def _config(self, i: int) -> Path:
        data = self.workdir / f"zk{i}"
        data.mkdir(parents=True, exist_ok=True)
        lines = [f"tickTime={self.tick_ms}", f"dataDir={data}", f"clientPort={self.ports[i]}",
                 f"clientPortAddress={self.host}", "minSessionTimeout=500",
                 "maxSessionTimeout=30000", "initLimit=20", "syncLimit=8",
                 "admin.enableServer=false", "4lw.commands.whitelist=ruok,srvr,mntr"]
        if self.count > 1:
            (data / "myid").write_text(f"{i + 1}\n")
            for j in range(self.count):
                lines.append(f"server.{j + 1}={self.host}:{2888 + j}:{3888 + j}")
        path = self.workdir / f"zoo{i}.cfg"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _cmd(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def start_server(self, i: int) -> None:
        cfg = self._config(i)
        log = open(self.workdir / f"zk{i}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[i] = subprocess.Popen(
            self._cmd(["java", "-Xmx128m", f"-Dzookeeper.log.dir={self.workdir}", "-cp", JARS,
                       MAIN, str(cfg)]),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def start(self, timeout: float = 30.0) -> ZooKeeper:
        for i in range(self.count):
            self.start_server(i)
        self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Until every running server answers ``srvr`` as part of a quorum."""
        script = (
            "import socket,sys,time\n"
            f"ports={[p for i, p in enumerate(self.ports) if self.procs[i] is not None]!r}\n"
            f"deadline=time.time()+{timeout}\n"
            "left=set(ports)\n"
            "while left and time.time()<deadline:\n"
            "  for p in list(left):\n"
            "    try:\n"
            f"      s=socket.create_connection(({self.host!r},p),0.5); s.sendall(b'srvr')\n"
            "      if b'Mode:' in s.recv(4096): left.discard(p)\n"
            "    except OSError: pass\n"
            "  time.sleep(0.1)\n"
            "sys.exit(1 if left else 0)\n")
        res = subprocess.run(self._cmd([sys.executable, "-c", script]), timeout=timeout + 10)
        if res.returncode != 0:
            logs = "".join((self.workdir / f"zk{i}.log").read_text(errors="replace")[-1500:]
                           for i in range(self.count))
            raise RuntimeError(f"ZooKeeper did not start within {timeout}s: {logs}")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.procs[i] = None

    def stop(self) -> None:
        for i in range(self.count):
            self.kill(i)
