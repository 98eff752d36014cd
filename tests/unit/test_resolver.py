"""The next-hop resolver (hasip/proxy/resolver.py): IP literals at once,
names through a cache that respects its TTLs and its bound, and the engine
waiting for a lookup on a virtual clock."""

from __future__ import annotations

import asyncio

from hasip.app.config import ConfigError, config_from_dict
from hasip.proxy.resolver import HostCache, Resolver, Target
from hasip.sip.uri import parse_sip_uri
from tests.unit.enginelab import Lab, invite, lines


class FakeDns:
    """Answers from a table; counts the questions."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, name: str) -> list[str]:
        self.asked.append(name)
        if name not in self.table:
            raise OSError(f"{name}: Name or service not known")
        return self.table[name]


def resolve(resolver: Resolver, uri: str, now: float) -> list[Target] | None:
    found = resolver.targets(parse_sip_uri(uri), now)
    if found is None:
        asyncio.run(resolver.lookup(parse_sip_uri(uri), now))
        found = resolver.targets(parse_sip_uri(uri), now)
    return found


def test_an_ip_literal_needs_no_lookup_and_maddr_wins() -> None:
    resolver = Resolver(lookup=FakeDns({}))
    assert resolver.targets(parse_sip_uri("sip:a@198.18.2.1:5080;transport=tcp"), 0.0) == [
        Target("tcp", "198.18.2.1", 5080)]
    assert resolver.targets(parse_sip_uri("sip:a@pbx.example;maddr=198.18.2.2"), 0.0) == [
        Target("udp", "198.18.2.2", 5060)]
    assert resolver.targets(parse_sip_uri("sip:a@[2001:2::1]"), 0.0) == [
        Target("udp", "2001:2::1", 5060)]


def test_a_name_lives_its_ttl_then_is_asked_again() -> None:
    dns = FakeDns({"pbx.example": ["198.18.2.1", "2001:2::1"]})
    resolver = Resolver(ttl=60.0, lookup=dns)
    assert resolve(resolver, "sip:pbx.example", 100.0) == [
        Target("udp", "198.18.2.1", 5060), Target("udp", "2001:2::1", 5060)]
    assert resolve(resolver, "sip:PBX.example:5080", 159.0) == [
        Target("udp", "198.18.2.1", 5080), Target("udp", "2001:2::1", 5080)]
    assert dns.asked == ["pbx.example"]                 # from the cache, names fold case
    dns.table["pbx.example"] = ["198.18.2.9"]
    assert resolve(resolver, "sip:pbx.example", 160.0) == [Target("udp", "198.18.2.9", 5060)]
    assert dns.asked == ["pbx.example", "pbx.example"]


def test_a_failure_is_remembered_for_the_negative_ttl_only() -> None:
    dns = FakeDns({"empty.example": []})
    resolver = Resolver(ttl=300.0, negative_ttl=5.0, lookup=dns)
    assert resolve(resolver, "sip:gone.example", 0.0) == []
    assert resolve(resolver, "sip:empty.example", 0.0) == []
    assert resolve(resolver, "sip:gone.example", 4.9) == []
    assert dns.asked == ["gone.example", "empty.example"]
    dns.table["gone.example"] = ["198.18.2.3"]
    assert resolve(resolver, "sip:gone.example", 5.0) == [Target("udp", "198.18.2.3", 5060)]


def test_the_cache_is_bounded_and_drops_the_oldest() -> None:
    cache = HostCache(max_entries=3)
    for i in range(5):
        cache.put(f"n{i}.example", [f"198.18.2.{i}"], now=0.0, ttl=60.0)
    assert len(cache) == 3
    assert cache.get("n0.example", 1.0) is None and cache.get("n1.example", 1.0) is None
    assert cache.get("n4.example", 1.0) == ["198.18.2.4"]
    # a flood of distinct names costs at most the bound
    resolver = Resolver(max_entries=100, lookup=FakeDns({}))
    for i in range(1000):
        resolve(resolver, f"sip:flood{i}.example", 0.0)
    assert len(resolver.cache) == 100


def test_the_engine_waits_for_a_name_and_then_forwards() -> None:
    dns = FakeDns({"pbx.example": ["198.18.2.1"]})
    lab = Lab(["sip:agent@pbx.example:5070"], resolver=Resolver(lookup=dns))
    assert lines(lab.receive(invite())) == [("SIP/2.0 100 Trying", ("198.18.1.1", 5060))]
    [wait] = lab.waits
    asyncio.run(wait.awaitable)         # what the shell's task does
    lab.now += 0.01
    lab.engine.resume(wait, None, lab.now)
    out = lab.flush()
    assert lines(out) == [("INVITE sip:agent@pbx.example:5070 SIP/2.0", ("198.18.2.1", 5070))]
    # the next call to the name goes out at once, from the cache
    lab.waits.clear()
    out = lab.receive(invite(call="c2", branch="z9hG4bKcaller2"))
    assert [s.first_line for s in out][-1] == "INVITE sip:agent@pbx.example:5070 SIP/2.0"
    assert lab.waits == [] and dns.asked == ["pbx.example"]


def test_a_name_that_does_not_resolve_is_answered_503() -> None:
    lab = Lab(["sip:agent@gone.example"], resolver=Resolver(lookup=FakeDns({})))
    lab.receive(invite())
    [wait] = lab.waits
    asyncio.run(wait.awaitable)
    lab.engine.resume(wait, None, lab.now)
    assert [s.first_line for s in lab.flush()] == [
        "SIP/2.0 503 Service Unavailable (cannot resolve next hop)"]


def test_the_dns_section_configures_the_cache() -> None:
    cfg = config_from_dict({"dns": {"ttl": 30, "negative_ttl": 2.5, "max_entries": 10}})
    assert (cfg.dns.ttl, cfg.dns.negative_ttl, cfg.dns.max_entries) == (30.0, 2.5, 10)
    try:
        config_from_dict({"dns": {"max_entries": 0}}, "x.toml")
    except ConfigError as exc:
        assert str(exc).startswith("x.toml: dns.max_entries:")
    else:
        raise AssertionError("dns.max_entries = 0 accepted")
