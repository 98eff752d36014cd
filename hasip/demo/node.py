"""Running a hasip node as a child process (demo, tests, benchmark) and
checking that it answers."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any


def options_ping(host: str, port: int, timeout: float = 0.5) -> bytes | None:
    """Send one OPTIONS to the proxy itself over UDP; the answer, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        local_port = sock.getsockname()[1]
        hostref = f"[{host}]" if ":" in host else host
        call_id = uuid.uuid4().hex
        msg = (
            f"OPTIONS sip:{hostref}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {hostref}:{local_port};branch=z9hG4bK{call_id[:12]}\r\n"
            f"From: <sip:probe@{hostref}>;tag={call_id[:8]}\r\n"
            f"To: <sip:{hostref}:{port}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        sock.settimeout(timeout)
        sock.sendto(msg, (host, port))
        try:
            data, _ = sock.recvfrom(65535)
        except OSError:
            return None
        return data


class NodeProcess:
    """``hasip run`` in a child process, logging to a file."""

    def __init__(self, config_path: Path | None, workdir: Path, sip_host: str = "127.0.0.1",
                 sip_port: int = 5060, env: dict[str, str] | None = None,
                 metrics_url: str = "http://127.0.0.1:9060/metrics") -> None:
        self.config_path = config_path
        self.workdir = workdir
        self.sip_host = sip_host
        self.sip_port = sip_port
        self.metrics_url = metrics_url
        self.log_path = workdir / f"hasip-{sip_port}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        # The control API (HOST:PORT) and its token, when the creator set one.
        self.control = ""
        self.token = ""

    def start(self, ready_timeout: float = 10.0) -> NodeProcess:
        cmd = [sys.executable, "-m", "hasip", "run"]
        if self.config_path is not None:
            cmd += ["-c", str(self.config_path)]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        # In the work directory: the embedded default SQLite file lands there.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hasip exited with {self.proc.returncode}: {self.log()}")
            answer = options_ping(self.sip_host, self.sip_port, 0.2)
            if answer is not None and answer.startswith(b"SIP/2.0 200"):
                return self
        self.kill()
        raise RuntimeError(f"hasip did not answer OPTIONS within {ready_timeout}s: {self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the graceful shutdown."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if hasattr(self, "_log"):
            self._log.close()

    def metrics(self) -> str:
        """The node's Prometheus exposition text."""
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return str(resp.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def write_secret(path: Path, secret: str = "") -> str:
    """A secret file as the node wants it (mode 0600): a control API token or
    a ZooKeeper password; a random one unless given. Returns the secret."""
    secret = secret or secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(secret + "\n")
    return secret


def control_get(port: int, path: str, token: str, host: str = "127.0.0.1") -> dict[str, Any]:
    """GET ``path`` of a node's control API (JSON), with its bearer token."""
    req = urllib.request.Request(f"http://{host}:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data
