"""What the benchmarks share: the balancers' CPU from schedstat, one rate
step with a SIPp client scenario, the interleaved ladder, and the summary
(highest rate with >= 99.9 % success, highest clean rate)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hasip.demo.node import NodeProcess, options_ping
from hasip.demo.sipp import Sipp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of every thread of ``pids`` (schedstat: ns on CPU)."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except OSError:
                continue
    return total / 1e9


@dataclass
class Step:
    rate: int
    calls: int
    ok: int
    retrans: int
    cpu_pct: float
    # Of cpu_pct, what a process the balancer drives (rtpengine) spent.
    shared_cpu_pct: float = 0.0

    @property
    def success(self) -> float:
        return self.ok / self.calls if self.calls else 0.0

    @property
    def calls_per_cpu_s(self) -> float:
        return self.rate / (self.cpu_pct / 100) if self.cpu_pct else 0.0

    @property
    def clean(self) -> bool:
        return self.success >= 0.999 and self.retrans <= 0.001 * self.calls


class Balancer:
    name = ""
    port = 0

    def start(self) -> None: ...
    def pids(self) -> list[int]: return []
    def stop(self) -> None: ...


class HasipBalancer(Balancer):
    """A hasip node on a free UDP port; ``sections`` is TOML added to the
    benchmark's common settings (quiet logs, no control API)."""

    def __init__(self, work: Path, name: str, sections: str,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.name = name
        cfg = work / f"hasip-{self.port}.toml"
        cfg.write_text(f'[sip]\nlisten = ["udp:127.0.0.1:{self.port}"]\n'
                       f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
                       '[log]\nlevel = "warning"\n[control]\nlisten = "off"\n'
                       # One SIPp instance sends everything: measured here is the
                       # proxy, not the per-source rate limit (bench/abuse.py is).
                       '[security]\nexempt = ["127.0.0.0/8"]\n'
                       f'[location]\nsqlite_path = "{work / f"location-{self.port}.db"}"\n'
                       + sections)
        self.node = NodeProcess(cfg, work, "127.0.0.1", self.port, env=env)

    def start(self) -> None:
        self.node.start()

    def pids(self) -> list[int]:
        return process_tree(self.node.pid)

    def stop(self) -> None:
        self.node.kill()


class KamailioBalancer(Balancer):
    """Kamailio on a free UDP port as operators run it: one worker, tlsf;
    ``cfg`` gets LISTEN and the ``defines`` with -A."""

    name = "kamailio"

    def __init__(self, work: Path, cfg: Path, defines: list[str], memory_mb: int) -> None:
        self.port = free_port()
        self.work = work
        self.log = work / f"kamailio-{self.port}.log"
        self.cmd = ["kamailio", "-f", str(cfg), "-DD", "-E", "-x", "tlsf", "-m",
                    str(memory_mb), "-M", "64", "-Y", str(work),
                    "-A", f"LISTEN=udp:127.0.0.1:{self.port}"]
        for define in defines:
            self.cmd += ["-A", define]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            if options_ping("127.0.0.1", self.port, 0.2) is not None:
                return
        raise RuntimeError("kamailio did not answer")

    def pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# (balancer, work dir, rate, calls) -> a SIPp client, not started
Client = Callable[["Balancer", Path, int, int], Sipp]


def uac(balancer: Balancer, work: Path, rate: int, calls: int) -> Sipp:
    return Sipp("uac.xml", free_port(), work, remote=f"127.0.0.1:{balancer.port}",
                calls=calls, rate=rate, extra=("-l", "100000"))


def run_step(balancer: Balancer, work: Path, rate: int, duration: float,
             client: Client = uac, shared: list[int] | None = None) -> Step:
    """One step; ``shared``: processes the balancer drives whose CPU counts
    as its own (rtpengine, for the media benchmark)."""
    calls = int(rate * duration)
    caller = client(balancer, work, rate, calls)
    caller.start()
    pids = balancer.pids()
    others = shared or []
    # Steady part: skip the first second and stop a second before the end.
    time.sleep(1.0)
    c0, s0, t0 = cpu_seconds(pids), cpu_seconds(others), time.monotonic()
    time.sleep(max(1.0, duration - 2.0))
    c1, s1, t1 = cpu_seconds(pids), cpu_seconds(others), time.monotonic()
    try:
        caller.wait(duration + 60)
    except subprocess.TimeoutExpired:
        pass
    ok = caller.counter("SuccessfulCall(C)")
    retrans = caller.counter("Retransmissions(C)")
    span = t1 - t0
    return Step(rate, calls, ok, retrans, 100.0 * ((c1 - c0) + (s1 - s0)) / span,
                100.0 * (s1 - s0) / span)


def bench(balancers: list[Balancer], work: Path, rates: list[int],
          duration: float, client: Client = uac, unit: str = "calls",
          shared: list[int] | None = None) -> dict[str, list[Step]]:
    """Climb the ladder with every balancer, interleaved step by step, so that
    the machine's drift (a shared VM) hits them alike. A balancer leaves the
    ladder at its first step below 99.9 %."""
    results: dict[str, list[Step]] = {b.name: [] for b in balancers}
    running = list(balancers)
    for b in balancers:
        b.start()
    try:
        for rate in rates:
            for balancer in list(running):
                step = run_step(balancer, work, rate, duration, client, shared)
                results[balancer.name].append(step)
                of_which = (f" (of it {step.shared_cpu_pct:5.1f} % rtpengine)" if shared
                            else "")
                print(f"  {balancer.name:<16} {rate:>6}/s  ok {100 * step.success:7.3f} %  "
                      f"retrans {step.retrans:>5}  cpu {step.cpu_pct:6.1f} %{of_which}  "
                      f"{step.calls_per_cpu_s:8.0f} {unit}/cpu-s", flush=True)
                if step.success < 0.999:
                    running.remove(balancer)
                    balancer.stop()
                time.sleep(1.0)
            if not running:
                break
    finally:
        for b in balancers:
            b.stop()
    return results


def summary(steps: list[Step]) -> tuple[Step | None, Step | None]:
    good = [s for s in steps if s.success >= 0.999]
    clean = [s for s in good if s.clean]
    return (good[-1] if good else None), (clean[-1] if clean else None)




def _build_line() -> str:
    """Whether the hasip under test runs its compiled hot path: figures from
    the interpreted one are about half as good and not the ones to compare."""
    from hasip.app import compiled

    if compiled.state["compiled"]:
        return "hasip build: compiled hot path"
    return (f"hasip build: INTERPRETED ({compiled.state['reason']}); "
            "run `hasip compile build` for comparable figures")


def report(results: dict[str, list[Step]], unit: str) -> None:
    """Per balancer: highest good and clean rate, CPU and ``unit`` per CPU-second
    there; then each hasip variant's ratio to Kamailio."""
    print()
    print(_build_line())
    print(f"{'balancer':<16} {'max rate >=99.9%':>17} {'max clean rate':>15} {'cpu %':>7} "
          f"{unit + '/cpu-s':>12}")
    best: dict[str, float] = {}
    for name, steps in results.items():
        good, clean = summary(steps)
        at = clean or good
        best[name] = at.calls_per_cpu_s if at else 0.0
        print(f"{name:<16} {good.rate if good else 0:>17} {clean.rate if clean else 0:>15} "
              f"{at.cpu_pct if at else 0:>7.1f} {best[name]:>12.0f}")
    kam = results.get("kamailio", [])
    if kam and best.get("kamailio"):
        for name, steps in results.items():
            if name == "kamailio":
                continue
            good, clean = summary(steps)
            at = clean or good
            print(f"{name} / kamailio {unit} per CPU-second, each at its own best rate: "
                  f"{best[name] / best['kamailio']:.2f}x")
            same = next((k for k in kam if at is not None and k.rate == at.rate), None)
            if at is not None and same is not None and same.calls_per_cpu_s:
                print(f"{name} / kamailio {unit} per CPU-second at the same load "
                      f"({at.rate}/s): {at.calls_per_cpu_s / same.calls_per_cpu_s:.2f}x")
