"""A minimal SIP phone for tests: registers with digest authentication and
answers calls and OPTIONS on one UDP socket, so a NAT sees one mapping for
both. Imported by tests, or run as a script inside a network namespace:

    python sipphone.py --bind 198.18.1.2:5060 --proxy 198.19.0.1:5060 \
        --user 1001 --password demo1001 --duration 8 --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
import uuid

from hasip.auth.digest import Credentials, expected_response, make_ha1
from hasip.sip.message import Request, Response, parse_message


def digest_header(challenge: str, user: str, password: str, method: str, uri: str,
                  proxy: bool, nc: int = 1) -> str:
    params = {}
    for part in challenge.split(" ", 1)[1].split(","):
        key, _, value = part.strip().partition("=")
        params[key.lower()] = value.strip('"')
    algorithm = params.get("algorithm", "MD5")
    creds = Credentials(user, params["realm"], params["nonce"], uri, "", algorithm, "auth",
                        f"{nc:08x}", uuid.uuid4().hex[:16])
    ha1 = make_ha1(algorithm, user, params["realm"], password)
    creds.response = expected_response(creds, ha1, method)
    name = "Proxy-Authorization" if proxy else "Authorization"
    return (f'{name}: Digest username="{user}", realm="{creds.realm}", nonce="{creds.nonce}", '
            f'uri="{uri}", response="{creds.response}", algorithm={algorithm}, qop=auth, '
            f'nc={creds.nc}, cnonce="{creds.cnonce}"')


class Phone:
    def __init__(self, user: str, password: str, bind: tuple[str, int] = ("127.0.0.1", 0),
                 contact_host: str | None = None) -> None:
        self.user = user
        self.password = password
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.host, self.port = self.sock.getsockname()
        self.contact_host = contact_host or self.host
        self.call_id = uuid.uuid4().hex
        self.cseq = 0
        # Ask for rport (RFC 3581); a phone behind NAT that does not ask
        # relies on the proxy forcing it.
        self.rport = True

    @property
    def hostref(self) -> str:
        """The address the phone writes in Via and Contact (private behind NAT)."""
        return self.contact_host

    @property
    def contact(self) -> str:
        return f"sip:{self.user}@{self.contact_host}:{self.port}"

    def close(self) -> None:
        self.sock.close()

    def send(self, data: str | bytes, dest: tuple[str, int]) -> None:
        self.sock.sendto(data.encode() if isinstance(data, str) else data, dest)

    def recv(self, timeout: float = 2.0) -> Request | Response | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65536)
        except TimeoutError:
            return None
        return parse_message(data)

    def response(self, timeout: float = 3.0) -> Response | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(msg, Response) and msg.status >= 200:
                return msg
        return None

    def register_request(self, proxy: tuple[str, int], expires: int | None = 3600,
                         contact: str | None = None, auth: str = "", to_user: str | None = None,
                         extra: tuple[str, ...] = (), contact_params: str = "") -> str:
        self.cseq += 1
        host = proxy[0]
        lines = [f"REGISTER sip:{host}:{proxy[1]} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.contact_host}:{self.port};branch=z9hG4bK"
                 f"{uuid.uuid4().hex[:12]}{';rport' if self.rport else ''}",
                 f"From: <sip:{self.user}@{host}>;tag={self.call_id[:8]}",
                 f"To: <sip:{to_user or self.user}@{host}>",
                 f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} REGISTER", "Max-Forwards: 70"]
        if contact != "":
            lines.append(f"Contact: <{contact or self.contact}>{contact_params}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if auth:
            lines.append(auth)
        lines += list(extra)
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines)

    def register(self, proxy: tuple[str, int], expires: int | None = 3600,
                 password: str | None = None, contact: str | None = None,
                 to_user: str | None = None, extra: tuple[str, ...] = (),
                 contact_params: str = "") -> Response | None:
        """REGISTER, answer the 401 with credentials; the final response."""
        self.send(self.register_request(proxy, expires, contact, to_user=to_user, extra=extra,
                                        contact_params=contact_params), proxy)
        resp = self.response()
        if resp is None or resp.status != 401:
            return resp
        challenge = resp.get_str(b"www-authenticate") or ""
        uri = f"sip:{proxy[0]}:{proxy[1]}"
        auth = digest_header(challenge, self.user, password or self.password, "REGISTER", uri,
                             False)
        self.send(self.register_request(proxy, expires, contact, auth, to_user, extra,
                                        contact_params), proxy)
        return self.response()

    def answer(self, req: Request, status: int, reason: str, src: tuple[str, int],
               contact: bool = False) -> None:
        lines = [f"SIP/2.0 {status} {reason}"]
        for key, raw in zip(req.keys, req.raws, strict=True):
            if key in (b"via", b"from", b"call-id", b"cseq", b"record-route"):
                lines.append(raw.decode("latin-1"))
            elif key == b"to":
                to = raw.decode("latin-1")
                lines.append(to if "tag=" in to or status == 100 else to + ";tag=ph" + self.user)
        if contact:
            lines.append(f"Contact: <{self.contact}>")
        lines += ["Content-Length: 0", "", ""]
        self.send("\r\n".join(lines), src)


def serve(phone: Phone, duration: float) -> dict[str, int]:
    """Answer what arrives for ``duration`` seconds: OPTIONS 200, INVITE
    180 + 200, BYE 200; count each."""
    counts = {"OPTIONS": 0, "INVITE": 0, "BYE": 0, "ACK": 0}
    deadline = time.monotonic() + duration
    phone.sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data, src = phone.sock.recvfrom(65536)
        except TimeoutError:
            continue
        msg = parse_message(data)
        if not isinstance(msg, Request):
            continue
        counts[msg.method] = counts.get(msg.method, 0) + 1
        if msg.method == "OPTIONS":
            phone.answer(msg, 200, "OK", src)
        elif msg.method == "INVITE":
            phone.answer(msg, 180, "Ringing", src, contact=True)
            phone.answer(msg, 200, "OK", src, contact=True)
        elif msg.method == "BYE":
            phone.answer(msg, 200, "OK", src)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--expires", type=int, default=300)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    phost, _, pport = args.proxy.rpartition(":")
    phone = Phone(args.user, args.password, (host, int(port)))
    resp = phone.register((phost, int(pport)), args.expires)
    result: dict[str, object] = {"register": resp.status if resp else None}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    os.replace(tmp, args.out + ".registered")
    result.update(serve(phone, args.duration))
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
