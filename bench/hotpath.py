"""Micro-benchmark of the proxy's hot path without sockets: one call
(INVITE, 180, 200, ACK, BYE, 200) from a trusted gateway, or with
``--register`` one authenticated registration (REGISTER, 401, REGISTER with
credentials, 200; the durable store left out), fed through a Proxy whose
transport only records what it would send. Prints microseconds of CPU per
call or registration. Use it to see what a change to the hot path costs.

Run: .venv/bin/python bench/hotpath.py [--calls 20000] [--register] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hasip.app.config import Config, MetricsConfig, RoutingConfig
from hasip.app.node import tune_gc
from hasip.proxy.shell import Proxy
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


class Recorder(asyncio.DatagramTransport):
    """Stands in for the listeners' UDP sockets: what the proxy sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: object = None) -> None:  # type: ignore[override]
        self.sent.append((data, addr))  # type: ignore[arg-type]

    def send(self, data: bytes, dest: Destination, on_error: object = None) -> bool:
        self.sent.append((data, dest.addr))
        return True

    def attach(self, proxy: Proxy) -> None:
        proxy.transports.send = self.send  # type: ignore[method-assign]
        for listener in proxy.transports.listeners:
            listener.udp = self


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


def register_request(n: int, cseq: int, auth: str = "") -> bytes:
    return (
        f"REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-1-{n}-{cseq}\r\n"
        f"From: <sip:1001@127.0.0.1>;tag=r{n}\r\nTo: <sip:1001@127.0.0.1>\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:1001@127.0.0.1:5999;transport=UDP>\r\nExpires: 3600\r\n{auth}"
        f"Max-Forwards: 70\r\nUser-Agent: SIPp\r\nContent-Length: 0\r\n\r\n").encode()


def one_registration(proxy: Proxy, listener: object, rec: Recorder, n: int) -> None:
    rec.sent.clear()
    proxy.receive(register_request(n, 1), listener, CALLER, None)  # type: ignore[arg-type]
    challenge = rec.sent[-1][0]
    nonce = challenge.split(b'nonce="', 1)[1].split(b'"', 1)[0].decode()
    uri = "sip:127.0.0.1:5060"
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{HA1}:{nonce}:00000001:c{n}:auth:{ha2}".encode()).hexdigest()
    auth = (f'Authorization: Digest username="1001", realm="hasip", nonce="{nonce}", '
            f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc=00000001, '
            f'cnonce="c{n}"\r\n')
    proxy.receive(register_request(n, 2, auth), listener, CALLER, None)  # type: ignore[arg-type]
    assert rec.sent[-1][0].startswith(b"SIP/2.0 200"), rec.sent[-1][0][:60]


HA1 = hashlib.md5(b"1001:hasip:demo1001").hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime", help="profile order (cumulative...)")
    parser.add_argument("--filter", default="", help="profile rows matching this regex")
    parser.add_argument("--register", action="store_true")
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    config = Config(routing=RoutingConfig(next_hop=[parse_sip_uri("sip:127.0.0.1:5071")]),
                    metrics=MetricsConfig(listen=None))
    config.auth.demo_users = True
    config.security.exempt = ["127.0.0.0/8"]   # one source sends everything
    config.auth.trusted = ["127.0.0.1/32"] if not args.register else []
    proxy = Proxy(config, loop)
    rec = Recorder()
    rec.attach(proxy)
    listener = proxy.transports.listeners[0]
    tune_gc()  # as a running node does
    step = one_registration if args.register else one_call
    what = "registration" if args.register else "call"
    for n in range(200):
        step(proxy, listener, rec, n)
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    t0 = time.process_time()
    for n in range(200, 200 + args.calls):
        step(proxy, listener, rec, n)
    cpu = time.process_time() - t0
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats(args.sort).print_stats(args.filter, 25)
    print(f"proxy hot path: {1e6 * cpu / args.calls:.1f} us CPU per {what}, "
          f"{args.calls / cpu:.0f} per CPU-second (no sockets, no loop)")
    data = invite(1)
    t0 = time.process_time()
    for _ in range(args.calls):
        msg = parse_message(data)
        validate_request(msg)  # type: ignore[arg-type]
    print(f"parse + sanity of an INVITE: {1e6 * (time.process_time() - t0) / args.calls:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
