"""Registration benchmark: a SIPp phone registering with digest
authentication (REGISTER, 401, REGISTER with credentials, 200) through
hasip and, in the same run, through Kamailio (auth_db on db_text, usrloc in
memory, qop=auth with nonce-count checks, one worker, -x tlsf).

hasip runs on its defaults: the local users file, bindings written behind to
SQLite. With ``--radius`` a hasip that asks a FreeRADIUS started here
(rlm_digest) is measured too. One registration = both transactions; the
figure is registrations per CPU-second of the balancer (FreeRADIUS's CPU is
not counted: it is another machine in production).

Run: .venv/bin/python bench/register.py [--rates 500,1000,...] [--duration 8] [--radius]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ladder import Balancer, bench, free_port, process_tree, report  # noqa: E402

from hasip.demo.node import NodeProcess, options_ping  # noqa: E402
from hasip.demo.sipp import Sipp  # noqa: E402

USER, PASSWORD, REALM = "1001", "demo1001", "hasip"


class Hasip(Balancer):
    def __init__(self, work: Path, radius_port: int | None = None,
                 radius_secret: str = "") -> None:
        self.port = free_port()
        self.name = "hasip (radius)" if radius_port else "hasip (file)"
        lines = [f'[sip]\nlisten = ["udp:127.0.0.1:{self.port}"]',
                 f'[metrics]\nlisten = "127.0.0.1:{free_port()}"', '[log]\nlevel = "warning"',
                 '[control]\nlisten = "off"',
                 f'[location]\nsqlite_path = "{work / f"location-{self.port}.db"}"']
        if radius_port:
            lines.append(f'[auth]\nsource = "radius"\n[radius]\n'
                         f'servers = ["127.0.0.1:{radius_port}"]\nsecret = "{radius_secret}"')
        cfg = work / f"hasip-register-{self.port}.toml"
        cfg.write_text("\n".join(lines) + "\n")
        self.node = NodeProcess(cfg, work, "127.0.0.1", self.port)

    def start(self) -> None:
        self.node.start()

    def pids(self) -> list[int]:
        return process_tree(self.node.pid)

    def stop(self) -> None:
        self.node.kill()


class Kamailio(Balancer):
    name = "kamailio"

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.work = work
        db = work / "kamailio-db"
        db.mkdir(exist_ok=True)
        (db / "version").write_text("table_name(string) table_version(int)\nsubscriber:7\n")
        (db / "subscriber").write_text(
            "id(int,auto) username(string) domain(string) password(string) ha1(string) "
            f"ha1b(string)\n1:{USER}:{REALM}:{PASSWORD}:x:x\n")
        self.cmd = ["kamailio", "-f", str(ROOT / "bench" / "kamailio-register.cfg"), "-DD",
                    "-E", "-x", "tlsf", "-m", "512", "-M", "64", "-Y", str(work),
                    "-A", f"LISTEN=udp:127.0.0.1:{self.port}", "-A", f'DBURL="text://{db}"']
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.work / "kamailio-register.log", "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.work / "kamailio-register.log").read_text())
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


def phone(balancer: Balancer, work: Path, rate: int, calls: int) -> Sipp:
    return Sipp("register.xml", free_port(), work, remote=f"127.0.0.1:{balancer.port}",
                calls=calls, rate=rate, service=USER,
                extra=("-l", "100000", "-au", USER, "-ap", PASSWORD, "-key", "contact_port",
                       "5999", "-key", "expires", "3600"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="250,500,1000,1500,2000,3000,4000",
                        help="comma-separated registration rates to climb")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per step")
    parser.add_argument("--radius", action="store_true", help="also hasip with FreeRADIUS")
    parser.add_argument("--no-kamailio", action="store_true")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        print("sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hasip-bench-reg-"))
    print(f"registration benchmark, {args.duration:.0f} s per step, work dir {work}")
    radius = None
    balancers: list[Balancer] = [Hasip(work)]
    if args.radius:
        from tests.e2e.services import FreeRadius, freeradius_missing

        missing = freeradius_missing()
        if missing:
            print(missing, file=sys.stderr)
            return 2
        radius = FreeRadius(work, free_port(), {USER: PASSWORD}).start()
        balancers.append(Hasip(work, radius.port, radius.secret))
    if not args.no_kamailio and shutil.which("kamailio"):
        balancers.append(Kamailio(work))
    # the SIPp phone expects MD5 digests against the realm "hasip"
    assert hashlib.md5(f"{USER}:{REALM}:{PASSWORD}".encode()).hexdigest()
    try:
        results = bench(balancers, work, [int(r) for r in args.rates.split(",")],
                        args.duration, phone, "reg")
    finally:
        if radius is not None:
            radius.stop()
    report(results, "reg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
