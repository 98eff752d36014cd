"""Choosing a destination of a set, sans-IO: each algorithm returns the
usable destinations in the order to try them, the first being the pick and
the rest the failover order (the seed's ds_select_domain + ds_next_domain).

Names are ours; Kamailio's numbers are accepted too (``ALGORITHM_NUMBERS``).
Hashing uses rendezvous (highest random weight) hashing: a key keeps its
destination when others come or go, and only the keys of a destination that
goes move, spread over the rest.
"""

from __future__ import annotations

import hashlib
import math
import random

from hasip.dispatcher.destinations import Destination, DestinationSet
from hasip.sip.grammar import is_digits

# Kamailio dispatcher algorithm numbers -> our names
ALGORITHM_NUMBERS = {
    0: "hash_callid", 1: "hash_from", 2: "hash_to", 3: "hash_ruri", 4: "round_robin",
    6: "random", 8: "priority", 9: "weighted", 10: "least_calls", 11: "relative_weight",
}
ALGORITHMS = tuple(ALGORITHM_NUMBERS.values())
HASHED = ("hash_callid", "hash_from", "hash_to", "hash_ruri")


def algorithm_name(value: str | int) -> str:
    """An algorithm by name or Kamailio number; ValueError when unknown."""
    if isinstance(value, int) or (isinstance(value, str) and is_digits(value)):
        name = ALGORITHM_NUMBERS.get(int(value))
        if name is None:
            raise ValueError(f"algorithm {value} is not one of "
                             f"{', '.join(str(n) for n in ALGORITHM_NUMBERS)}")
        return name
    if value not in ALGORITHMS:
        raise ValueError(f"algorithm {value!r} is not one of {', '.join(ALGORITHMS)}")
    return value


def _unit_hash(key: str, dest: str) -> float:
    """A uniform number in (0, 1) for (key, destination)."""
    digest = hashlib.blake2b(f"{key}\x00{dest}".encode("utf-8", "surrogateescape"),
                             digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 2)


def rendezvous(key: str, dests: list[Destination]) -> list[Destination]:
    """Destinations by weighted rendezvous score for ``key``, best first."""
    def score(d: Destination) -> float:
        return -max(d.weight, 1) / math.log(_unit_hash(key, d.key))
    return sorted(dests, key=score, reverse=True)


class Selector:
    """One algorithm with its state (round-robin position, weighted credits)."""

    def __init__(self, algorithm: str | int, rng: random.Random | None = None) -> None:
        self.algorithm = algorithm_name(algorithm)
        self.rng = rng or random.Random()
        self._next: dict[int, int] = {}
        self._credit: dict[str, int] = {}

    def order(self, dset: DestinationSet, key: str = "") -> list[Destination]:
        """The usable destinations of ``dset`` in the order to try them;
        ``key`` is what a hashing algorithm hashes (Call-ID, From URI...)."""
        usable = [d for d in dset.destinations if d.usable()]
        if len(usable) < 2:
            return usable
        name = self.algorithm
        if name in HASHED:
            return rendezvous(key, usable)
        if name == "round_robin":
            i = self._next.get(dset.set_id, 0)
            self._next[dset.set_id] = i + 1
            i %= len(usable)
            return usable[i:] + usable[:i]
        if name == "random":
            out = list(usable)
            self.rng.shuffle(out)
            return out
        if name == "priority":
            return sorted(usable, key=lambda d: -d.priority)
        if name == "least_calls":
            return sorted(usable, key=lambda d: d.active_calls / max(d.weight, 1))
        if name == "weighted":
            # Shares by weight over the whole set; a share whose node cannot
            # take the call goes to the next usable node in the list (as
            # Kamailio's algorithm 9 does).
            pick = self._smooth_pick(dset.destinations)
            i = dset.destinations.index(pick)
            rotated = dset.destinations[i:] + dset.destinations[:i]
            return [d for d in rotated if d.usable()]
        # relative_weight: shares by weight over the usable nodes only.
        pick = self._smooth_pick(usable)
        i = usable.index(pick)
        return usable[i:] + usable[:i]

    def _smooth_pick(self, dests: list[Destination]) -> Destination:
        """Smooth weighted round-robin: exact shares, evenly interleaved."""
        credit = self._credit
        total = 0
        best: Destination | None = None
        for d in dests:
            w = max(d.weight, 0)
            total += w
            credit[d.key] = credit.get(d.key, 0) + w
            if best is None or credit[d.key] > credit[best.key]:
                best = d
        assert best is not None
        credit[best.key] -= total
        return best
