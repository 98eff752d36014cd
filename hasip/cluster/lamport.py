"""The cluster's one merge rule for records changed on several nodes.

Versions are Lamport clocks: each store counts its changes and moves its
counter past every version it applies from a peer, so a change made after
seeing another is always newer than it. Two changes made without seeing
each other compare by (version, node): a total order, so every node picks
the same winner whatever order the records arrive in. The location store,
the dialog store and the dispatcher's shared health all apply it.
"""

from __future__ import annotations


def newer(version: int, node: str, than_version: int, than_node: str) -> bool:
    """Whether (version, node) wins over (than_version, than_node)."""
    return (version, node) > (than_version, than_node)
