"""Fixtures for end-to-end tests: hasip nodes as child processes on loopback,
SIPp as callers and answering nodes, raw UDP/TCP peers for precise checks."""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hasip.demo.node import NodeProcess, write_secret
from hasip.demo.sipp import Sipp, sipp_binary
from hasip.demo.zookeeper import ZooKeeper, zookeeper_missing
from tests.e2e.natnet import nat_network  # noqa: F401 - a fixture for the NAT tests
from tests.e2e.services import (
    FreeRadius,
    MariaDB,
    Rtpengine,
    free_port,
    freeradius_missing,
    mariadb_missing,
    rtpengine_missing,
)
from tests.e2e.sipphone import Phone

pytestmark = pytest.mark.e2e


# -- the build under test ------------------------------------------------------

def build_problem() -> str:
    """Why the nodes would not run as shipped (the compiled hot path on
    uvloop); "" when they would."""
    from hasip.app import compiled

    if not compiled.state["compiled"]:
        return (f"the compiled build is not in use ({compiled.state['reason']}): run "
                "`.venv/bin/hasip compile build` (or set HASIP_TEST_PURE=1 to test the "
                "sources on purpose)")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "uvloop is not installed: the nodes would not run on the shipped event loop"
    return ""


@pytest.fixture(scope="session", autouse=True)
def shipped_build() -> None:
    """The end-to-end tests run the build users run: the compiled hot path
    on uvloop. A stale or missing build stops the run here, rather than
    testing the interpreted sources unnoticed; HASIP_TEST_PURE=1 allows it."""
    if os.environ.get("HASIP_TEST_PURE") == "1":
        return
    problem = build_problem()
    if problem:
        pytest.exit(f"end-to-end tests refused: {problem}", returncode=4)


# -- no error in any node's log ------------------------------------------------

# A line a hasip node logs at error level (logfmt or JSON), or a traceback.
# Anchored at the start: a value from the network may read "level=error".
ERROR_LINE = re.compile(r'^ts=\S+ level=error |^\{"ts": [^,]+, "level": "error"'
                        r'|^Traceback \(most recent call last\)')
# How far each log file under the session's temporary directory was read.
_log_offsets: dict[Path, int] = {}


def new_error_lines(root: Path) -> list[str]:
    """Error lines written to the ``*.log`` files under ``root`` since the
    last call (every log there: hasip nodes' own, SIPp's and the servers'
    do not write hasip's format)."""
    found = []
    for path in sorted(root.rglob("*.log")):
        try:
            with path.open("rb") as fh:
                fh.seek(_log_offsets.get(path, 0))
                data = fh.read()
        except OSError:
            continue
        _log_offsets[path] = _log_offsets.get(path, 0) + len(data)
        for line in data.decode("utf-8", "replace").splitlines():
            if ERROR_LINE.search(line):
                found.append(f"{path.name}: {line[:2000]}")
    return found


