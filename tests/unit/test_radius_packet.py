"""Access-Request layout for SIP digest (draft-sterman and RFC 5090)."""

from __future__ import annotations

from pyrad.packet import AuthPacket

from hasip.auth.digest import Credentials
from hasip.auth.radius import build_request, load_dictionary

CREDS = Credentials("1001", "hasip", "abc", "sip:127.0.0.1", "0123", "MD5", "auth",
                    "00000001", "cn")


def decode(raw: bytes) -> AuthPacket:
    return AuthPacket(packet=raw, dict=load_dictionary(), secret=b"s")


def test_sterman_digest_attributes() -> None:
    pkt = build_request(load_dictionary(), b"s", 7, CREDS, "REGISTER", "sterman", "n1", 15)
    raw = pkt.RequestPacket()
    got = decode(raw)
    assert got.id == 7 and got["User-Name"] == ["1001"] and got["Service-Type"] == [15]
    assert got["Digest-Response"] == ["0123"]
    subs = {a[0]: a[2:].decode() for a in got["Digest-Attributes"]}
    assert subs == {1: "hasip", 2: "abc", 3: "REGISTER", 4: "sip:127.0.0.1", 5: "auth",
                    6: "MD5", 8: "cn", 9: "00000001", 10: "1001"}
    assert all(a[1] == len(a) for a in got["Digest-Attributes"])
    assert got.message_authenticator and got.verify_message_authenticator()


def test_rfc5090_attributes() -> None:
    pkt = build_request(load_dictionary(), b"s", 8, CREDS, "INVITE", "rfc5090", "n1", 15)
    got = decode(pkt.RequestPacket())
    assert got["RFC5090-Digest-Response"] == ["0123"]
    assert got["RFC5090-Digest-Method"] == ["INVITE"]
    assert got["RFC5090-Digest-Nonce-Count"] == ["00000001"]
    assert "Digest-Attributes" not in got
