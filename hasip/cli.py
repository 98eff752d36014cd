"""The ``hasip`` command line.

``hasip run -c FILE`` runs a node in the foreground; ``hasip check-config -c
FILE`` validates a configuration; ``hasip demo`` runs a node on the embedded
defaults with SIPp answering nodes and a SIPp caller, and prints what
happened. ``HASIP_CONFIG`` gives the configuration file when ``-c`` does not.
"""

from __future__ import annotations

import argparse
import os
import sys

from hasip import __version__
from hasip.config import Config, ConfigError, load_config
from hasip.log import setup_logging


def _load(path: str | None) -> Config:
    path = path or os.environ.get("HASIP_CONFIG")
    return load_config(path) if path else Config()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hasip", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"hasip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a node in the foreground")
    run.add_argument("-c", "--config", help="TOML configuration (default: embedded defaults)")
    check = sub.add_parser("check-config", help="validate a configuration and exit")
    check.add_argument("-c", "--config", required=False, help="TOML configuration")
    demo = sub.add_parser("demo", help="a node with SIPp answering nodes and a caller")
    demo.add_argument("--calls", type=int, default=200, help="calls to place (default 200)")
    demo.add_argument("--rate", type=int, default=50, help="calls per second (default 50)")
    args = parser.parse_args(argv)

    try:
        config = _load(args.config if args.command != "demo" else None)
    except ConfigError as exc:
        print(f"hasip: configuration error: {exc}", file=sys.stderr)
        return 2

    if args.command == "run":
        setup_logging(config.log_level, config.log_format)
    if args.command in ("check-config", "run"):
        from hasip.services import build

        try:
            # Reads the users file, the RADIUS dictionary...: errors before serving.
            services = build(config, durable=args.command == "run")
        except ConfigError as exc:
            print(f"hasip: configuration error: {exc}", file=sys.stderr)
            return 2
    if args.command == "check-config":
        listen = ", ".join(str(a) for a in config.listen)
        print(f"{config.path}: OK (node {config.node_name}, listen {listen}, "
              f"{len(config.next_hop)} next hop(s), auth {config.auth.source}, "
              f"locations {config.location.backend})")
        return 0
    if args.command == "run":
        from hasip.server import run_node

        return run_node(config, services)
    from hasip.demo.run import run_demo

    return run_demo(args.calls, args.rate)


if __name__ == "__main__":
    raise SystemExit(main())
