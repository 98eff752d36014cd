"""The proxy engine without sockets (its transports' send recorded): a bug
in the routing script still gets the request a final answer (500) and
leaves no transaction waiting for nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from hasip.app.config import Config, MetricsConfig, RoutingConfig
from hasip.app.services import Services
from hasip.proxy.engine import Engine
from hasip.proxy.routing import Router
from hasip.sip.uri import parse_sip_uri
from hasip.transport.base import Source
from hasip.transport.listeners import Listeners


@pytest.fixture
def engine() -> Iterator[tuple[Engine, Recorder]]:
    config = Config(routing=RoutingConfig(next_hop=[parse_sip_uri("sip:127.0.0.1:5071")]),
                    metrics=MetricsConfig(listen=None))
    config.auth.demo_users = True
    config.auth.trusted = ["127.0.0.1/32"]
    listeners = Listeners([("udp", "127.0.0.1", 5060)])
    engine = Engine(config, Services.in_memory(config), listeners, Router)
    yield engine, Recorder(engine)


class Recorder:
    """What the engine sent, taken after each call."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sent: list[bytes] = []

    @property
    def sent(self) -> list[bytes]:
        self._sent += [data for data, _, _ in self.engine.take_outgoing()]
        return self._sent


def receive(engine: Engine, data: bytes, addr: tuple[str, int]) -> None:
    engine.receive(data, Source(engine.listeners.all[0], addr, None, 1.0))


def invite(n: int) -> bytes:
    return (f"INVITE sip:5551234@127.0.0.1:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-err-{n}\r\n"
            "From: <sip:gw@127.0.0.1>;tag=a\r\nTo: <sip:5551234@127.0.0.1>\r\n"
            f"Call-ID: err-{n}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def test_an_exception_in_routing_answers_500(engine: tuple[Engine, Recorder],
                                             caplog: pytest.LogCaptureFixture) -> None:
    proxy, rec = engine

    def broken(*args: object) -> None:
        raise RuntimeError("a bug in a routing step")

    # (The dispatcher is interpreted: the compiled routing script calls it
    # through the instance, so the fault lands even in the compiled build.)
    proxy.services.dispatcher.order = broken  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.ERROR):
        receive(proxy, invite(1), ("127.0.0.1", 5090))
    finals = [m for m in rec.sent if m.startswith(b"SIP/2.0 ") and not m.startswith(
        b"SIP/2.0 100")]
    assert [m.split(b"\r\n")[0] for m in finals] == [b"SIP/2.0 500 Server Internal Error"]
    assert "routing_failed" in caplog.text      # a bug is still a bug: logged as one
    # Nothing was forwarded, and no transaction waits for an answer.
    assert not any(m.startswith(b"INVITE ") for m in rec.sent)
    assert proxy.in_flight() == 0


def test_an_exception_after_forwarding_cancels_the_branch(engine: tuple[Engine, Recorder],
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """The script forwarded, then raised: the caller gets 500 and the branch
    it left behind is cancelled once it answers provisionally."""
    proxy, rec = engine
    def fail_after_forwarding(*args: object) -> None:
        raise RuntimeError("a bug after forwarding")

    # Called once the INVITE went to the node.
    proxy.services.dispatcher.sent = fail_after_forwarding  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        receive(proxy, invite(2), ("127.0.0.1", 5090))
    forwarded = next(m for m in rec.sent if m.startswith(b"INVITE "))
    assert any(m.startswith(b"SIP/2.0 500 ") for m in rec.sent)
    assert proxy.in_flight() == 0
    # The next hop rings: the branch is cancelled (RFC 3261 9.1: after a 1xx).
    receive(proxy, reply(forwarded, b"180 Ringing"), ("127.0.0.1", 5071))
    assert any(m.startswith(b"CANCEL ") for m in rec.sent)


def reply(request: bytes, status: bytes) -> bytes:
    """The answer a UAS writes: Via, From, Call-ID, CSeq copied, To tagged."""
    lines = [b"SIP/2.0 " + status]
    for line in request.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name = line.split(b":", 1)[0].lower()
        if name in (b"via", b"from", b"call-id", b"cseq"):
            lines.append(line)
        elif name == b"to":
            lines.append(line + b";tag=callee")
    return b"\r\n".join(lines) + b"\r\nContent-Length: 0\r\n\r\n"
