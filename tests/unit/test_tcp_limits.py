"""TCP defences without sockets: per-source and total limits, the log
digest on virtual time, and the [tcp] keys of the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from hasip.app.config import Config, ConfigError, config_from_dict, load_config
from hasip.transport.limits import ConnectionLimits, EventDigest, source_of


def test_source_is_the_ipv4_address_or_the_ipv6_64() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert source_of("::ffff:198.18.0.9") == "198.18.0.9"  # a dual-stack socket's IPv4 peer
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("not an address") == "not an address"


def test_per_source_limit_refuses_the_surplus_and_frees_on_release() -> None:
    limits = ConnectionLimits(max_total=10, max_per_source=3)
    assert [limits.admit("a") for _ in range(4)] == [None, None, None, "per_source"]
    assert limits.admit("b") is None  # another source is not affected
    limits.release("a")
    assert limits.admit("a") is None
    assert limits.admit("a") == "per_source"
    assert limits.total == 4 and limits.by_source == {"a": 3, "b": 1}


def test_total_limit_counts_connections_of_our_own() -> None:
    limits = ConnectionLimits(max_total=4, max_per_source=2)
    assert limits.admit("a") is None and limits.admit("b") is None
    assert limits.admit("c", others=2) == "total"
    assert limits.admit("c", others=1) is None
    # A full source is named as such even when the table is full too.
    assert limits.admit("a") is None
    assert limits.admit("a", others=5) == "per_source"
    assert limits.admit("d") == "total"


def test_one_source_cannot_fill_the_table() -> None:
    limits = ConnectionLimits(max_total=8, max_per_source=2)
    refused = [limits.admit("flood") for _ in range(100)]
    assert refused.count(None) == 2 and limits.total == 2
    assert all(limits.admit(src) is None for src in ("x", "y", "z"))


def test_release_of_an_unknown_source_changes_nothing() -> None:
    limits = ConnectionLimits(max_total=2, max_per_source=2)
    limits.release("ghost")
    assert limits.total == 0 and limits.by_source == {}


def test_digest_logs_the_first_event_then_one_line_per_reason_and_interval() -> None:
    digest = EventDigest(interval=10.0)
    now = 100.0
    assert digest.note("per_source", "192.0.2.1", now)  # logged on its own
    for i in range(1000):
        assert not digest.note("per_source", "192.0.2.1", now + i * 0.001)
    assert not digest.note("per_source", "192.0.2.2", now + 1)
    assert not digest.note("total", "192.0.2.3", now + 2)
    assert digest.summary(now + 5) == []  # not before the interval has passed
    lines = digest.summary(now + 10)
    assert lines == [("per_source", 1001, "192.0.2.1=1000 192.0.2.2=1"),
                     ("total", 1, "192.0.2.3=1")]
    assert digest.summary(now + 30) == []  # nothing new
    # Quiet for an interval: the next event is logged on its own again.
    assert digest.note("per_source", "192.0.2.1", now + 31)


def test_digest_names_a_bounded_number_of_sources() -> None:
    digest = EventDigest(interval=1.0, max_sources=3)
    digest.note("idle", "first", 0.0)
    for i in range(50):
        digest.note("slow_message", f"198.18.0.{i}", 0.5)
    [(reason, count, sources)] = digest.summary(1.0, top=10)
    assert reason == "slow_message" and count == 50
    assert len(digest.pending) == 0
    assert sources.count("=") == 3


def test_tcp_defaults() -> None:
    cfg = config_from_dict({})
    assert cfg.tcp.max_connections == 4096
    assert cfg.tcp.max_connections_per_source == 256
    assert cfg.tcp.message_timeout == 5.0
    assert cfg.tcp.first_message_timeout == 10.0
    assert Config().tcp.max_connections_per_source == 256


def test_per_source_default_leaves_room_in_a_small_table() -> None:
    cfg = config_from_dict({"tcp": {"max_connections": 100}})
    assert cfg.tcp.max_connections_per_source == 25
    assert config_from_dict({"tcp": {"max_connections": 2}}).tcp.max_connections_per_source == 1
    cfg = config_from_dict({"tcp": {"max_connections": 100, "max_connections_per_source": 100}})
    assert cfg.tcp.max_connections_per_source == 100


def test_tcp_keys_are_read() -> None:
    cfg = config_from_dict({"tcp": {"max_connections_per_source": 64, "message_timeout": 1.5,
                                    "first_message_timeout": 3}})
    assert cfg.tcp.max_connections_per_source == 64
    assert cfg.tcp.message_timeout == 1.5
    assert cfg.tcp.first_message_timeout == 3.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[tcp]\nmax_connections_per_source = 0",
         "tcp.max_connections_per_source: 0 is outside 1..1048576"),
        ("[tcp]\nmax_connections = 100\nmax_connections_per_source = 101",
         "tcp.max_connections_per_source: 101 is above tcp.max_connections (100)"),
        ("[tcp]\nmax_connections_per_source = 5000",
         "tcp.max_connections_per_source: 5000 is above tcp.max_connections (4096)"),
        ('[tcp]\nmax_connections_per_source = "64"',
         "tcp.max_connections_per_source: expected an integer, got str"),
        ("[tcp]\nmessage_timeout = 0.1", "tcp.message_timeout: 0.1 is outside 0.5..600.0"),
        ("[tcp]\nmessage_timeout = 601", "tcp.message_timeout: 601.0 is outside 0.5..600.0"),
        ("[tcp]\nmessage_timeout = true", "tcp.message_timeout: expected a number, got a boolean"),
        ("[tcp]\nfirst_message_timeout = 0",
         "tcp.first_message_timeout: 0.0 is outside 0.5..3600.0"),
        ("[tcp]\nfirst_message_timout = 5", "tcp: unknown key(s) first_message_timout"),
    ],
)
def test_tcp_errors_name_file_key_and_fault(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)
