"""TCP phones and callers through real hasip nodes on loopback: a phone
registered over TCP is reached at its Contact once the connection it
registered on is gone (the node restarted, the connection dropped), an RFC
5626 outbound phone gets 430 instead; a NATed TCP caller's Contact names its
connection and the callee's BYE comes back on it; outgoing TCP connections
leave from the listener's address (the dispatcher's ``socket=`` included).

The phones here are hand-written TCP clients: the test sees every
connection (which one a request comes on, who opened it)."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

from hasip.sip.framing import StreamFramer
from hasip.sip.message import Request, Response, parse_message
from tests.e2e.conftest import invite, reply_to, status_of
from tests.e2e.sipphone import digest_header

GATEWAY = "127.0.0.2"
UNTRUSTED = {"auth": {"trusted": [f"{GATEWAY}/32"]}}
INSTANCE = "<urn:uuid:00000000-0000-1000-8000-00000000e2e1>"


class Stream:
    """One TCP connection, read a whole SIP message at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.framer = StreamFramer()
        self.queue: list[bytes] = []

    @classmethod
    def connect(cls, addr: tuple[str, int], local: str = "127.0.0.1") -> Stream:
        sock = socket.create_connection(addr, timeout=3, source_address=(local, 0))
        return cls(sock)

    @property
    def local(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float = 3.0) -> bytes | None:
        """The next message (CRLF keepalives skipped); None at the deadline or EOF."""
        deadline = time.monotonic() + timeout
        while not self.queue:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return None
            if not data:
                return None
            self.queue += [m for m in self.framer.feed(data) if m.strip()]
        return self.queue.pop(0)

    def close(self) -> None:
        self.sock.close()


class TcpPhone:
    """A phone that registers over a TCP connection and listens for calls
    at its Contact (another port, as real TCP phones do)."""

    def __init__(self, user: str, node: Any) -> None:
        self.user = user
        self.node = node
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.contact = f"sip:{user}@127.0.0.1:{self.port};transport=tcp"
        self.flow: Stream | None = None
        self.accepted: list[Stream] = []
        self.call_id = uuid.uuid4().hex
        self.cseq = 0

    def register(self, contact_params: str = "", extra: str = "") -> Response:
        proxy = ("127.0.0.1", self.node.sip_port)
        self.flow = Stream.connect(proxy)
        uri = f"sip:127.0.0.1:{proxy[1]};transport=tcp"
        auth = ""
        for _ in range(2):
            self.cseq += 1
            self.flow.send((
                f"REGISTER {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:10]}\r\n"
                f"From: <sip:{self.user}@127.0.0.1>;tag={self.call_id[:6]}\r\n"
                f"To: <sip:{self.user}@127.0.0.1>\r\nCall-ID: {self.call_id}\r\n"
                f"CSeq: {self.cseq} REGISTER\r\nMax-Forwards: 70\r\n"
                f"Contact: <{self.contact}>{contact_params}\r\nExpires: 600\r\n"
                f"{extra}{auth}Content-Length: 0\r\n\r\n").encode())
            resp = parse_message(self.flow.read() or b"")
            assert isinstance(resp, Response)
            if resp.status != 401:
                return resp
            auth = digest_header(resp.get_str(b"www-authenticate") or "", self.user,
                                 f"demo{self.user}", "REGISTER", uri, False) + "\r\n"
        raise AssertionError("challenged twice")

    def accept(self, timeout: float = 3.0) -> Stream | None:
        self.server.settimeout(timeout)
        try:
            sock, _ = self.server.accept()
        except TimeoutError:
            return None
        stream = Stream(sock)
        self.accepted.append(stream)
        return stream

    def close(self) -> None:
        for stream in [*self.accepted, *([self.flow] if self.flow else [])]:
            stream.close()
        self.server.close()


def _clean_log(node: Any) -> None:
    text = node.log()
    bad = [line for line in text.splitlines()
           if "level=error" in line or '"level": "error"' in line or "Traceback" in line]
    assert not bad, bad


def _call(gw: Any, node: Any, user: str) -> bytes:
    msg = invite(gw, f"sip:{user}@127.0.0.1:{node.sip_port}")
    gw.send(msg, node.sip_port, "127.0.0.1")
    return msg


