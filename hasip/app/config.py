"""The node's configuration: one TOML file, validated at start.

Every error names the file, the key and what is wrong with it, for example
``examples/x.toml: sip.listen[1]: 'udp:1.2.3.4' is not TRANSPORT:HOST:PORT``.
Unknown keys are errors too, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hasip.dispatcher.destinations import Destination, ListFileError, parse_list
from hasip.dispatcher.select import algorithm_name
from hasip.media.instances import parse_instance
from hasip.sip.errors import SipParseError
from hasip.sip.grammar import is_digits
from hasip.sip.message import MAX_MESSAGE_SIZE
from hasip.sip.transaction import Timers
from hasip.sip.uri import SipUri, parse_sip_uri
from keepalive.config import Credentials, Timing, VipSpec, parse_vip, read_secret

TRANSPORTS = ("udp", "tcp")
RADIUS_PORT = 1812             # a radius.servers entry without port
NAT_TESTS = ("private_contact", "via_address", "via_port")


class ConfigError(Exception):
    """A configuration that cannot be used; the message names file and key."""


@dataclass(frozen=True)
class ListenAddress:
    transport: str
    host: str
    port: int

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family_v6 else self.host
        return f"{self.transport}:{host}:{self.port}"


# Each TOML section ([node], [sip], ...) is one dataclass below and one
# attribute of Config named as the section; a section's keys are its fields
# (ControlConfig and ClusterConfig say where they differ). Every default is
# written once, in its field: the parser takes it from there.


@dataclass
class NodeConfig:
    """``[node]``."""

    name: str = "hasip-1"              # shows in logs; the replication and cluster identity
    event_loop: str = "uvloop"         # or "asyncio"


@dataclass
class SipConfig:
    """``[sip]``."""

    listen: list[ListenAddress] = field(default_factory=lambda: [
        ListenAddress("udp", "127.0.0.1", 5060), ListenAddress("tcp", "127.0.0.1", 5060)])
    domains: list[str] = field(default_factory=list)
    max_message_size: int = 16384
    max_forwards: int = 70
    # Server transactions held at most; past it new requests get 503 +
    # Retry-After (memory stays bounded whatever arrives).
    max_transactions: int = 100_000


# ``[timers]`` is hasip.sip.transaction.Timers itself (its defaults are those
# of Timers.__init__): the transactions read the very object the parser fills.


@dataclass
class RoutingConfig:
    """``[routing]``."""

    next_hop: list[SipUri] = field(default_factory=lambda: [
        parse_sip_uri("sip:127.0.0.1:5071"), parse_sip_uri("sip:127.0.0.1:5072")])


@dataclass
class TcpConfig:
    """``[tcp]``."""

    idle_timeout: float = 600.0
    max_connections: int = 4096
    # Accepted connections from one source (an IPv4 address, an IPv6 /64).
    # A call centre floor behind one NAT address keeps one connection per
    # TCP phone, so a couple of hundred is ordinary; an attacker's host still
    # gets no more than 1/16 of the default table. Left unset with a small
    # max_connections, it is a quarter of that instead (see _tcp_section).
    max_connections_per_source: int = 256
    # A message begun on a connection must be complete within this (a
    # half-sent message holds its buffer and a connection slot).
    message_timeout: float = 5.0
    # An accepted connection must deliver its first whole message within
    # this; CRLF keepalives alone do not count (RFC 5626 clients REGISTER
    # first). Connections the node opened itself are exempt.
    first_message_timeout: float = 10.0
    max_write_buffer: int = 1 << 20


@dataclass
class MetricsConfig:
    """``[metrics]``: the Prometheus listener; None: off."""

    listen: tuple[str, int] | None = ("127.0.0.1", 9060)


@dataclass
class LogConfig:
    """``[log]``."""

    level: str = "info"
    format: str = "logfmt"


@dataclass
class ShutdownConfig:
    """``[shutdown]``."""

    grace: float = 5.0                 # seconds for transactions in flight after SIGTERM


@dataclass
class SecurityConfig:
    """Per-source rate limits, bans and failed-authentication limits
    (hasip.security). Trusted sources and ``exempt`` networks are never
    limited nor banned."""

    rate: float = 50.0           # requests a second from one address, sustained; 0: no limit
    burst: int = 200             # requests at once from one address
    ban_time: float = 60.0       # the first ban of an address; each next one doubles...
    max_ban_time: float = 3600.0  # ...up to this
    auth_failures: int = 10      # failed authentications from one address in failure_window: ban
    failure_window: float = 600.0
    user_failures: int = 5       # failed authentications in a row for one user: back-off
    user_backoff: float = 2.0    # the first back-off, doubled per further failure...
    max_user_backoff: float = 300.0   # ...up to this
    exempt: list[str] = field(default_factory=list)    # networks never banned (still authenticated)
    max_sources: int = 100_000   # addresses tracked (bounded memory)


CONTROL_DEFAULT_LISTEN = ("127.0.0.1", 9061)


@dataclass
class ControlConfig:
    """The control API (hasip/app/control.py). It never listens without a
    token: off unless ``token_file`` (or ``listen`` with it) is given; with
    one and no ``listen``, it listens on CONTROL_DEFAULT_LISTEN. ``token``
    and ``read_token`` are no keys: they are read from the files."""

    listen: tuple[str, int] | None = None
    token_file: str = ""                   # the bearer token: every request carries it
    token: str = field(default="", repr=False)
    read_token_file: str = ""              # optional: a token that may only GET
    read_token: str = field(default="", repr=False)
    hosts: list[str] = field(default_factory=list)     # Host names accepted besides the
    origins: list[str] = field(default_factory=list)   # address; Origins accepted (none)
    # Optional TLS: this node's certificate and key; with tls_ca, clients must
    # present a certificate that CA signed (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # The operator's certificate for `hasip dispatcher` (the CLI only).
    client_cert: str = ""
    client_key: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


@dataclass
class ClusterConfig:
    """VIP ownership through ZooKeeper (keepalive); empty zookeeper: none.
    ``timing`` is no key: its fields are keys of ``[cluster]`` themselves."""

    zookeeper: str = ""
    root: str = "/hasip"
    vips: list[VipSpec] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)
    # ZooKeeper digest credentials, required with zookeeper: every znode of
    # the cluster is readable and writable by their holders only.
    zookeeper_user: str = ""
    zookeeper_password: str = field(default="", repr=False)
    zookeeper_password_file: str = ""

    def vip_addresses(self) -> list[str]:
        return [v.address for v in self.vips] if self.zookeeper else []

    def credentials(self) -> Credentials | None:
        if not self.zookeeper_user or not self.zookeeper_password:
            return None
        return Credentials(self.zookeeper_user, self.zookeeper_password)


@dataclass
class ReplicationConfig:
    """State replication between the nodes of a cluster."""

    listen: tuple[str, int] | None = None   # HOST:PORT for peers; None: no replication
    secret: str = ""                        # shared by the cluster: peers prove they know it
    log_size: int = 200_000                 # own changes kept to repair a peer's gap
    batch: int = 1000                       # records per frame in a snapshot
    sync_timeout: float = 60.0              # joining: give up on a silent peer after this
    # TLS around the links (optional; peers authenticate with the secret
    # either way): this node's certificate and key, and the CA that signed
    # every node's certificate (both sides must present one).
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""


@dataclass
class DialogConfig:
    # A dialog without a BYE ends after this (Kamailio's dialog default_timeout).
    timeout: float = 43200.0
    cdr: bool = True            # a CDR per ended dialog, in the location store's database
    keepalive_interval: float = 0.0   # in-dialog OPTIONS to both ends this often; 0: off
    keepalive_failures: int = 2       # unanswered rounds in a row that end a dialog


@dataclass
class DispatcherConfig:
    algorithm: str = "round_robin"
    set: int = 1                       # the set that calls for unregistered users go to
    # Empty: routing.next_hop is set 1.
    destinations: list[Destination] = field(default_factory=list)
    failures: int = 2                  # consecutive failures: inactive
    successes: int = 1                 # consecutive successes: active again
    probe_interval: float = 0.5        # OPTIONS to each node this often; 0: no probing
    probe_timeout: float = 0.5         # no answer within this: a failed probe
    probe_codes: list[int] = field(default_factory=list)   # accepted besides 2xx
    list_file: str = ""                # re-read by `hasip dispatcher reload`
    # A node taken out by failed calls stays out this long while it answers
    # probes (one that answers OPTIONS but not INVITE must not flap); a failed
    # probe ends the hold (the node was down and may come back).
    hold_down: float = 30.0
    # No answer at all (not even 100) from a node within this: the next node
    # (0: timers.non_invite_final, the seed's fr_timer, as for any branch).
    answer_timeout: float = 0.0
    # Probes leave from the node's own address ("node": their answers come
    # back to this node whatever happens to the VIPs) or from a VIP it owns
    # ("vip": for Asterisk nodes that only accept the VIPs).
    probe_from: str = "node"


@dataclass
class RegistrarConfig:
    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 3600
    max_contacts: int = 10
    use_domain: bool = False


@dataclass
class LocationConfig:
    backend: str = "sqlite"            # sqlite, mysql or memory
    sqlite_path: str = "hasip-location.db"
    mysql_url: str = ""
    max_pending: int = 1_000_000
    batch: int = 500
    flush_interval: float = 0.5


@dataclass
class AuthConfig:
    source: str = "file"               # file or radius
    users_file: str = ""               # user:realm:HA1 lines (required with source = file...)
    demo_users: bool = False           # ...unless this: the demo accounts 1001-1010 (demo<user>)
    realm: str = "hasip"               # empty: the To (REGISTER) / From host
    secret: str = ""                   # empty: random per process (single node)
    nonce_lifetime: float = 300.0
    algorithms: list[str] = field(default_factory=lambda: ["MD5"])
    allow_no_qop: bool = False
    trusted: list[str] = field(default_factory=list)
    retry_after: int = 30
    # Add P-Asserted-Identity with the authenticated user to requests from
    # phones (RFC 3325; theirs are always removed).
    assert_identity: bool = False


@dataclass
class RadiusConfig:
    servers: list[tuple[str, int]] = field(default_factory=list)
    secret: str = ""
    timeout: float = 1.0
    retries: int = 1
    dead_time: float = 10.0
    attributes: str = "sterman"
    nas_identifier: str = ""
    service_type: int = 15


@dataclass
class NatConfig:
    detect: list[str] = field(default_factory=lambda: list(NAT_TESTS))
    ping_interval: float = 10.0


MEDIA_RELAY = ("nat", "always", "never")
MEDIA_FAILURE = ("continue", "reject")
MEDIA_ICE = ("remove", "force", "keep")


@dataclass
class MediaConfig:
    """The media relay (hasip/media/): rtpengine instances and when calls
    go through them."""

    # rtpengine ng sockets, "udp:HOST:PORT[=WEIGHT]"; empty: no media relay.
    rtpengine: list[str] = field(default_factory=list)
    # Which calls are relayed: a NATed party (the seed's rule), all, none.
    relay: str = "nat"
    # rtpengine down or failing: relay the call's SIP without media relay
    # (logged and counted, for an alert) or answer 503.
    on_failure: str = "continue"
    timeout: float = 1.5          # an ng request unanswered this long fails
    retransmit: float = 0.2       # first ng retransmission after this, then doubled
    ping_interval: float = 2.0    # ng ping to each instance this often
    failures: int = 2             # failed pings/requests in a row: instance down
    successes: int = 1            # answered pings in a row: instance up again
    # SDP lines rtpengine rewrites besides the media (Kamailio's
    # replace-origin, replace-session-connection).
    replace: list[str] = field(default_factory=lambda: ["origin", "session-connection"])
    # The SDP address of a party not behind NAT is trusted (trust-address);
    # a NATed party's never is (rtpengine learns it from its packets).
    trust_address: bool = True
    ice: str = "remove"
    # rtpengine logical interfaces (--interface=NAME/ADDR) by the address of
    # our socket a call came in on: both sides of its media are on that
    # interface (rtpengine's direction), so a VIP's calls have their media
    # on the VIP. Sockets not listed use rtpengine's default interface.
    interfaces: dict[str, str] = field(default_factory=dict)
    # Delete the session at once when the call ends (rtpengine's default
    # keeps it 30 s), so that none is left behind.
    delete_delay: int = 0


@dataclass
class DnsConfig:
    """The next hops' resolver (hasip/proxy/resolver.py): the system
    resolver reports no TTL, so names live ``ttl`` seconds in the cache,
    failures ``negative_ttl``, and it holds at most ``max_entries`` names."""

    ttl: float = 300.0
    negative_ttl: float = 30.0
    max_entries: int = 4096


@dataclass
class Config:
    """The whole file: one attribute per TOML section, named as the section."""

    path: str = "<embedded defaults>"
    node: NodeConfig = field(default_factory=NodeConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    timers: Timers = field(default_factory=Timers)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    tcp: TcpConfig = field(default_factory=TcpConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    log: LogConfig = field(default_factory=LogConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    location: LocationConfig = field(default_factory=LocationConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    radius: RadiusConfig = field(default_factory=RadiusConfig)
    nat: NatConfig = field(default_factory=NatConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    dialog: DialogConfig = field(default_factory=DialogConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)


class _Section:
    """Reads one TOML table, checking types and rejecting unknown keys.

    A key's default is the one its dataclass field holds: the parsers pass
    the field's value (``sec.number("t1", t.t1, ...)``), never a literal."""

    def __init__(self, path: str, name: str, data: dict[str, Any]) -> None:
        self.path = path
        self.name = name
        self.data = dict(data)
        # Every key the parser looked for, given or not: the section's keys.
        self.keys: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}: {self.name}.{key}"

    def error(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {what}")

    def given(self, key: str) -> bool:
        """Whether the file gives ``key`` (which the section knows either way)."""
        self.keys.add(key)
        return key in self.data

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return self.take(key, kind) if self.given(key) else default

    def take(self, key: str, kind: type | tuple[type, ...]) -> Any:
        """The value of a given key, of type ``kind``."""
        value = self.data.pop(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {_kind_name(kinds)}, got a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {_kind_name(kinds)}, got {type(value).__name__} "
                                  f"{value!r}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key, float, default)
        if not low <= value <= high:
            raise self.error(key, f"{value} is outside {low}..{high}")
        return float(value)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key, int, default)
        if not low <= value <= high:
            raise self.error(key, f"{value} is outside {low}..{high}")
        return int(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    def str_list(self, key: str, default: list[str]) -> list[str]:
        return self._strings(key) if self.given(key) else list(default)

    def given_list(self, key: str) -> list[str] | None:
        """The strings listed under ``key``; None when it is absent (for a
        field whose default is not in the file's form: it stays as it is)."""
        return self._strings(key) if self.given(key) else None

    def _strings(self, key: str) -> list[str]:
        value = self.take(key, list)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{self.where(key)}[{i}]: expected a string, got {item!r}")
        return list(value)

    def networks(self, key: str, default: list[str]) -> list[str]:
        """A list of addresses or networks (``192.0.2.0/24``, ``2001:db8::1``)."""
        value = self.str_list(key, default)
        for i, net in enumerate(value):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"{self.where(key)}[{i}]: {net!r} is not an address or "
                                  "network (e.g. 192.0.2.0/24)") from None
        return value

    def listen_address(self, default: tuple[str, int] | None) -> tuple[str, int] | None:
        """The section's ``listen``: HOST:PORT, or "off" (None)."""
        if not self.given("listen"):
            return default
        text = self.take("listen", str)
        return None if text in ("", "off") else parse_host_port(text, self.where("listen"))

    def finish(self) -> None:
        if self.data:
            unknown = ", ".join(sorted(self.data))
            raise ConfigError(f"{self.path}: {self.name}: unknown key(s) {unknown}")


def _node_section(cfg: Config, sec: _Section) -> None:
    n = cfg.node
    n.name = sec.get("name", str, n.name)
    if not n.name:
        raise sec.error("name", "must not be empty")
    n.event_loop = sec.choice("event_loop", n.event_loop, ("uvloop", "asyncio"))
    sec.finish()


def _sip_section(cfg: Config, sec: _Section) -> None:
    s = cfg.sip
    items = sec.given_list("listen")
    if items is not None:
        if not items:
            raise sec.error("listen", "needs at least one address")
        s.listen = [parse_listen(item, f"{sec.where('listen')}[{i}]")
                    for i, item in enumerate(items)]
    seen = set()
    for addr in s.listen:
        if (addr.transport, addr.host, addr.port) in seen:
            raise sec.error("listen", f"{addr} is listed twice")
        seen.add((addr.transport, addr.host, addr.port))
    s.domains = [d.lower() for d in sec.str_list("domains", s.domains)]
    s.max_message_size = sec.integer("max_message_size", s.max_message_size, 1024,
                                     MAX_MESSAGE_SIZE)
    s.max_forwards = sec.integer("max_forwards", s.max_forwards, 1, 255)
    s.max_transactions = sec.integer("max_transactions", s.max_transactions, 100, 10_000_000)
    sec.finish()


def _timers_section(cfg: Config, sec: _Section) -> None:
    t = cfg.timers
    t.t1 = sec.number("t1", t.t1, 0.05, 10.0)
    t.t2 = sec.number("t2", t.t2, t.t1, 60.0)
    t.t4 = sec.number("t4", t.t4, 0.0, 60.0)
    t.non_invite_final = sec.number("non_invite_final", t.non_invite_final, 0.5, 300.0)
    t.invite_final = sec.number("invite_final", t.invite_final, 1.0, 3600.0)
    sec.finish()


def _routing_section(cfg: Config, sec: _Section) -> None:
    hops = sec.given_list("next_hop")
    if hops is not None:
        cfg.routing.next_hop = []
        for i, text in enumerate(hops):
            try:
                uri = parse_sip_uri(text)
            except SipParseError as exc:
                raise ConfigError(f"{sec.where('next_hop')}[{i}]: {exc.reason}")
            if uri.transport not in TRANSPORTS:
                raise ConfigError(f"{sec.where('next_hop')}[{i}]: transport "
                                  f"{uri.transport!r} is not supported (udp, tcp)")
            cfg.routing.next_hop.append(uri)
    sec.finish()


def _tcp_section(cfg: Config, sec: _Section) -> None:
    t = cfg.tcp
    t.idle_timeout = sec.number("idle_timeout", t.idle_timeout, 1.0, 86400.0)
    t.max_connections = sec.integer("max_connections", t.max_connections, 1, 1 << 20)
    # Unset, the per-source limit leaves room for at least three other
    # sources however small the table is; set, it may be up to the table.
    default_per_source = min(t.max_connections_per_source, max(1, t.max_connections // 4))
    per_source = sec.integer("max_connections_per_source", default_per_source, 1, 1 << 20)
    if per_source > t.max_connections:
        raise sec.error("max_connections_per_source",
                        f"{per_source} is above tcp.max_connections ({t.max_connections})")
    t.max_connections_per_source = per_source
    t.message_timeout = sec.number("message_timeout", t.message_timeout, 0.5, 600.0)
    t.first_message_timeout = sec.number("first_message_timeout", t.first_message_timeout,
                                         0.5, 3600.0)
    t.max_write_buffer = sec.integer("max_write_buffer", t.max_write_buffer, 65536, 1 << 30)
    sec.finish()


def _metrics_section(cfg: Config, sec: _Section) -> None:
    cfg.metrics.listen = sec.listen_address(cfg.metrics.listen)
    sec.finish()


def _log_section(cfg: Config, sec: _Section) -> None:
    g = cfg.log
    g.level = sec.choice("level", g.level, ("debug", "info", "warning", "error"))
    g.format = sec.choice("format", g.format, ("logfmt", "json"))
    sec.finish()


def _shutdown_section(cfg: Config, sec: _Section) -> None:
    cfg.shutdown.grace = sec.number("grace", cfg.shutdown.grace, 0.0, 600.0)
    sec.finish()


def _dialog_section(cfg: Config, sec: _Section) -> None:
    d = cfg.dialog
    d.timeout = sec.number("timeout", d.timeout, 1.0, 30 * 86400.0)
    d.cdr = sec.get("cdr", bool, d.cdr)
    d.keepalive_interval = sec.number("keepalive_interval", d.keepalive_interval, 0.0, 3600.0)
    d.keepalive_failures = sec.integer("keepalive_failures", d.keepalive_failures, 1, 100)
    sec.finish()


def _media_section(cfg: Config, sec: _Section) -> None:
    m = cfg.media
    m.rtpengine = sec.str_list("rtpengine", m.rtpengine)
    for i, item in enumerate(m.rtpengine):
        try:
            parse_instance(item, f"{sec.where('rtpengine')}[{i}]")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    m.relay = sec.choice("relay", m.relay, MEDIA_RELAY)
    m.on_failure = sec.choice("on_failure", m.on_failure, MEDIA_FAILURE)
    m.timeout = sec.number("timeout", m.timeout, 0.05, 30.0)
    m.retransmit = sec.number("retransmit", m.retransmit, 0.01, m.timeout)
    m.ping_interval = sec.number("ping_interval", m.ping_interval, 0.1, 3600.0)
    m.failures = sec.integer("failures", m.failures, 1, 100)
    m.successes = sec.integer("successes", m.successes, 1, 100)
    m.replace = sec.str_list("replace", m.replace)
    for i, item in enumerate(m.replace):
        if item not in ("origin", "session-connection", "session-name", "username"):
            raise ConfigError(f"{sec.where('replace')}[{i}]: {item!r} is not one of origin, "
                              "session-connection, session-name, username")
    m.trust_address = sec.get("trust_address", bool, m.trust_address)
    m.ice = sec.choice("ice", m.ice, MEDIA_ICE)
    if sec.given("interfaces"):
        table = sec.take("interfaces", dict)
        for addr, name in table.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.*-]{1,32}", name):
                raise ConfigError(f"{sec.where('interfaces')}.{addr}: {name!r} is not an "
                                  "rtpengine interface name")
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ConfigError(f"{sec.where('interfaces')}: {addr!r} is not an "
                                  "address") from None
        m.interfaces = dict(table)
    m.delete_delay = sec.integer("delete_delay", m.delete_delay, 0, 3600)
    sec.finish()


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list",
             bool: "a boolean", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_listen(text: str, where: str) -> ListenAddress:
    """``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``."""
    transport, _, rest = text.partition(":")
    host, _, port_text = rest.rpartition(":")
    bad = ConfigError(f"{where}: {text!r} is not TRANSPORT:HOST:PORT (e.g. udp:127.0.0.1:5060)")
    if transport.lower() not in TRANSPORTS:
        raise ConfigError(f"{where}: transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
    if not host or not is_digits(port_text):
        raise bad
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{where}: {host!r} is not an IP address (listen on addresses, "
                          "not names)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} is outside 1..65535")
    return ListenAddress(transport.lower(), host, port)


def parse_host_port(text: str, where: str) -> tuple[str, int]:
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not is_digits(port_text) or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}: {text!r} is not HOST:PORT (e.g. 127.0.0.1:9060)")
    return host, int(port_text)




def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file; raises :class:`ConfigError`."""
    path = str(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}")
    return config_from_dict(raw, path)


def config_from_dict(raw: dict[str, Any], path: str = "<dict>") -> Config:
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} "
                          f"(known: {', '.join(_SECTIONS)})")
    for name in _SECTIONS:
        if name in raw and not isinstance(raw[name], dict):
            raise ConfigError(f"{path}: {name}: expected a table [{name}]")
    cfg = Config(path=path)
    for name, parse in _SECTIONS.items():
        parse(cfg, _Section(path, name, raw.get(name, {})))
    return cfg


def check_auth(cfg: Config) -> None:
    """Rules between sections, checked where the node's parts are built
    (``hasip run`` and ``check-config``, the embedded defaults included): no
    default passwords, and a cluster shares one secret for nonces and
    Record-Route tokens."""
    a = cfg.auth
    if a.source == "file" and not a.users_file and not a.demo_users:
        raise ConfigError(f"{cfg.path}: auth.users_file: give the users file (user:realm:HA1 "
                          "lines, as htdigest writes them); demo_users = true accepts the "
                          "demo accounts 1001-1010 instead (never in production)")
    if a.users_file and a.demo_users:
        raise ConfigError(f"{cfg.path}: auth.demo_users: give users_file or demo_users, "
                          "not both")
    if cfg.cluster.zookeeper and len(a.secret) < 16:
        raise ConfigError(f"{cfg.path}: auth.secret: a cluster needs a shared secret of 16 "
                          "characters or more on every node (nonces and Record-Route tokens "
                          "that any node checks, the one that takes a VIP over too)")


def _security_section(cfg: Config, sec: _Section) -> None:
    s = cfg.security
    s.rate = sec.number("rate", s.rate, 0.0, 1_000_000.0)
    s.burst = sec.integer("burst", s.burst, 1, 10_000_000)
    s.ban_time = sec.number("ban_time", s.ban_time, 1.0, 30 * 86400.0)
    s.max_ban_time = sec.number("max_ban_time", s.max_ban_time, s.ban_time, 365 * 86400.0)
    s.auth_failures = sec.integer("auth_failures", s.auth_failures, 0, 1_000_000)
    s.failure_window = sec.number("failure_window", s.failure_window, 1.0, 30 * 86400.0)
    s.user_failures = sec.integer("user_failures", s.user_failures, 1, 1_000_000)
    s.user_backoff = sec.number("user_backoff", s.user_backoff, 0.0, 86400.0)
    s.max_user_backoff = sec.number("max_user_backoff", s.max_user_backoff, s.user_backoff,
                                    30 * 86400.0)
    s.exempt = sec.networks("exempt", s.exempt)
    s.max_sources = sec.integer("max_sources", s.max_sources, 100, 10_000_000)
    sec.finish()


def _replication_section(cfg: Config, sec: _Section) -> None:
    r = cfg.replication
    if sec.given("listen"):
        listen = sec.take("listen", str)
        if listen:     # empty: off, as when absent
            r.listen = parse_host_port(listen, sec.where("listen"))
    r.secret = sec.get("secret", str, r.secret)
    r.log_size = sec.integer("log_size", r.log_size, 1000, 100_000_000)
    r.batch = sec.integer("batch", r.batch, 1, 100_000)
    r.sync_timeout = sec.number("sync_timeout", r.sync_timeout, 1.0, 3600.0)
    tls = {name: sec.get(name, str, getattr(r, name)) for name in ("tls_cert", "tls_key",
                                                                    "tls_ca")}
    if any(tls.values()):
        for name, value in tls.items():
            if not value:
                raise sec.error(name, "TLS needs tls_cert, tls_key and tls_ca together")
            if not Path(value).is_file():
                raise sec.error(name, f"cannot read {value}")
    r.tls_cert, r.tls_key, r.tls_ca = tls["tls_cert"], tls["tls_key"], tls["tls_ca"]
    sec.finish()
    if r.listen is None:
        return
    if not cfg.cluster.zookeeper:
        raise sec.error("listen", "replication finds its peers through ZooKeeper: set "
                                  "cluster.zookeeper")
    if len(r.secret) < 16:
        raise sec.error("secret", "give the cluster's shared secret (16 characters or more): "
                                  "peers must prove they know it")


def secret_file(sec: _Section, key: str, path: str) -> str:
    """The secret in ``path`` (``sec.key`` names it); ConfigError naming the
    key when the file is missing, empty, short or readable by others."""
    try:
        return read_secret(path)
    except ValueError as exc:
        raise sec.error(key, str(exc)) from None


_ORIGIN = re.compile(r"https?://[^/\s]+")
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


def _control_section(cfg: Config, sec: _Section) -> None:
    c = cfg.control
    given = sec.data.get("listen")
    listen = sec.listen_address(c.listen)
    if listen is not None:
        try:
            ipaddress.ip_address(listen[0])
        except ValueError:
            raise sec.error("listen", f"{listen[0]!r} is not an IP address (listen on an "
                                      "address, not a name)") from None
    c.token_file = sec.get("token_file", str, c.token_file)
    c.read_token_file = sec.get("read_token_file", str, c.read_token_file)
    c.hosts = [h.lower() for h in sec.str_list("hosts", c.hosts)]
    for i, host in enumerate(c.hosts):
        if not _HOST_NAME.fullmatch(host):
            raise ConfigError(f"{sec.where('hosts')}[{i}]: {host!r} is not a host name "
                              "(a name the operators use for this node, without port)")
    c.origins = [o.lower().rstrip("/") for o in sec.str_list("origins", c.origins)]
    for i, origin in enumerate(c.origins):
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(f"{sec.where('origins')}[{i}]: {origin!r} is not an origin "
                              "(SCHEME://HOST[:PORT], e.g. https://ops.example.com)")
    for key in ("tls_cert", "tls_key", "tls_ca", "client_cert", "client_key"):
        value = sec.get(key, str, getattr(c, key))
        if value and not Path(value).is_file():
            raise sec.error(key, f"cannot read {value}")
        setattr(c, key, value)
    sec.finish()
    if bool(c.tls_cert) != bool(c.tls_key):
        raise sec.error("tls_key" if c.tls_cert else "tls_cert",
                        "TLS needs tls_cert and tls_key together")
    if c.tls_ca and not c.tls_cert:
        raise sec.error("tls_cert", "tls_ca (client certificates) needs TLS: give tls_cert "
                                    "and tls_key")
    if bool(c.client_cert) != bool(c.client_key):
        raise sec.error("client_key" if c.client_cert else "client_cert",
                        "give client_cert and client_key together")
    if c.tls_cert:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(c.tls_cert,
                                                                                c.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise sec.error("tls_cert", f"cannot load {c.tls_cert} with {c.tls_key}: "
                                        f"{exc}") from None
    if c.tls_ca:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(c.tls_ca)
        except (ssl.SSLError, OSError) as exc:
            raise sec.error("tls_ca", f"cannot load {c.tls_ca}: {exc}") from None
    if c.token_file:
        c.token = secret_file(sec, "token_file", c.token_file)
    if c.read_token_file:
        if not c.token_file:
            raise sec.error("token_file", "read_token_file is given: the full token "
                                          "(token_file) is needed too")
        c.read_token = secret_file(sec, "read_token_file", c.read_token_file)
        if c.read_token == c.token:
            raise sec.error("read_token_file", "the read-only token must differ from "
                                               "token_file's")
    if listen is not None and not c.token_file:
        raise sec.error("token_file", f"the control API needs a token file (control.listen "
                                      f"is {given!r}): create one (openssl rand -hex 32 > "
                                      "FILE; chmod 600 FILE) and name it here, or set "
                                      'listen = "off"')
    # The embedded default address applies only with a token; "off" stays off.
    c.listen = listen if given is not None else (CONTROL_DEFAULT_LISTEN if c.token_file
                                                 else None)


def _cluster_section(cfg: Config, sec: _Section) -> None:
    c = cfg.cluster
    c.zookeeper = sec.get("zookeeper", str, c.zookeeper)
    c.root = sec.get("root", str, c.root)
    if not c.root.startswith("/") or c.root.endswith("/"):
        raise sec.error("root", f"{c.root!r} must start with / and not end with one")
    t = c.timing
    t.session_timeout = sec.number("session_timeout", t.session_timeout, 0.5, 60.0)
    t.preempt = sec.get("preempt", bool, t.preempt)
    t.preempt_delay = sec.number("preempt_delay", t.preempt_delay, 0.0, 3600.0)
    t.garp_count = sec.integer("garp_count", t.garp_count, 1, 100)
    t.garp_interval = sec.number("garp_interval", t.garp_interval, 0.01, 10.0)
    t.garp_refresh = sec.number("garp_refresh", t.garp_refresh, 0.0, 3600.0)
    t.conflict_window = sec.number("conflict_window", t.conflict_window, 0.0, 5.0)
    t.handover_timeout = sec.number("handover_timeout", t.handover_timeout, 0.5, 120.0)
    vips = sec.given_list("vips")
    if vips is not None:
        c.vips = []
        for i, text in enumerate(vips):
            try:
                c.vips.append(parse_vip(text))
            except ValueError as exc:
                raise ConfigError(f"{sec.where('vips')}[{i}]: {exc}") from None
    c.zookeeper_user = sec.get("zookeeper_user", str, c.zookeeper_user)
    c.zookeeper_password = sec.get("zookeeper_password", str, c.zookeeper_password)
    c.zookeeper_password_file = sec.get("zookeeper_password_file", str,
                                        c.zookeeper_password_file)
    sec.finish()
    if c.vips and not c.zookeeper:
        raise sec.error("zookeeper", "VIPs are listed: give the ZooKeeper servers "
                                     "(HOST:PORT[,HOST:PORT...])")
    hosts = {a.host for a in cfg.sip.listen}
    for i, vip in enumerate(c.vips):
        if vip.address not in hosts:
            raise ConfigError(f"{sec.where('vips')}[{i}]: {vip.address} is in no sip.listen "
                              "entry (the node must listen on its VIPs)")
    _zookeeper_credentials(c, sec)


def _zookeeper_credentials(c: ClusterConfig, sec: _Section) -> None:
    """Digest credentials: required in a cluster, checked whenever given (the
    operator commands use them with --zookeeper)."""
    if c.zookeeper_password and c.zookeeper_password_file:
        raise sec.error("zookeeper_password", "give zookeeper_password or "
                                              "zookeeper_password_file, not both")
    if c.zookeeper_password_file:
        c.zookeeper_password = secret_file(sec, "zookeeper_password_file",
                                           c.zookeeper_password_file)
    if c.zookeeper_password and not c.zookeeper_user:
        raise sec.error("zookeeper_user", "a ZooKeeper password is given without "
                                          "zookeeper_user")
    if c.zookeeper and not c.zookeeper_user:
        raise sec.error("zookeeper_user", "a cluster needs ZooKeeper credentials: give "
                                          "zookeeper_user and zookeeper_password_file (the "
                                          "znodes are readable and writable by them only)")
    if c.zookeeper_user and not c.zookeeper_password:
        raise sec.error("zookeeper_password_file", "zookeeper_user is given: give its "
                                                   "password in zookeeper_password_file "
                                                   "(mode 0600) or zookeeper_password")
    if c.zookeeper_user:
        try:
            Credentials(c.zookeeper_user, c.zookeeper_password)
        except ValueError as exc:
            key = "zookeeper_user" if str(exc).startswith("ZooKeeper user") else (
                "zookeeper_password_file" if c.zookeeper_password_file
                else "zookeeper_password")
            raise sec.error(key, str(exc)) from None


def _dispatcher_section(cfg: Config, sec: _Section) -> None:
    d = cfg.dispatcher
    algorithm = sec.get("algorithm", (str, int), d.algorithm)
    try:
        d.algorithm = algorithm_name(algorithm)
    except ValueError as exc:
        raise sec.error("algorithm", str(exc)) from None
    d.set = sec.integer("set", d.set, 0, 1 << 30)
    lines = sec.given_list("destinations")
    list_file = d.list_file = sec.get("list_file", str, d.list_file)
    d.failures = sec.integer("failures", d.failures, 1, 1000)
    d.successes = sec.integer("successes", d.successes, 1, 1000)
    d.probe_interval = sec.number("probe_interval", d.probe_interval, 0.0, 3600.0)
    d.probe_timeout = sec.number("probe_timeout", d.probe_timeout, 0.05, 60.0)
    d.hold_down = sec.number("hold_down", d.hold_down, 0.0, 86400.0)
    d.answer_timeout = sec.number("answer_timeout", d.answer_timeout, 0.0, 300.0)
    d.probe_from = sec.choice("probe_from", d.probe_from, ("node", "vip"))
    codes = sec.get("probe_codes", list, d.probe_codes)
    for i, code in enumerate(codes):
        if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 699:
            raise ConfigError(f"{sec.where('probe_codes')}[{i}]: {code!r} is not a SIP status "
                              "code (100-699)")
    d.probe_codes = list(codes)
    sec.finish()
    try:
        if lines is not None:
            d.destinations = parse_list("\n".join(lines), sec.where("destinations"))
        if list_file:
            try:
                with open(list_file, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as exc:
                raise sec.error("list_file", f"cannot read {list_file}: {exc.strerror}") from None
            from_file = parse_list(text, list_file)
            for dest in from_file:
                dest.origin = "file"
            d.destinations += from_file
    except ListFileError as exc:
        raise ConfigError(f"{cfg.path}: dispatcher: {exc}") from None
    for dest in d.destinations:
        if dest.uri.transport not in TRANSPORTS:
            raise ConfigError(f"{sec.where('destinations')}: {dest.key}: transport "
                              f"{dest.uri.transport!r} is not supported (udp, tcp)")
        fault = socket_fault(cfg, dest)
        if fault:
            raise ConfigError(f"{sec.where('destinations')}: {fault}")


def socket_fault(cfg: Config, dest: Destination) -> str:
    """Why a destination's ``socket`` attribute cannot be used (empty: it can):
    it must be one of ``sip.listen``, with the destination's transport."""
    if not dest.socket:
        return ""
    sockets = [str(a) for a in cfg.sip.listen]
    if dest.socket not in sockets:
        return (f"{dest.key}: socket {dest.socket!r} is not one of sip.listen "
                f"({', '.join(sockets)})")
    if not dest.socket.startswith(dest.uri.transport + ":"):
        return f"{dest.key}: socket {dest.socket!r} is not {dest.uri.transport}"
    return ""



def _registrar_section(cfg: Config, sec: _Section) -> None:
    r = cfg.registrar
    r.default_expires = sec.integer("default_expires", r.default_expires, 1, 1 << 30)
    r.min_expires = sec.integer("min_expires", r.min_expires, 0, 1 << 30)
    r.max_expires = sec.integer("max_expires", r.max_expires, 1, 1 << 30)
    if r.min_expires > r.max_expires:
        raise sec.error("min_expires", f"{r.min_expires} is above max_expires {r.max_expires}")
    r.max_contacts = sec.integer("max_contacts", r.max_contacts, 0, 1000)
    r.use_domain = sec.get("use_domain", bool, r.use_domain)
    sec.finish()


def _location_section(cfg: Config, sec: _Section) -> None:
    loc = cfg.location
    loc.backend = sec.choice("backend", loc.backend, ("sqlite", "mysql", "memory"))
    loc.sqlite_path = sec.get("sqlite_path", str, loc.sqlite_path)
    loc.mysql_url = sec.get("mysql_url", str, loc.mysql_url)
    if loc.backend == "mysql" and not loc.mysql_url.startswith(("mysql://", "mariadb://")):
        raise sec.error("mysql_url", "backend is mysql: give mysql://USER:PASSWORD@HOST:PORT/DB")
    loc.max_pending = sec.integer("max_pending", loc.max_pending, 100, 100_000_000)
    loc.batch = sec.integer("batch", loc.batch, 1, 100_000)
    loc.flush_interval = sec.number("flush_interval", loc.flush_interval, 0.0, 60.0)
    sec.finish()


def _auth_section(cfg: Config, sec: _Section) -> None:
    a = cfg.auth
    a.source = sec.choice("source", a.source, ("file", "radius"))
    a.users_file = sec.get("users_file", str, a.users_file)
    a.demo_users = sec.get("demo_users", bool, a.demo_users)
    a.assert_identity = sec.get("assert_identity", bool, a.assert_identity)
    a.realm = sec.get("realm", str, a.realm)
    a.secret = sec.get("secret", str, a.secret)
    a.nonce_lifetime = sec.number("nonce_lifetime", a.nonce_lifetime, 1.0, 86400.0)
    a.algorithms = sec.str_list("algorithms", a.algorithms)
    if not a.algorithms:
        raise sec.error("algorithms", "needs at least one of MD5, SHA-256")
    for alg in a.algorithms:
        if alg not in ("MD5", "SHA-256"):
            raise sec.error("algorithms", f"{alg!r} is not one of MD5, SHA-256")
    a.allow_no_qop = sec.get("allow_no_qop", bool, a.allow_no_qop)
    a.trusted = sec.networks("trusted", a.trusted)
    a.retry_after = sec.integer("retry_after", a.retry_after, 1, 3600)
    sec.finish()


def _radius_section(cfg: Config, sec: _Section) -> None:
    r = cfg.radius
    servers = sec.given_list("servers")
    if servers is not None:
        r.servers = []
        for i, text in enumerate(servers):
            if is_digits(text.rpartition(":")[2]):
                r.servers.append(parse_host_port(text, f"{sec.where('servers')}[{i}]"))
            else:
                r.servers.append((text, RADIUS_PORT))
    r.secret = sec.get("secret", str, r.secret)
    r.timeout = sec.number("timeout", r.timeout, 0.05, 30.0)
    r.retries = sec.integer("retries", r.retries, 0, 10)
    r.dead_time = sec.number("dead_time", r.dead_time, 0.0, 3600.0)
    r.attributes = sec.choice("attributes", r.attributes, ("sterman", "rfc5090"))
    # Empty (the default): the node's name.
    r.nas_identifier = sec.get("nas_identifier", str, r.nas_identifier) or cfg.node.name
    r.service_type = sec.integer("service_type", r.service_type, 1, 1 << 31)
    sec.finish()
    if cfg.auth.source == "radius":
        if not r.servers:
            raise ConfigError(f"{sec.where('servers')}: auth.source is radius: list at least "
                              "one server (HOST:PORT)")
        if not r.secret:
            raise ConfigError(f"{sec.where('secret')}: auth.source is radius: the shared "
                              "secret is required")


def _nat_section(cfg: Config, sec: _Section) -> None:
    n = cfg.nat
    n.detect = sec.str_list("detect", n.detect)
    for test in n.detect:
        if test not in NAT_TESTS:
            raise sec.error("detect", f"{test!r} is not one of {', '.join(NAT_TESTS)}")
    n.ping_interval = sec.number("ping_interval", n.ping_interval, 0.0, 3600.0)
    sec.finish()


def _dns_section(cfg: Config, sec: _Section) -> None:
    d = cfg.dns
    d.ttl = sec.number("ttl", d.ttl, 1.0, 86400.0)
    d.negative_ttl = sec.number("negative_ttl", d.negative_ttl, 0.0, 3600.0)
    d.max_entries = sec.integer("max_entries", d.max_entries, 1, 1_000_000)
    sec.finish()


# The sections, each with its parser, in the order they are read (a section
# may look at one before it: cluster and dispatcher at sip.listen, radius at
# auth.source, replication at cluster.zookeeper). Each is the Config
# attribute of the same name.
_SECTIONS: dict[str, Callable[[Config, _Section], None]] = {
    "node": _node_section,
    "sip": _sip_section,
    "timers": _timers_section,
    "routing": _routing_section,
    "tcp": _tcp_section,
    "metrics": _metrics_section,
    "control": _control_section,
    "log": _log_section,
    "shutdown": _shutdown_section,
    "registrar": _registrar_section,
    "location": _location_section,
    "auth": _auth_section,
    "radius": _radius_section,
    "nat": _nat_section,
    "dns": _dns_section,
    "dispatcher": _dispatcher_section,
    "dialog": _dialog_section,
    "media": _media_section,
    "cluster": _cluster_section,
    "replication": _replication_section,
    "security": _security_section,
}
