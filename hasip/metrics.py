"""Prometheus metrics of a node, and the HTTP listener that exposes them.

The per-message counters and the latency histogram are plain Python integers
(:class:`MessageStats`) that a collector turns into Prometheus families when
scraped: counting a message costs a dict update, not a locked
``Counter.inc``. Rare events use prometheus-client metrics directly.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

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

    def family(self) -> CounterMetricFamily:
        fam = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for value, n in sorted(self.counts.items()):
            fam.add_metric([value], n)
        return fam


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

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for value, (counts, total) in sorted(self.series.items()):
            cumulative = 0
            buckets = []
            for bound, n in zip(self.buckets, counts, strict=False):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            cumulative += counts[-1]
            buckets.append(("+Inf", cumulative))
            fam.add_metric([value], buckets, total[0])
        return fam


class Children(Collector):
    """A counter family with labels, counted in a dict of label tuples (no
    lock, no child objects: the hot path calls it) and turned into a
    Prometheus family when scraped; past MAX_LABELS label sets (label values
    can come from the network, e.g. a method), new ones count under "other".
    Incremented from the event loop's thread only."""

    def __init__(self, name: str, doc: str, labels: list[str]) -> None:
        self.name = name
        self.doc = doc
        self.labels = labels
        self.counts: dict[tuple[str, ...], float] = {}
        REGISTRY.register(self)

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

    def collect(self) -> Iterator[CounterMetricFamily]:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, n in sorted(self.counts.items()):
            fam.add_metric(list(labels), n)
        yield fam


class MessageStats(Collector):
    """The hot counters of the SIP layer."""

    def __init__(self) -> None:
        self.requests_in = LabelledCount("hasip_sip_requests_received",
                                         "SIP requests received", "method")
        self.responses_in = LabelledCount("hasip_sip_responses_received",
                                          "SIP responses received", "code")
        self.responses_out = LabelledCount("hasip_sip_responses_sent",
                                           "SIP responses sent upstream (relayed or generated)",
                                           "code")
        self.requests_out = LabelledCount("hasip_sip_requests_forwarded",
                                          "SIP requests forwarded", "method")
        self.latency = Latency("hasip_sip_proxy_latency_seconds",
                               "Time from receiving a message to sending it on "
                               "(proxy processing time)", "kind")

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        yield self.requests_in.family()
        yield self.responses_in.family()
        yield self.responses_out.family()
        yield self.requests_out.family()
        yield self.latency.family()


STATS = MessageStats()
REGISTRY.register(STATS)
PARSE_ERRORS = Counter("hasip_sip_parse_errors_total", "Messages that did not parse or failed "
                       "sanity checks", ["kind"])
RETRANSMISSIONS = Counter("hasip_sip_retransmissions_absorbed_total",
                          "Retransmitted requests absorbed by a server transaction", ["method"])
RETRANSMITTED_OUT = Counter("hasip_sip_retransmissions_sent_total",
                            "Requests and responses retransmitted by our timers", ["kind"])
STRAY_RESPONSES = Counter("hasip_sip_stray_responses_total",
                          "Responses that matched no transaction: relayed by their Via when "
                          "the top Via is ours (action=forwarded), else dropped",
                          ["action"])
TIMEOUTS = Counter("hasip_sip_transaction_timeouts_total", "Client transactions that timed out",
                   ["method"])
TRANSACTIONS = Gauge("hasip_sip_transactions", "Transactions held in memory", ["kind"])
IN_FLIGHT = Gauge("hasip_sip_transactions_in_flight",
                  "Server transactions still waiting for a final response")
TRANSPORT_ERRORS = Counter("hasip_transport_errors_total", "Send or connection errors",
                           ["transport"])
TCP_CONNECTIONS = Gauge("hasip_tcp_connections", "Open TCP connections")
TCP_CLOSED_SLOW = Counter("hasip_tcp_closed_slow_peer_total",
                          "TCP connections closed because the peer did not read")
UP = Gauge("hasip_up", "1 while the node serves SIP, 0 while it drains")
BUILD = Gauge("hasip_build_info", "1; the labels say which hasip runs and whether its hot path "
              "is compiled (hasip/compiled.py)", ["version", "compiled"])

# Registrar and location store
REGISTERED_CONTACTS = Gauge("hasip_registrar_contacts", "Current registered contacts (bindings)")
REGISTERED_AORS = Gauge("hasip_registrar_aors", "Addresses-of-record with at least one binding")
REGISTRATIONS = Children("hasip_registrar_requests_total",
                         "REGISTER requests handled by the registrar, by result",
                         ["result"])
LOCATION_QUEUE = Gauge("hasip_location_write_queue",
                       "Binding changes waiting to be written to the durable store")
LOCATION_WRITES = Counter("hasip_location_writes_total",
                          "Binding changes written to the durable store", ["backend"])
