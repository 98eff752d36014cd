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
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ladder import Balancer, HasipBalancer, KamailioBalancer, bench, free_port, report  # noqa: E402

from hasip.demo.sipp import Sipp  # noqa: E402

USER, PASSWORD, REALM = "1001", "demo1001", "hasip"


def hasip(work: Path, radius_port: int | None = None, radius_secret: str = "") -> Balancer:
    if not radius_port:
        return HasipBalancer(work, "hasip (file)", '[auth]\ndemo_users = true\n')
    return HasipBalancer(work, "hasip (radius)",
                         f'[auth]\nsource = "radius"\n[radius]\n'
                         f'servers = ["127.0.0.1:{radius_port}"]\nsecret = "{radius_secret}"\n')


def kamailio(work: Path) -> Balancer:
    db = work / "kamailio-db"
    db.mkdir(exist_ok=True)
    (db / "version").write_text("table_name(string) table_version(int)\nsubscriber:7\n")
    (db / "subscriber").write_text(
        "id(int,auto) username(string) domain(string) password(string) ha1(string) "
        f"ha1b(string)\n1:{USER}:{REALM}:{PASSWORD}:x:x\n")
    return KamailioBalancer(work, ROOT / "bench" / "kamailio-register.cfg",
                            [f'DBURL="text://{db}"'], 512)


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
    balancers: list[Balancer] = [hasip(work)]
    if args.radius:
        from tests.e2e.services import FreeRadius, freeradius_missing

        missing = freeradius_missing()
        if missing:
            print(missing, file=sys.stderr)
            return 2
        radius = FreeRadius(work, free_port(), {USER: PASSWORD}).start()
        balancers.append(hasip(work, radius.port, radius.secret))
    if not args.no_kamailio and shutil.which("kamailio"):
        balancers.append(kamailio(work))
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
