"""Media relay benchmark: calls with their media relayed through rtpengine,
per CPU-second of the balancer plus rtpengine (its control work for the
balancer's offers, answers and deletes: the one rtpengine serves one
balancer at a time), hasip against Kamailio with its rtpengine module
driving the same rtpengine, in the same run.

SIPp caller -> balancer -> two SIPp answering nodes; every call offers SDP
(INVITE), answers (200) and ends (BYE): three ng requests per call. No RTP
flows: measured is the signalling and media control, not packet relaying
(rtpengine's, the same for both). rtpengine runs in userspace, two
worker threads, logging at info as the tests' fixture starts it.

Run: .venv/bin/python bench/media.py [--rates 100,200,...] [--duration 8]
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
from tests.e2e.services import Rtpengine, rtpengine_missing  # noqa: E402


def hasip(work: Path, hops: list[int], rtpengine: str) -> Balancer:
    hop_list = ", ".join(f'"sip:127.0.0.1:{p}"' for p in hops)
    return HasipBalancer(work, "hasip (uvloop)",
                         f'[node]\nevent_loop = "uvloop"\n[routing]\nnext_hop = [{hop_list}]\n'
                         '[auth]\ntrusted = ["127.0.0.1/32"]\ndemo_users = true\n'
                         f'[media]\nrtpengine = ["{rtpengine}"]\nrelay = "always"\n')


def kamailio(work: Path, hops: list[int], rtpengine: str) -> Balancer:
    dslist = work / "dispatcher.list"
    dslist.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in hops))
    return KamailioBalancer(work, ROOT / "bench" / "kamailio-media.cfg",
                            [f'DSLIST="{dslist}"', f'RTPENGINE="{rtpengine}"'], 2048)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100,200,400,600,800,1000,1200",
                        help="comma-separated call rates to climb")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per step")
    parser.add_argument("--no-kamailio", action="store_true")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    missing = rtpengine_missing()
    if shutil.which("sipp") is None or missing:
        print(missing or "sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hasip-bench-media-"))
    print(f"media relay benchmark, {args.duration:.0f} s per step, work dir {work}")
    rtpe = Rtpengine(work, free_port(), 20000, port_span=20000).start()
    uas = [Sipp("uas.xml", free_port(), work).start() for _ in range(2)]
    for u in uas:
        wait_for_stats(u)
    hops = [int(u.cmd[u.cmd.index("-p") + 1]) for u in uas]
    balancers: list[Balancer] = [hasip(work, hops, rtpe.url)]
    if not args.no_kamailio and shutil.which("kamailio"):
        balancers.append(kamailio(work, hops, rtpe.url))
    assert rtpe.proc is not None
    try:
        results = bench(balancers, work, rates, args.duration, shared=[rtpe.proc.pid])
        left = rtpe.calls()
    finally:
        for u in uas:
            u.stop()
        rtpe.stop()
    report(results, "calls")
    # Calls SIPp gave up on in an overloaded step were never hung up: their
    # dialogs (and sessions) last until dialog.timeout; after clean steps
    # only, this is 0.
    print(f"sessions rtpengine still held after the run: {len(left)}"
          f"{'+' if len(left) >= 1000 else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
