"""The ng protocol's pure layer: bencode (property-tested against the spec),
the request table on virtual time, the instance choice and health."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hasip.media import commands
from hasip.media.bencode import BencodeError, decode, encode
from hasip.media.instances import Instances, parse_instance
from hasip.media.ng import NgError, NgRequests, NgTimeout, parse_answer

values = st.recursive(
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.binary(max_size=8), inner,
                                                                max_size=5),
    max_leaves=30)


@given(values)
def test_bencode_round_trips(value) -> None:
    assert decode(encode(value)) == value


@given(st.binary(max_size=60))
def test_bencode_decoder_never_raises_anything_but_its_error(data: bytes) -> None:
    try:
        decode(data)
    except BencodeError:
        pass


@given(values, st.data())
def test_every_truncation_is_refused(value, data) -> None:
    raw = encode(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(BencodeError):
        decode(raw[:cut])


def test_bencode_spec_examples() -> None:
    assert encode({"cow": "moo", "spam": "eggs"}) == b"d3:cow3:moo4:spam4:eggse"
    assert encode(["spam", "eggs"]) == b"l4:spam4:eggse"
    assert encode(-3) == b"i-3e"
    # rtpengine's dictionaries are not sorted: accepted as they come.
    assert decode(b"d6:result2:ok3:sdp1:xe") == {b"result": b"ok", b"sdp": b"x"}
    for bad in (b"i-0e", b"i03e", b"ie", b"3:ab", b"d1:ae", b"di1ei2ee", b"i1ei2e", b"x"):
        with pytest.raises(BencodeError):
            decode(bad)
    with pytest.raises(BencodeError):
        decode(b"l" * 100 + b"e" * 100)
    with pytest.raises(BencodeError):
        encode(True)


def test_requests_retransmit_then_time_out_on_virtual_time() -> None:
    table = NgRequests(retransmit=0.2, timeout=1.5)
    p = table.request(("127.0.0.1", 2223), commands.ping(), now=100.0)
    assert p.datagram.startswith(p.cookie + b" d7:command4:ping")
    sends = []
    t = 100.0
    while t < 102.0:
        t = round(t + 0.05, 2)
        for ev in table.poll(t):
            if ev.send:
                sends.append(t)
            else:
                assert isinstance(ev.error, NgTimeout)
                assert t == pytest.approx(101.5)
                assert "ping" in str(ev.error)
    # 0.2 s, then doubled: 0.4, 0.8 (and the deadline at 1.5 s).
    assert sends == pytest.approx([100.2, 100.6, 101.4], abs=0.051)
    assert not table.pending


def test_answers_match_by_cookie_and_source() -> None:
    table = NgRequests()
    p = table.request(("127.0.0.1", 2223), commands.query("c1"), now=0.0)
    assert table.receive(p.cookie + b" d6:result2:oke", ("127.0.0.9", 2223), 0.1) is None
    assert table.receive(b"unknown d6:result2:oke", ("127.0.0.1", 2223), 0.1) is None
    assert table.receive(b"garbage", ("127.0.0.1", 2223), 0.1) is None
    ev = table.receive(p.cookie + b" d6:result5:error12:error-reason7:Unknowne",
                       ("127.0.0.1", 2223), 0.1)
    assert ev is not None and ev.answer is not None
    assert not ev.answer.ok and ev.answer.error_reason == "Unknown"
    assert table.receive(p.cookie + b" d6:result2:oke", ("127.0.0.1", 2223), 0.2) is None
    q = table.request(("127.0.0.1", 2223), commands.ping(), now=0.0)
    ev = table.receive(q.cookie + b" i5e", ("127.0.0.1", 2223), 0.1)
    assert ev is not None and isinstance(ev.error, NgError)


def test_answer_parsing_refuses_what_is_not_ng() -> None:
    for bad in (b"", b"le", b"d3:sdp1:xe", b"i1e"):
        with pytest.raises(NgError):
            parse_answer(bad)


def test_instances_are_chosen_by_call_and_weight() -> None:
    a = parse_instance("udp:127.0.0.1:2223", "t")
    b = parse_instance("127.0.0.2:2223=3", "t")
    assert (b.name, b.weight) == ("udp:127.0.0.2:2223", 3)
    inst = Instances([a, b], failures=2, successes=1)
    calls = [f"call-{i}" for i in range(4000)]
    chosen = {c: inst.choose(c) for c in calls}
    # The same call always goes to the same instance.
    assert all(inst.choose(c) is chosen[c] for c in calls)
    share = sum(1 for c in calls if chosen[c] is b) / len(calls)
    assert 0.70 < share < 0.80                   # weight 3 of 4
    # One failure is not enough; two take it down; its calls move, the others stay.
    assert not inst.failed(b, "timeout")
    assert inst.failed(b, "timeout")
    assert all(inst.choose(c) is a for c in calls)
    assert inst.succeeded(b)
    assert all(inst.choose(c) is chosen[c] for c in calls)
    # A call keeps the instance it uses while that one is up.
    assert inst.choose("call-1", sticky=a.name) is a
    assert inst.choose("x", exclude={a.name, b.name}) is None


@pytest.mark.parametrize("text", ["tcp:127.0.0.1:1", "udp:127.0.0.1", "udp::99999",
                                  "udp:h:1=0", "udp:h:1=x"])
def test_bad_instances_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"media\.rtpengine"):
        parse_instance(text, "media.rtpengine[0]")


def test_offer_flags_follow_the_nat_of_the_side() -> None:
    opts = commands.Options(direction=("pub", "priv"))
    natted = commands.offer("c", "f", b"v=0", commands.Side(True, "198.18.0.9"), opts)
    assert natted["received-from"] == ["IP4", "198.18.0.9"]
    assert "flags" not in natted                 # a NATed side's SDP is never trusted
    assert natted["replace"] == ["origin", "session-connection"]
    assert natted["ICE"] == "remove" and natted["direction"] == ["pub", "priv"]
    public = commands.answer("c", "f", "t", b"v=0", commands.Side(False, "2001:2::1"), opts)
    assert public["flags"] == ["trust-address"] and "received-from" not in public
    assert commands.delete("c", "f")["delete-delay"] == 0


def test_media_stats_from_a_delete_answer() -> None:
    data = {b"totals": {b"RTP": {b"packets": 500, b"bytes": 86000, b"errors": 1}},
            b"SSRC": {b"1": {b"lowest MOS": {b"MOS": 41, b"packet loss": 3, b"jitter": 7}},
                      b"2": {b"average MOS": {b"MOS": 44, b"packet loss": 0, b"jitter": 2}}}}
    s = commands.media_stats(data)
    assert (s.packets, s.bytes, s.errors, s.lost, s.jitter, s.mos) == (500, 86000, 1, 3, 7, 4.1)
    assert commands.media_stats({}).packets == 0
