"""What a keepalive node is told: its name, ZooKeeper, the VIPs it may own
with its priority for each, and the timings. Plain data: ``hasip``'s
``[cluster]`` section and the standalone command line both fill it."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from keepalive.ranking import NODE_NAME

MIN_SECRET = 16
# A ZooKeeper digest identity is "user:password": the user has no colon.
_ZK_USER = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass
class VipSpec:
    address: str
    prefix: int
    interface: str
    priority: int = 100          # higher wins
    name: str = ""               # the znode name; default: the address
    hold: str = "tun"            # tun (dies with the process) or interface

    def __post_init__(self) -> None:
        ip = ipaddress.ip_address(self.address)
        if not self.name:
            self.name = self.address.replace(":", "_")
        if not 0 <= self.prefix <= (128 if ip.version == 6 else 32):
            raise ValueError(f"VIP {self.address}: prefix {self.prefix} is out of range")
        if self.hold not in ("tun", "interface"):
            raise ValueError(f"VIP {self.address}: hold {self.hold!r} is not tun or interface")


def parse_vip(text: str) -> VipSpec:
    """``198.18.0.100/24@eth0`` with optional ``,priority=N,name=X,hold=H``."""
    head, *opts = text.split(",")
    where, _, interface = head.partition("@")
    address, _, prefix = where.partition("/")
    if not interface:
        raise ValueError(f"{text!r}: expected ADDRESS/PREFIX@INTERFACE[,priority=N]")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{text!r}: {address!r} is not an IP address") from None
    spec: dict[str, object] = {}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "priority" and value.lstrip("-").isdigit():
            spec["priority"] = int(value)
        elif key in ("name", "hold") and value:
            spec[key] = value
        else:
            raise ValueError(f"{text!r}: unknown option {opt!r} (priority=N, name=X, hold=H)")
    bits = int(prefix) if prefix.isdigit() else (128 if ip.version == 6 else 32)
    return VipSpec(str(ip), bits, interface, **spec)  # type: ignore[arg-type]


@dataclass
class Timing:
    """How fast ownership moves; the same knobs for hasip's ``[cluster]``
    and the standalone command."""

    # The ZooKeeper session: a dead owner's VIP is free this long after its
    # death; the owner fences itself after 2/3 of it without ZooKeeper. The
    # servers' tickTime must allow it (minSessionTimeout = 2 x tickTime).
    session_timeout: float = 1.5
    preempt: bool = False                # a better-priority node takes the VIP back
    preempt_delay: float = 10.0          # ... after being ready this long
    garp_count: int = 5                  # announcements at takeover (Pacemaker: 5 x 200 ms)
    garp_interval: float = 0.2
    garp_refresh: float = 0.0            # then one every this many seconds (0: none)
    conflict_window: float = 0.05        # RFC 5227 probe before taking (0: no probe)
    handover_timeout: float = 5.0        # a failover target must be ready within this


def read_secret(path: str) -> str:
    """A secret kept in a file of its own (a token, a password): one line of
    printable ASCII, 16 characters or more, readable by its owner only.
    ValueError says what is wrong (never the secret)."""
    try:
        with open(path, encoding="utf-8") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            text = fh.read(4096)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") \
            from None
    if mode & 0o077:
        raise ValueError(f"{path} is readable or writable by group or others (mode "
                         f"{mode & 0o777:04o}): chmod 600 {path}")
    return check_secret(text.strip(), path)


def check_secret(secret: str, what: str) -> str:
    if not secret:
        raise ValueError(f"{what} is empty")
    if len(secret) < MIN_SECRET:
        raise ValueError(f"{what} is too short ({len(secret)} characters; {MIN_SECRET} or more,"
                         " e.g. openssl rand -hex 32)")
    if any(not 33 <= ord(c) <= 126 for c in secret):
        raise ValueError(f"{what} must be one line of printable ASCII without spaces")
    return secret


@dataclass(frozen=True)
class Credentials:
    """ZooKeeper digest credentials. Every client of the cluster
    authenticates with them, and every znode it creates carries a digest
    ACL of them with every permission and nothing for anyone else: only
    their holders read or change the cluster's tree."""

    user: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not _ZK_USER.fullmatch(self.user):
            raise ValueError(f"ZooKeeper user {self.user!r}: 1 to 64 letters, digits, '.', "
                             "'_' or '-'")
        check_secret(self.password, "the ZooKeeper password")


@dataclass
class KeepaliveConfig:
    node: str
    zookeeper: str                       # "host:port,host:port"
    vips: list[VipSpec] = field(default_factory=list)
    root: str = "/hasip"
    timing: Timing = field(default_factory=Timing)
    advertise: dict[str, object] = field(default_factory=dict)   # published with membership
    # Required by Keepalive (a tree without ACLs lets anyone move the VIPs);
    # optional here only so that plain data can be built before it is known.
    credentials: Credentials | None = None

    def __post_init__(self) -> None:
        if not NODE_NAME.match(self.node):
            raise ValueError(f"node name {self.node!r}: letters, digits, '.' and '-' only")
        names = [v.name for v in self.vips]
        if len(set(names)) != len(names):
            raise ValueError("two VIPs with one name")
