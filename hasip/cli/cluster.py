"""``hasip status``, ``hasip failover VIP --to NODE``, ``hasip drain NODE`` and
``hasip undrain NODE``: the operator's view of the cluster and its levers,
read and written straight in ZooKeeper (no node needs to answer).

``failover`` writes the VIP's handover request; the target says it is ready,
the owner lets go, the target takes the VIP; the command waits for that and
reports the gap between the old owner's release and the new owner's
takeover. ``drain`` sets the node's drain flag: it hands its VIPs over the
same way and stops contending until ``undrain``.

The znodes are readable and writable by the cluster's credentials only:
these commands take them from the node's configuration (``-c``:
``cluster.zookeeper_user`` and its password) or from ``--zookeeper-user``
and ``--zookeeper-password-file``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError

from hasip.app.config import Config
from keepalive.config import Credentials, read_secret
from keepalive.ranking import ranked
from keepalive.zk import auth_args


def credentials(args: argparse.Namespace, config: Config) -> Credentials:
    """From the command line, else the configuration; ValueError says what
    is missing."""
    if args.zookeeper_user or args.zookeeper_password_file:
        if not (args.zookeeper_user and args.zookeeper_password_file):
            raise ValueError("give --zookeeper-user and --zookeeper-password-file together")
        return Credentials(args.zookeeper_user, read_secret(args.zookeeper_password_file))
    found = config.cluster.credentials()
    if found is None:
        raise ValueError("no ZooKeeper credentials: give -c with the node's configuration "
                         "(cluster.zookeeper_user, cluster.zookeeper_password_file) or "
                         "--zookeeper-user and --zookeeper-password-file")
    return found


def _client(args: argparse.Namespace, config: Config) -> KazooClient | None:
    hosts = args.zookeeper or config.cluster.zookeeper
    if not hosts:
        print("hasip: no ZooKeeper: give --zookeeper or cluster.zookeeper in the config",
              file=sys.stderr)
        return None
    try:
        creds = credentials(args, config)
    except ValueError as exc:
        print(f"hasip: {exc}", file=sys.stderr)
        return None
    zk = KazooClient(hosts=hosts, timeout=5.0, **auth_args(creds))
    zk.start(timeout=10)
    return zk


def _json(data: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _read(zk: KazooClient, path: str) -> dict[str, Any] | None:
    """A znode's JSON object, or None when it does not exist. One call:
    a check with exists() first races with the node being deleted."""
    try:
        return _json(zk.get(path)[0])
    except NoNodeError:
        return None


def _children(zk: KazooClient, path: str) -> list[str]:
    try:
        return list(zk.get_children(path))
    except NoNodeError:
        return []


def snapshot(zk: KazooClient, root: str) -> dict[str, Any]:
    """Nodes (membership, health, drain) and VIPs (owner, candidates)."""
    nodes: dict[str, Any] = {}
    for name in sorted(_children(zk, f"{root}/nodes")):
        info = _read(zk, f"{root}/nodes/{name}")
        if info is not None:
            nodes[name] = info
    drained = _children(zk, f"{root}/drain")
    vips: dict[str, Any] = {}
    for name in sorted(_children(zk, f"{root}/vips")):
        base = f"{root}/vips/{name}"
        owner = _read(zk, f"{base}/owner") or {}
        cands = _children(zk, f"{base}/candidates")
        handover = _read(zk, f"{base}/handover") or {}
        vips[name] = {"owner": owner.get("node"), "since": owner.get("since"),
                      "up": bool(owner.get("up")),
                      "candidates": [c.node for c in ranked(cands)],
                      "handover_to": handover.get("to")}
    return {"zookeeper": {"state": zk.state, "hosts": zk.hosts}, "nodes": nodes,
            "drained": sorted(drained), "vips": vips}


def print_status(snap: dict[str, Any]) -> None:
    print(f"zookeeper: {snap['zookeeper']['state']}")
    print(f"{'node':<16} {'healthy':<8} {'draining':<9} {'state':<24} owns")
    for name, info in snap["nodes"].items():
        print(f"{name:<16} {info.get('healthy')!s:<8} {info.get('draining')!s:<9} "
              f"{_sync_text(info.get('sync')):<24} {', '.join(info.get('owned', [])) or '-'}")
    for name in snap["drained"]:
        if name not in snap["nodes"]:
            print(f"{name:<16} {'down':<8} {'True':<9} {'-':<24} -")
    print(f"{'vip':<24} {'owner':<16} candidates (in rank)")
    for name, info in snap["vips"].items():
        extra = f"  (handover to {info['handover_to']})" if info.get("handover_to") else ""
        owner = info["owner"] or "-"
        if info["owner"] and not info.get("up"):
            owner += " (taking)"
        print(f"{name:<24} {owner:<16} {', '.join(info['candidates'])}{extra}")


def _sync_text(sync: Any) -> str:
    """A node's replication state: synced / syncing (N records) / partial."""
    if not isinstance(sync, dict):
        return "-"
    state = str(sync.get("state", "?"))
    if state == "syncing":
        return f"syncing ({sync.get('records', 0)} records)"
    if state in ("synced", "partial") and "seconds" in sync:
        return f"{state} in {float(sync['seconds']):.1f} s"
    return state


