"""Dispatcher destinations and sets, sans-IO: what Kamailio's dispatcher
keeps per Asterisk node (URI, attributes, state) and the health state machine
that probes and real calls drive.

States as Kamailio lists them: the first letter is the state, A(ctive),
I(nactive), T(rying: failing, still used until the threshold), D(isabled by
the admin); the second is P when the node is probed, X when not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hasip.sip.errors import SipParseError
from hasip.sip.grammar import is_digits
from hasip.sip.uri import SipUri, parse_sip_uri

ACTIVE = "A"
INACTIVE = "I"
TRYING = "T"
DISABLED = "D"


@dataclass
class Thresholds:
    failures: int = 3      # consecutive failures that make a node inactive
    successes: int = 1     # consecutive probe successes that make it active again


@dataclass
class Destination:
    uri: SipUri
    set_id: int
    weight: int = 1
    priority: int = 0
    max_calls: int = 0          # 0: no limit
    socket: str = ""            # our socket to send from ("udp:192.0.2.10:5060")
    description: str = ""
    state: str = ACTIVE
    probing: bool = True
    failures: int = 0           # consecutive
    successes: int = 0          # consecutive, counted while not active
    active_calls: int = 0
    draining: bool = False      # removed by the admin: finishes its calls, takes no new ones
    probe_due: float = 0.0      # when the next probe may be sent
    origin: str = "config"      # config, file (dispatcher.list_file) or api
    held_until: float = 0.0     # probes cannot bring it back before (monotonic seconds)
    probe_rtt: float = 0.0      # the last answered probe's round trip (seconds)
    state_version: int = 0      # Lamport version of the last state change (replication)
    state_node: str = ""        # the node that made it
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = self.uri.text

    @property
    def flags(self) -> str:
        return self.state + ("P" if self.probing else "X")

    def usable(self) -> bool:
        """May take a new call: active or trying, not draining, below its limit."""
        if self.state not in (ACTIVE, TRYING) or self.draining:
            return False
        return not self.max_calls or self.active_calls < self.max_calls

    def failed(self, thresholds: Thresholds) -> bool:
        """A probe or a call failed (timeout, 5xx, transport error). True when
        the state changed."""
        if self.state == DISABLED:
            return False
        self.successes = 0
        self.failures += 1
        before = self.state
        if self.state == INACTIVE:
            return False
        self.state = INACTIVE if self.failures >= thresholds.failures else TRYING
        return self.state != before

    def succeeded(self, thresholds: Thresholds) -> bool:
        """A probe or a call succeeded. True when the state changed."""
        if self.state == DISABLED:
            return False
        self.failures = 0
        before = self.state
        if self.state == TRYING:
            self.state = ACTIVE
        elif self.state == INACTIVE:
            self.successes += 1
            if self.successes >= thresholds.successes:
                self.state = ACTIVE
                self.successes = 0
        return self.state != before

    def set_admin_state(self, state: str) -> None:
        """The operator's ``set-state``: active, inactive or disabled."""
        if state not in (ACTIVE, INACTIVE, DISABLED):
            raise ValueError(f"state {state!r} is not one of A, I, D")
        self.state = state
        self.failures = self.successes = 0


@dataclass
class DestinationSet:
    set_id: int
    destinations: list[Destination] = field(default_factory=list)

    def find(self, key: str) -> Destination | None:
        return next((d for d in self.destinations if d.key == key), None)


def format_line(dest: Destination) -> str:
    """``dest`` as a line of the seed's list format (``parse_list`` reads it back)."""
    attrs = [f"weight={dest.weight}"]
    if dest.max_calls:
        attrs.append(f"maxload={dest.max_calls}")
    if dest.socket:
        attrs.append(f"socket={dest.socket}")
    if dest.description:
        attrs.append(f"description={dest.description}")
    return f"{dest.set_id} {dest.key} 0 {dest.priority} {';'.join(attrs)}"


class ListFileError(ValueError):
    """A dispatcher list line that cannot be used; names file and line."""


_ATTRS = {"weight": int, "priority": int, "maxload": int, "socket": str, "description": str}


def parse_list(text: str, where: str = "<list>") -> list[Destination]:
    """The seed's list file: ``SETID URI [FLAGS [PRIORITY [ATTRS]]]`` per line,
    ``#`` comments; ATTRS as Kamailio writes them,
    ``weight=50;maxload=100;socket=udp:192.0.2.10:5060;description=ast1``."""
    out: list[Destination] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        here = f"{where}:{number}"
        if len(parts) < 2 or not is_digits(parts[0]):
            raise ListFileError(f"{here}: expected SETID URI [FLAGS [PRIORITY [ATTRS]]]")
        try:
            uri = parse_sip_uri(parts[1])
        except SipParseError as exc:
            raise ListFileError(f"{here}: {exc.reason}") from None
        dest = Destination(uri, int(parts[0]))
        if len(parts) > 3:
            if not is_digits(parts[3].lstrip("-")):
                raise ListFileError(f"{here}: priority {parts[3]!r} is not a number")
            dest.priority = int(parts[3])
        if len(parts) > 4:
            for item in " ".join(parts[4:]).split(";"):
                name, _, value = item.partition("=")
                name = name.strip().lower()
                if name not in _ATTRS:
                    raise ListFileError(f"{here}: unknown attribute {name!r} "
                                        f"(known: {', '.join(_ATTRS)})")
                if _ATTRS[name] is int:
                    if not is_digits(value.strip()):
                        raise ListFileError(f"{here}: {name} {value!r} is not a number")
                    setattr(dest, "max_calls" if name == "maxload" else name, int(value))
                else:
                    setattr(dest, name, value.strip())
        out.append(dest)
    return out
