"""The ng dictionaries hasip sends for a call, and the media figures read
back, sans-IO. What Kamailio's rtpengine module sends for
``rtpengine_offer/answer/delete`` with the flags operators use:
``replace`` (origin, session-connection), ``trust-address`` for a party
whose SDP address is reachable, ``received-from`` (the SIP source) for one
behind NAT, ``ICE`` (remove/force), ``direction`` (rtpengine's logical
interfaces, for media on the address a call came in on)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hasip.media.bencode import Decoded


@dataclass
class Side:
    """One party of an offer or answer: whether it is behind NAT and the
    source address of its SIP message."""

    nat: bool
    source_ip: str


@dataclass
class Options:
    replace: list[str] = field(default_factory=lambda: ["origin", "session-connection"])
    trust_address: bool = True
    ice: str = "remove"                 # remove, force, keep
    direction: tuple[str, str] | None = None


def _family(ip: str) -> str:
    return "IP6" if ":" in ip else "IP4"


def _common(cmd: dict[str, Any], side: Side, opts: Options) -> dict[str, Any]:
    if opts.trust_address and not side.nat:
        cmd["flags"] = ["trust-address"]
    else:
        # The SDP's address is the phone's private one: rtpengine sends to
        # where the SIP came from until the phone's first packet (latching).
        cmd["received-from"] = [_family(side.source_ip), side.source_ip]
    if opts.replace:
        cmd["replace"] = list(opts.replace)
    if opts.ice == "remove":
        cmd["ICE"] = "remove"
    elif opts.ice == "force":
        cmd["ICE"] = "force"
    return cmd


def offer(call_id: str, from_tag: str, sdp: bytes, side: Side, opts: Options,
          via_branch: str = "", to_tag: str = "") -> dict[str, Any]:
    """``from_tag``: the offerer's tag (the From tag of a request, the To
    tag of a reply that offers); ``to_tag``: the other party's, when known."""
    cmd: dict[str, Any] = {"command": "offer", "call-id": call_id, "from-tag": from_tag,
                           "sdp": sdp}
    if to_tag:
        cmd["to-tag"] = to_tag
    if opts.direction is not None:
        cmd["direction"] = list(opts.direction)
    if via_branch:
        cmd["via-branch"] = via_branch
    return _common(cmd, side, opts)


def answer(call_id: str, from_tag: str, to_tag: str, sdp: bytes, side: Side,
           opts: Options, via_branch: str = "") -> dict[str, Any]:
    cmd: dict[str, Any] = {"command": "answer", "call-id": call_id, "from-tag": from_tag,
                           "to-tag": to_tag, "sdp": sdp}
    if via_branch:
        cmd["via-branch"] = via_branch
    return _common(cmd, side, opts)


def delete(call_id: str, from_tag: str = "", to_tag: str = "", delay: int = 0) -> dict[str, Any]:
    cmd: dict[str, Any] = {"command": "delete", "call-id": call_id, "delete-delay": delay}
    if from_tag:
        cmd["from-tag"] = from_tag
    if to_tag:
        cmd["to-tag"] = to_tag
    return cmd


def query(call_id: str) -> dict[str, Any]:
    return {"command": "query", "call-id": call_id}


def ping() -> dict[str, Any]:
    return {"command": "ping"}


def list_calls(limit: int = 32) -> dict[str, Any]:
    return {"command": "list", "limit": limit}


@dataclass
class MediaStats:
    """A call's media as rtpengine counted it (delete or query answer):
    RTP packets, bytes and errors over every stream, and from the SSRC
    reports (RTCP) the worst packet loss, the highest jitter and the lowest
    MOS where rtpengine computed one."""

    packets: int = 0
    bytes: int = 0
    errors: int = 0
    lost: int = 0
    jitter: int = 0
    mos: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"packets": self.packets, "bytes": self.bytes, "errors": self.errors,
                "lost": self.lost, "jitter": self.jitter, "mos": self.mos}


def _int(d: Decoded | None, key: bytes) -> int:
    if isinstance(d, dict):
        v = d.get(key)
        if isinstance(v, int):
            return v
    return 0


def media_stats(data: dict[bytes, Decoded]) -> MediaStats:
    stats = MediaStats()
    totals = data.get(b"totals")
    rtp = totals.get(b"RTP") if isinstance(totals, dict) else None
    stats.packets = _int(rtp, b"packets")
    stats.bytes = _int(rtp, b"bytes")
    stats.errors = _int(rtp, b"errors")
    ssrcs = data.get(b"SSRC")
    if isinstance(ssrcs, dict):
        lowest = 0.0
        for report in ssrcs.values():
            if not isinstance(report, dict):
                continue
            for key in (b"lowest MOS", b"average MOS"):
                mos = report.get(key)
                value = _int(mos, b"MOS")
                if value:
                    # rtpengine gives MOS times ten (43: 4.3).
                    m = value / 10.0
                    lowest = m if not lowest else min(lowest, m)
                    stats.lost = max(stats.lost, _int(mos, b"packet loss"))
                    stats.jitter = max(stats.jitter, _int(mos, b"jitter"))
                    break
        stats.mos = lowest
    return stats
