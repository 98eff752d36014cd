"""The failure lines (hasip/proxy/failures.py): one per failed
authentication or delivery, naming the call, rate-limited; and the engine
and the routing script writing them."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from hasip.app.config import Config, MetricsConfig
from hasip.proxy.failures import FailureLog, RateLimit
from hasip.proxy.routing import Router
from hasip.sip.message import parse_message
from tests.unit.enginelab import CALLEE_A, CALLER, Lab, answer, cancel_of, invite

A = "sip:agent@198.18.2.1:5060"


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def request(text: str) -> Any:
    return parse_message(text.replace("\n", "\r\n").encode())


def test_rate_limit_holds_a_flood_and_reports_what_it_dropped() -> None:
    limit = RateLimit(3)
    assert [limit.take(10.0 + i * 0.01) for i in range(5)] == [0, 0, 0, None, None]
    assert limit.take(10.5) is None
    # A new second: through, with the three left out of the last one.
    assert limit.take(11.0) == 3
    assert limit.take(11.1) == 0
    assert limit.take(100.0) == 0


def test_a_delivery_line_names_the_call() -> None:
    rec = Recorder()
    log = FailureLog(rec)
    req = request(invite(call="call-42", uri="sip:1002@voip.example.com"))
    log.delivery(req, ("198.18.1.1", 5070), 486, b"Busy Here", True, False, 5.0)
    assert rec.lines == [("delivery_failed", {
        "call_id": "call-42", "method": "INVITE", "from_aor": "caller@198.18.1.1",
        "to_aor": "agent@198.18.0.1", "ruri": "1002@voip.example.com",
        "source": "198.18.1.1:5070", "status": 486, "reason": "Busy Here",
        "forwarded": "yes"})]
    # Not failures: success, a cancelled call's 487, a refusal that is no
    # delivery (483 without a branch), our own challenge.
    log.delivery(req, ("198.18.1.1", 5070), 200, b"OK", True, False, 5.0)
    log.delivery(req, ("198.18.1.1", 5070), 487, None, True, True, 5.0)
    log.delivery(req, ("198.18.1.1", 5070), 483, None, False, False, 5.0)
    log.delivery(req, ("198.18.1.1", 5070), 407, None, False, False, 5.0)
    assert len(rec.lines) == 1
    # Could not forward: no destination left.
    log.delivery(req, ("198.18.1.1", 5070), 503, None, False, False, 5.0)
    assert rec.lines[-1][1]["reason"] == "Service Unavailable"
    assert rec.lines[-1][1]["forwarded"] == "no"


def test_a_flood_of_failures_is_cut_to_the_rate_and_counted() -> None:
    rec = Recorder()
    log = FailureLog(rec, rate=2)
    req = request(invite(call="x" * 500))
    for i in range(10):
        log.delivery(req, ("198.18.1.1", 5070), 503, None, True, False, 1.0 + i * 0.001)
    assert len(rec.lines) == 2
    assert len(rec.lines[0][1]["call_id"]) == 128  # network values are cut
    log.delivery(req, ("198.18.1.1", 5070), 503, None, True, False, 2.5)
    assert rec.lines[-1][1]["dropped"] == 8


def test_the_engine_logs_a_failed_delivery_once() -> None:
    lab = Lab([A])
    rec = Recorder()
    lab.engine.failures = FailureLog(rec)
    out = lab.receive(invite(call="busy1"))
    lab.receive(answer(out[1], "486 Busy Here"))
    assert [(e, f["call_id"], f["status"], f["source"]) for e, f in rec.lines] == [
        ("delivery_failed", "busy1", 486, f"{CALLER[0]}:{CALLER[1]}")]
    # An answered call, a cancelled one: nothing more.
    out = lab.receive(invite(call="ok1", branch="z9hG4bKok1"))
    lab.receive(answer(out[1], "200 OK"))
    text = invite(call="cancel1", branch="z9hG4bKc1")
    out = lab.receive(text)
    lab.receive(cancel_of(text))
    lab.receive(answer(out[1], "487 Request Terminated"))
    assert len(rec.lines) == 1
    # No answer at all: our 408 after timer C / B.
    out = lab.receive(invite(call="late1", branch="z9hG4bKlate1"))
    assert out[1].to == CALLEE_A
    lab.advance(200.0)
    assert [(f["call_id"], f["status"]) for _, f in rec.lines[1:]] == [("late1", 408)]


def test_the_routing_script_logs_a_failed_authentication() -> None:
    config = Config(metrics=MetricsConfig(listen=None))
    lab = Lab(script=Router, config=config)
    rec = Recorder()
    lab.engine.failures = FailureLog(rec)
    uri = "sip:1002@198.18.0.1"
    out = lab.receive(invite(call="auth1", uri=uri))
    assert out[-1].first_line.startswith("SIP/2.0 407")
    assert rec.lines == []  # the first challenge is no failure
    challenge = out[-1].header("proxy-authenticate")[0]
    realm = re.search(r'realm="([^"]+)"', challenge).group(1)  # type: ignore[union-attr]
    nonce = re.search(r'nonce="([^"]+)"', challenge).group(1)  # type: ignore[union-attr]

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"caller:{realm}:a wrong guess")
    response = md5(f"{ha1}:{nonce}:00000001:abc:auth:{md5('INVITE:' + uri)}")
    creds = (f'Proxy-Authorization: Digest username="caller", realm="{realm}", '
             f'nonce="{nonce}", uri="{uri}", response="{response}", qop=auth, '
             'nc=00000001, cnonce="abc", algorithm=MD5\n')
    out = lab.receive(invite(call="auth1", uri=uri, branch="z9hG4bKauth2", extra=creds))
    assert out[-1].first_line.split(" ")[1] in ("403", "407")
    assert len(rec.lines) == 1
    event, fields = rec.lines[0]
    assert event == "auth_failed"
    assert fields["call_id"] == "auth1" and fields["method"] == "INVITE"
    assert fields["from_aor"] == "caller@198.18.1.1" and fields["ruri"] == "1002@198.18.0.1"
    assert fields["source"] == "198.18.1.1:5060"
    assert fields["result"] in ("wrong_password", "unknown_user")