LOCATION_WRITE_ERRORS = Counter("hasip_location_write_errors_total",
                                "Failed write batches (retried)", ["backend"])
LOCATION_DROPPED = Counter("hasip_location_writes_dropped_total",
                           "Changes dropped because the write queue was full")
LOOKUPS = Children("hasip_location_lookups_total",
                   "Location lookups for requests to our domain", ["result"])

# Digest authentication
AUTH_RESULTS = Children("hasip_auth_total", "Digest authentication outcomes",
                        ["method", "result"])
RADIUS_LATENCY = Histogram("hasip_radius_latency_seconds",
                           "RADIUS Access-Request round trips", ["server"],
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
RADIUS_ERRORS = Counter("hasip_radius_errors_total", "RADIUS timeouts and bad replies",
                        ["server", "kind"])

# NAT traversal
NAT_PINGS = Children("hasip_nat_pings_total", "OPTIONS keepalives to NATed contacts",
                     ["result"])
NAT_DETECTED = Children("hasip_nat_detected_total",
                        "Requests from clients detected behind NAT", ["method"])


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics on ``host:port`` from a daemon thread."""
    start_http_server(port, addr=host)

# Dispatcher
DS_STATE_CHANGES = Children("hasip_dispatcher_state_changes_total",
                            "Destinations entering a state (A, I, T, D)", ["state"])
DS_FAILOVERS = Counter("hasip_dispatcher_failovers_total",
                       "Calls moved on to the next destination, by the one they left",
                       ["set", "uri"])
DS_PROBES = Children("hasip_dispatcher_probes_total",
                     "OPTIONS probes to destinations, by outcome", ["result"])
DS_PROBE_LATENCY = Histogram("hasip_dispatcher_probe_latency_seconds",
                             "Time to an OPTIONS probe's final answer",
                             buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0))
DS_UP = Gauge("hasip_dispatcher_destination_up",
              "1 while a destination takes calls (state A or T), else 0", ["set", "uri"])
DS_ACTIVE_CALLS = Gauge("hasip_dispatcher_active_calls",
                        "Dialogs (early or confirmed) on a destination", ["set", "uri"])
DS_PROBE_RTT = Gauge("hasip_dispatcher_probe_rtt_seconds",
                     "Round trip of the last answered OPTIONS probe to a destination",
                     ["set", "uri"])
DS_CALLS = Counter("hasip_dispatcher_requests_sent_total",
                   "Initial requests sent to a destination", ["set", "uri"])
DS_FAILURES = Counter("hasip_dispatcher_failures_total",
                      "Failures counted against a destination (probes, timeouts, 5xx)",
                      ["set", "uri"])

# -- dialogs ---------------------------------------------------------------------
DIALOGS = Gauge("hasip_dialogs", "INVITE dialogs in progress", ["state"])
DIALOGS_ENDED = Children("hasip_dialogs_ended_total",
                         "Dialogs ended, by reason (bye, failed, cancelled, timeout)",
                         ["reason"])

# Replication (issue 6)
REPL_RECORDS = Children(
    "hasip_replication_records_total",
    "Records sent to and received from peers; received ones kept (applied) or older than "
    "what the node had (stale)", ["peer", "direction"])
REPL_LAG = Histogram("hasip_replication_lag_seconds",
                     "From a change on its origin to its arrival here, per peer", ["peer"],
                     buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
REPL_GAPS = Counter("hasip_replication_gaps_total",
                    "Gaps in a peer's stream (lost link) asked to be repaired", ["peer"])
REPL_PEERS = Gauge("hasip_replication_peers", "Peers with an authenticated link")
REPL_AUTH_FAILURES = Counter("hasip_replication_auth_failures_total",
                             "Connections refused: a peer without the cluster's secret or "
                             "protocol")
REPL_SYNC_RECORDS = Gauge("hasip_replication_sync_records",
                          "Records received by the last sync on join")
REPL_SYNC_SECONDS = Gauge("hasip_replication_sync_seconds",
                          "How long the last sync on join took")
REPL_SYNCED = Gauge("hasip_replication_synced",
                    "1 when this node holds the cluster's state (synced on join)")

# Call detail records
CDR_QUEUE = Gauge("hasip_cdr_write_queue", "CDRs waiting to be written")
CDR_WRITES = Counter("hasip_cdrs_written_total", "CDRs written to the database", ["backend"])
CDR_WRITE_ERRORS = Counter("hasip_cdr_write_errors_total", "Failed CDR write batches (retried)",
                           ["backend"])
CDR_DROPPED = Counter("hasip_cdrs_dropped_total", "CDRs dropped because the queue was full")

DIALOG_KEEPALIVES = Children(
    "hasip_dialog_keepalives_total",
    "In-dialog OPTIONS keepalives: sent, answered, timeout (no answer within an interval), "
    "481/408 (the end is gone)", ["result"])
