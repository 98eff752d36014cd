"""Running SIPp (Debian ``sip-tester``) as a caller or an answering node, and
reading its statistics. Used by the demo, the end-to-end tests and the
benchmark."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from hasip.demo import SCENARIOS


def sipp_binary() -> str | None:
    return shutil.which("sipp")


class Sipp:
    """One SIPp process. Answering nodes run until stopped; callers run until
    ``calls`` calls are done (``-m``)."""

    def __init__(self, scenario: str, local_port: int, workdir: Path, *,
                 remote: str | None = None, transport: str = "u1", calls: int | None = None,
                 rate: float | None = None, call_length_ms: int = 0, service: str = "service",
                 extra: tuple[str, ...] = (), local_ip: str = "127.0.0.1",
                 stat_period_s: int = 1, netns: str | None = None) -> None:
        binary = sipp_binary()
        if binary is None:
            raise RuntimeError("sipp is not installed (Debian package sip-tester)")
        self.name = f"{Path(scenario).stem}-{local_port}"
        self.workdir = workdir
        self.stat_file = workdir / f"{self.name}.csv"
        path = scenario if os.path.sep in scenario else str(SCENARIOS / scenario)
        # ``ip netns exec`` execs SIPp itself, so signals still reach it.
        cmd = ["ip", "netns", "exec", netns, binary] if netns else [binary]
        if remote:
            cmd.append(remote)
        cmd += ["-sf", path, "-i", local_ip, "-p", str(local_port), "-t", transport,
                "-nostdin", "-buff_size", "1048576", "-aa", "-s", service,
                "-d", str(call_length_ms), "-trace_stat", "-stf", str(self.stat_file),
                "-fd", str(stat_period_s), "-trace_err", "-error_file",
                str(workdir / f"{self.name}-errors.log"), "-max_recv_loops", "10000",
                "-max_sched_loops", "10000"]
        if calls is not None:
            cmd += ["-m", str(calls)]
        if rate is not None:
            cmd += ["-r", str(rate)]
        cmd += list(extra)
        if "-au" in extra and "-auth_uri" not in extra and remote and "register" not in path:
            # SIPp puts sip:remote_ip:remote_port in the digest uri unless
            # told otherwise; a phone puts the Request-URI there, and hasip
            # checks that it does (RFC 2617 3.2.2.5). The INVITE scenarios'
            # Request-URI is sip:[service]@[remote_ip]:[remote_port].
            cmd += ["-auth_uri", f"{service}@{remote}"]
        self.cmd = cmd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sipp:
        with open(self.workdir / f"{self.name}-stderr.log", "wb") as err:
            self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        return self

    def __enter__(self) -> Sipp:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # SIPp: quit after writing its stats
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)

    def stderr(self) -> str:
        path = self.workdir / f"{self.name}-stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stats(self) -> dict[str, str]:
        """The last row of SIPp's statistics file (cumulative counters)."""
        if not self.stat_file.exists():
            return {}
        with open(self.stat_file, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter=";"))
        return rows[-1] if rows else {}

    def counter(self, name: str) -> int:
        """A cumulative counter such as ``SuccessfulCall(C)``, 0 when absent."""
        value = self.stats().get(name, "0") or "0"
        return int(float(value))

    def errors(self) -> str:
        """SIPp's error log and standard error, for assertion messages."""
        path = self.workdir / f"{self.name}-errors.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return (text + self.stderr())[-3000:]


def wait_for_stats(sipp: Sipp, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not sipp.stats():
        time.sleep(0.1)
