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
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from ladder import Balancer, HasipBalancer, KamailioBalancer, bench, free_port, report  # noqa: E402

from hasip.demo.sipp import Sipp, wait_for_stats  # noqa: E402


def hasip_sections(hops: list[int], loop: str) -> str:
    """What the benchmark's node adds to the common settings."""
    hop_list = ", ".join(f'"sip:127.0.0.1:{p}"' for p in hops)
    return (f'[node]\nevent_loop = "{loop}"\n[routing]\nnext_hop = [{hop_list}]\n'
            # SIPp plays a PSTN gateway: a trusted peer, as Kamailio's
            # reference config routes without authentication.
            '[auth]\ntrusted = ["127.0.0.1/32"]\ndemo_users = true\n')


def hasip(work: Path, hops: list[int], loop: str) -> Balancer:
    return HasipBalancer(work, f"hasip ({loop})", hasip_sections(hops, loop))


def kamailio(work: Path, hops: list[int]) -> Balancer:
    dslist = work / "dispatcher.list"
    dslist.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in hops))
    return KamailioBalancer(work, ROOT / "bench" / "kamailio.cfg", [f'DSLIST="{dslist}"'], 2048)


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
    balancers: list[Balancer] = [hasip(work, hops, loop) for loop in args.loops.split(",")]
    if not args.no_kamailio and shutil.which("kamailio"):
        balancers.append(kamailio(work, hops))
    try:
        results = bench(balancers, work, rates, args.duration)
    finally:
        for u in uas:
            u.stop()
    report(results, "calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
