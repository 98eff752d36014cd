"""REGISTER processing (RFC 3261 10.3) against the in-memory location store."""

from __future__ import annotations

import pytest

from hasip.location.registrar import Origin, Policy, register
from hasip.location.store import DELETE, PUT, Change, LocationStore
from hasip.sip.message import Request, parse_message

NOW = 1_000_000.0
ORIGIN = Origin("udp:192.0.2.10:5060")


def reg(*contacts: str, call_id: str = "c1", cseq: int = 1, expires: int | None = None,
        extra: str = "") -> Request:
    lines = [
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKr" + str(cseq),
        "From: <sip:alice@example.com>;tag=1",
        "To: <sip:alice@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "Max-Forwards: 70",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if extra:
        lines.append(extra)
    lines += ["Content-Length: 0", "", ""]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


@pytest.fixture
def store() -> LocationStore:
    return LocationStore("n1")


def contacts_of(outcome_headers: list[bytes]) -> list[str]:
    return [h.decode() for h in outcome_headers if h.startswith(b"Contact:")]


def test_add_refresh_and_remove(store: LocationStore) -> None:
    out = register(reg("<sip:alice@192.0.2.1>"), "alice", store, Policy(), ORIGIN, NOW)
    assert out.status == 200 and out.result == "ok"
    assert contacts_of(out.headers) == ["Contact: <sip:alice@192.0.2.1>;expires=3600"]
    [b] = store.bindings("alice", NOW)
    assert b.socket == "udp:192.0.2.10:5060" and b.expires == NOW + 3600
    out = register(reg("<sip:alice@192.0.2.1>;expires=120", cseq=2), "alice", store, Policy(),
                   ORIGIN, NOW + 10)
    [b2] = store.bindings("alice", NOW + 10)
    assert b2.ruid == b.ruid and b2.expires == NOW + 130
    out = register(reg("<sip:alice@192.0.2.1>", cseq=3, expires=0), "alice", store, Policy(),
                   ORIGIN, NOW + 20)
    assert out.status == 200 and out.result == "unregistered"
    assert store.bindings("alice", NOW + 20) == []


def test_contact_parameter_overrides_header_and_max_expires_caps(store: LocationStore) -> None:
    policy = Policy(min_expires=10, max_expires=50)  # the seed caps at 50 s
    register(reg("<sip:a@192.0.2.1>;expires=30", "<sip:a@192.0.2.2>", expires=600), "alice",
             store, policy, ORIGIN, NOW)
    left = sorted(b.remaining(NOW) for b in store.bindings("alice", NOW))
    assert left == [30, 50]


def test_too_brief_is_423_with_min_expires(store: LocationStore) -> None:
    out = register(reg("<sip:a@192.0.2.1>", expires=10), "alice", store, Policy(min_expires=60),
                   ORIGIN, NOW)
    assert out.status == 423 and b"Min-Expires: 60" in out.headers
    assert len(store) == 0


def test_star_removes_every_binding_and_needs_expires_zero(store: LocationStore) -> None:
    register(reg("<sip:a@192.0.2.1>", "<sip:a@192.0.2.2>"), "alice", store, Policy(), ORIGIN, NOW)
    assert register(reg("*", cseq=2), "alice", store, Policy(), ORIGIN, NOW).status == 400
    assert register(reg("*", "<sip:a@192.0.2.3>", cseq=2, expires=0), "alice", store, Policy(),
                    ORIGIN, NOW).status == 400
    assert len(store) == 2
    out = register(reg("*", cseq=2, expires=0), "alice", store, Policy(), ORIGIN, NOW)
    assert out.status == 200 and len(store) == 0


def test_older_cseq_in_the_same_call_id_is_refused(store: LocationStore) -> None:
    register(reg("<sip:a@192.0.2.1>", cseq=5), "alice", store, Policy(), ORIGIN, NOW)
    out = register(reg("<sip:a@192.0.2.1>", cseq=4, expires=0), "alice", store, Policy(), ORIGIN,
                   NOW)
    assert out.status == 400 and out.result == "bad_cseq"
    assert len(store) == 1
    # another Call-ID (the phone rebooted) may use any CSeq
    out = register(reg("<sip:a@192.0.2.1>", call_id="c2", cseq=1), "alice", store, Policy(),
                   ORIGIN, NOW)
    assert out.status == 200


def test_q_values_order_lookups_and_are_validated(store: LocationStore) -> None:
    register(reg("<sip:a@192.0.2.1>;q=0.1", "<sip:a@192.0.2.2>;q=0.9", "<sip:a@192.0.2.3>"),
             "alice", store, Policy(), ORIGIN, NOW)
    assert [b.q for b in store.bindings("alice", NOW)] == [1.0, 0.9, 0.1]
    assert register(reg("<sip:a@192.0.2.4>;q=2", cseq=2), "alice", store, Policy(), ORIGIN,
                    NOW).status == 400


def test_contact_limit_per_aor(store: LocationStore) -> None:
    policy = Policy(max_contacts=2)
    register(reg("<sip:a@192.0.2.1>", "<sip:a@192.0.2.2>"), "alice", store, policy, ORIGIN, NOW)
    out = register(reg("<sip:a@192.0.2.3>", cseq=2), "alice", store, policy, ORIGIN, NOW)
    assert out.status == 403 and len(store) == 2
    # replacing one within the limit is fine
    out = register(reg("<sip:a@192.0.2.1>;expires=0", "<sip:a@192.0.2.3>", cseq=3), "alice",
                   store, policy, ORIGIN, NOW)
    assert out.status == 200
    assert {b.contact for b in store.bindings("alice", NOW)} == {"sip:a@192.0.2.2",
                                                                 "sip:a@192.0.2.3"}


def test_instance_and_reg_id_keep_one_binding_per_device(store: LocationStore) -> None:
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    register(reg(f"<sip:a@192.0.2.1:5060>;{inst}"), "alice", store, Policy(), ORIGIN, NOW)
    # the phone moved to another address (new Call-ID after a reboot): same device
    out = register(reg(f"<sip:a@198.51.100.7:6000>;{inst}", call_id="c9"), "alice", store,
                   Policy(), ORIGIN, NOW)
    [b] = store.bindings("alice", NOW)
    assert b.contact == "sip:a@198.51.100.7:6000" and b.reg_id == 1
    assert b.instance == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
    assert '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1' in \
        contacts_of(out.headers)[0]


def test_path_needs_support_and_is_stored_and_returned(store: LocationStore) -> None:
    path = "Path: <sip:edge.example.com;lr>"
    out = register(reg("<sip:a@192.0.2.1>", extra=path), "alice", store, Policy(), ORIGIN, NOW)
    assert out.status == 420 and b"Unsupported: path" in out.headers
    out = register(reg("<sip:a@192.0.2.1>", extra=path + "\r\nSupported: path"), "alice", store,
                   Policy(), ORIGIN, NOW)
    assert out.status == 200 and b"Path: <sip:edge.example.com;lr>" in out.headers
    assert store.bindings("alice", NOW)[0].path == ("<sip:edge.example.com;lr>",)


def test_query_lists_bindings_without_changing_them(store: LocationStore) -> None:
    register(reg("<sip:a@192.0.2.1>", "<sip:a@192.0.2.2>"), "alice", store, Policy(), ORIGIN, NOW)
    seq = store.seq
    out = register(reg(cseq=2), "alice", store, Policy(), ORIGIN, NOW + 100)
    assert out.result == "query" and len(contacts_of(out.headers)) == 2
    assert store.seq == seq
    assert all(";expires=3500" in c for c in contacts_of(out.headers))


def test_nat_origin_is_recorded(store: LocationStore) -> None:
    origin = Origin("udp:192.0.2.10:5060", "udp:203.0.113.9:40000", nat=True)
    register(reg("<sip:a@10.0.0.5:5060>"), "alice", store, Policy(), origin, NOW)
    [b] = store.bindings("alice", NOW)
    assert b.nat and b.received == "udp:203.0.113.9:40000"


def test_change_feed_and_expiry(store: LocationStore) -> None:
    changes: list[Change] = []
    store.subscribe(changes.append)
    register(reg("<sip:a@192.0.2.1>;expires=60", "<sip:a@192.0.2.2>;expires=120"), "alice",
             store, Policy(), ORIGIN, NOW)
    assert [c.op for c in changes] == [PUT, PUT]
    assert [c.seq for c in changes] == [1, 2]
    assert store.expire(now=NOW + 61) == 1
    assert changes[-1].op == DELETE and changes[-1].binding.contact == "sip:a@192.0.2.1"
    assert changes[-1].seq == 3
    assert store.expire(now=NOW + 121) == 1
    assert store.aor_count() == 0


def test_load_keeps_the_newer_binding(store: LocationStore) -> None:
    register(reg("<sip:a@192.0.2.1>"), "alice", store, Policy(), ORIGIN, NOW)
    [mine] = store.bindings("alice", NOW)
    from dataclasses import replace
    older = replace(mine, contact="sip:old@192.0.2.9", updated=NOW - 100)
    other = replace(mine, ruid="r2", aor="bob", updated=NOW - 100)
    expired = replace(mine, ruid="r3", aor="carol", expires=NOW - 1)
    assert store.load([older, other, expired], now=NOW) == 1
    assert store.bindings("alice", NOW)[0].contact == "sip:a@192.0.2.1"
    assert len(store.bindings("bob", NOW)) == 1
