"""The node's own requests (hasip/proxy/uac.py): one builder and one table
for dispatcher probes, NAT pings and dialog keepalives, answered through the
engine on a virtual clock."""

from __future__ import annotations

from hasip.app.config import Config, MetricsConfig, RoutingConfig
from hasip.dialog.dialog import CONFIRMED, ENDED_KEEPALIVE, TERMINATED, Dialog
from hasip.dialog.keepalive import DialogKeepalive
from hasip.dispatcher.destinations import Destination as Node
from hasip.dispatcher.probe import Prober
from hasip.location.binding import FLAG_NAT, Binding
from hasip.location.natping import NatPinger
from hasip.location.store import LocationStore
from hasip.proxy.uac import BRANCH_PREFIX, OwnRequests
from hasip.sip.message import Request, parse_message
from hasip.sip.uri import parse_sip_uri
from hasip.telemetry import metrics
from hasip.transport.base import Destination, Listener
from tests.unit.enginelab import CALLEE_A, CALLER, Lab, answer

LISTENER = Listener("udp", "198.18.0.1", 5060)
PEER = Destination("udp", ("198.18.2.1", 5060), LISTENER)


def table() -> tuple[OwnRequests, list[tuple[bytes, Destination]]]:
    sent: list[tuple[bytes, Destination]] = []
    return OwnRequests(lambda data, dest: sent.append((data, dest))), sent


def branch_of(data: bytes) -> str:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    branch = msg.top_via.branch
    assert branch is not None
    return branch


def test_the_builder_writes_a_request_a_parser_takes() -> None:
    own, sent = table()
    assert own.send("OPTIONS", "sip:agent@198.18.2.1", PEER, 10.0, timeout=5.0,
                    routes=["<sip:198.18.3.1;lr>"], cseq=7)
    [(data, dest)] = sent
    msg = parse_message(data)
    assert isinstance(msg, Request) and dest is PEER
    assert msg.method == "OPTIONS" and str(msg.uri) == "sip:agent@198.18.2.1"
    assert msg.top_via.sent_by == "198.18.0.1:5060" and msg.top_via.transport == "UDP"
    assert branch_of(data).startswith(BRANCH_PREFIX)
    assert msg.cseq == (7, "OPTIONS")
    assert msg.values(b"route") == ["<sip:198.18.3.1;lr>"]
    assert msg.from_.tag == own.tag
    assert msg.get_str(b"max-forwards") == "70"


def test_an_answer_goes_to_the_sender_and_only_once() -> None:
    own, sent = table()
    heard: list[tuple[int | None, float]] = []
    own.send("OPTIONS", "sip:a@198.18.2.1", PEER, 10.0, timeout=5.0,
             on_result=lambda status, now: heard.append((status, now)))
    branch = branch_of(sent[0][0])
    assert own.answer(branch, 100, 10.1) and heard == []     # provisional: still waiting
    assert own.answer(branch, 200, 10.2) and heard == [(200, 10.2)]
    assert own.answer(branch, 200, 10.3) and heard == [(200, 10.2)]   # a retransmission
    assert own.late == 1 and len(own) == 0
    assert own.expire(20.0) == 0 and heard == [(200, 10.2)]
    assert not own.answer("z9hG4bKsomeoneelse", 200, 10.4)


def test_silence_is_reported_at_the_deadline_not_before() -> None:
    own, sent = table()
    heard: list[tuple[int | None, float]] = []
    for timeout in (2.0, 1.0):
        own.send("OPTIONS", "sip:a@198.18.2.1", PEER, 10.0, timeout=timeout,
                 on_result=lambda status, now: heard.append((status, now)))
    assert own.next_deadline() == 11.0
    assert own.expire(10.99) == 0 and heard == []
    assert own.expire(11.0) == 1 and heard == [(None, 11.0)]
    # the first one answered: its deadline is no longer one to wake for
    own.answer(branch_of(sent[0][0]), 404, 11.5)
    assert heard[-1] == (404, 11.5) and own.next_deadline() is None


