"""A RADIUS client for SIP digest authentication (pyrad packets on asyncio).

The node checks its own nonces; RADIUS only answers "is this digest response
right for this user" (Access-Accept / Access-Reject), with the digest fields
sent either as draft-sterman ``Digest-Attributes`` (what FreeRADIUS's
rlm_digest and Kamailio's auth_radius speak) or as RFC 5090 attributes.

Servers are tried in order. A server that times out (``timeout`` x
``retries + 1``) is skipped for ``dead_time`` seconds; when every server fails
the caller gets :class:`RadiusUnavailable` and answers 503.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from importlib import resources
from typing import cast

from pyrad.dictionary import Dictionary
from pyrad.packet import AccessAccept, AccessReject, AccessRequest, AuthPacket, Packet

from hasip.auth.digest import Credentials
from hasip.telemetry import metrics
from hasip.telemetry.log import get_logger

log = get_logger("hasip.radius")

# draft-sterman-aaa-sip-00 sub-attributes of Digest-Attributes (207)
_STERMAN = {"realm": 1, "nonce": 2, "method": 3, "uri": 4, "qop": 5, "algorithm": 6,
            "cnonce": 8, "nc": 9, "username": 10}


class RadiusUnavailable(Exception):
    """No RADIUS server answered."""


def load_dictionary() -> Dictionary:
    path = resources.files("hasip.auth").joinpath("radius.dictionary")
    with resources.as_file(path) as real:
        return Dictionary(str(real))


def digest_fields(creds: Credentials, method: str) -> dict[str, str]:
    fields = {"realm": creds.realm, "nonce": creds.nonce, "method": method, "uri": creds.uri,
              "algorithm": creds.algorithm, "username": creds.username}
    if creds.qop is not None:
        fields.update(qop=creds.qop, cnonce=creds.cnonce or "", nc=creds.nc or "")
    return fields


def build_request(dictionary: Dictionary, secret: bytes, packet_id: int, creds: Credentials,
                  method: str, style: str, nas_identifier: str,
                  service_type: int) -> AuthPacket:
    """An Access-Request carrying the digest (``style``: sterman or rfc5090)."""
    pkt = AuthPacket(code=AccessRequest, id=packet_id, secret=secret, dict=dictionary)
    pkt.add_message_authenticator()
    pkt["User-Name"] = creds.username
    pkt["Service-Type"] = service_type
    pkt["NAS-Identifier"] = nas_identifier
    fields = digest_fields(creds, method)
    if style == "rfc5090":
        pkt["RFC5090-Digest-Response"] = creds.response
        names = {"realm": "Realm", "nonce": "Nonce", "method": "Method", "uri": "URI",
                 "qop": "Qop", "algorithm": "Algorithm", "cnonce": "CNonce",
                 "nc": "Nonce-Count", "username": "Username"}
        for key, value in fields.items():
            pkt[f"RFC5090-Digest-{names[key]}"] = value
    else:
        pkt["Digest-Response"] = creds.response
        for key, value in fields.items():
            data = value.encode("utf-8", "surrogateescape")[:253]
            pkt.AddAttribute("Digest-Attributes", bytes([_STERMAN[key], len(data) + 2]) + data)
    return pkt


@dataclass
class Server:
    host: str
    port: int
    dead_until: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


class _Endpoint(asyncio.DatagramProtocol):
    """One UDP socket to one server; replies matched by packet id."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.cycle(range(256))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 20:
            fut = self.pending.get(data[1])
            if fut is not None and not fut.done():
                fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: the server is not there; fail fast.
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def free_id(self) -> int | None:
        for _ in range(256):
            i = next(self._ids)
            if i not in self.pending:
                return i
        return None


class RadiusClient:
    def __init__(self, servers: list[tuple[str, int]], secret: bytes, timeout: float = 1.0,
                 retries: int = 1, dead_time: float = 10.0, style: str = "sterman",
                 nas_identifier: str = "hasip", service_type: int = 15) -> None:
        self.servers = [Server(h, p) for h, p in servers]
        self.secret = secret
        self.timeout = timeout
        self.retries = retries
        self.dead_time = dead_time
        self.style = style
        self.nas_identifier = nas_identifier
        self.service_type = service_type
        self.dictionary = load_dictionary()
        self._endpoints: dict[str, _Endpoint] = {}

    async def _endpoint(self, server: Server) -> _Endpoint:
        ep = self._endpoints.get(server.label)
        if ep is None or ep.transport is None or ep.transport.is_closing():
            loop = asyncio.get_running_loop()
            _, ep = await loop.create_datagram_endpoint(
                _Endpoint, remote_addr=(server.host, server.port))
            self._endpoints[server.label] = ep
        return ep

    async def verify(self, creds: Credentials, method: str) -> bool:
        """True on Access-Accept, False on Access-Reject; RadiusUnavailable
        when no server answers."""
        now = time.monotonic()
        alive = [s for s in self.servers if s.dead_until <= now]
        # All marked dead: try them anyway, the first may be back.
        for server in alive or self.servers:
            try:
                return await self._ask(server, creds, method)
            except (TimeoutError, OSError) as exc:
                kind = "timeout" if isinstance(exc, TimeoutError) else "unreachable"
                metrics.RADIUS_ERRORS.labels(server.label, kind).inc()
                server.dead_until = time.monotonic() + self.dead_time
                log.warning("radius_server_failed", server=server.label, error=kind)
        raise RadiusUnavailable("no RADIUS server answered")

    async def _ask(self, server: Server, creds: Credentials, method: str) -> bool:
        ep = await self._endpoint(server)
        packet_id = ep.free_id()
        if packet_id is None:
            raise TimeoutError("256 requests in flight")
        pkt = build_request(self.dictionary, self.secret, packet_id, creds, method, self.style,
                            self.nas_identifier, self.service_type)
        raw = pkt.RequestPacket()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            for _ in range(self.retries + 1):
                fut: asyncio.Future[bytes] = loop.create_future()
                ep.pending[packet_id] = fut
                assert ep.transport is not None
                ep.transport.sendto(raw)
                try:
                    data = await asyncio.wait_for(fut, self.timeout)
                except TimeoutError:
                    continue
                reply = Packet(packet=data, dict=self.dictionary, secret=self.secret)
                if not pkt.VerifyReply(reply, data):
                    metrics.RADIUS_ERRORS.labels(server.label, "bad_reply").inc()
                    continue
                metrics.RADIUS_LATENCY.labels(server.label).observe(loop.time() - started)
                if reply.code == AccessAccept:
                    return True
                if reply.code == AccessReject:
                    return False
                metrics.RADIUS_ERRORS.labels(server.label, "bad_reply").inc()
            raise TimeoutError()
        finally:
            ep.pending.pop(packet_id, None)

    def close(self) -> None:
        for ep in self._endpoints.values():
            if ep.transport is not None:
                ep.transport.close()
        self._endpoints.clear()
