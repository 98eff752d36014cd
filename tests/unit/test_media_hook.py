"""The media hook's pure parts (hasip/proxy/media.py): which bodies are
SDP, the address an SDP gives, when a side counts as behind NAT, which calls
the policy relays, and the offer's direction by the call's socket."""

from __future__ import annotations

import pytest

from hasip.app.config import MediaConfig
from hasip.dialog.store import DialogStore
from hasip.proxy.media import MediaHook, sdp_address, sdp_of
from hasip.sip.message import parse_message

SDP = (b"v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 0\r\n")


def _invite(ctype: str, body: bytes) -> bytes:
    head = ("INVITE sip:a@x SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.5;branch=z9hG4bK1\r\n"
            "From: <sip:b@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
            + (f"Content-Type: {ctype}\r\n" if ctype else "")
            + f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


@pytest.mark.parametrize(("ctype", "is_sdp"), [
    ("application/sdp", True), ("Application/SDP; charset=x", True),
    ("multipart/mixed; boundary=x", False), ("", False), ("text/plain", False)])
def test_only_a_session_description_is_sdp(ctype: str, is_sdp: bool) -> None:
    msg = parse_message(_invite(ctype, SDP))
    assert (sdp_of(msg) == SDP) is is_sdp


def test_no_body_no_sdp() -> None:
    assert sdp_of(parse_message(_invite("application/sdp", b""))) is None


def test_the_sdp_address_and_the_body_setter() -> None:
    assert sdp_address(SDP) == "10.0.0.5"
    assert sdp_address(b"v=0\r\nm=audio 1 RTP/AVP 0\r\n") is None
    msg = parse_message(_invite("application/sdp", SDP))
    msg.set_body(b"v=0\r\n")
    out = msg.to_bytes()
    assert out.endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    assert parse_message(out).body == b"v=0\r\n"


class _NoRelay:
    async def offer(self, call_id, cmd, sticky=""):  # type: ignore[no-untyped-def]
        raise AssertionError("not called")

    async def on(self, name, cmd):  # type: ignore[no-untyped-def]
        raise AssertionError("not called")


def _hook(**cfg: object) -> MediaHook:
    config = MediaConfig(rtpengine=["udp:127.0.0.1:2223"], **cfg)  # type: ignore[arg-type]
    return MediaHook(config, _NoRelay(), DialogStore(), lambda _s: True, lambda _w: None)


def test_the_policy() -> None:
    nat, always = _hook(relay="nat"), _hook(relay="always")
    assert [nat.relays(a, b) for a, b in ((False, False), (True, False), (False, True))] == [
        False, True, True]
    assert always.relays(False, False)


def test_a_private_sdp_address_other_than_the_source_is_nat() -> None:
    hook = _hook()
    assert hook._side(False, SDP, "198.18.0.9").nat          # 10.0.0.5 behind 198.18.0.9
    assert not hook._side(False, SDP, "10.0.0.5").nat         # it is the source
    assert hook._side(True, SDP, "10.0.0.5").nat              # the SIP said so


def test_the_direction_follows_the_calls_socket() -> None:
    hook = _hook(interfaces={"198.18.0.100": "vip_a"})
    assert hook._options("udp:198.18.0.100:5060").direction == ("vip_a", "vip_a")
    assert hook._options("udp:198.18.0.11:5060").direction is None
