"""A client in a namespace: OPTIONS to a SIP address every ``interval`` for
``duration`` seconds from one UDP socket; prints one JSON object: when each
request went out and when (if ever) it was answered, in wall-clock seconds
(one clock for every namespace of the host).

    python -m tests.e2e.vipclient 198.18.0.100:5060 --duration 5 --interval 0.02
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import time
import uuid


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=0.02)
    args = p.parse_args()
    host, _, port = args.target.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    local = sock.getsockname()[1]
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    start = time.time()
    next_send = start
    n = 0
    while time.time() - start < args.duration:
        now = time.time()
        if now >= next_send:
            n += 1
            branch = f"z9hG4bKvc{uuid.uuid4().hex[:10]}"
            msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 0.0.0.0:{local};branch={branch};rport\r\n"
                   f"From: <sip:probe@invalid>;tag=vc{n}\r\nTo: <sip:{host}:{port}>\r\n"
                   f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                   "Content-Length: 0\r\n\r\n").encode()
            try:
                sock.sendto(msg, (host, int(port)))
            except OSError:
                pass
            sent[branch] = now
            next_send += args.interval
        ready, _, _ = select.select([sock], [], [], max(0.0, next_send - time.time()))
        if ready:
            data = sock.recv(65536)
            if data.startswith(b"SIP/2.0 200"):
                for line in data.split(b"\r\n"):
                    if line.lower().startswith(b"via:") and b"branch=" in line:
                        branch = line.split(b"branch=")[1].split(b";")[0].decode()
                        answered.setdefault(branch, time.time())
    print(json.dumps({"sent": sorted(sent.values()),
                      "answered": sorted([sent[b], t] for b, t in answered.items()
                                         if b in sent)}))


if __name__ == "__main__":
    main()