def failover(zk: KazooClient, root: str, vip: str, to: str, timeout: float) -> int:
    base = f"{root}/vips/{vip}"
    if not zk.exists(base):
        print(f"hasip: no VIP {vip!r} in the cluster", file=sys.stderr)
        return 1
    snap = snapshot(zk, root)["vips"][vip]
    if to not in snap["candidates"]:
        print(f"hasip: {to} is not a candidate for {vip} (candidates: "
              f"{', '.join(snap['candidates']) or 'none'})", file=sys.stderr)
        return 1
    if snap["owner"] == to:
        print(f"{vip}: {to} owns it already")
        return 0
    data = json.dumps({"to": to, "at": time.time()}).encode()
    try:
        zk.create(f"{base}/handover", data, makepath=True)
    except NodeExistsError:
        zk.set(f"{base}/handover", data)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owner = _read(zk, f"{base}/owner") or {}
        if owner.get("node") == to and owner.get("up"):
            released = _read(zk, f"{base}/released") or {}
            gap = (float(owner["since"]) - float(released.get("at", owner["since"]))) * 1000
            print(f"{vip}: moved to {to}; gap between release and takeover {gap:.1f} ms")
            return 0
        time.sleep(0.01)
    try:
        zk.delete(f"{base}/handover")
    except NoNodeError:
        pass
    print(f"hasip: {vip} did not move to {to} within {timeout:.0f} s; request withdrawn",
          file=sys.stderr)
    return 1


def drain(zk: KazooClient, root: str, node: str, on: bool, timeout: float) -> int:
    path = f"{root}/drain/{node}"
    if on:
        try:
            zk.create(path, b"", makepath=True)
        except NodeExistsError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owned = [v for v, info in snapshot(zk, root)["vips"].items()
                     if info["owner"] == node]
            if not owned:
                print(f"{node}: drained (owns no VIP, does not contend)")
                return 0
            time.sleep(0.05)
        print(f"hasip: {node} still owns a VIP after {timeout:.0f} s", file=sys.stderr)
        return 1
    try:
        zk.delete(path)
    except NoNodeError:
        pass
    print(f"{node}: undrained (contends again)")
    return 0


def cluster_command(args: argparse.Namespace, config: Config) -> int:
    zk = _client(args, config)
    if zk is None:
        return 2
    root = args.root or config.cluster.root
    try:
        return _run(args, zk, root)
    except NoAuthError:
        print(f"hasip: ZooKeeper refused access to {root}: these are not the cluster's "
              "credentials (cluster.zookeeper_user and its password)", file=sys.stderr)
        return 1
    finally:
        zk.stop()
        zk.close()


def _run(args: argparse.Namespace, zk: KazooClient, root: str) -> int:
    if args.command == "status":
        snap = snapshot(zk, root)
        if args.json:
            print(json.dumps(snap, indent=1))
        else:
            print_status(snap)
        return 0
    if args.command == "failover":
        return failover(zk, root, args.vip, args.to, args.timeout)
    return drain(zk, root, args.node, args.command == "drain", args.timeout)


def add_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help="a node's configuration (for cluster.zookeeper)")
        p.add_argument("--zookeeper", default="", help="HOST:PORT[,...] (default: the config's)")
        p.add_argument("--root", default="", help="the cluster's ZooKeeper path (default /hasip)")
        p.add_argument("--zookeeper-user", default="",
                       help="the cluster's ZooKeeper user (default: cluster.zookeeper_user)")
        p.add_argument("--zookeeper-password-file", default="",
                       help="a file (mode 0600) with its password (default: the config's)")

    st = sub.add_parser("status", help="nodes, their health, VIP owners, ZooKeeper state")
    common(st)
    st.add_argument("--json", action="store_true")
    fo = sub.add_parser("failover", help="move a VIP to a node (graceful handover)")
    common(fo)
    fo.add_argument("vip", help="the VIP's name (its address by default)")
    fo.add_argument("--to", required=True, help="the node to move it to")
    fo.add_argument("--timeout", type=float, default=10.0)
    for name, text in (("drain", "give up all VIPs and stop contending"),
                       ("undrain", "contend for VIPs again")):
        p = sub.add_parser(name, help=text)
        common(p)
        p.add_argument("node")
        p.add_argument("--timeout", type=float, default=10.0)
