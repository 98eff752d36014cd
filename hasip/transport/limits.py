"""How many TCP connections a source may hold, and log lines that stay few
when a flood makes many events. Sans-IO: no sockets; time is passed in."""

from __future__ import annotations

import ipaddress


def source_of(ip: str) -> str:
    """The unit a per-source limit counts: an IPv4 address, or the /64 of an
    IPv6 address (one host, or one LAN, easily holds a whole /64: counting
    single IPv6 addresses would be no limit). An IPv4-mapped IPv6 address
    (``::ffff:192.0.2.1``, from a dual-stack socket) counts as its IPv4."""
    if ":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.partition("%")[0])
    except ValueError:
        return ip
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))


class ConnectionLimits:
    """Accepted connections per source and in all.

    ``admit`` says whether one more connection may be held: None, and it is
    counted, or the reason it is refused (``per_source`` before ``total``,
    so that the metric names the source that fills the table). Every
    admitted connection must be ``release``\\ d once.
    """

    __slots__ = ("by_source", "max_per_source", "max_total", "total")

    def __init__(self, max_total: int, max_per_source: int) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.total = 0
        self.by_source: dict[str, int] = {}

    def admit(self, source: str, others: int = 0) -> str | None:
        """``others``: connections held that this table does not count (the
        ones the node opened itself), which still take room in the total."""
        held = self.by_source.get(source, 0)
        if held >= self.max_per_source:
            return "per_source"
        if self.total + others >= self.max_total:
            return "total"
        self.by_source[source] = held + 1
        self.total += 1
        return None

    def release(self, source: str) -> None:
        held = self.by_source.get(source, 0)
        if held <= 0:
            return
        if held == 1:
            del self.by_source[source]
        else:
            self.by_source[source] = held - 1
        self.total -= 1


class EventDigest:
    """Keeps a flood of like events (connections refused or closed) to a few
    log lines: the first event after a quiet ``interval`` is to be logged on
    its own; the ones after it are counted, by reason and source, and
    :meth:`summary` hands them out as one line per reason once the interval
    has passed. At most ``max_sources`` sources are named per reason; the
    rest only count."""

    __slots__ = ("interval", "max_sources", "next_log", "pending")

    def __init__(self, interval: float = 10.0, max_sources: int = 100) -> None:
        self.interval = interval
        self.max_sources = max_sources
        self.next_log = float("-inf")
        # reason -> (count, {source: count})
        self.pending: dict[str, tuple[list[int], dict[str, int]]] = {}

    def note(self, reason: str, source: str, now: float) -> bool:
        """Count one event; True when the caller should log it now."""
        if now >= self.next_log and not self.pending:
            self.next_log = now + self.interval
            return True
        total, sources = self.pending.setdefault(reason, ([0], {}))
        total[0] += 1
        if source in sources or len(sources) < self.max_sources:
            sources[source] = sources.get(source, 0) + 1
        return False

    def summary(self, now: float, top: int = 5) -> list[tuple[str, int, str]]:
        """Once the interval has passed: (reason, events, the ``top``
        sources with their counts as ``ip=n ip=n``) for each reason counted
        since the last line, and the counts start again."""
        if not self.pending or now < self.next_log:
            return []
        out = []
        for reason, (total, sources) in sorted(self.pending.items()):
            busiest = sorted(sources.items(), key=lambda item: (-item[1], item[0]))[:top]
            out.append((reason, total[0], " ".join(f"{ip}={n}" for ip, n in busiest)))
        self.pending.clear()
        self.next_log = now + self.interval
        return out
