"""``hasip dispatcher ...`` and ``hasip bans ...``: clients of a running
node's control API.

The token comes from ``--token-file`` or the configuration's
``control.token_file``; the address from ``--control`` or
``control.listen``. Over TLS (the configuration's ``control.tls_cert``, or
any of ``--cert/--key/--cacert``) the node's certificate is checked against
``--cacert`` (default: ``control.tls_ca``, else the system's CAs) and must
name the address connected to; ``--cert/--key`` (default:
``control.client_cert/client_key``) is the operator's certificate.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from hasip.app.config import Config, ConfigError, parse_host_port
from keepalive.config import read_secret


@dataclass
class Client:
    address: tuple[str, int]
    token: str
    tls: ssl.SSLContext | None = None
    timeout: float = 5.0

    @property
    def base(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls is not None else 'http'}://{host}:{port}"

    def call(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, headers=headers,
                                     method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.tls) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read() or b"{}")
            except ValueError:
                answer = {}
            return exc.code, answer if isinstance(answer, dict) else {}


def client_tls(cacert: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cacert or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


def make_client(args: argparse.Namespace, config: Config, need_token: bool = True) -> Client:
    """The client the command line and the configuration describe;
    ConfigError says what is missing (a token only when ``need_token``)."""
    c = config.control
    address = (parse_host_port(args.control, "--control") if args.control else c.listen)
    if address is None:
        raise ConfigError("the node has no control listener (control.listen is off, or no "
                          "control.token_file): give --control HOST:PORT")
    host, port = address
    # A wildcard listener is reached on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if args.token_file:
        try:
            token = read_secret(args.token_file)
        except ValueError as exc:
            raise ConfigError(f"--token-file: {exc}") from None
    elif c.token:
        token = c.token
    elif not need_token:
        token = ""
    else:
        raise ConfigError("no token: give --token-file FILE, or -c with the node's "
                          "configuration (control.token_file)")
    tls = None
    if c.tls or args.cert or args.key or args.cacert:
        cert, key = args.cert or c.client_cert, args.key or c.client_key
        if bool(cert) != bool(key):
            raise ConfigError("give --cert and --key together (or control.client_cert and "
                              "control.client_key)")
        try:
            tls = client_tls(args.cacert or c.tls_ca, cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load the TLS files: {exc}") from None
    return Client((host, port), token, tls)


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


def request(args: argparse.Namespace, config: Config, path: str,
            body: dict[str, Any] | None = None) -> dict[str, Any] | int:
    """One call to the node's control API: its answer, or the exit code
    after saying on stderr what went wrong."""
    try:
        client = make_client(args, config)
    except ConfigError as exc:
        print(f"hasip: {exc}", file=sys.stderr)
        return 2
    try:
        status, answer = client.call(path, body)
    except (OSError, ValueError) as exc:
        print(f"hasip: cannot reach the node's control API at {client.base}: "
              f"{getattr(exc, 'reason', None) or exc}", file=sys.stderr)
        return 1
    if status in (401, 403):
        print(f"hasip: the node refused the request ({status}): {answer.get('error', '')}",
              file=sys.stderr)
        return 1
    if status != 200:
        print(f"hasip: {answer.get('error', status)}", file=sys.stderr)
        return 1
    return answer


def dispatcher_command(args: argparse.Namespace, config: Config) -> int:
    action = args.action
    body: dict[str, Any] | None = None
    if action == "reload":
        body = {}
    elif action != "list":
        body = {"set": args.set, "uri": args.uri}
        if action == "add":
            body["attrs"] = args.attrs
        if action == "set-state":
            body["state"] = args.state
    answer = request(args, config, "/dispatcher" if action == "list" else f"/dispatcher/{action}",
                     body)
    if isinstance(answer, int):
        return answer
    listing = answer.get("destinations")
    if isinstance(listing, list) and getattr(args, "json", False):
        print(json.dumps(listing, indent=1))
    elif isinstance(listing, list):
        print_listing(listing)
    else:
        print(f"reloaded: {listing} destinations")
    return 0


def bans_command(args: argparse.Namespace, config: Config) -> int:
    """``hasip bans list|lift IP|add IP``: the sources the cluster drops."""
    if args.action == "list":
        answer = request(args, config, "/bans")
        if isinstance(answer, int):
            return answer
        bans = answer.get("bans") or []
        if args.json:
            print(json.dumps(bans, indent=1))
            return 0
        print(f"{'source':<40}  {'reason':<7}  {'strikes':>7}  {'left_s':>8}  by")
        for b in bans:
            print(f"{b['ip']:<40}  {b['reason']:<7}  {b['strikes']:>7}  "
                  f"{b['seconds_left']:>8}  {b['by']}")
        return 0
    body: dict[str, Any] = {"ip": args.ip}
    if args.action == "add":
        body["seconds"] = args.seconds
    answer = request(args, config, f"/bans/{args.action}", body)
    if isinstance(answer, int):
        return answer
    print(f"{args.ip}: {'lifted' if args.action == 'lift' else 'banned'}")
    return 0


def ul_command(args: argparse.Namespace, config: Config) -> int:
    """``hasip ul show [AOR]`` (kamcmd ul.dump / ul.lookup) and ``hasip ul
    rm AOR [--contact URI]`` (ul.rm): the registrations a node holds."""
    if args.action == "rm":
        body: dict[str, Any] = {"aor": args.aor}
        if args.contact:
            body["contact"] = args.contact
        answer = request(args, config, "/location/remove", body)
        if isinstance(answer, int):
            return answer
        print(f"{args.aor}: {answer.get('removed', 0)} binding(s) removed")
        return 0
    answer = request(args, config, "/location/bindings")
    if isinstance(answer, int):
        return answer
    bindings = [b for b in answer.get("bindings") or []
                if not args.aor or b.get("aor") == args.aor]
    if args.output == "json":
        print(json.dumps(bindings, indent=1, sort_keys=True))
    else:
        now = time.time()
        print(f"{'aor':<24}  {'expires_s':>9}  {'q':>4}  {'nat':<3}  {'received':<28}  contact")
        for b in bindings:
            left = max(0, round(float(b.get("expires", 0)) - now))
            print(f"{b.get('aor', ''):<24}  {left:>9}  {b.get('q', 1.0):>4}  "
                  f"{'yes' if b.get('nat') else 'no':<3}  {b.get('received') or '-':<28}  "
                  f"{b.get('contact', '')}")
    if args.aor and not bindings:
        print(f"hasip: {args.aor} is not registered", file=sys.stderr)
        return 1
    return 0


def log_level_command(args: argparse.Namespace, config: Config) -> int:
    """``hasip log-level [LEVEL]``: the level a running node logs at, or
    change it now (kamcmd corex.debug); not kept across a restart."""
    answer = request(args, config, "/log-level",
                     {"level": args.level} if args.level else None)
    if isinstance(answer, int):
        return answer
    if args.level:
        print(f"log level {answer['level']} (was {answer['was']})")
    else:
        print(answer["level"])
    return 0


def health_command(args: argparse.Namespace, config: Config) -> int:
    """``hasip health``: 0 when the node is ready (``--live``: when it
    answers at all), 1 when it is not (what failed on stderr), 2 when the
    command itself cannot run. For probes, the Ansible role and scripts."""
    try:
        client = make_client(args, config, need_token=False)
    except ConfigError as exc:
        print(f"hasip: {exc}", file=sys.stderr)
        return 2
    path = "/healthz" if args.live else "/readyz"
    try:
        status, answer = client.call(path)
    except (OSError, ValueError) as exc:
        print(f"hasip: not serving: cannot reach the control API at {client.base}: "
              f"{getattr(exc, 'reason', None) or exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps({**answer, "http_status": status}, sort_keys=True))
    if args.live:
        if status == 200 and args.output != "json":
            print("serving")
        return 0 if status == 200 else 1
    checks = answer.get("checks", {}) if isinstance(answer.get("checks"), dict) else {}
    failed = sorted(name for name, ok in checks.items() if not ok)
    if status == 200 and not failed:
        if args.output != "json":
            print("ready")
        return 0
    if args.output != "json":
        print(f"not ready: {', '.join(failed) or answer.get('error', status)}", file=sys.stderr)
    return 1
