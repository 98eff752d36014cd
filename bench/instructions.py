"""Deterministic cost of one call (or ``--register``: one authenticated
registration) through the proxy: CPU instructions counted
by valgrind's callgrind (repeatable whatever else the machine does, unlike
seconds on a shared VM). Runs bench/hotpath.py's call loop for N and for
N + M calls and prints (I(N+M) - I(N)) / M, harness included (~0.1 M).

Run: .venv/bin/python bench/instructions.py [--calls 500]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOOP = """
import asyncio, sys
sys.path.insert(0, {bench!r})
import hotpath
from hasip.app.config import Config, MetricsConfig, RoutingConfig
from hasip.proxy.shell import Proxy
from hasip.sip.uri import parse_sip_uri
config = Config(routing=RoutingConfig(next_hop=[parse_sip_uri("sip:127.0.0.1:5071")]),
              metrics=MetricsConfig(listen=None))
config.auth.demo_users = True
config.security.exempt = ["127.0.0.0/8"]   # one source sends everything
register = sys.argv[2] == "register"
config.auth.trusted = [] if register else ["127.0.0.1/32"]
proxy = Proxy(config, asyncio.new_event_loop())
from hasip.app.node import tune_gc
tune_gc()
step = hotpath.one_registration if register else hotpath.one_call
rec = hotpath.Recorder()
rec.attach(proxy)
listener = proxy.transports.listeners[0]
for n in range(int(sys.argv[1])):
    step(proxy, listener, rec, n)
"""


def instructions(script: Path, calls: int, out: Path, mode: str) -> int:
    res = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          sys.executable, str(script), str(calls), mode],
                         capture_output=True, text=True, check=True)
    m = re.search(r"Collected : (\d+)", res.stderr)
    if m is None:
        raise RuntimeError(res.stderr[-2000:])
    return int(m.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--register", action="store_true",
                        help="authenticated registrations instead of calls")
    args = parser.parse_args()
    mode = "register" if args.register else "call"
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "loop.py"
        script.write_text(LOOP.format(bench=str(ROOT / "bench")))
        base = instructions(script, 100, Path(tmp) / "a.out", mode)
        more = instructions(script, 100 + args.calls, Path(tmp) / "b.out", mode)
    per_call = (more - base) / args.calls
    what = ("registration (REGISTER, 401, REGISTER, 200; harness with its MD5 included)"
            if args.register else "call (INVITE, 180, 200, ACK, BYE, 200; harness included)")
    print(f"{per_call / 1e6:.3f} M instructions per {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
