"""Dispatcher core: list file, health state machine, selection algorithms."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hasip.dispatcher.destinations import (
    ACTIVE,
    DISABLED,
    INACTIVE,
    TRYING,
    Destination,
    DestinationSet,
    ListFileError,
    Thresholds,
    parse_list,
)
from hasip.dispatcher.select import Selector, algorithm_name
from hasip.sip.uri import parse_sip_uri


def dset(*weights: int) -> DestinationSet:
    return DestinationSet(1, [Destination(parse_sip_uri(f"sip:192.0.2.{i + 1}:5060"), 1,
                                          weight=w) for i, w in enumerate(weights)])


def test_seed_list_file_and_attributes() -> None:
    dests = parse_list("# the seed's sets\n1 sip:192.168.0.1:5060\n1 sip:192.168.0.2:5060\n"
                       "2 sip:192.168.0.3:5060 0 5 weight=50;maxload=100;"
                       "socket=udp:192.0.2.10:5060;description=ast3\n")
    assert [(d.set_id, d.key) for d in dests] == [(1, "sip:192.168.0.1:5060"),
                                                 (1, "sip:192.168.0.2:5060"),
                                                 (2, "sip:192.168.0.3:5060")]
    third = dests[2]
    assert (third.priority, third.weight, third.max_calls, third.socket, third.description) == \
        (5, 50, 100, "udp:192.0.2.10:5060", "ast3")
    for bad, fault in (("x sip:a", "expected SETID URI"), ("1 http://a", ":1:"),
                       ("1 sip:a 0 0 colour=red", "unknown attribute 'colour'"),
                       ("\u00b2 sip:a", "expected SETID URI"),
                       ("1 sip:a 0 \u00b2", "priority '\u00b2' is not a number"),
                       ("1 sip:a 0 0 weight=\u00b2", "weight '\u00b2' is not a number")):
        with pytest.raises(ListFileError, match=fault):
            parse_list(bad, "ds.list")


def test_health_state_machine() -> None:
    d = dset(1).destinations[0]
    th = Thresholds(failures=3, successes=2)
    assert d.flags == "AP"
    assert d.failed(th) and d.state == TRYING and d.usable()
    d.failed(th)
    assert d.failed(th) and d.state == INACTIVE and not d.usable() and d.flags == "IP"
    assert not d.succeeded(th) and d.state == INACTIVE   # one success is not enough
    assert d.succeeded(th) and d.state == ACTIVE
    d.failed(th)
    assert d.succeeded(th) and d.state == ACTIVE          # trying -> active at once
    d.set_admin_state(DISABLED)
    assert not d.succeeded(th) and d.state == DISABLED and not d.usable()
    d.set_admin_state(ACTIVE)
    d.max_calls, d.active_calls = 2, 2
    assert not d.usable()


def test_round_robin_is_exact_and_skips_unusable() -> None:
    s = dset(1, 1, 1)
    sel = Selector("round_robin")
    picks = Counter(sel.order(s)[0].key for _ in range(300))
    assert set(picks.values()) == {100}
    s.destinations[1].state = INACTIVE
    order = sel.order(s)
    assert len(order) == 2 and s.destinations[1] not in order
    assert algorithm_name(4) == "round_robin" and algorithm_name("9") == "weighted"


def test_weights_give_exact_shares_and_relative_weight_rebalances() -> None:
    s = dset(50, 30, 20)
    for name in ("weighted", "relative_weight"):
        sel = Selector(name)
        picks = Counter(sel.order(s)[0].key for _ in range(1000))
        assert [picks[d.key] for d in s.destinations] == [500, 300, 200]
    s.destinations[0].state = INACTIVE
    sel = Selector("relative_weight")
    picks = Counter(sel.order(s)[0].key for _ in range(1000))
    assert [picks[d.key] for d in s.destinations] == [0, 600, 400]
    sel = Selector("weighted")  # Kamailio's 9: the dead node's share goes to its neighbour
    picks = Counter(sel.order(s)[0].key for _ in range(1000))
    assert [picks[d.key] for d in s.destinations] == [0, 800, 200]


def test_hashing_is_sticky_and_moves_only_what_it_must() -> None:
    s = dset(1, 1, 1, 1)
    sel = Selector("hash_callid")
    keys = [f"call-{i}" for i in range(4000)]
    before = {k: sel.order(s, k)[0].key for k in keys}
    assert before == {k: sel.order(s, k)[0].key for k in keys}      # sticky
    shares = Counter(before.values())
    assert all(900 < n < 1100 for n in shares.values())             # balanced
    gone = s.destinations[2]
    gone.state = INACTIVE
    after = {k: sel.order(s, k)[0].key for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == gone.key for k in moved)                 # only its callers move
    assert len(moved) == shares[gone.key]
    gone.state = ACTIVE
    s.destinations.append(Destination(parse_sip_uri("sip:192.0.2.9:5060"), 1))
    grown = {k: sel.order(s, k)[0].key for k in keys}
    moved = [k for k in keys if before[k] != grown[k]]
    assert all(grown[k] == "sip:192.0.2.9:5060" for k in moved)      # only to the new node
    assert 600 < len(moved) < 1000                                   # about a fifth


def test_priority_least_calls_random_and_failover_order() -> None:
    s = dset(1, 1, 1)
    s.destinations[1].priority = 10
    order = Selector("priority").order(s)
    assert order[0] is s.destinations[1] and len(order) == 3
    s.destinations[0].active_calls = 5
    s.destinations[1].active_calls = 1
    s.destinations[2].active_calls = 3
    assert [d.active_calls for d in Selector("least_calls").order(s)] == [1, 3, 5]
    order = Selector("random", random.Random(7)).order(s)
    assert sorted(d.key for d in order) == sorted(d.key for d in s.destinations)
    with pytest.raises(ValueError, match="not one of"):
        Selector("fastest")
