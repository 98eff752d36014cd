"""The replication wire protocol, sans-IO: framing, the authenticated
handshake, per-frame integrity, and the message kinds.

One TCP connection per pair of nodes, both ways. Every frame is

    length   4 bytes, big-endian: the bytes that follow (kind + body + mac)
    kind     1 byte (HELLO, AUTH, RECORDS, ...)
    body     JSON (UTF-8), an object
    mac      16 bytes: HMAC-SHA256(session key, frame counter || kind || body),
             truncated; absent on HELLO (there is no session key yet)

Handshake: each side sends HELLO {"proto": [MIN, MAX], "node", "epoch",
"nonce"}; each then derives the session key
HMAC(secret, "hasip-repl-v1" | lower nonce | higher nonce) and sends AUTH
{"proof": HMAC(key, "auth" | its own node | the other's nonce)}. A side
that cannot check the other's proof closes the connection: a node without
the cluster's shared secret never gets a record in or out. After AUTH every
frame carries the MAC over a counter that each direction increments, so a
frame cannot be altered, replayed or reordered inside the connection (TLS,
when configured, wraps the whole stream; the MAC stays).

Versioning: HELLO carries the range of protocol versions a node speaks; the
connection uses the highest both speak, so nodes of two releases talk
during an upgrade. Record bodies are JSON objects; a reader ignores fields
it does not know and fills defaults for those it misses.

Messages after the handshake (kind: body):

    RECORDS   {"origin", "epoch", "seqs": [first, last] | null, "records": [...]}
              records made by ``origin`` (seqs: its stream's sequence
              numbers, consecutive; null for a snapshot's records)
    SYNC      {"full": bool, "since": seq} ask the peer for its own records
              after ``since`` (from its log), or for everything it holds
    SYNC_DONE {"positions": {origin: [epoch, seq]}} the end of a snapshot or
              resend: what the sender had of each origin at that moment
    ACK       {"origin", "seq", "sent_at"} the receiver applied up to seq
              (the sender measures replication lag from sent_at)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from typing import Any

PROTO_MIN = 1
PROTO_MAX = 1

HELLO = 1
AUTH = 2
RECORDS = 3
SYNC = 4
SYNC_DONE = 5
ACK = 6
KINDS = {HELLO: "hello", AUTH: "auth", RECORDS: "records", SYNC: "sync",
         SYNC_DONE: "sync_done", ACK: "ack"}

MAC_SIZE = 16
MAX_FRAME = 16 * 1024 * 1024     # a snapshot is sent in batches far below this
_LEN = struct.Struct(">I")
_COUNTER = struct.Struct(">Q")


class ProtocolError(Exception):
    """The peer broke the protocol (bad frame, bad MAC, bad proof): close."""


def new_nonce() -> str:
    return os.urandom(16).hex()


def session_key(secret: bytes, nonce_a: str, nonce_b: str) -> bytes:
    low, high = sorted((nonce_a, nonce_b))
    return hmac.new(secret, f"hasip-repl-v1|{low}|{high}".encode(), hashlib.sha256).digest()


def proof(key: bytes, node: str, their_nonce: str) -> str:
    return hmac.new(key, f"auth|{node}|{their_nonce}".encode(), hashlib.sha256).hexdigest()


def choose_version(theirs: Any) -> int:
    """The highest version both speak; ProtocolError when none."""
    try:
        low, high = int(theirs[0]), int(theirs[1])
    except (TypeError, ValueError, IndexError):
        raise ProtocolError(f"bad protocol range {theirs!r}") from None
    best = min(high, PROTO_MAX)
    if best < max(low, PROTO_MIN):
        raise ProtocolError(f"no common protocol version (theirs {low}-{high}, "
                            f"ours {PROTO_MIN}-{PROTO_MAX})")
    return best


class Codec:
    """One connection's framing and MACs, both directions."""

    def __init__(self) -> None:
        self.key: bytes | None = None
        self.sent = 0            # frames sent since the key was set
        self.received = 0
        self._buf = bytearray()

    def _mac(self, counter: int, kind: int, body: bytes) -> bytes:
        assert self.key is not None
        return hmac.new(self.key, _COUNTER.pack(counter) + bytes((kind,)) + body,
                        hashlib.sha256).digest()[:MAC_SIZE]

    def encode(self, kind: int, body: dict[str, Any]) -> bytes:
        data = json.dumps(body, separators=(",", ":")).encode()
        mac = b""
        if self.key is not None:
            mac = self._mac(self.sent, kind, data)
            self.sent += 1
        return _LEN.pack(1 + len(data) + len(mac)) + bytes((kind,)) + data + mac

    def feed(self, data: bytes) -> None:
        """Bytes from the socket; take the frames with ``next_frame``."""
        self._buf += data

    def next_frame(self) -> tuple[int, dict[str, Any]] | None:
        """The next complete frame, checked, or None. One at a time: handling
        HELLO sets the key that the frames after it are checked with."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (size,) = _LEN.unpack_from(buf)
        if size < 1 or size > MAX_FRAME:
            raise ProtocolError(f"frame of {size} bytes")
        if len(buf) < 4 + size:
            return None
        frame = bytes(buf[4:4 + size])
        del buf[:4 + size]
        kind = frame[0]
        if kind not in KINDS:
            raise ProtocolError(f"unknown frame kind {kind}")
        if self.key is not None:
            if len(frame) < 1 + MAC_SIZE:
                raise ProtocolError("frame too short for its MAC")
            body, mac = frame[1:-MAC_SIZE], frame[-MAC_SIZE:]
            if not hmac.compare_digest(mac, self._mac(self.received, kind, body)):
                raise ProtocolError("bad MAC (wrong secret, or an altered, replayed or "
                                    "reordered frame)")
            self.received += 1
        elif kind != HELLO:
            raise ProtocolError(f"{KINDS[kind]} before the handshake")
        else:
            body = frame[1:]
        try:
            message = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"{KINDS[kind]} body is not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolError(f"{KINDS[kind]} body is not an object")
        return kind, message
