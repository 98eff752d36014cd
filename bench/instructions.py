"""Deterministic cost of one call through the proxy: CPU instructions counted
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
from hasip.config import Config
from hasip.proxy.core import Proxy
from hasip.sip.uri import parse_sip_uri
proxy = Proxy(Config(next_hop=[parse_sip_uri("sip:127.0.0.1:5071")], metrics_listen=None),
              asyncio.new_event_loop())
rec = hotpath.Recorder()
proxy.transports.send = rec.send
listener = proxy.transports.listeners[0]
for n in range(int(sys.argv[1])):
    hotpath.one_call(proxy, listener, rec, n)
"""


def instructions(script: Path, calls: int, out: Path) -> int:
    res = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          sys.executable, str(script), str(calls)],
                         capture_output=True, text=True, check=True)
    m = re.search(r"Collected : (\d+)", res.stderr)
    if m is None:
        raise RuntimeError(res.stderr[-2000:])
    return int(m.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "loop.py"
        script.write_text(LOOP.format(bench=str(ROOT / "bench")))
        base = instructions(script, 100, Path(tmp) / "a.out")
        more = instructions(script, 100 + args.calls, Path(tmp) / "b.out")
    per_call = (more - base) / args.calls
    print(f"{per_call / 1e6:.3f} M instructions per call (INVITE, 180, 200, ACK, BYE, 200; "
          f"harness included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
