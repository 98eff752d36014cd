"""Bounded memo tables for values the network repeats (URIs, name-addrs, Via
prefixes, address verdicts): a table that reaches its limit is emptied and
fills again with what is in use, so a flood of distinct values costs at most
the limit in memory."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

LIMIT = 4096


def remember(table: dict[K, V], key: K, value: V, limit: int = LIMIT) -> V:
    """Store ``value`` under ``key`` (emptying a full table first); return it."""
    if len(table) >= limit:
        table.clear()
    table[key] = value
    return value
