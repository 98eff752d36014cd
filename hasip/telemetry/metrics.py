"""Prometheus metrics of a node, and the HTTP listener that exposes them.

The per-message counters and the latency histogram are plain Python numbers
(hasip/telemetry/counters.py, compiled with the hot path) that collectors here turn
into Prometheus families when scraped: counting a message costs a dict
update, not a locked ``Counter.inc``. Rare events use prometheus-client
metrics directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from hasip.telemetry.counters import Counts, LabelledCount, Latency


def counter_family(c: LabelledCount | Counts) -> CounterMetricFamily:
    if isinstance(c, LabelledCount):
        fam = CounterMetricFamily(c.name, c.doc, labels=[c.label])
        for value, n in sorted(c.counts.items()):
            fam.add_metric([value], n)
        return fam
    fam = CounterMetricFamily(c.name, c.doc, labels=c.labels)
    for labels, m in sorted(c.counts.items()):
        fam.add_metric(list(labels), m)
    return fam


def latency_family(h: Latency) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(h.name, h.doc, labels=[h.label])
    for value, (counts, total) in sorted(h.series.items()):
        cumulative = 0
        buckets = []
        for bound, n in zip(h.buckets, counts, strict=False):
            cumulative += n
            buckets.append((repr(bound), cumulative))
        cumulative += counts[-1]
        buckets.append(("+Inf", cumulative))
        fam.add_metric([value], buckets, total[0])
    return fam


class _CountsCollector(Collector):
    """Every :class:`Counts` family made by :func:`labelled_counter`."""

    def __init__(self) -> None:
        self.families: list[Counts] = []

    def collect(self) -> Iterator[CounterMetricFamily]:
        for c in self.families:
            yield counter_family(c)


_COUNTS = _CountsCollector()
REGISTRY.register(_COUNTS)


def labelled_counter(name: str, doc: str, labels: list[str]) -> Counts:
    """A labelled counter family the hot path can afford (hasip/telemetry/counters.py),
    exported with the others."""
    c = Counts(name, doc, labels)
    _COUNTS.families.append(c)
    return c


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
        yield counter_family(self.requests_in)
        yield counter_family(self.responses_in)
        yield counter_family(self.responses_out)
        yield counter_family(self.requests_out)
        yield latency_family(self.latency)


STATS = MessageStats()
REGISTRY.register(STATS)
PARSE_ERRORS = Counter("hasip_sip_parse_errors_total", "Messages that did not parse or failed "
                       "sanity checks", ["kind"])
KEEPALIVES = labelled_counter("hasip_sip_keepalives_received_total",
                              "CRLF keepalives received (RFC 5626 3.5.1 pings; over UDP, "
                              "datagrams of CR and LF alone): not messages, never parse errors",
                              ["transport"])
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
TCP_CLOSED = Counter("hasip_tcp_closed_total",
                     "TCP connections the node closed, by reason: slow_message (a message "
                     "not complete within tcp.message_timeout), no_message (an accepted "
                     "connection without a whole message within tcp.first_message_timeout), "
                     "idle, slow_reader (tcp.max_write_buffer), framing_error", ["reason"])
TCP_REFUSED = Counter("hasip_tcp_refused_total",
                      "Accepted TCP connections closed at once: per_source "
                      "(tcp.max_connections_per_source) or total (tcp.max_connections)",
                      ["reason"])
UP = Gauge("hasip_up", "1 while the node serves SIP, 0 while it drains")
BUILD = Gauge("hasip_build_info", "1; the labels say which hasip runs and whether its hot path "
              "is compiled (hasip/app/compiled.py)", ["version", "compiled"])
DNS_CACHE = Gauge("hasip_dns_cache_entries", "Names held in the next-hop resolver's cache")

# Registrar and location store
REGISTERED_CONTACTS = Gauge("hasip_registrar_contacts", "Current registered contacts (bindings)")
REGISTERED_AORS = Gauge("hasip_registrar_aors", "Addresses-of-record with at least one binding")
REGISTRATIONS = labelled_counter("hasip_registrar_requests_total",
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
LOOKUPS = labelled_counter("hasip_location_lookups_total",
                           "Location lookups for requests to our domain", ["result"])

# Digest authentication
AUTH_RESULTS = labelled_counter("hasip_auth_total", "Digest authentication outcomes",
                                ["method", "result"])
RADIUS_LATENCY = Histogram("hasip_radius_latency_seconds",
                           "RADIUS Access-Request round trips", ["server"],
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
RADIUS_ERRORS = Counter("hasip_radius_errors_total", "RADIUS timeouts and bad replies",
                        ["server", "kind"])

# NAT traversal
NAT_PINGS = labelled_counter("hasip_nat_pings_total", "OPTIONS keepalives to NATed contacts",
                             ["result"])
NAT_DETECTED = labelled_counter("hasip_nat_detected_total",
                                "Requests from clients detected behind NAT", ["method"])


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics on ``host:port`` from a daemon thread."""
    start_http_server(port, addr=host)

