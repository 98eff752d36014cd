"""``hasip dispatcher ...``: a client of a running node's control API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from hasip.config import Config, ConfigError, parse_host_port


def call(address: tuple[str, int], path: str, body: dict[str, Any] | None = None,
         timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    host, port = address
    url = f"http://{host}:{port}{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def print_listing(destinations: list[dict[str, Any]]) -> None:
    """Kamailio's ``dispatcher.list`` as a table: flags are the state letter
    (A, I, T, D) and P/X for probed or not; removed nodes that still carry
    calls are marked draining."""
    print(f"{'set':>4}  {'flags':<5}  {'weight':>6}  {'prio':>4}  {'calls':>5}  "
          f"{'rtt_ms':>7}  {'uri':<32}  description")
    for d in destinations:
        note = "  (draining)" if d.get("draining") else ""
        print(f"{d['set']:>4}  {d['flags']:<5}  {d['weight']:>6}  {d['priority']:>4}  "
              f"{d.get('active_calls', 0):>5}  {d.get('probe_rtt_ms', 0):>7}  "
              f"{d['uri']:<32}  {d['description']}{note}")


def dispatcher_command(args: argparse.Namespace, config: Config) -> int:
    try:
        address = (parse_host_port(args.control, "--control") if args.control
                   else config.control_listen)
    except ConfigError as exc:
        print(f"hasip: {exc}", file=sys.stderr)
        return 2
    if address is None:
        print("hasip: the node has no control listener (control.listen is off)",
              file=sys.stderr)
        return 2
    action = args.action
    try:
        if action == "list":
            status, answer = call(address, "/dispatcher")
        elif action == "reload":
            status, answer = call(address, "/dispatcher/reload", {})
        else:
            body: dict[str, Any] = {"set": args.set, "uri": args.uri}
            if action == "add":
                body["attrs"] = args.attrs
            if action == "set-state":
                body["state"] = args.state
            status, answer = call(address, f"/dispatcher/{action}", body)
    except (OSError, ValueError) as exc:
        print(f"hasip: cannot reach the node's control API at {address[0]}:{address[1]}: "
              f"{exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"hasip: {answer.get('error', status)}", file=sys.stderr)
        return 1
    listing = answer.get("destinations")
    if isinstance(listing, list) and getattr(args, "json", False):
        print(json.dumps(listing, indent=1))
    elif isinstance(listing, list):
        print_listing(listing)
    else:
        print(f"reloaded: {listing} destinations")
    return 0
