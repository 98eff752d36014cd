"""Real MariaDB and FreeRADIUS servers for tests, each a private instance in
the test's directory on a free loopback port, which a test may stop and
start again (fault tests)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

MARIADB_BINARIES = ("mariadbd", "mariadb-install-db", "mariadb")


def mariadb_missing() -> str | None:
    for name in MARIADB_BINARIES:
        if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists():
            return f"{name} is not installed (Debian package mariadb-server)"
    return None


def freeradius_missing() -> str | None:
    if shutil.which("freeradius") is None and not Path("/usr/sbin/freeradius").exists():
        return "freeradius is not installed (Debian package freeradius)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _terminate(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM (a clean shutdown), SIGKILL after ``grace`` seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class MariaDB:
    """``mariadbd`` with its own data directory; database ``hasip``, user
    ``hasip`` (password ``hasip-test``) on 127.0.0.1."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.dir = workdir / f"mariadb-{port}"
        self.port = port
        self.socket = str(self.dir / "mysqld.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"mysql://hasip:hasip-test@127.0.0.1:{port}/hasip"

    def start(self) -> MariaDB:
        fresh = not (self.dir / "data").exists()
        if fresh:
            self.dir.mkdir(parents=True, exist_ok=True)
            subprocess.run([_binary("mariadb-install-db"), "--no-defaults",
                            f"--datadir={self.dir / 'data'}", "--user=root",
                            "--auth-root-authentication-method=socket", "--skip-test-db"],
                           check=True, capture_output=True, timeout=60)
        with open(self.dir / "stderr.log", "ab") as log:
            self.proc = subprocess.Popen(
                [_binary("mariadbd"), "--no-defaults", f"--datadir={self.dir / 'data'}",
                 f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
                 "--user=root", f"--pid-file={self.dir / 'mysqld.pid'}",
                 f"--log-error={self.dir / 'error.log'}", "--skip-log-bin",
                 "--innodb-buffer-pool-size=32M", "--skip-name-resolve"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mariadbd exited: " + self.errors())
            ok = subprocess.run(["mariadb", f"--socket={self.socket}", "-uroot", "-e",
                                 "SELECT 1"], capture_output=True)
            if ok.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("mariadbd did not start: " + self.errors())
        if fresh:
            self.query("CREATE DATABASE hasip; "
                       "CREATE USER hasip@'127.0.0.1' IDENTIFIED BY 'hasip-test'; "
                       "GRANT ALL ON hasip.* TO hasip@'127.0.0.1'")
        return self

    def stop(self) -> None:
        _terminate(self.proc, 30)
        self.proc = None

    def query(self, sql: str) -> list[list[str]]:
        out = subprocess.run(["mariadb", f"--socket={self.socket}", "-uroot", "-N", "-B",
                              "-e", sql], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return [line.split("\t") for line in out.stdout.splitlines()]

    def errors(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


_RADIUSD_CONF = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {dir}
raddbdir = {dir}
radacctdir = {dir}
name = freeradius
confdir = {dir}
modconfdir = {dir}
run_dir = {dir}
db_dir = {dir}
libdir = /usr/lib/freeradius
pidfile = {dir}/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 16384
hostname_lookups = no
log {{
  destination = stdout
  auth = yes
}}
security {{
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = yes
}}
thread pool {{
  start_servers = 2
  max_servers = 4
  min_spare_servers = 1
  max_spare_servers = 3
  max_requests_per_server = 0
}}
client hasip {{
  ipaddr = 127.0.0.1
  secret = {secret}
}}
modules {{
  files {{
    filename = {dir}/users
  }}
  digest {{
  }}
}}
server default {{
  listen {{
    type = auth
    ipaddr = 127.0.0.1
    port = {port}
  }}
  authorize {{
    digest
    files
  }}
  authenticate {{
    Auth-Type digest {{
      digest
    }}
  }}
}}
"""


class FreeRadius:
    """FreeRADIUS 3 with rlm_digest (draft-sterman attributes) and its
    ``users`` file holding cleartext passwords."""

    def __init__(self, workdir: Path, port: int, users: dict[str, str],
                 secret: str = "hasip-radius-test") -> None:
        self.dir = workdir / f"freeradius-{port}"
        self.port = port
        self.secret = secret
        self.users = users
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FreeRadius:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "radiusd.conf").write_text(
            _RADIUSD_CONF.format(dir=self.dir, port=self.port, secret=self.secret))
        (self.dir / "users").write_text("".join(
            f'{user} Cleartext-Password := "{password}"\n'
            for user, password in self.users.items()))
        offset = len(self.log())
        with open(self.dir / "radiusd.log", "ab") as log:
            self.proc = subprocess.Popen([_binary("freeradius"), "-f", "-d", str(self.dir),
                                          "-l", "stdout"], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("freeradius exited: " + self.log())
            if "Ready to process requests" in self.log()[offset:]:
                return self
            time.sleep(0.05)
        raise RuntimeError("freeradius did not start: " + self.log())

    def stop(self) -> None:
        _terminate(self.proc, 10)
        self.proc = None

    def log(self) -> str:
        path = self.dir / "radiusd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def rtpengine_missing() -> str | None:
    if shutil.which("rtpengine") is None and not Path("/usr/bin/rtpengine").exists():
        return "rtpengine is not installed (Debian package rtpengine-daemon)"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


class Rtpengine:
    """``rtpengine`` in the foreground, userspace forwarding only (no kernel
    table), its ng socket on ``ng_port`` and media ports from ``port_min``
    on ``interface`` (an address, or ``NAME/ADDR`` entries)."""

    def __init__(self, workdir: Path, ng_port: int, port_min: int,
                 interfaces: tuple[str, ...] = ("127.0.0.1",), ng_host: str = "127.0.0.1",
                 netns: str | None = None, port_span: int = 200) -> None:
        self.dir = workdir / f"rtpengine-{ng_port}"
        self.ng = (ng_host, ng_port)
        self.port_min = port_min
        self.port_span = port_span
        self.interfaces = interfaces
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"udp:{self.ng[0]}:{self.ng[1]}"

    def start(self) -> Rtpengine:
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [shutil.which("rtpengine") or "/usr/bin/rtpengine", "--foreground", "--log-stderr",
               "--config-file=none", "--table=-1", f"--listen-ng={self.ng[0]}:{self.ng[1]}",
               f"--port-min={self.port_min}",
               f"--port-max={self.port_min + self.port_span - 1}",
               "--log-level=6", "--delete-delay=0", "--num-threads=2",
               f"--listen-cli={self.ng[0]}:{free_port(self.ng[0])}",
               f"--pidfile={self.dir / 'rtpengine.pid'}",
               *(f"--interface={i}" for i in self.interfaces)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        with open(self.dir / "rtpengine.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited: {self.log()[-2000:]}")
            if self.ping():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"rtpengine did not answer ng pings: {self.log()[-2000:]}")

    def command(self, cmd: dict[str, object], timeout: float = 2.0) -> dict[bytes, Any]:
        """One ng request from a plain socket (the tests' own view of rtpengine)."""
        from hasip.media.bencode import decode, encode

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(b"t" + os.urandom(6).hex().encode() + b" " + encode(cmd), self.ng)
            data = s.recv(65536)
        answer = decode(data.split(b" ", 1)[1])
        assert isinstance(answer, dict)
        return answer

    def ping(self) -> bool:
        try:
            return self.command({"command": "ping"}, 0.3).get(b"result") == b"pong"
        except OSError:
            return False

    def calls(self) -> list[str]:
        """The Call-IDs rtpengine holds (its own ``list``)."""
        answer = self.command({"command": "list", "limit": 1000})
        calls = answer.get(b"calls")
        assert isinstance(calls, list)
        return [c.decode() for c in calls if isinstance(c, bytes)]

    def log(self) -> str:
        path = self.dir / "rtpengine.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        _terminate(self.proc, 5)
        self.proc = None