# Dispatcher
DS_STATE_CHANGES = labelled_counter("hasip_dispatcher_state_changes_total",
                                    "Destinations entering a state (A, I, T, D)", ["state"])
DS_FAILOVERS = Counter("hasip_dispatcher_failovers_total",
                       "Calls moved on to the next destination, by the one they left",
                       ["set", "uri"])
DS_PROBES = labelled_counter("hasip_dispatcher_probes_total",
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
DIALOGS_ENDED = labelled_counter("hasip_dialogs_ended_total",
                                 "Dialogs ended, by reason (bye, failed, cancelled, timeout)",
                                 ["reason"])

# Replication
REPL_RECORDS = labelled_counter(
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

DIALOG_KEEPALIVES = labelled_counter(
    "hasip_dialog_keepalives_total",
    "In-dialog OPTIONS keepalives: sent, answered, timeout (no answer within an interval), "
    "481/408 (the end is gone)", ["result"])

# Defences (hasip.security): bans, drops, refusals.
BANS = Gauge("hasip_security_bans", "Source addresses banned now")
BANNED = labelled_counter("hasip_security_banned_total",
                          "Source addresses banned, by why (rate, auth, manual) and where "
                          "the ban was decided (local, peer)", ["reason", "origin"])


class FunctionCounter(Collector):
    """A counter whose value a function reads at scrape time (a plain int
    kept by sans-IO code)."""

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.doc = doc
        self.read: Callable[[], float] = lambda: 0.0
        REGISTRY.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.doc, value=self.read())


DROPPED = FunctionCounter("hasip_security_dropped_messages",
                          "Messages dropped unanswered: from banned sources")
SOURCES_TRACKED = Gauge("hasip_security_sources_tracked", "Source addresses whose rate is tracked")
REFUSED = labelled_counter("hasip_security_refused_total",
                           "Requests refused by a defence: not_our_dialog (a To tag or Route "
                           "without our token), unmatched_ack, unmatched_cancel, overload "
                           "(transaction cap), routing_error (answered 500)", ["reason"])
SCREENED = labelled_counter("hasip_security_screened_headers_total",
                            "Header lines removed before relaying: credentials for our realm, "
                            "identities from untrusted sources", ["header"])

# The control API
CONTROL_REQUESTS = Counter(
    "hasip_control_requests_total",
    "Control API requests by answer: ok; unauthorized (no or wrong token), forbidden (foreign "
    "Origin, read-only token on a POST), misdirected (Host not this node), "
    "unsupported_media_type (POST not JSON), tls_refused (no or bad client certificate), "
    "bad_request, not_found, bad_method, too_large, unavailable, error", ["result"])

# -- media relay (rtpengine) -----------------------------------------------------
MEDIA_REQUESTS = Counter("hasip_media_requests_total",
                         "ng requests to rtpengine by command (offer, answer, delete, query, "
                         "ping) and result (ok, error, timeout, bad_answer)",
                         ["rtpengine", "command", "result"])
MEDIA_LATENCY = Histogram("hasip_media_ng_latency_seconds",
                          "Round trip of an answered ng request", ["command"],
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                   1.0))
MEDIA_RETRANSMISSIONS = Counter("hasip_media_ng_retransmissions_total",
                                "ng requests sent again for want of an answer", ["rtpengine"])
MEDIA_UP = Gauge("hasip_media_instance_up", "1 while an rtpengine instance takes calls",
                 ["rtpengine"])
MEDIA_CALLS = labelled_counter("hasip_media_calls_total",
                               "Calls the media policy chose to relay (relayed), and of those "
                               "whose offer failed: relayed without media relay (unrelayed, by "
                               "media.on_failure = continue) or refused with 503 (rejected); "
                               "not_sdp: a body hasip does not relay (multipart)",
                               ["decision"])
MEDIA_FAILURES = labelled_counter("hasip_media_failures_total",
                                  "Offers, answers and deletes rtpengine did not complete "
                                  "(down, slow, refused): alert on it", ["command"])
MEDIA_SESSIONS = Gauge("hasip_media_sessions",
                       "Dialogs whose media goes through an rtpengine instance", ["rtpengine"])
