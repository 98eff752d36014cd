"""Calls per CPU-second of this tree against another commit's, same run.

The call benchmark's scenario (SIPp caller -> balancer -> two SIPp
answerers, record-route, round-robin; see bench/calls.py) at one rate,
repeated, with the balancers interleaved step by step so that the
machine's drift hits them alike: this tree and the baseline tree, each
compiled and from source (HASIP_PURE_PYTHON=1). Prints every step and, per
balancer, the median calls per CPU-second and its ratio to the baseline's
in the same build.

The baseline is a checkout of another commit with its hot path compiled
for the same Python, for example:

    git worktree add /tmp/hasip-base fc952a1
    (cd /tmp/hasip-base && PYTHONPATH=$PWD ../main/.venv/bin/python -m hasip compile build)
    .venv/bin/python bench/compare.py --baseline /tmp/hasip-base --rate 1000 --repeat 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from calls import hasip_sections  # noqa: E402
from ladder import Balancer, HasipBalancer, bench, free_port  # noqa: E402

from hasip.demo.sipp import Sipp, wait_for_stats  # noqa: E402


def commit_of(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


def balancer(work: Path, hops: list[int], name: str, tree: Path, pure: bool) -> Balancer:
    env = {"PYTHONPATH": str(tree), "HASIP_PURE_PYTHON": "1" if pure else "0"}
    return HasipBalancer(work, name, hasip_sections(hops, "uvloop"), env=env)


def build_state(tree: Path, pure: bool) -> str:
    """Whether a node of ``tree`` runs compiled (what its import guard says)."""
    env = {"PYTHONPATH": str(tree), "HASIP_PURE_PYTHON": "1" if pure else "0",
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", "import hasip; print(hasip._compiled.state)"],
                         capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(),
                         check=False)
    return (out.stdout or out.stderr).strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, type=Path,
                        help="a checkout of the commit to compare with, compiled")
    parser.add_argument("--rate", type=int, default=1000, help="calls per second")
    parser.add_argument("--repeat", type=int, default=5, help="steps per balancer")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per step")
    parser.add_argument("--builds", default="compiled,pure",
                        help="which builds of each tree: compiled,pure")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        print("sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    base = args.baseline.resolve()
    if not (base / "hasip").is_dir():
        print(f"{base}: not a hasip checkout", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hasip-compare-"))
    trees = {f"this {commit_of(ROOT)}": ROOT, f"base {commit_of(base)}": base}
    builds = args.builds.split(",")
    print(f"compare: {args.rate} calls/s x {args.repeat} steps of {args.duration:.0f} s, "
          f"builds {', '.join(builds)}, work dir {work}", flush=True)
    for label, tree in trees.items():
        for build in builds:
            print(f"  {label} {build}: {tree} {build_state(tree, build == 'pure')}", flush=True)
    uas = [Sipp("uas.xml", free_port(), work).start() for _ in range(2)]
    for u in uas:
        wait_for_stats(u)
    hops = [int(u.cmd[u.cmd.index("-p") + 1]) for u in uas]
    balancers = [balancer(work, hops, f"{label} {build}", tree, build == "pure")
                 for build in builds for label, tree in trees.items()]
    try:
        results = bench(balancers, work, [args.rate] * args.repeat, args.duration)
    finally:
        for u in uas:
            u.stop()
    print(f"\nmedian calls per CPU-second at {args.rate}/s "
          "(steps completing < 99.9 % left out):")
    medians: dict[str, float] = {}
    for name, steps in results.items():
        good = [s.calls_per_cpu_s for s in steps if s.success >= 0.999]
        medians[name] = statistics.median(good) if good else 0.0
        spread = f"{min(good):.0f}-{max(good):.0f}" if good else "-"
        print(f"  {name:<24} {medians[name]:8.0f}   (steps {spread}, {len(good)} good)")
    this_label, base_label = list(trees)
    for build in builds:
        ours, theirs = medians[f"{this_label} {build}"], medians[f"{base_label} {build}"]
        if theirs:
            print(f"  {build}: this / base = {ours / theirs:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