@pytest.fixture(autouse=True)
def no_errors_logged(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails a test whose nodes logged an error-level line or a traceback
    (read from the log files the nodes write under the session's temporary
    directory, after the test and its fixtures ended). A test that provokes
    errors on purpose says so: ``@pytest.mark.allow_errors("event", ...,
    reason=...)`` allows the lines that contain one of the strings given
    (any line when none is)."""
    # Whatever was logged since the last test counts (a module's cluster
    # started for this one logged it).
    root = tmp_path_factory.getbasetemp()
    yield
    errors = new_error_lines(root)
    marker = request.node.get_closest_marker("allow_errors")
    if marker is not None:
        allowed = marker.args
        errors = [e for e in errors if allowed and not any(a in e for a in allowed)]
    if errors:
        pytest.fail("a node logged errors:\n" + "\n".join(errors[:20]), pytrace=False)


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    m = re.search("^" + pattern + "$", text, re.M)
    return float(m.group(1)) if m else 0.0


def metric_total(text: str, name: str) -> float:
    """The sum of a metric's samples over all its label sets."""
    pattern = "^" + re.escape(name) + r"(?:\{[^}]*\})? (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    return repr(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class NodeFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.nodes: list[NodeProcess] = []

    def __call__(self, next_hop: list[str] | None = None, host: str = "127.0.0.1",
                 **sections: dict[str, Any]) -> NodeProcess:
        port = free_port(host)
        hostref = f"[{host}]" if ":" in host else host
        # The control API's token, in a file only its owner reads (as the node requires).
        token_file = self.tmp_path / f"control-{port}.token"
        token = write_secret(token_file)
        cfg: dict[str, dict[str, Any]] = {
            "node": {"name": f"test-{port}"},
            "sip": {"listen": [f"udp:{hostref}:{port}", f"tcp:{hostref}:{port}"]},
            "routing": {"next_hop": next_hop or []},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            "control": {"listen": f"127.0.0.1:{free_port()}", "token_file": str(token_file)},
            "log": {"level": "info"},
            # Callers on loopback act as trusted gateways unless a test says
            # otherwise (the authentication tests do).
            "auth": {"trusted": ["127.0.0.0/8", "::1/128"]},
            "location": {"sqlite_path": str(self.tmp_path / f"location-{port}.db")},
            # Raw-socket next hops would see OPTIONS probes among the messages
            # a test waits for: the dispatcher tests turn probing on.
            "dispatcher": {"probe_interval": 0.0},
            # The tests' many phones share 127.0.0.1 and register faster than
            # an office would: not rate-limited (still authenticated). The
            # defences' tests use other loopback addresses.
            "security": {"exempt": ["127.0.0.1/32"]},
        }
        for name, values in sections.items():
            cfg.setdefault(name, {}).update(values)
        auth = cfg["auth"]
        if "users_file" not in auth and auth.get("source", "file") == "file":
            auth.setdefault("demo_users", True)   # the demo accounts, as the demo uses
        # Listen addresses may name the node's port: "udp:198.19.0.1:{port}".
        cfg["sip"]["listen"] = [a.format(port=port) for a in cfg["sip"]["listen"]]
        if "destinations" in cfg["dispatcher"]:
            cfg["dispatcher"]["destinations"] = [
                d.format(port=port) for d in cfg["dispatcher"]["destinations"]]
        path = write_config(self.tmp_path / f"node-{port}.toml", cfg)
        node = NodeProcess(path, self.tmp_path, host, port,
                           metrics_url="http://" + cfg["metrics"]["listen"] + "/metrics")
        node.control = cfg["control"]["listen"]
        node.token = token
        self.nodes.append(node)
        return node.start()


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path)
    yield factory
    for node in factory.nodes:
        node.kill()


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Callable[..., Sipp]]:
    if sipp_binary() is None:
        pytest.skip("sipp is not installed (Debian package sip-tester)")
    started: list[Sipp] = []

    def start(scenario: str, local_port: int | None = None, **kwargs: Any) -> Sipp:
        port = local_port or free_port()
        proc = Sipp(scenario, port, tmp_path, **kwargs).start()
        proc.port = port  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


