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
from typing import TYPE_CHECKING

from hasip import __version__
from hasip.app.config import Config, ConfigError, load_config
from hasip.telemetry.log import setup_logging

if TYPE_CHECKING:
    from hasip.dispatcher.dispatcher import Dispatcher


def _load(path: str | None) -> Config:
    path = path or os.environ.get("HASIP_CONFIG")
    return load_config(path) if path else Config()


def routing_summary(config: Config, dispatcher: Dispatcher) -> list[str]:
    """What ``check-config`` says routes calls for users not registered here:
    the dispatcher's destinations when it has its own, else routing.next_hop
    (the dispatcher's set then); never both, as only one of them is used."""
    ds = config.dispatcher
    if not ds.destinations:
        hops = config.routing.next_hop
        if not hops:
            return ["calls for unregistered users: no next hop (answered 404)"]
        return [f"calls for unregistered users: routing.next_hop ({ds.algorithm}): "
                + ", ".join(u.text for u in hops)]
    lines = [f"calls for unregistered users: dispatcher set {ds.set} ({ds.algorithm})"
             + ("" if ds.set in dispatcher.sets else ", which has no destination (answered 503)")]
    for set_id in sorted(dispatcher.sets):
        uris = ", ".join(d.key for d in dispatcher.sets[set_id].destinations)
        lines.append(f"  dispatcher set {set_id}: {uris}")
    return lines


