"""One authenticated replication connection to a peer, over asyncio
streams: the handshake of ``protocol`` (HELLO both ways, then AUTH proofs),
then frames both ways until either side closes or breaks the protocol."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from hasip.replication.protocol import (
    AUTH,
    HELLO,
    PROTO_MAX,
    PROTO_MIN,
    Codec,
    ProtocolError,
    choose_version,
    new_nonce,
    proof,
    session_key,
)
from hasip.telemetry.log import get_logger

log = get_logger("hasip.replication")

HANDSHAKE_TIMEOUT = 5.0
# A peer this far behind (bytes queued to it) is cut off; it repairs the gap
# when it comes back instead of holding this node's memory.
MAX_QUEUED = 64 * 1024 * 1024

Handler = Callable[["Link", int, dict[str, Any]], Awaitable[None] | None]


class Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 node: str, epoch: str, secret: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.node = node
        self.epoch = epoch
        self.secret = secret
        self.codec = Codec()
        self.peer = ""            # the peer's node name, once it said HELLO
        self.peer_epoch = ""
        self.version = 0
        self.closed = False

    async def handshake(self) -> None:
        """HELLO both ways, AUTH both ways; ProtocolError when the peer
        cannot prove it knows the secret."""
        nonce = new_nonce()
        self.writer.write(self.codec.encode(HELLO, {
            "proto": [PROTO_MIN, PROTO_MAX], "node": self.node, "epoch": self.epoch,
            "nonce": nonce}))
        kind, hello = await self._read()
        if kind != HELLO:
            raise ProtocolError("expected HELLO")
        self.version = choose_version(hello.get("proto"))
        peer, their_nonce = hello.get("node"), hello.get("nonce")
        if not isinstance(peer, str) or not peer or not isinstance(their_nonce, str):
            raise ProtocolError("HELLO without node or nonce")
        if peer == self.node:
            raise ProtocolError("connected to itself")
        self.peer, self.peer_epoch = peer, str(hello.get("epoch", ""))
        self.codec.key = session_key(self.secret, nonce, their_nonce)
        self.writer.write(self.codec.encode(AUTH, {"proof": proof(self.codec.key, self.node,
                                                                  their_nonce)}))
        kind, auth = await self._read()
        expected = proof(self.codec.key, peer, nonce)
        if kind != AUTH or not hmac.compare_digest(str(auth.get("proof", "")), expected):
            raise ProtocolError(f"{peer} failed authentication (not the cluster's secret)")

    async def _read(self) -> tuple[int, dict[str, Any]]:
        while True:
            frame = self.codec.next_frame()
            if frame is not None:
                return frame
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed by the peer")
            self.codec.feed(data)

    async def run(self, handler: Handler) -> None:
        """Frames to ``handler`` until the connection ends."""
        try:
            while True:
                kind, body = await self._read()
                result = handler(self, kind, body)
                if result is not None:
                    await result
        finally:
            self.close()

    def send(self, kind: int, body: dict[str, Any]) -> bool:
        """Queue a frame; False (and the link closed) when the peer is too
        far behind or gone."""
        if self.closed:
            return False
        transport = self.writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() > MAX_QUEUED:
            log.warning("replication_peer_too_slow", peer=self.peer)
            self.close()
            return False
        self.writer.write(self.codec.encode(kind, body))
        return True

    async def drain(self) -> None:
        if not self.closed:
            await self.writer.drain()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