def _final(gw: Any, timeout: float = 4.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = status_of(gw.recv(max(0.05, deadline - time.monotonic())))
        if status is not None and status >= 200:
            return status
    return None


def _expect_invite(stream: Stream, contact: str) -> bytes:
    """The next INVITE on ``stream`` (the ACKs of earlier failures skipped)."""
    for _ in range(5):
        data = stream.read()
        assert data is not None, "no INVITE"
        if not data.startswith(b"ACK "):
            assert data.startswith(f"INVITE {contact} SIP/2.0".encode()), data[:200]
            return data
    raise AssertionError("only ACKs")


def test_tcp_phone_is_reached_at_its_contact_after_the_node_restarts(make_node,
                                                                     udp_peer) -> None:
    """RFC 3261 16.5: the connection the phone registered on died with the
    node; the call goes to the registered Contact, not to the old
    connection's ephemeral port (refused: 480 before)."""
    node = make_node(**UNTRUSTED)
    phone = TcpPhone("1002", node)
    try:
        assert phone.register().status == 200
        time.sleep(0.5)          # the binding written behind to SQLite
        assert node.terminate() == 0
        node.start()
        gw = udp_peer(GATEWAY)
        _call(gw, node, "1002")
        stream = phone.accept()
        assert stream is not None, "hasip did not connect to the Contact: " + node.log()[-2000:]
        forwarded = _expect_invite(stream, phone.contact)
        stream.send(reply_to(forwarded, 486, "Busy Here"))
        assert _final(gw) == 486
        _clean_log(node)
    finally:
        phone.close()


def test_tcp_phone_whose_connection_dropped_is_reached_on_one_new_connection(
        make_node, udp_peer) -> None:
    """The phone closed its connection: calls reach the Contact, and the
    second call reuses the connection hasip opened for the first."""
    node = make_node(**UNTRUSTED)
    phone = TcpPhone("1003", node)
    try:
        assert phone.register().status == 200
        assert phone.flow is not None
        phone.flow.close()
        time.sleep(0.3)
        gw = udp_peer(GATEWAY)
        stream: Stream | None = None
        for _ in range(2):
            _call(gw, node, "1003")
            if stream is None:
                stream = phone.accept()
                assert stream is not None
            forwarded = _expect_invite(stream, phone.contact)
            stream.send(reply_to(forwarded, 486, "Busy Here"))
            assert _final(gw) == 486
        assert phone.accept(0.5) is None          # no second connection
        _clean_log(node)
    finally:
        phone.close()


def test_tcp_phone_with_a_live_flow_gets_calls_on_it(make_node, udp_peer) -> None:
    node = make_node(**UNTRUSTED)
    phone = TcpPhone("1004", node)
    try:
        assert phone.register().status == 200
        assert phone.flow is not None
        gw = udp_peer(GATEWAY)
        _call(gw, node, "1004")
        forwarded = _expect_invite(phone.flow, phone.contact)
        phone.flow.send(reply_to(forwarded, 486, "Busy Here"))
        assert _final(gw) == 486
        assert phone.accept(0.3) is None
        _clean_log(node)
    finally:
        phone.close()


def test_outbound_phone_whose_flow_is_gone_gets_430(make_node, udp_peer) -> None:
    """RFC 5626 5.3: an outbound registration is reached over its flow or
    not at all: 430 Flow Failed, and the Contact is not dialled."""
    node = make_node(**UNTRUSTED)
    phone = TcpPhone("1005", node)
    try:
        ok = phone.register(f';+sip.instance="{INSTANCE}";reg-id=1',
                            "Supported: path, outbound\r\n")
        assert ok.status == 200 and ok.get(b"require") == b"outbound"
        assert phone.flow is not None
        phone.flow.close()
        time.sleep(0.3)
        gw = udp_peer(GATEWAY)
        _call(gw, node, "1005")
        assert _final(gw) == 430
        assert phone.accept(0.3) is None
        _clean_log(node)
    finally:
        phone.close()


def test_natted_tcp_caller_gets_its_contact_fixed_and_the_bye_on_its_connection(
        make_node, udp_peer) -> None:
    """The caller claims 10.0.0.5 in Via and Contact; its INVITE leaves with
    the Contact pointing at its connection (transport=tcp), and the
    callee's BYE comes back on that same connection."""
    asterisk = udp_peer()
    node = make_node(next_hop=[f"sip:127.0.0.1:{asterisk.port}"])
    caller = Stream.connect(("127.0.0.1", node.sip_port))
    try:
        port = caller.local[1]
        call_id = uuid.uuid4().hex
        caller.send((
            f"INVITE sip:2000@127.0.0.1:{node.sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK{call_id[:10]}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:1009@127.0.0.1>;tag=caller1\r\n"
            f"To: <sip:2000@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            "Contact: <sip:1009@10.0.0.5:5060;transport=tcp>\r\n"
            "Content-Length: 0\r\n\r\n").encode())
        forwarded = asterisk.recv(3.0)
        assert forwarded is not None and forwarded.startswith(b"INVITE sip:2000@")
        msg = parse_message(forwarded)
        assert isinstance(msg, Request)
        contact = f"sip:1009@127.0.0.1:{port};transport=tcp"
        assert msg.get(b"contact") == f"<{contact}>".encode()
        routes = msg.get_all(b"record-route")
        assert routes and b";nat=yes" in routes[0]
        asterisk.send(reply_to(forwarded, 200, "OK",
                               extra=f"Contact: <sip:2000@127.0.0.1:{asterisk.port}>\r\n"),
                      node.sip_port)
        statuses = []
        while (data := caller.read(3.0)) is not None:
            statuses.append(status_of(data))
            if statuses[-1] == 200:
                break
        assert statuses[-1:] == [200]
        # the callee hangs up: BYE to the caller's (fixed) Contact along the route set
        bye = (f"BYE {contact} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{asterisk.port};branch=z9hG4bKbye{call_id[:6]}\r\n"
               "Max-Forwards: 70\r\nFrom: <sip:2000@127.0.0.1>;tag=uas1\r\n"
               f"To: <sip:1009@127.0.0.1>;tag=caller1\r\nCall-ID: {call_id}\r\n"
               "CSeq: 1 BYE\r\n"
               + "".join(f"Route: {r.decode()}\r\n" for r in routes)
               + "Content-Length: 0\r\n\r\n").encode()
        asterisk.send(bye, node.sip_port)
        got = caller.read(3.0)
        assert got is not None and got.startswith(f"BYE {contact} SIP/2.0".encode()), got
        caller.send(reply_to(got, 200, "OK", to_tag=""))
        deadline = time.monotonic() + 3
        answer = None
        while time.monotonic() < deadline and answer is None:
            answer = status_of(asterisk.recv(1.0)) or None
        assert answer == 200
        _clean_log(node)
    finally:
        caller.close()


def _accept_invite(server: socket.socket) -> tuple[tuple[str, int], bytes]:
    server.settimeout(4)
    conn, peer = server.accept()
    stream = Stream(conn)
    data = stream.read()
    stream.close()
    assert data is not None
    return (peer[0], peer[1]), data


def test_outgoing_tcp_leaves_from_the_listeners_address(make_node, udp_peer) -> None:
    """A call that came in on our second address (127.0.0.3) goes on to a
    TCP next hop from that address: the accepted socket's peer is
    127.0.0.3, the address its Via names (the kernel would pick 127.0.0.1)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    try:
        node = make_node(
            next_hop=[f"sip:127.0.0.1:{server.getsockname()[1]};transport=tcp"],
            sip={"listen": ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}",
                            "tcp:127.0.0.3:{port}"]})
        caller = Stream.connect(("127.0.0.3", node.sip_port), local="127.0.0.3")
        try:
            caller.send(invite(udp_peer(), f"sip:2000@127.0.0.3:{node.sip_port}")
                        .replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
            peer, data = _accept_invite(server)
            assert peer[0] == "127.0.0.3"
            assert f"Via: SIP/2.0/TCP 127.0.0.3:{node.sip_port};".encode() in data
        finally:
            caller.close()
        _clean_log(node)
    finally:
        server.close()


def test_dispatcher_socket_attribute_is_honoured_for_tcp(make_node, udp_peer) -> None:
    """``socket=tcp:127.0.0.3:PORT`` on a TCP destination: the connection
    to it leaves from 127.0.0.3, as UDP does for ``socket=udp:...``."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    try:
        port = server.getsockname()[1]
        node = make_node(
            sip={"listen": ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}",
                            "tcp:127.0.0.3:{port}"]},
            dispatcher={"destinations": [
                f"1 sip:127.0.0.1:{port};transport=tcp 0 0 socket=tcp:127.0.0.3:{{port}}"]})
        caller = udp_peer()
        caller.send(invite(caller, f"sip:queue@127.0.0.1:{node.sip_port}"), node.sip_port)
        peer, data = _accept_invite(server)
        assert peer[0] == "127.0.0.3"
        assert f"Via: SIP/2.0/TCP 127.0.0.3:{node.sip_port};".encode() in data
        assert f"<sip:127.0.0.3:{node.sip_port};transport=tcp;lr;hsd=".encode() in data
        _clean_log(node)
    finally:
        server.close()