def _control_client_arguments(parser: argparse.ArgumentParser) -> None:
    """How a command reaches a node's control API."""
    parser.add_argument("-c", "--config", help="the node's configuration (for control.listen, "
                                               "control.token_file)")
    parser.add_argument("--control", help="HOST:PORT of the node's control API "
                                          "(default: control.listen of the configuration)")
    parser.add_argument("--token-file", default="", help="a file (mode 0600) holding the API "
                                                         "token (default: control.token_file)")
    parser.add_argument("--cacert", default="", help="CA that signed the node's certificate "
                                                     "(TLS; default: control.tls_ca)")
    parser.add_argument("--cert", default="", help="client certificate (mutual TLS; default: "
                                                   "control.client_cert)")
    parser.add_argument("--key", default="", help="its key (default: control.client_key)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hasip", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"hasip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a node in the foreground")
    run.add_argument("-c", "--config", help="TOML configuration (default: embedded defaults)")
    check = sub.add_parser("check-config", help="validate a configuration and exit")
    check.add_argument("-c", "--config", required=False, help="TOML configuration")
    ds = sub.add_parser("dispatcher", help="list or change a running node's Asterisk nodes")
    _control_client_arguments(ds)
    ds_sub = ds.add_subparsers(dest="action", required=True)
    lst = ds_sub.add_parser("list", help="every destination with its state and calls")
    lst.add_argument("--json", action="store_true", help="the control API's JSON as is")
    add = ds_sub.add_parser("add", help="add a node (in rotation at once)")
    add.add_argument("set", type=int)
    add.add_argument("uri")
    add.add_argument("attrs", nargs="?", default="",
                     help="weight=50;priority=..;maxload=..;socket=..;description=..")
    rem = ds_sub.add_parser("remove", help="take a node out (its calls go on)")
    rem.add_argument("set", type=int)
    rem.add_argument("uri")
    st = ds_sub.add_parser("set-state", help="active, inactive or disabled")
    st.add_argument("set", type=int)
    st.add_argument("uri")
    st.add_argument("state", choices=("active", "inactive", "disabled"))
    ds_sub.add_parser("reload", help="re-read dispatcher.list_file")
    bans = sub.add_parser("bans", help="list, lift or add the sources a node (and its "
                                       "cluster) drops")
    _control_client_arguments(bans)
    bans_sub = bans.add_subparsers(dest="action", required=True)
    bl = bans_sub.add_parser("list", help="every source banned now")
    bl.add_argument("--json", action="store_true", help="the control API's JSON as is")
    lift = bans_sub.add_parser("lift", help="let a source back in (on every node)")
    lift.add_argument("ip")
    badd = bans_sub.add_parser("add", help="ban a source by hand (on every node)")
    badd.add_argument("ip")
    badd.add_argument("--seconds", type=float, default=3600.0, help="how long (default 3600)")
    ul = sub.add_parser("ul", help="the registrations a node holds (show, rm)")
    _control_client_arguments(ul)
    ul_sub = ul.add_subparsers(dest="action", required=True)
    ul_show = ul_sub.add_parser("show", help="every binding, or an AoR's (exit 1: none)")
    ul_show.add_argument("aor", nargs="?", default="")
    ul_show.add_argument("-o", "--output", choices=("table", "json"), default="table")
    ul_rm = ul_sub.add_parser("rm", help="remove an AoR's bindings on every node")
    ul_rm.add_argument("aor")
    ul_rm.add_argument("--contact", default="", help="only the binding with this contact")
    lvl = sub.add_parser("log-level", help="the level a running node logs at, or set it now")
    _control_client_arguments(lvl)
    lvl.add_argument("level", nargs="?", choices=("debug", "info", "warning", "error"))
    health = sub.add_parser("health", help="is the node ready (exit 0) or not (1): "
                                           "serving, ZooKeeper, synced, not drained")
    _control_client_arguments(health)
    health.add_argument("--live", action="store_true",
                        help="only whether the node answers (liveness)")
    health.add_argument("-o", "--output", choices=("text", "json"), default="text")
    from hasip.cli.cluster import add_parsers

    add_parsers(sub)
    comp = sub.add_parser("compile", help="compile the hot path with mypyc (or clean, status)")
    from hasip.app import compiled

    compiled.add_arguments(comp)
    demo = sub.add_parser("demo", help="a node with SIPp answering nodes and a caller")
    demo.add_argument("--calls", type=int, default=200, help="calls to place (default 200)")
    demo.add_argument("--rate", type=int, default=50, help="calls per second (default 50)")
    args = parser.parse_args(argv)

    if args.command == "compile":
        return compiled.run(args)
    try:
        config = _load(args.config if args.command != "demo" else None)
    except ConfigError as exc:
        print(f"hasip: configuration error: {exc}", file=sys.stderr)
        return 2

    if args.command == "dispatcher":
        from hasip.cli.control import dispatcher_command

        return dispatcher_command(args, config)
    if args.command == "log-level":
        from hasip.cli.control import log_level_command

        return log_level_command(args, config)
    if args.command == "ul":
        from hasip.cli.control import ul_command

        return ul_command(args, config)
    if args.command == "health":
        from hasip.cli.control import health_command

        return health_command(args, config)
    if args.command == "bans":
        from hasip.cli.control import bans_command

        return bans_command(args, config)
    if args.command in ("status", "failover", "drain", "undrain"):
        from hasip.cli.cluster import cluster_command

        return cluster_command(args, config)
    if args.command == "run":
        setup_logging(config.log.level, config.log.format)
    if args.command in ("check-config", "run"):
        from hasip.app.services import build

        try:
            # Reads the users file, the RADIUS dictionary...: errors before serving.
            services = build(config, durable=args.command == "run")
        except ConfigError as exc:
            print(f"hasip: configuration error: {exc}", file=sys.stderr)
            return 2
    if args.command == "check-config":
        listen = ", ".join(str(a) for a in config.sip.listen)
        ctl = config.control.listen
        control = "off" if ctl is None else (
            f"{ctl[0]}:{ctl[1]}" + (" TLS" if config.control.tls else ""))
        print(f"{config.path}: OK (node {config.node.name}, listen {listen}, "
              f"auth {config.auth.source}, "
              f"locations {config.location.backend}, control API {control})")
        for line in routing_summary(config, services.dispatcher):
            print(line)
        return 0
    if args.command == "run":
        from hasip.app.node import run_node

        return run_node(config, services)
    from hasip.demo.run import run_demo

    return run_demo(args.calls, args.rate)


if __name__ == "__main__":
    raise SystemExit(main())