class UdpPeer:
    """A raw SIP endpoint on a UDP socket, for tests that check single messages."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.hostref = f"[{host}]" if ":" in host else host

    def send(self, data: bytes, port: int, host: str | None = None) -> None:
        self.sock.sendto(data, (host or self.host, port))

    def recv(self, timeout: float = 2.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recvfrom(65535)[0]
        except OSError:
            return None

    def recv_all(self, window: float) -> list[bytes]:
        out = []
        while (msg := self.recv(window)) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def udp_peer() -> Iterator[Callable[..., UdpPeer]]:
    peers: list[UdpPeer] = []

    def make(host: str = "127.0.0.1", port: int = 0) -> UdpPeer:
        peer = UdpPeer(host, port)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


def invite(peer: UdpPeer, target: str, *, branch: str | None = None, call_id: str | None = None,
           extra: str = "", method: str = "INVITE", to_tag: str = "",
           max_forwards: int = 70) -> bytes:
    """An INVITE (or other request) from ``peer`` to Request-URI ``target``."""
    branch = branch or "z9hG4bK" + uuid.uuid4().hex[:12]
    call_id = call_id or uuid.uuid4().hex
    to = f"<{target}>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {peer.hostref}:{peer.port};branch={branch};rport\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"From: <sip:caller@{peer.hostref}>;tag=ft{call_id[:6]}\r\n"
        f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:caller@{peer.hostref}:{peer.port}>\r\n{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def start_invite(caller: UdpPeer, node: NodeProcess, callee: UdpPeer | None = None) -> bytes:
    """``caller`` sends an INVITE to an agent through ``node`` and gets the
    proxy's 100; with ``callee``, the INVITE as forwarded to it is returned."""
    caller.send(invite(caller, f"sip:agent@127.0.0.1:{node.sip_port}"), node.sip_port)
    assert status_of(caller.recv()) == 100
    if callee is None:
        return b""
    forwarded = callee.recv()
    assert forwarded is not None
    return forwarded


def reply_to(request: bytes, status: int, reason: str, to_tag: str = "uas1",
             extra: str = "") -> bytes:
    """A response to ``request`` as a UAS writes it (Via, From, Call-ID, CSeq,
    Record-Route copied; To tagged)."""
    head = request.split(b"\r\n\r\n")[0].decode()
    lines = [f"SIP/2.0 {status} {reason}"]
    for line in head.split("\r\n")[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name in ("via", "from", "call-id", "cseq", "record-route"):
            lines.append(line)
        elif name == "to":
            lines.append(line if "tag=" in line else f"{line};tag={to_tag}")
    return ("\r\n".join(lines) + f"\r\n{extra}Content-Length: 0\r\n\r\n").encode()


def status_of(msg: bytes | None) -> int | None:
    if msg is None or not msg.startswith(b"SIP/2.0 "):
        return None
    return int(msg[8:11])


@pytest.fixture
def mariadb(tmp_path: Path) -> Iterator[MariaDB]:
    """A private MariaDB server (database and user ``hasip``)."""
    missing = mariadb_missing()
    if missing:
        pytest.skip(missing)
    server = MariaDB(tmp_path, free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def freeradius(tmp_path: Path) -> Iterator[Callable[..., FreeRadius]]:
    """Start FreeRADIUS servers: ``freeradius(users={"1001": "pw"})``."""
    missing = freeradius_missing()
    if missing:
        pytest.skip(missing)
    started: list[FreeRadius] = []

    def start(users: dict[str, str], port: int | None = None) -> FreeRadius:
        server = FreeRadius(tmp_path, port or free_port(), users).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeper]:
    """A real ZooKeeper on loopback, one per test module."""
    missing = zookeeper_missing()
    if missing:
        pytest.skip(missing)
    server = ZooKeeper(tmp_path_factory.mktemp("zk"), "127.0.0.1", base_port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def rtpengine(tmp_path: Path) -> Iterator[Callable[..., Rtpengine]]:
    """Start rtpengine daemons: ``rtpengine()`` (ng port on loopback picked
    free; media on ``interfaces``, rtpengine's --interface values)."""
    missing = rtpengine_missing()
    if missing:
        pytest.skip(missing)
    started: list[Rtpengine] = []

    def start(port_min: int = 0, interfaces: tuple[str, ...] = ("127.0.0.1",)) -> Rtpengine:
        base = port_min or 30000 + 200 * (len(started) + (os.getpid() % 100))
        server = Rtpengine(tmp_path, free_port(), base, interfaces).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def phones() -> Iterator[Callable[..., Phone]]:
    """SIP phones (tests/e2e/sipphone.py), closed at the end: ``phones(user, password)``."""
    made: list[Phone] = []

    def make(user: str, password: str) -> Phone:
        p = Phone(user, password)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
