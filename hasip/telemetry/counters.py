"""Counters the hot path updates: plain dicts of numbers, no locks and no
prometheus-client objects (``hasip.telemetry.metrics`` turns them into Prometheus
families when scraped). Compiled with the hot path (hasip/app/compiled.py).
Updated from the event loop's thread only."""

from __future__ import annotations

import bisect

# Label values come from the network: a method is any token. Past this many
# distinct values, new ones are counted as "other".
MAX_LABELS = 64
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)


class LabelledCount:
    """A counter family with one label, as a dict of ints."""

    __slots__ = ("counts", "doc", "label", "name")

    def __init__(self, name: str, doc: str, label: str) -> None:
        self.name = name
        self.doc = doc
        self.label = label
        self.counts: dict[str, int] = {}

    def inc(self, value: str) -> None:
        counts = self.counts
        n = counts.get(value)
        if n is None:
            if len(counts) >= MAX_LABELS:
                value = "other"
                n = counts.get(value, 0)
            else:
                n = 0
        counts[value] = n + 1


class Latency:
    """A histogram of seconds with one label, as lists of ints."""

    __slots__ = ("buckets", "doc", "label", "name", "series")

    def __init__(self, name: str, doc: str, label: str,
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.doc = doc
        self.label = label
        self.buckets = buckets
        self.series: dict[str, tuple[list[int], list[float]]] = {}

    def child(self, value: str) -> tuple[list[int], list[float]]:
        """(bucket counts + [count], [sum]) for one label value."""
        if value not in self.series:
            self.series[value] = ([0] * (len(self.buckets) + 1), [0.0])
        return self.series[value]

    def observe(self, child: tuple[list[int], list[float]], seconds: float) -> None:
        counts, total = child
        counts[bisect.bisect_left(self.buckets, seconds)] += 1
        total[0] += seconds


class Counts:
    """A counter family with several labels, as a dict of label tuples; past
    MAX_LABELS label sets, new ones count under "other"."""

    __slots__ = ("counts", "doc", "labels", "name")

    def __init__(self, name: str, doc: str, labels: list[str]) -> None:
        self.name = name
        self.doc = doc
        self.labels = labels
        self.counts: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        counts = self.counts
        n = counts.get(labels)
        if n is None:
            if len(counts) >= MAX_LABELS:
                labels = ("other",) * len(labels)
                n = counts.get(labels, 0.0)
            else:
                n = 0.0
        counts[labels] = n + amount

    def value(self, *labels: str) -> float:
        return self.counts.get(labels, 0.0)
