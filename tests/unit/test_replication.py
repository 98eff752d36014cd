"""Replication's pure parts: the wire protocol (framing, handshake keys,
MACs against tampering and replay) and the merge rule (every node converges
on the same winner whatever order records arrive in)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasip.dialog.dialog import Dialog
from hasip.dialog.store import DialogStore
from hasip.location.binding import Binding
from hasip.location.store import DELETE, PUT, LocationStore
from hasip.replication import records as rec
from hasip.replication.protocol import (
    HELLO,
    RECORDS,
    Codec,
    ProtocolError,
    choose_version,
    session_key,
)

SECRET = b"0123456789abcdef-cluster"


def _pair() -> tuple[Codec, Codec]:
    a, b = Codec(), Codec()
    key = session_key(SECRET, "n1nonce", "n2nonce")
    a.key = b.key = key
    return a, b


def test_frames_cross_in_any_cut() -> None:
    a, b = _pair()
    data = b"".join(a.encode(RECORDS, {"i": i, "text": "x" * i}) for i in range(50))
    got = []
    pos = 0
    rng = random.Random(7)
    while pos < len(data):
        step = rng.randint(1, 40)
        b.feed(data[pos:pos + step])
        pos += step
        while (frame := b.next_frame()) is not None:
            got.append(frame[1]["i"])
    assert got == list(range(50))


def test_a_tampered_replayed_or_foreign_frame_is_refused() -> None:
    a, b = _pair()
    frame = bytearray(a.encode(RECORDS, {"records": [1, 2, 3]}))
    frame[8] ^= 0x01
    b.feed(bytes(frame))
    with pytest.raises(ProtocolError, match="bad MAC"):
        b.next_frame()
    a, b = _pair()
    first = a.encode(RECORDS, {"n": 1})
    b.feed(first)
    assert b.next_frame() == (RECORDS, {"n": 1})
    b.feed(first)                                   # the same frame again
    with pytest.raises(ProtocolError, match="bad MAC"):
        b.next_frame()
    a, b = Codec(), Codec()
    a.key = session_key(b"another secret, not ours", "n1nonce", "n2nonce")
    b.key = session_key(SECRET, "n1nonce", "n2nonce")
    b.feed(a.encode(RECORDS, {"n": 1}))
    with pytest.raises(ProtocolError):
        b.next_frame()


def test_nothing_but_hello_before_the_handshake_and_no_oversize_frames() -> None:
    plain = Codec()
    b = Codec()
    b.feed(plain.encode(RECORDS, {"n": 1}))
    with pytest.raises(ProtocolError, match="before the handshake"):
        b.next_frame()
    b = Codec()
    b.feed(plain.encode(HELLO, {"node": "n1"}))
    assert b.next_frame() == (HELLO, {"node": "n1"})
    b = Codec()
    b.feed(b"\xff\xff\xff\xff\x01")
    with pytest.raises(ProtocolError, match="frame of"):
        b.next_frame()


def test_versions_two_releases_agree_on_the_highest_common() -> None:
    assert choose_version([1, 1]) == 1
    assert choose_version([1, 5]) == 1
    with pytest.raises(ProtocolError):
        choose_version([7, 9])
    with pytest.raises(ProtocolError):
        choose_version("x")


def test_a_binding_record_round_trips_and_ignores_fields_it_does_not_know() -> None:
    b = Binding("1001@hasip", "sip:1001@198.18.0.50:5070", 2e9, "cid", 3, q=0.5,
                path=("<sip:p1;lr>", "<sip:p2;lr>"), socket="udp:198.18.0.100:5060",
                version=9, node="n2")
    r = json.loads(json.dumps(rec.binding_record(rec.PUT, b)))   # as on the wire
    r["d"]["from_a_newer_release"] = 1
    back = rec.build(Binding, r["d"])
    assert back == b
    # JSON carried the path as a list; the binding has its tuple back (a
    # compiled build checks the type where the store uses it).
    assert type(back.path) is tuple
    store = LocationStore("n1")
    assert store.apply(PUT, back, now=1e9)
    assert store.bindings("1001@hasip", 1e9)[0].path == b.path
    d = Dialog("cid", "ft", "sip:a@x", "sip:b@x", "sip:b@x", route_set=("<sip:v;lr>",),
               version=4, node="n1")
    wire = json.loads(json.dumps(rec.dialog_record(rec.PUT, d)))
    assert rec.build(Dialog, wire["d"]).route_set == ("<sip:v;lr>",)


# One binding changed on three nodes at once, each change with its own version
# (Lamport counters that have not seen each other) -- and deletions. A node
# makes one change per version: (version, node) is unique.
_updates = st.lists(st.tuples(st.integers(1, 20), st.sampled_from(["n1", "n2", "n3"]),
                              st.sampled_from([PUT, DELETE]), st.integers(1000, 9999)),
                    min_size=1, max_size=12, unique_by=lambda u: (u[0], u[1]))


@settings(max_examples=200, deadline=None)
@given(_updates, st.randoms(use_true_random=False))
def test_records_that_disagree_converge_to_the_same_winner_on_every_node(updates, rnd) -> None:
    def binding(version: int, node: str, port: int) -> Binding:
        return Binding("1001@hasip", f"sip:1001@198.18.0.50:{port}", 4e9, "cid", 1,
                       ruid="same-device", version=version, node=node)

    results = []
    for _replica in range(3):
        order = list(updates)
        rnd.shuffle(order)
        store = LocationStore("observer", clock=lambda: 1000.0)
        for version, node, op, port in order:
            store.apply(op, binding(version, node, port))
        found = store.find("1001@hasip", "same-device")
        results.append((found.version, found.node, found.contact) if found else None)
    assert results[0] == results[1] == results[2]
    # and the winner is the newest change by (version, node)
    version, node, op, port = max(updates, key=lambda u: (u[0], u[1]))
    assert results[0] == (None if op == DELETE else (version, node,
                                                      f"sip:1001@198.18.0.50:{port}"))


def test_a_late_older_put_does_not_bring_a_deleted_binding_back() -> None:
    store = LocationStore("n2", clock=lambda: 1000.0)
    old = Binding("1001@hasip", "sip:1001@198.18.0.50:5070", 4e9, "cid", 1, ruid="r1",
                  version=5, node="n1")
    gone = Binding("1001@hasip", "sip:1001@198.18.0.50:5070", 4e9, "cid", 2, ruid="r1",
                   version=6, node="n1")
    assert store.apply(DELETE, gone)
    assert not store.apply(PUT, old)
    assert store.find("1001@hasip", "r1") is None
    # and our own next change is newer than anything we have seen (Lamport)
    mine = Binding("1001@hasip", "sip:1001@198.18.0.50:5071", 4e9, "cid", 3)
    store.put(mine, now=1000.0)
    assert mine.version > 6


def test_dialogs_merge_the_same_way_and_an_ended_one_stays_ended() -> None:
    store = DialogStore("n2", clock=lambda: 1000.0)
    early = Dialog("cid", "ft", "sip:a@x", "sip:b@x", "sip:b@x", id="dl1", version=3,
                   node="n1", expires=5000.0)
    confirmed = Dialog("cid", "ft", "sip:a@x", "sip:b@x", "sip:b@x", id="dl1", version=4,
                       node="n1", state="confirmed", to_tag="tt", expires=5000.0)
    ended = Dialog("cid", "ft", "sip:a@x", "sip:b@x", "sip:b@x", id="dl1", version=5,
                   node="n1", state="terminated", to_tag="tt", expires=5000.0)
    assert store.apply("put", confirmed)
    assert not store.apply("put", early)                 # older: ignored
    assert store.find("cid", "ft", "tt") is not None and len(store) == 1
    assert store.apply("end", ended)
    assert store.find("cid", "ft", "tt") is None and len(store) == 0
    assert not store.apply("put", confirmed)             # a late copy stays dead