def test_a_full_table_refuses_instead_of_growing() -> None:
    sent: list[tuple[bytes, Destination]] = []
    own = OwnRequests(lambda data, dest: sent.append((data, dest)), limit=3)
    results = [own.send("OPTIONS", "sip:a@198.18.2.1", PEER, 0.0, timeout=5.0)
               for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert len(sent) == 3 and own.refused == 2


def probe_lab() -> tuple[Lab, Prober, Node]:
    config = Config(metrics=MetricsConfig(listen=None),
                    routing=RoutingConfig(next_hop=[parse_sip_uri("sip:198.18.2.1:5060")]))
    lab = Lab(config=config)
    dispatcher = lab.engine.services.dispatcher
    [node] = dispatcher.sets[dispatcher.set_id].destinations
    node.probing = True
    prober = Prober(dispatcher, lambda n: lab.engine.node_address(n, None, False, lab.now),
                    lab.engine.own, interval=4.0, timeout=2.0, accepted=frozenset({200}))
    return lab, prober, node


def test_a_probe_answered_through_the_engine_is_a_success() -> None:
    lab, prober, node = probe_lab()
    node.failures = 1
    assert prober.round(lab.now) == 1
    [probe] = lab.flush()
    assert probe.first_line == "OPTIONS sip:198.18.2.1:5060 SIP/2.0" and probe.to == CALLEE_A
    lab.now += 0.05
    assert lab.receive(answer(probe, "200 OK"), CALLEE_A) == []   # absorbed, not a stray
    assert node.failures == 0 and abs(node.probe_rtt - 0.05) < 1e-9
    assert prober.round(lab.now) == 0          # not due again before the interval


def test_an_unanswered_probe_fails_at_its_timeout_on_the_engine_clock() -> None:
    lab, prober, node = probe_lab()
    prober.round(lab.now)
    [probe] = lab.flush()
    lab.advance(1.9)
    assert node.failures == 0 and len(lab.engine.own) == 1
    lab.advance(0.2)
    assert node.failures == 1 and len(lab.engine.own) == 0
    # an answer after the deadline is absorbed: not a success, not a stray
    assert lab.receive(answer(probe, "200 OK"), CALLEE_A) == []
    assert node.failures == 1


def test_nat_pings_count_as_failed_only_when_unanswered() -> None:
    lab = Lab()
    store = LocationStore("n1", clock=lambda: lab.now)
    for user, port in (("1001", 40000), ("1002", 40002)):
        store.put(Binding(f"{user}@hasip", f"sip:{user}@10.0.0.5:5060", lab.now + 3600, "c", 1,
                          flags=FLAG_NAT, received=f"udp:198.18.2.1:{port}",
                          socket=lab.udp.socket), now=lab.now)
    pinger = NatPinger(store, {lab.udp.socket: lab.udp}, lab.engine.own, 10.0)
    answered, failed = metrics.NAT_PINGS.value("answered"), metrics.NAT_PINGS.value("failed")
    assert pinger.ping_all(lab.now) == 2
    pings = lab.flush()
    assert sorted(p.to for p in pings) == [("198.18.2.1", 40000), ("198.18.2.1", 40002)]
    assert lab.receive(answer(pings[0], "200 OK"), pings[0].to) == []
    assert metrics.NAT_PINGS.value("answered") == answered + 1
    lab.advance(9.9)
    assert metrics.NAT_PINGS.value("failed") == failed
    lab.advance(0.2)
    assert metrics.NAT_PINGS.value("failed") == failed + 1 and len(lab.engine.own) == 0


def keepalive_lab(call_id: str, route_set: tuple[str, ...]
                  ) -> tuple[Lab, Dialog, DialogKeepalive]:
    """A confirmed dialog through the lab's engine, and keepalives for it
    every 5 s, two silent rounds allowed."""
    lab = Lab()
    dialogs = lab.engine.services.dialogs
    d = dialogs.create(call_id, "ft", "sip:caller@198.18.1.1", "sip:agent@198.18.0.1",
                       "sip:agent@198.18.0.1", "<sip:caller@198.18.1.1:5060>", 1,
                       socket=lab.udp.socket)
    assert d is not None
    dialogs.confirm(d, "tt", "<sip:agent@198.18.2.1:5060>", route_set)
    keepalive = DialogKeepalive(dialogs, {lab.udp.socket: lab.udp}, lab.listeners.sent_by,
                                lambda uri, listener: lab.engine.from_listener(
                                    uri, listener, lab.now),
                                lab.engine.own, 5.0, 2)
    return lab, d, keepalive


def test_a_dialog_keepalive_481_ends_the_dialog_and_byes_the_other_end() -> None:
    lab, d, keepalive = keepalive_lab("call-1", ("<sip:198.18.0.1:5060;lr>",))
    assert keepalive.round(lab.now) == 2
    pings = {s.to: s for s in lab.flush()}
    to_callee = pings[CALLEE_A]
    assert to_callee.first_line == "OPTIONS sip:agent@198.18.2.1:5060 SIP/2.0"
    assert to_callee.header("Call-ID") == ["call-1"]
    assert to_callee.header("From") == ["<sip:caller@198.18.1.1>;tag=ft"]
    bye = lab.receive(answer(to_callee, "481 Call Does Not Exist", to_tag=""), CALLEE_A)
    assert [(s.first_line, s.to) for s in bye] == [
        ("BYE sip:caller@198.18.1.1:5060 SIP/2.0", CALLER)]
    assert bye[0].header("CSeq") == ["2 BYE"]
    assert d.state == TERMINATED and d.end_reason == ENDED_KEEPALIVE


def test_a_dialog_end_that_stays_silent_is_ended_after_the_failures_allowed() -> None:
    lab, d, keepalive = keepalive_lab("call-2", ())
    for _ in range(2):                  # the caller answers, the callee does not
        keepalive.round(lab.now)
        for s in lab.flush():
            if s.to == CALLER:
                lab.receive(answer(s, "200 OK", to_tag=""), CALLER)
        lab.advance(5.0)
    assert d.state == CONFIRMED
    keepalive.round(lab.now)
    assert [(s.first_line, s.to) for s in lab.flush()] == [
        ("BYE sip:caller@198.18.1.1:5060 SIP/2.0", CALLER)]
    assert d.state == TERMINATED


def test_probing_runs_for_sets_that_come_after_the_start() -> None:
    """A node started without destinations probes the ones added later
    (the control API, the cluster's shared sets): before, the rounds were
    never started then."""
    lab = Lab(config=Config(metrics=MetricsConfig(listen=None),
                            routing=RoutingConfig(next_hop=[])))
    dispatcher = lab.engine.services.dispatcher
    prober = Prober(dispatcher, lambda n: lab.engine.node_address(n, None, False, lab.now),
                    lab.engine.own, interval=4.0, timeout=2.0, accepted=frozenset({200}))
    assert not dispatcher.sets and prober.period == 1.0
    assert prober.round(lab.now) == 0
    node = dispatcher.add(1, "sip:198.18.2.1:5060")
    assert node.probing
    assert prober.round(lab.now) == 1
    assert [s.first_line for s in lab.flush()] == ["OPTIONS sip:198.18.2.1:5060 SIP/2.0"]
