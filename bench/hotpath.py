"""Micro-benchmark of the proxy's hot path without sockets: one call
(INVITE, 180, 200, ACK, BYE, 200) fed through a Proxy whose transport only
records what it would send. Prints microseconds of CPU per call, and per
message parsed. Use it to see what a change to the hot path costs.

Run: .venv/bin/python bench/hotpath.py [--calls 20000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hasip.config import Config
from hasip.proxy.core import Proxy
from hasip.sip.message import parse_message, validate_request
from hasip.sip.uri import parse_sip_uri
from hasip.transport.base import Destination

CALLER = ("127.0.0.1", 5090)
CALLEE = ("127.0.0.1", 5071)


def invite(n: int) -> bytes:
    return (
        f"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-1-{n}-0\r\n"
        f"From: sipp <sip:caller@127.0.0.1:5090>;tag=1SIPpTag00{n}\r\n"
        f"To: <sip:service@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller@127.0.0.1:5090;transport=UDP>\r\nMax-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: 129\r\n\r\n"
        "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
        "c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


def answer(request: bytes, status: int, reason: str, extra: str = "") -> bytes:
    head = request.split(b"\r\n\r\n")[0].decode()
    lines = [f"SIP/2.0 {status} {reason}"]
    for line in head.split("\r\n")[1:]:
        name = line.split(":", 1)[0].lower()
        if name in ("via", "from", "call-id", "cseq", "record-route"):
            lines.append(line)
        elif name == "to":
            lines.append(line + ";tag=uas" if "tag=" not in line else line)
    lines.append("Contact: <sip:127.0.0.1:5071;transport=UDP>")
    return ("\r\n".join(lines) + f"\r\n{extra}Content-Length: 0\r\n\r\n").encode()


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def send(self, data: bytes, dest: Destination, on_error: object = None) -> bool:
        self.sent.append((data, dest.addr))
        return True


def one_call(proxy: Proxy, listener: object, rec: Recorder, n: int) -> None:
    rec.sent.clear()
    inv = invite(n)
    proxy.receive(inv, listener, CALLER, None)  # type: ignore[arg-type]
    fwd = rec.sent[-1][0]
    proxy.receive(answer(fwd, 180, "Ringing"), listener, CALLEE, None)  # type: ignore[arg-type]
    ok = answer(fwd, 200, "OK")
    proxy.receive(ok, listener, CALLEE, None)  # type: ignore[arg-type]
    to_tag = "uas"
    ack = (f"ACK sip:127.0.0.1:5071;transport=UDP SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-1-{n}-5\r\n"
           f"From: sipp <sip:caller@127.0.0.1:5090>;tag=1SIPpTag00{n}\r\n"
           f"To: <sip:service@127.0.0.1:5060>;tag={to_tag}\r\n"
           f"Call-ID: {n}-1@127.0.0.1\r\nCSeq: 1 ACK\r\n"
           f"Route: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
           ).encode()
    proxy.receive(ack, listener, CALLER, None)  # type: ignore[arg-type]
    bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"CSeq: 1 ACK", b"CSeq: 2 BYE").replace(
        b"-5\r\n", b"-7\r\n")
    proxy.receive(bye, listener, CALLER, None)  # type: ignore[arg-type]
    fwd_bye = rec.sent[-1][0]
    proxy.receive(answer(fwd_bye, 200, "OK"), listener, CALLEE, None)  # type: ignore[arg-type]
    assert len(rec.sent) == 7, [m[0][:20] for m in rec.sent]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    config = Config(next_hop=[parse_sip_uri("sip:127.0.0.1:5071")], metrics_listen=None)
    proxy = Proxy(config, loop)
    rec = Recorder()
    proxy.transports.send = rec.send  # type: ignore[method-assign]
    listener = proxy.transports.listeners[0]
    for n in range(200):
        one_call(proxy, listener, rec, n)
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    t0 = time.process_time()
    for n in range(200, 200 + args.calls):
        one_call(proxy, listener, rec, n)
    cpu = time.process_time() - t0
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    # The messages the proxy parses per call: INVITE, 180, 200, ACK, BYE, 200.
    print(f"proxy hot path: {1e6 * cpu / args.calls:.1f} us CPU per call, "
          f"{1e6 * cpu / args.calls / 6:.1f} us per received message, "
          f"{args.calls / cpu:.0f} calls per CPU-second (no sockets, no loop)")
    data = invite(1)
    t0 = time.process_time()
    for _ in range(args.calls):
        msg = parse_message(data)
        validate_request(msg)  # type: ignore[arg-type]
    print(f"parse + sanity of an INVITE: {1e6 * (time.process_time() - t0) / args.calls:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
