"""TCP phones and callers through hasip's routing script, on the engine's
virtual clock: a registered flow is used while its connection is open, the
registered Contact once it is gone (RFC 3261 16.5), 430 for an RFC 5626
outbound registration whose flow is gone (RFC 5626 5.3); a NATed stream
caller's Contact (and a NATed stream callee's 2xx) names its connection."""

from __future__ import annotations

import socket
import time

import pytest

from hasip.app.config import Config, MetricsConfig
from hasip.location.binding import FLAG_NAT, FLAG_OUTBOUND, Binding
from hasip.location.registrar import Origin, Policy, register
from hasip.location.store import LocationStore
from hasip.proxy.nat import fix_contact
from hasip.proxy.routing import Router
from hasip.sip.message import Request, parse_message
from hasip.sip.uri import parse_sip_uri
from hasip.transport.base import Connection, ErrorCallback, Listener, Source
from hasip.transport.manager import local_address, outgoing_socket
from tests.unit.enginelab import CALLER, Lab, Sent, answer, invite, lines

FLOW = ("198.18.2.1", 40123)        # the phone's ephemeral source port
CONTACT = ("198.18.2.1", 5070)      # where the phone listens (its Contact)
INSTANCE = "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"


class FakeConnection:
    """An open stream connection (hasip.transport.base.Connection)."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes, on_error: ErrorCallback | None = None) -> bool:
        return True

    def abort(self) -> None:
        self.closed = True


class FlowLab(Lab):
    """A lab running hasip's Router, with a table of open connections the
    engine looks flows up in (what the transports answer in a node)."""

    def __init__(self) -> None:
        config = Config(metrics=MetricsConfig(listen=None))
        config.auth.trusted = ["198.18.1.0/24", "198.18.2.0/24"]
        super().__init__(script=Router, config=config)
        self.open: dict[tuple[tuple[str, int], Listener], Connection] = {}
        self.engine.flow = lambda addr, listener: self.open.get((addr, listener))

    @property
    def tcp(self) -> Listener:
        return self.listeners.all[1]

    def bind(self, contact: str = f"sip:agent@{CONTACT[0]}:{CONTACT[1]};transport=tcp",
             flags: int = 0, reg_id: int = 0) -> Binding:
        router = self.engine.script
        assert isinstance(router, Router)
        aor = router.aor_of(parse_sip_uri("sip:agent@198.18.0.1"))
        assert aor is not None
        b = Binding(aor, contact, time.time() + 600, "reg1", 1,
                    instance=INSTANCE if reg_id else None, reg_id=reg_id,
                    received=f"tcp:{FLOW[0]}:{FLOW[1]}", socket=self.tcp.socket, flags=flags)
        self.engine.services.location.put(b)
        return b

    def receive_tcp(self, data: str, source: tuple[str, int],
                    conn: Connection | None = None) -> list[Sent]:
        raw = data.replace("\n", "\r\n").encode()
        self.engine.receive(raw, Source(self.tcp, source, conn or FakeConnection(), self.now))
        return self.flush()


def test_a_live_flow_carries_the_call() -> None:
    lab = FlowLab()
    lab.bind()
    conn = FakeConnection()
    lab.open[(FLOW, lab.tcp)] = conn
    lab.engine.receive(invite().replace("\n", "\r\n").encode(),
                       Source(lab.udp, CALLER, None, lab.now))
    out = lab.engine.take_outgoing()
    invites = [(dest, data) for data, dest, _ in out if data.startswith(b"INVITE")]
    assert len(invites) == 1
    dest, _ = invites[0]
    assert (dest.transport, dest.addr, dest.conn) == ("tcp", FLOW, conn)


def test_a_gone_flow_falls_back_to_the_registered_contact() -> None:
    """RFC 3261 16.5: the old connection's ephemeral port is not dialled."""
    lab = FlowLab()
    lab.bind()
    out = lab.receive(invite())
    assert lines(out) == [("SIP/2.0 100 Trying", CALLER),
                          (f"INVITE sip:agent@{CONTACT[0]}:{CONTACT[1]};transport=tcp SIP/2.0",
                           CONTACT)]
    assert out[1].transport == "tcp"


def test_a_flow_open_on_another_listener_is_not_the_phones_flow() -> None:
    lab = FlowLab()
    lab.bind()
    lab.open[(FLOW, lab.udp)] = FakeConnection()
    out = lab.receive(invite())
    assert out[1].to == CONTACT


def test_an_outbound_registration_whose_flow_is_gone_gets_430() -> None:
    """RFC 5626 5.3: no fallback to the Contact; 430 Flow Failed."""
    lab = FlowLab()
    lab.bind(flags=FLAG_OUTBOUND, reg_id=1)
    out = lab.receive(invite())
    assert lines(out) == [("SIP/2.0 430 Flow Failed", CALLER)]


def test_an_outbound_flow_that_breaks_in_flight_gets_430() -> None:
    lab = FlowLab()
    lab.bind(flags=FLAG_OUTBOUND, reg_id=1)
    lab.open[(FLOW, lab.tcp)] = FakeConnection()
    out = lab.receive(invite())
    assert out[1].to == FLOW
    out = lab.fail_sending(FLOW)
    assert [s.first_line for s in out] == ["SIP/2.0 430 Flow Failed"]


