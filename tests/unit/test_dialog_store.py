"""Dialog tracking (sans-IO) and the dispatcher's active-call counts kept
from its change feed."""

from __future__ import annotations

import pytest

from hasip.app.config import ConfigError, config_from_dict
from hasip.dialog.dialog import (
    CONFIRMED,
    EARLY,
    ENDED_BYE,
    ENDED_FAILED,
    ENDED_TIMEOUT,
    TERMINATED,
)
from hasip.dialog.store import END, PUT, Change, DialogStore
from hasip.dispatcher.dispatcher import Dispatcher, DispatcherError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def new(store: DialogStore, call_id: str = "c1", tag: str = "ft"):
    d = store.create(call_id, tag, "sip:1001@hasip", "sip:2000@hasip", "sip:2000@hasip",
                     "<sip:1001@192.0.2.5>", 1, "udp:192.0.2.1:5060")
    assert d is not None
    return d


def test_life_cycle_counts_and_change_feed() -> None:
    clock = Clock()
    store = DialogStore("n1", timeout=60, clock=clock)
    feed: list[Change] = []
    store.subscribe(feed.append)
    d = new(store)
    assert (d.state, len(store), store.counts[EARLY]) == (EARLY, 1, 1)
    store.set_destination(d, 1, "sip:192.0.2.20:5060")
    store.set_destination(d, 1, "sip:192.0.2.20:5060")   # unchanged: no change emitted
    clock.now += 2
    store.confirm(d, "tt", "<sip:ast@192.0.2.20>", ("<sip:192.0.2.1;lr>",))
    assert (d.state, d.to_tag, store.counts[CONFIRMED], store.counts[EARLY]) == \
        (CONFIRMED, "tt", 1, 0)
    clock.now += 30
    assert store.end(d, ENDED_BYE)
    assert not store.end(d, ENDED_BYE)          # once
    assert (d.state, len(store), d.duration()) == (TERMINATED, 0, 30.0)
    assert [(c.op, c.seq) for c in feed] == [(PUT, 1), (PUT, 2), (PUT, 3), (END, 4)]
    assert all(c.dialog.node == "n1" for c in feed)
    assert store.find("c1", "ft", "tt") is None


def test_in_dialog_requests_found_in_both_directions() -> None:
    store = DialogStore()
    d = new(store)
    assert store.find("c1", "ft", None) is d          # early: PRACK/UPDATE from the caller
    store.confirm(d, "tt", "", ())
    assert store.find("c1", "ft", "tt") is d          # the caller's BYE
    assert store.find("c1", "tt", "ft") is d          # the callee's BYE: tags swapped
    assert store.find("c1", "ft", "other") is None    # another fork's dialog
    assert store.find("c2", "ft", "tt") is None


def test_spiral_does_not_create_a_second_dialog() -> None:
    store = DialogStore()
    first = new(store)
    assert store.create("c1", "ft", "a", "b", "c") is None
    store.end(first, ENDED_FAILED, 486)
    assert new(store) is not first                   # a new attempt after a failure


def test_dialogs_without_bye_time_out() -> None:
    clock = Clock()
    store = DialogStore(timeout=10, clock=clock)
    a = new(store, "a")
    clock.now += 5
    b = new(store, "b")
    assert store.expire() == []
    clock.now += 6
    assert store.expire() == [a]
    assert a.end_reason == ENDED_TIMEOUT and b.active
    clock.now += 5
    assert store.expire() == [b]
    assert len(store) == 0


def dispatcher(lines: list[str], listen: list[str] | None = None) -> Dispatcher:
    raw = {"sip": {"listen": listen or ["udp:192.0.2.1:5060"]},
           "dispatcher": {"destinations": lines, "algorithm": "least_calls"}}
    return Dispatcher(config_from_dict(raw))


def test_active_calls_follow_the_dialog_across_failover_and_end() -> None:
    ds = dispatcher(["1 sip:192.0.2.20:5060", "1 sip:192.0.2.21:5060 0 0 maxload=1"])
    store = DialogStore()
    store.subscribe(ds.on_dialog)
    first, second = ds.sets[1].destinations
    d = new(store)
    store.set_destination(d, 1, first.key)
    assert (first.active_calls, second.active_calls) == (1, 0)
    # least calls: the idle node first
    assert ds.order(1)[0] is second
    store.set_destination(d, 1, second.key)           # failover moves the count
    assert (first.active_calls, second.active_calls) == (0, 1)
    assert not second.usable()                        # maxload=1 reached
    assert ds.order(1) == [first]
    store.confirm(d, "tt", "", ())
    assert second.active_calls == 1
    store.end(d, ENDED_BYE)
    assert (first.active_calls, second.active_calls) == (0, 0)
    assert second.usable()


def test_removed_destination_drains_its_calls() -> None:
    ds = dispatcher(["1 sip:192.0.2.20:5060", "1 sip:192.0.2.21:5060"])
    store = DialogStore()
    store.subscribe(ds.on_dialog)
    gone = ds.sets[1].destinations[0]
    calls = [new(store, f"c{i}") for i in range(2)]
    for d in calls:
        store.set_destination(d, 1, gone.key)
    ds.remove(1, gone.key)
    listed = {(e["uri"], e["draining"], e["active_calls"]) for e in ds.listing()}
    assert (gone.key, True, 2) in listed
    assert all(d is not gone for d in ds.order(1))
    store.end(calls[0], ENDED_BYE)
    assert any(e["uri"] == gone.key for e in ds.listing())
    store.end(calls[1], ENDED_BYE)
    assert all(e["uri"] != gone.key for e in ds.listing())   # drained: no longer listed


def test_destination_socket_must_be_one_of_ours() -> None:
    with pytest.raises(ConfigError, match=r"dispatcher.destinations: .*socket "
                                          r"'udp:192.0.2.9:5060' is not one of sip.listen"):
        dispatcher(["1 sip:192.0.2.20:5060 0 0 socket=udp:192.0.2.9:5060"])
    with pytest.raises(ConfigError, match="is not tcp"):
        dispatcher(["1 sip:192.0.2.20:5060;transport=tcp 0 0 socket=udp:192.0.2.1:5060"])
    ds = dispatcher([], ["udp:192.0.2.1:5060", "udp:192.0.2.2:5060"])
    assert ds.add(1, "sip:192.0.2.30:5060", "socket=udp:192.0.2.2:5060").socket == \
        "udp:192.0.2.2:5060"
    with pytest.raises(DispatcherError, match=r"not one of sip\.listen"):
        ds.add(1, "sip:192.0.2.31:5060", "socket=udp:192.0.2.3:5060")
