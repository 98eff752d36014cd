"""Call benchmark: SIPp caller -> balancer -> two SIPp answering nodes, for
hasip and, in the same run with the same scenario, for Kamailio.

For each balancer and each call rate of a ladder it places ``rate x duration``
calls (INVITE/100/180/200/ACK/BYE/200, no hold time) and measures the
balancer's CPU from /proc/<pid>/task/*/schedstat summed over all its processes
and threads during the steady part of the step. It prints, per balancer, the
highest rate completing >= 99.9 % of calls, the highest clean rate
(retransmissions <= 0.1 % of calls), the CPU % and calls per CPU-second there,
and hasip's ratio to Kamailio.

Run: .venv/bin/python bench/calls.py [--rates 500,1000,...] [--duration 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hasip.demo.node import NodeProcess, options_ping  # noqa: E402
from hasip.demo.sipp import Sipp, wait_for_stats  # noqa: E402


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


class Hasip(Balancer):
    name = "hasip"

    def __init__(self, work: Path, hops: list[int], loop: str) -> None:
        self.port = free_port()
        self.name = f"hasip ({loop})"
        cfg = work / f"hasip-{loop}.toml"
        hop_list = ", ".join(f'"sip:127.0.0.1:{p}"' for p in hops)
        cfg.write_text(
            f'[node]\nevent_loop = "{loop}"\n'
            f'[sip]\nlisten = ["udp:127.0.0.1:{self.port}"]\n'
            f"[routing]\nnext_hop = [{hop_list}]\n"
            f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n[log]\nlevel = "warning"\n')
        self.node = NodeProcess(cfg, work, "127.0.0.1", self.port)

    def start(self) -> None:
        self.node.start()

    def pids(self) -> list[int]:
        return process_tree(self.node.pid)

    def stop(self) -> None:
        self.node.kill()


class Kamailio(Balancer):
    name = "kamailio"

    def __init__(self, work: Path, hops: list[int]) -> None:
        self.port = free_port()
        self.work = work
        dslist = work / "dispatcher.list"
        dslist.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in hops))
        self.cmd = ["kamailio", "-f", str(ROOT / "bench" / "kamailio.cfg"), "-DD", "-E",
                    "-x", "tlsf", "-m", "2048", "-M", "64", "-Y", str(work),
                    "-A", f"LISTEN=udp:127.0.0.1:{self.port}", "-A", f'DSLIST="{dslist}"']
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.work / "kamailio.log", "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.work / "kamailio.log").read_text())
            answer = options_ping("127.0.0.1", self.port, 0.2)
            if answer is not None:
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


def run_step(balancer: Balancer, work: Path, rate: int, duration: float) -> Step:
    calls = int(rate * duration)
    caller = Sipp("uac.xml", free_port(), work, remote=f"127.0.0.1:{balancer.port}",
                  calls=calls, rate=rate, extra=("-l", "100000"))
    caller.start()
    pids = balancer.pids()
    # Steady part: skip the first second and stop a second before the end.
    time.sleep(1.0)
    c0, t0 = cpu_seconds(pids), time.monotonic()
    time.sleep(max(1.0, duration - 2.0))
    c1, t1 = cpu_seconds(pids), time.monotonic()
    try:
        caller.wait(duration + 60)
    except subprocess.TimeoutExpired:
        pass
    ok = caller.counter("SuccessfulCall(C)")
    retrans = caller.counter("Retransmissions(C)")
    return Step(rate, calls, ok, retrans, 100.0 * (c1 - c0) / (t1 - t0))


def bench(balancers: list[Balancer], work: Path, rates: list[int],
          duration: float) -> dict[str, list[Step]]:
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
                step = run_step(balancer, work, rate, duration)
                results[balancer.name].append(step)
                print(f"  {balancer.name:<16} {rate:>6}/s  ok {100 * step.success:7.3f} %  "
                      f"retrans {step.retrans:>5}  cpu {step.cpu_pct:6.1f} %  "
                      f"{step.calls_per_cpu_s:8.0f} calls/cpu-s", flush=True)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="250,500,1000,1500,2000,2500,3000",
                        help="comma-separated call rates to climb")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per step")
    parser.add_argument("--loops", default="uvloop", help="hasip event loops: uvloop,asyncio")
    parser.add_argument("--no-kamailio", action="store_true")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    if shutil.which("sipp") is None:
        print("sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hasip-bench-"))
    print(f"call benchmark, {args.duration:.0f} s per step, work dir {work}")
    uas = [Sipp("uas.xml", free_port(), work).start() for _ in range(2)]
    for u in uas:
        wait_for_stats(u)
    hops = [int(u.cmd[u.cmd.index("-p") + 1]) for u in uas]
    balancers: list[Balancer] = [Hasip(work, hops, loop) for loop in args.loops.split(",")]
    if not args.no_kamailio and shutil.which("kamailio"):
        balancers.append(Kamailio(work, hops))
    try:
        results = bench(balancers, work, rates, args.duration)
    finally:
        for u in uas:
            u.stop()
    print()
    print(f"{'balancer':<16} {'max rate >=99.9%':>17} {'max clean rate':>15} {'cpu %':>7} "
          f"{'calls/cpu-s':>12}")
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
            print(f"{name} / kamailio calls per CPU-second, each at its own best rate: "
                  f"{best[name] / best['kamailio']:.2f}x")
            same = next((k for k in kam if at is not None and k.rate == at.rate), None)
            if at is not None and same is not None and same.calls_per_cpu_s:
                print(f"{name} / kamailio calls per CPU-second at the same load "
                      f"({at.rate}/s): {at.calls_per_cpu_s / same.calls_per_cpu_s:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
