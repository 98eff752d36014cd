"""A TCP phone for the namespace tests: registers over a connection to the
proxy (digest), listens for calls at its Contact (another port), keeps the
registration's connection until the proxy closes it, then answers the first
INVITE that arrives on a connection the proxy opens to the Contact with 486,
and reports where that connection came from:

    python -m tests.e2e.tcpphone --bind 198.18.0.50 --proxy 198.18.0.100:5060 \
        --user 20003 --password pw20003 --duration 20 --out result.json

Writes ``OUT.registered`` once registered, then ``OUT`` (JSON) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import time
import uuid

from hasip.sip.framing import StreamFramer
from hasip.sip.message import Request, Response, parse_message
from tests.e2e.conftest import reply_to
from tests.e2e.sipphone import digest_header


def _write(path: str, result: dict[str, object]) -> None:
    with open(path + ".tmp", "w") as fh:
        json.dump(result, fh)
    os.replace(path + ".tmp", path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bind", required=True)
    p.add_argument("--proxy", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--port", type=int, default=5075)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    deadline = time.monotonic() + args.duration
    phost, _, pport = args.proxy.rpartition(":")
    proxy = (phost, int(pport))
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((args.bind, args.port))
    server.listen(4)
    contact = f"sip:{args.user}@{args.bind}:{args.port};transport=tcp"
    flow = socket.create_connection(proxy, timeout=5, source_address=(args.bind, 0))
    framer = StreamFramer()
    call_id = uuid.uuid4().hex
    uri = f"sip:{phost}:{pport};transport=tcp"
    result: dict[str, object] = {"register": None}
    auth = ""
    for cseq in (1, 2):
        flow.sendall((
            f"REGISTER {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {args.bind}:{args.port};branch=z9hG4bK{uuid.uuid4().hex[:10]}\r\n"
            f"From: <sip:{args.user}@{phost}>;tag={call_id[:6]}\r\n"
            f"To: <sip:{args.user}@{phost}>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\nContact: <{contact}>\r\n"
            f"Expires: 600\r\n{auth}Content-Length: 0\r\n\r\n").encode())
        messages: list[bytes] = []
        while not messages and time.monotonic() < deadline:
            data = flow.recv(65536)
            if not data:
                break
            messages = [m for m in framer.feed(data) if m.strip()]
        resp = parse_message(messages[0]) if messages else None
        if not isinstance(resp, Response):
            break
        result["register"] = resp.status
        if resp.status != 401:
            break
        auth = digest_header(resp.get_str(b"www-authenticate") or "", args.user,
                             args.password, "REGISTER", uri, False) + "\r\n"
    _write(args.out + ".registered", result)
    # The registration's connection lives until its node dies.
    flow.setblocking(False)
    result["flow_closed"] = False
    calls = 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([flow, server] if not result["flow_closed"] else [server],
                                    [], [], 0.2)
        if flow in ready:
            try:
                data = flow.recv(65536)
            except OSError:
                data = b""
            if not data:
                result["flow_closed"] = True
                flow.close()
        if server in ready:
            conn, peer = server.accept()
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            stream = StreamFramer()
            got: list[bytes] = []
            try:
                while not got:
                    data = conn.recv(65536)
                    if not data:
                        break
                    got = [m for m in stream.feed(data) if m.strip()]
            except OSError:
                pass
            req = parse_message(got[0]) if got else None
            if isinstance(req, Request) and req.method == "INVITE":
                calls += 1
                result["invite_peer"] = peer[0]
                result["invite_uri"] = req.uri_raw.decode()
                conn.sendall(reply_to(got[0], 486, "Busy Here"))
                time.sleep(0.5)       # the ACK
            conn.close()
            break
    if not result["flow_closed"]:
        # n1's FIN can be lost around the VIP move; a keepalive on the old
        # connection now reaches n2 (the VIP's new owner), which has no such
        # connection and resets it, so the flow is shown gone either way.
        result["flow_closed"] = _probe_closed(flow, min(5.0, deadline - time.monotonic()))
        result["flow_closed_by"] = "probe"
    else:
        result["flow_closed_by"] = "peer"
    result["invites"] = calls
    _write(args.out, result)


def _probe_closed(flow: socket.socket, wait: float) -> bool:
    """Send a CRLF keepalive (RFC 5626 3.5.1) and wait up to ``wait`` s for
    the reset or end of stream that says the connection is dead."""
    end = time.monotonic() + max(0.5, wait)
    try:
        flow.sendall(b"\r\n\r\n")
    except OSError:
        return True
    while time.monotonic() < end:
        ready, _, _ = select.select([flow], [], [], 0.2)
        if not ready:
            continue
        try:
            if not flow.recv(65536):
                return True
        except OSError:
            return True
    return False


if __name__ == "__main__":
    main()
