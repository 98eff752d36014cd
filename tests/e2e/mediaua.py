"""A raw-socket user agent for the media tests: a SIP socket and an RTP
socket on one loopback address, the SDP it offers or answers, and the few
requests and responses a call needs, written out by hand so that a test
controls every SDP exchange (late offers, holds, failures) and reads what
hasip relayed."""

from __future__ import annotations

import re
import socket
import uuid

from hasip.sip.message import Request, Response, parse_message
from tests.e2e.conftest import UdpPeer


def rtp_packet(seq: int) -> bytes:
    return (bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
            + b"\x0a\x0b\x0c\x0d" + b"\xff" * 160)


def sdp_media(body: bytes) -> tuple[str, int]:
    text = body.decode()
    c = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    m = re.search(r"^m=audio (\d+)", text, re.M)
    assert c and m, text
    return c.group(1), int(m.group(1))


def sdp_direction(body: bytes) -> str:
    found = re.search(r"^a=(sendrecv|sendonly|recvonly|inactive)", body.decode(), re.M)
    return found.group(1) if found else "sendrecv"


class Party:
    """One phone (or Asterisk): SIP on ``ip`` (an ephemeral port), RTP on
    another port of ``ip``."""

    def __init__(self, ip: str, user: str) -> None:
        self.ip = ip
        self.user = user
        self.sip = UdpPeer(ip)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind((ip, 0))
        self.rtp.settimeout(0.5)
        self.rtp_port = self.rtp.getsockname()[1]
        self.tag = "t" + uuid.uuid4().hex[:8]
        self.cseq = 1

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.ip}:{self.sip.port}>"

    def sdp(self, direction: str = "sendrecv", version: int = 1) -> bytes:
        return (f"v=0\r\no=- 1 {version} IN IP4 {self.ip}\r\ns=-\r\nc=IN IP4 {self.ip}\r\n"
                f"t=0 0\r\nm=audio {self.rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
                f"a={direction}\r\n").encode()

    def send(self, data: bytes, port: int, host: str = "127.0.0.1") -> None:
        self.sip.send(data, port, host)

    def recv(self, timeout: float = 3.0, skip_100: bool = True) -> Request | Response | None:
        while True:
            data = self.sip.recv(timeout)
            if data is None:
                return None
            msg = parse_message(data)
            if skip_100 and isinstance(msg, Response) and msg.status == 100:
                continue
            return msg

    def recv_request(self, method: str, timeout: float = 3.0) -> Request:
        msg = self.recv(timeout)
        assert isinstance(msg, Request) and msg.method == method, msg
        return msg

    def recv_response(self, status: int, timeout: float = 3.0) -> Response:
        msg = self.recv(timeout)
        assert isinstance(msg, Response) and msg.status == status, msg
        return msg

    def request(self, method: str, uri: str, to: str, call_id: str, *, from_: str = "",
                cseq: int | None = None, body: bytes = b"", routes: list[str] | None = None,
                branch: str = "") -> bytes:
        """A request from this party (``from_``: its From with tag, else its own)."""
        branch = branch or "z9hG4bK" + uuid.uuid4().hex[:12]
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.ip}:{self.sip.port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: {from_ or f'<sip:{self.user}@{self.ip}>;tag={self.tag}'}",
                 f"To: {to}", f"Call-ID: {call_id}",
                 f"CSeq: {cseq} {method}",
                 f"Contact: {self.contact}"]
        lines += [f"Route: {r}" for r in routes or []]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def answer(self, req: Request, status: int, reason: str, body: bytes = b"",
               to_tag: str | None = None) -> bytes:
        """A response to ``req`` (Via, From, To, Call-ID, CSeq, Record-Route copied)."""
        lines = [f"SIP/2.0 {status} {reason}"]
        for key, raw in zip(req.keys, req.raws, strict=True):
            if key in (b"via", b"from", b"call-id", b"cseq", b"record-route"):
                lines.append(raw.decode())
            elif key == b"to":
                text = raw.decode()
                tag = self.tag if to_tag is None else to_tag
                lines.append(text if "tag=" in text or not tag else f"{text};tag={tag}")
        if status > 100:
            lines.append(f"Contact: {self.contact}")
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def reply_to(self, req: Request, status: int, reason: str, body: bytes = b"") -> None:
        """Answer ``req`` where its top Via says (rport/received as we sent it)."""
        via = req.top_via
        port = int(via.params.get("rport") or via.port or 5060)
        host = via.params.get("received") or via.host
        self.send(self.answer(req, status, reason, body), port, host)

    def rtp_to(self, addr: tuple[str, int], count: int) -> None:
        for seq in range(count):
            self.rtp.sendto(rtp_packet(seq), addr)

    def rtp_received(self, window: float = 0.5) -> list[tuple[str, int]]:
        """Sources of the RTP packets that arrived (until ``window`` of quiet)."""
        got = []
        self.rtp.settimeout(window)
        while True:
            try:
                _, src = self.rtp.recvfrom(2048)
            except OSError:
                return got
            got.append((src[0], src[1]))

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()
