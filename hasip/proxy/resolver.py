"""Where a SIP URI's next hop is (RFC 3263): the seam between the engine and
DNS.

The engine asks :meth:`Resolver.targets` with the time; an IP literal is
answered at once, a name from the cache while its entry lives, and a name
not known (or expired) gets ``None``: the engine then waits for
:meth:`Resolver.lookup` (the only part that does I/O) and asks again.

Today a name resolves through the system resolver (A/AAAA and
``/etc/hosts``, as ``getaddrinfo`` sees them), which reports no TTL: entries
live ``dns.ttl`` seconds, failures ``dns.negative_ttl``, and the cache holds
at most ``dns.max_entries`` names (the oldest entry goes first). A target is
a list, best first, so that NAPTR/SRV (RFC 3263 4.1-4.2) can later hand the
engine several with failover across them without changing its side.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from hasip.sip.uri import SipUri
from hasip.telemetry.log import get_logger
from hasip.util.memo import remember

log = get_logger("hasip.dns")


class Target:
    """One place to send to: transport, IP literal, port."""

    __slots__ = ("host", "port", "transport")

    def __init__(self, transport: str, host: str, port: int) -> None:
        self.transport = transport
        self.host = host
        self.port = port

    def __repr__(self) -> str:
        return f"<Target {self.transport}:{self.host}:{self.port}>"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Target) and self.transport == other.transport
                and self.host == other.host and self.port == other.port)

    def __hash__(self) -> int:
        return hash((self.transport, self.host, self.port))


_IS_IP: dict[str, bool] = {}


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP literal (memoised: every forward asks)."""
    known = _IS_IP.get(host)
    if known is not None:
        return known
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return remember(_IS_IP, host, False)
    return remember(_IS_IP, host, True)


def target_host(uri: SipUri) -> str:
    """The host a request to ``uri`` goes to (RFC 3261 16.6 step 6: maddr wins)."""
    return uri.params.get("maddr") or uri.host_ip


class HostCache:
    """Addresses of names, each for as long as it may be kept; bounded."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, list[str]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, now: float) -> list[str] | None:
        """The addresses of ``name`` (empty: it did not resolve), or None
        when nothing valid is cached."""
        entry = self._entries.get(name)
        if entry is None or entry[0] <= now:
            if entry is not None:
                del self._entries[name]
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def put(self, name: str, addresses: list[str], now: float, ttl: float) -> None:
        entries = self._entries
        entries.pop(name, None)
        while len(entries) >= self.max_entries:
            entries.popitem(last=False)
        entries[name] = (now + ttl, addresses)


Lookup = Callable[[str], Awaitable[list[str]]]


async def system_lookup(name: str) -> list[str]:
    """A and AAAA of ``name`` by the system resolver, IPv4 first."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
    addresses: list[str] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            address = str(info[4][0])
            if info[0] == family and address not in addresses:
                addresses.append(address)
    return addresses


class Resolver:
    """RFC 3263 for IP literals and A/AAAA names (no NAPTR/SRV yet)."""

    def __init__(self, ttl: float = 300.0, negative_ttl: float = 30.0,
                 max_entries: int = 4096, lookup: Lookup = system_lookup) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.cache = HostCache(max_entries)
        self._lookup = lookup

    def targets(self, uri: SipUri, now: float) -> list[Target] | None:
        """Where ``uri`` is, best first ([]: nowhere usable); None when a
        name must be looked up first (:meth:`lookup`)."""
        host = target_host(uri)
        transport = uri.transport
        port = uri.default_port()
        if is_ip(host):
            return [Target(transport, host, port)]
        addresses = self.cache.get(host.lower(), now)
        if addresses is None:
            return None
        return [Target(transport, a, port) for a in addresses]

    async def lookup(self, uri: SipUri, now: float) -> None:
        """Resolve ``uri``'s host into the cache (a failure is cached too)."""
        host = target_host(uri).lower()
        try:
            addresses = await self._lookup(host)
        except OSError as exc:
            log.info("dns_failed", host=host, reason=str(exc))
            self.cache.put(host, [], now, self.negative_ttl)
            return
        self.cache.put(host, addresses, now, self.ttl if addresses else self.negative_ttl)
