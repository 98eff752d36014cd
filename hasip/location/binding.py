"""A registered contact (RFC 3261 10): what the registrar stores for an
address-of-record, the fields of the seed's ``location`` table."""

from __future__ import annotations

from dataclasses import dataclass, field

from hasip.ids import id_maker

# Contact flags (the table's ``flags`` column).
FLAG_NAT = 1


# A record id unique across the cluster (the location table's ruid).
new_ruid = id_maker("hs")


@dataclass(slots=True)
class Binding:
    aor: str
    contact: str                 # the Contact URI as registered
    expires: float               # absolute, seconds since the epoch
    call_id: str
    cseq: int
    q: float = 1.0
    ruid: str = field(default_factory=new_ruid)
    instance: str | None = None  # +sip.instance (RFC 5626/5627)
    reg_id: int = 0              # reg-id (RFC 5626)
    path: tuple[str, ...] = ()   # Path header values (RFC 3327), first hop first
    received: str | None = None  # "udp:203.0.113.5:41234": where the REGISTER came from when NATed
    socket: str = ""             # "udp:192.0.2.10:5060": our socket (VIP) it arrived on
    user_agent: str = ""
    flags: int = 0
    updated: float = 0.0         # last change, seconds since the epoch
    version: int = 0             # change-feed sequence number of the last change
    node: str = ""               # the node that made the last change

    @property
    def nat(self) -> bool:
        return bool(self.flags & FLAG_NAT)

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires - now + 0.5))

    def key(self) -> tuple[str, str]:
        return (self.aor, self.ruid)


def parse_socket(text: str) -> tuple[str, str, int] | None:
    """``udp:1.2.3.4:5060`` / ``tcp:[::1]:5060`` -> (transport, host, port)."""
    transport, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    if host.startswith("["):
        host = host[1:-1]
    return transport, host, int(port)


def format_socket(transport: str, host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{transport}:{host}:{port}"
