"""Who should own a VIP, sans-IO.

Every node allowed to serve a VIP registers a candidate: an ephemeral
sequential znode named ``NODE_PRIORITY_SEQUENCE`` (the sequence is
ZooKeeper's). Candidates rank by priority (higher first), then by
sequence (older first); each contender watches the one ranked just ahead of
it (its predecessor), the first in rank watches the owner lock. Ownership
itself is an ephemeral ``owner`` znode: created by one node at a time, so
two owners can never coexist in ZooKeeper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Candidate:
    node: str
    priority: int
    seq: int
    name: str          # the znode's name

    @property
    def rank_key(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


def candidate_prefix(node: str, priority: int) -> str:
    """The name before ZooKeeper's 10-digit sequence."""
    if not NODE_NAME.match(node):
        raise ValueError(f"node name {node!r}: letters, digits, '.' and '-' only")
    return f"{node}_{priority}_"


def parse_candidate(name: str) -> Candidate | None:
    """``n1_100_0000000007`` -> Candidate; None for anything else."""
    parts = name.rsplit("_", 2)
    if len(parts) != 3:
        return None
    node, priority, seq = parts
    if not NODE_NAME.match(node) or not seq.isdigit():
        return None
    try:
        return Candidate(node, int(priority), int(seq), name)
    except ValueError:
        return None


def ranked(names: list[str]) -> list[Candidate]:
    """Candidates best first; a node listed twice (a stale znode of a session
    not yet expired) keeps its best entry."""
    seen: set[str] = set()
    out: list[Candidate] = []
    for c in sorted(filter(None, map(parse_candidate, names)), key=lambda c: c.rank_key):
        if c.node not in seen:
            seen.add(c.node)
            out.append(c)
    return out


def predecessor(order: list[Candidate], name: str) -> Candidate | None:
    """The candidate ranked just ahead of ``name`` (None: it is first or absent)."""
    for i, c in enumerate(order):
        if c.name == name:
            return order[i - 1] if i else None
    return None


def may_acquire(order: list[Candidate], me: str, handover_to: str | None) -> bool:
    """With no owner: the first in rank takes the VIP, unless an operator's
    handover names another live candidate, which then does."""
    if not order:
        return False
    if handover_to and any(c.node == handover_to for c in order):
        return handover_to == me
    return order[0].node == me


def should_yield(order: list[Candidate], me: str, preempt: bool) -> Candidate | None:
    """The owner ``me`` gives way (with preemption on) to a better-ranked
    candidate of strictly higher priority; returns it, or None."""
    if not preempt or not order:
        return None
    mine = next((c for c in order if c.node == me), None)
    first = order[0]
    if mine is None or first.node == me or first.priority <= mine.priority:
        return None
    return first
