"""The rtpengine instances a node uses, sans-IO: each with a weight and a
health state, taken out after ``failures`` failed pings or requests in a row
and back after ``successes`` answered pings (as the dispatcher's
destinations are); a call goes to one instance chosen by weighted
rendezvous hashing of its Call-ID among those up, so every message of a
call, on any node, goes to the same instance while it is up, and a call
moves only when its instance goes down."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

UP = "up"
DOWN = "down"


@dataclass(eq=False)
class Instance:
    name: str                    # as configured: "udp:127.0.0.1:2223"
    host: str
    port: int
    weight: int = 1
    state: str = UP
    failures: int = 0            # in a row
    successes: int = 0           # in a row, while down
    last_error: str = ""

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def up(self) -> bool:
        return self.state == UP


def parse_instance(text: str, where: str) -> Instance:
    """``udp:HOST:PORT[=WEIGHT]`` (Kamailio's rtpengine_sock form; ``udp:``
    may be left out). ValueError naming ``where`` otherwise."""
    spec, _, weight_text = text.partition("=")
    weight = 1
    if weight_text:
        if not weight_text.isdigit() or not 0 < int(weight_text) <= 1000:
            raise ValueError(f"{where}: weight {weight_text!r} is not 1..1000")
        weight = int(weight_text)
    rest = spec[4:] if spec.startswith("udp:") else spec
    if spec.startswith(("tcp:", "ws:", "wss:")):
        raise ValueError(f"{where}: {text!r}: only udp: ng sockets are supported")
    host, sep, port_text = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{where}: {text!r} is not udp:HOST:PORT[=WEIGHT]")
    return Instance(spec if spec.startswith("udp:") else "udp:" + spec, host, int(port_text),
                    weight)


def _score(call_id: str, inst: Instance) -> float:
    digest = hashlib.blake2b(f"{inst.name}|{call_id}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / 2.0 ** 64        # (0, 1]
    return -inst.weight / math.log(unit) if unit < 1.0 else math.inf


@dataclass
class Instances:
    items: list[Instance] = field(default_factory=list)
    failures: int = 1
    successes: int = 1

    def __len__(self) -> int:
        return len(self.items)

    def up(self) -> list[Instance]:
        return [i for i in self.items if i.up]

    def by_name(self, name: str) -> Instance | None:
        for inst in self.items:
            if inst.name == name:
                return inst
        return None

    def choose(self, call_id: str, sticky: str = "",
               exclude: frozenset[str] | set[str] = frozenset()) -> Instance | None:
        """The instance for a call: ``sticky`` (the one it already uses)
        while that is up, else the up instance with the highest weighted
        rendezvous score (leaving out ``exclude``); None when none is up."""
        if sticky:
            inst = self.by_name(sticky)
            if inst is not None and inst.up:
                return inst
        best: Instance | None = None
        best_score = -1.0
        for inst in self.items:
            if not inst.up or inst.name in exclude:
                continue
            score = _score(call_id, inst)
            if score > best_score:
                best, best_score = inst, score
        return best

    def failed(self, inst: Instance, reason: str) -> bool:
        """A ping or request failed; True when this took the instance down."""
        inst.successes = 0
        inst.failures += 1
        inst.last_error = reason
        if inst.up and inst.failures >= self.failures:
            inst.state = DOWN
            return True
        return False

    def succeeded(self, inst: Instance) -> bool:
        """A ping or request was answered; True when this brought it back."""
        inst.failures = 0
        if inst.up:
            return False
        inst.successes += 1
        if inst.successes >= self.successes:
            inst.state = UP
            inst.successes = 0
            inst.last_error = ""
            return True
        return False