def test_a_plain_contact_that_cannot_be_sent_to_still_gets_480() -> None:
    lab = FlowLab()
    lab.bind()
    lab.receive(invite())
    out = lab.fail_sending(CONTACT)
    assert [s.first_line for s in out] == ["SIP/2.0 480 Temporarily Unavailable"]


def test_a_natted_tcp_caller_gets_its_contact_pointed_at_its_connection() -> None:
    lab = FlowLab()
    caller = ("198.18.1.1", 41000)
    text = (invite(uri="sip:2000@198.18.2.2:5060")
            .replace("SIP/2.0/UDP 198.18.1.1:5060", "SIP/2.0/TCP 10.0.0.5:5060")
            .replace("<sip:caller@198.18.1.1>\n", "<sip:caller@10.0.0.5:5060;transport=tcp>\n"))
    out = lab.receive_tcp(text, caller)
    forwarded = [s for s in out if s.first_line.startswith("INVITE")]
    assert len(forwarded) == 1
    assert forwarded[0].header("contact") == ["<sip:caller@198.18.1.1:41000;transport=tcp>"]
    assert ";nat=yes" in forwarded[0].header("record-route")[0]


def test_a_natted_tcp_callees_2xx_names_its_flow() -> None:
    lab = FlowLab()
    lab.bind(contact="sip:agent@10.0.0.9:5070;transport=tcp", flags=FLAG_NAT)
    lab.open[(FLOW, lab.tcp)] = FakeConnection()
    out = lab.receive(invite())
    assert out[1].to == FLOW
    ok = answer(out[1], "200 OK", extra="Contact: <sip:agent@10.0.0.9:5070;transport=tcp>\n")
    relayed = lab.receive_tcp(ok, FLOW, lab.open[(FLOW, lab.tcp)])
    assert [s.header("contact") for s in relayed if s.first_line.startswith("SIP/2.0 200")] == [
        [f"<sip:agent@{FLOW[0]}:{FLOW[1]};transport=tcp>"]]


@pytest.mark.parametrize(("contact", "stream", "fixed"), [
    ("<sip:a@10.0.0.5:5060>", "", "<sip:a@203.0.113.1:4000>"),
    ("<sip:a@10.0.0.5:5060>", "tcp", "<sip:a@203.0.113.1:4000;transport=tcp>"),
    ("<sip:a@10.0.0.5:5060;transport=TCP;ob>", "tcp", "<sip:a@203.0.113.1:4000;ob;transport=tcp>"),
    ("<sip:a@203.0.113.1:4000;transport=tcp>", "tcp", "<sip:a@203.0.113.1:4000;transport=tcp>"),
])
def test_fix_contact(contact: str, stream: str, fixed: str) -> None:
    msg = parse_message(invite(extra="").replace("<sip:caller@198.18.1.1>\n", contact + "\n")
                        .replace("\n", "\r\n").encode())
    assert isinstance(msg, Request)
    changed = fix_contact(msg, ("203.0.113.1", 4000), stream)
    assert msg.get(b"contact") == fixed.encode()
    assert changed == (contact != fixed)


def _register(contact: str, extra: str = "") -> Request:
    text = ("REGISTER sip:example.com SIP/2.0\r\n"
            "Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKr1\r\n"
            "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n"
            "Call-ID: c1\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
            f"Contact: {contact}\r\n{extra}Content-Length: 0\r\n\r\n")
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


FLOW_CONTACT = f'<sip:a@192.0.2.1:5060;transport=tcp;ob>;+sip.instance="{INSTANCE}";reg-id=1'


@pytest.mark.parametrize(("contact", "extra", "outbound"), [
    (FLOW_CONTACT, "Supported: path, outbound\r\n", True),
    (FLOW_CONTACT, "Require: outbound\r\n", True),
    (FLOW_CONTACT, "", False),                                   # the UA did not say outbound
    (f'<sip:a@192.0.2.1:5060>;+sip.instance="{INSTANCE}"', "Supported: outbound\r\n", False),
])
def test_outbound_registrations_are_recognised(contact: str, extra: str, outbound: bool) -> None:
    """RFC 5626 6: Supported/Require outbound, +sip.instance and reg-id."""
    store = LocationStore("n1")
    out = register(_register(contact, extra), "alice", store, Policy(),
                   Origin("tcp:192.0.2.10:5060", "tcp:192.0.2.1:40000"), 1_000_000.0)
    assert out.status == 200
    [b] = store.bindings("alice", 1_000_000.0)
    assert b.outbound is outbound
    assert (b"Require: outbound" in out.headers) is outbound


def test_outgoing_tcp_sockets_are_bound_to_the_listeners_address() -> None:
    assert local_address(Listener("tcp", "0.0.0.0", 5060)) is None
    for host in ("127.0.0.1", "198.18.0.99"):   # the second not on this host: a VIP
        sock = outgoing_socket(Listener("tcp", host, 5060))
        try:
            assert sock.getsockname()[0] == host and sock.getsockname()[1] != 5060
            assert sock.type == socket.SOCK_STREAM and not sock.getblocking()
        finally:
            sock.close()
