"""``python -m keepalive``: VIP ownership in front of any service.

    python -m keepalive --node n1 --zookeeper 198.19.0.10:2181 \\
        --zookeeper-user hasip --zookeeper-password-file /etc/keepalive/zk.password \\
        --vip 198.18.0.100/24@eth0,priority=100 --check "curl -fs http://127.0.0.1:8080/ready"

The node contends for its VIPs while the check command succeeds (exit 0),
gives them up when it fails ``--fall`` times in a row, and contends again
after ``--rise`` successes. SIGTERM releases the VIPs and leaves.
``--on-acquired`` and ``--on-released`` run a command as the node starts
and stops holding a VIP (promote a Redis, say; keepalive/notify.py).

The ZooKeeper credentials are required: the node authenticates with them
and its znodes are readable and writable by their holders only. The
password comes from a file (mode 0600, 16 characters or more), never from
the command line, where any local user could read it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from keepalive.config import Credentials, KeepaliveConfig, Timing, parse_vip, read_secret
from keepalive.manager import Keepalive
from keepalive.notify import Notifier


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keepalive", description=__doc__.split("\n")[0])
    p.add_argument("--node", required=True, help="this node's name (letters, digits, . -)")
    p.add_argument("--zookeeper", required=True, help="HOST:PORT[,HOST:PORT...]")
    p.add_argument("--vip", action="append", default=[], required=True,
                   help="ADDRESS/PREFIX@INTERFACE[,priority=N][,name=X][,hold=tun|interface]")
    p.add_argument("--zookeeper-user", required=True,
                   help="the cluster's ZooKeeper digest user")
    p.add_argument("--zookeeper-password-file", required=True,
                   help="a file (mode 0600) holding that user's password")
    p.add_argument("--root", default="/hasip", help="ZooKeeper path of the cluster")
    # One option per Timing field, with its default (see keepalive.config).
    for name, value in vars(Timing()).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", help=f"(default {value})")
        else:
            p.add_argument(flag, type=type(value), default=value, help=f"(default {value})")
    p.add_argument("--check", default="", help="health-check command (none: always healthy)")
    p.add_argument("--check-interval", type=float, default=1.0)
    p.add_argument("--check-timeout", type=float, default=2.0)
    p.add_argument("--rise", type=int, default=1)
    p.add_argument("--fall", type=int, default=2)
    p.add_argument("--on-acquired", default="",
                   help="command run when this node starts holding a VIP (keepalived's "
                        "notify_master); KEEPALIVE_VIP, KEEPALIVE_VIP_NAME in its environment")
    p.add_argument("--on-released", default="",
                   help="command run when this node stops holding a VIP (notify_backup)")
    p.add_argument("--metrics", default="", help="HOST:PORT for Prometheus metrics")
    p.add_argument("--log-format", choices=("logfmt", "json"), default="logfmt")
    return p


async def _check(cmd: str, timeout: float) -> bool:
    proc = await asyncio.create_subprocess_shell(cmd, stdout=asyncio.subprocess.DEVNULL,
                                                 stderr=asyncio.subprocess.DEVNULL)
    try:
        return await asyncio.wait_for(proc.wait(), timeout) == 0
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False


async def _health_loop(node: Keepalive, args: argparse.Namespace) -> None:
    if not args.check:
        node.set_healthy(True)
        return
    ok = bad = 0
    while True:
        if await _check(args.check, args.check_timeout):
            ok, bad = ok + 1, 0
            if ok >= args.rise:
                node.set_healthy(True)
        else:
            ok, bad = 0, bad + 1
            if bad >= args.fall:
                node.set_healthy(False)
        await asyncio.sleep(args.check_interval)


async def run(args: argparse.Namespace) -> int:
    timing = Timing(**{name: getattr(args, name) for name in Timing.__dataclass_fields__})
    credentials = Credentials(args.zookeeper_user,
                              read_secret(args.zookeeper_password_file))
    config = KeepaliveConfig(node=args.node, zookeeper=args.zookeeper,
                             vips=[parse_vip(v) for v in args.vip], root=args.root,
                             timing=timing, credentials=credentials)
    notifier = Notifier(args.on_acquired, args.on_released)
    node = Keepalive(config, notifier.acquired, notifier.released)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await node.start()
    health = loop.create_task(_health_loop(node, args))
    await stop.wait()
    health.cancel()
    await node.stop()
    notifier.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hasip.telemetry.log import setup_logging

    setup_logging("info", args.log_format)
    try:
        if args.metrics:
            from prometheus_client import start_http_server

            host, _, port = args.metrics.rpartition(":")
            start_http_server(int(port), addr=host or "0.0.0.0")
        return asyncio.run(run(args))
    except ValueError as exc:
        print(f"keepalive: {exc}", file=sys.stderr)
        return 2
