"""Who owns a VIP (keepalive.ranking), and the VIP option parsing."""

from __future__ import annotations

import pytest

from keepalive.config import KeepaliveConfig, parse_vip
from keepalive.holder import tun_name
from keepalive.ranking import (
    candidate_prefix,
    may_acquire,
    parse_candidate,
    predecessor,
    ranked,
    should_yield,
)


def names(*entries: tuple[str, int, int]) -> list[str]:
    return [f"{candidate_prefix(n, p)}{s:010d}" for n, p, s in entries]


def test_rank_by_priority_then_age() -> None:
    order = ranked(names(("n3", 10, 1), ("n1", 100, 7), ("n2", 50, 3), ("n4", 50, 2)))
    assert [c.node for c in order] == ["n1", "n4", "n2", "n3"]
    assert predecessor(order, order[2].name) == order[1]
    assert predecessor(order, order[0].name) is None
    # a node seen twice (an old session's znode not yet expired): its best entry
    assert [c.node for c in ranked(names(("n1", 5, 9), ("n1", 5, 4)))] == ["n1"]
    # foreign children are ignored
    assert ranked(["junk", "n1_x_0000000001"]) == []


def test_who_may_take_a_vip_without_owner() -> None:
    order = ranked(names(("n1", 100, 1), ("n2", 50, 2)))
    assert may_acquire(order, "n1", None) and not may_acquire(order, "n2", None)
    # an operator's handover names a live candidate: only it takes the VIP
    assert may_acquire(order, "n2", "n2") and not may_acquire(order, "n1", "n2")
    # a handover to a node that is not a candidate does not block the election
    assert may_acquire(order, "n1", "n9")
    assert not may_acquire([], "n1", None)


def test_preemption_only_for_a_strictly_better_priority() -> None:
    order = ranked(names(("n1", 100, 5), ("n2", 50, 1)))
    assert should_yield(order, "n2", preempt=True) == order[0]
    assert should_yield(order, "n2", preempt=False) is None
    assert should_yield(order, "n1", preempt=True) is None
    same = ranked(names(("n1", 50, 1), ("n2", 50, 5)))
    assert should_yield(same, "n2", preempt=True) is None


def test_names_and_vip_options() -> None:
    assert parse_candidate("n-1.a_100_0000000042").seq == 42  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="letters, digits"):
        candidate_prefix("bad_name", 1)
    vip = parse_vip("198.18.0.100/24@lan0,priority=70,name=front")
    assert (vip.address, vip.prefix, vip.interface, vip.priority, vip.name) == \
        ("198.18.0.100", 24, "lan0", 70, "front")
    v6 = parse_vip("2001:db8::10@lan0")
    assert (v6.prefix, v6.name) == (128, "2001_db8__10")
    for bad in ("198.18.0.100/24", "nothing@lan0", "198.18.0.1/40@lan0",
                "198.18.0.1@lan0,colour=red"):
        with pytest.raises(ValueError):
            parse_vip(bad)
    with pytest.raises(ValueError, match="two VIPs"):
        KeepaliveConfig("n1", "zk:2181", [parse_vip("198.18.0.1@a"), parse_vip("198.18.0.1@b")])
    assert tun_name("198.18.0.100") == "kac6120064"
