"""Prometheus metrics of a node, and the HTTP listener that exposes them.

Hot paths keep a reference to the labelled child (``REQUESTS_IN.labels(m)``)
in a dict, so counting a message costs one dict lookup and one ``inc``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS_IN = Counter("hasip_sip_requests_received_total", "SIP requests received", ["method"])
RESPONSES_IN = Counter("hasip_sip_responses_received_total", "SIP responses received", ["code"])
RESPONSES_OUT = Counter("hasip_sip_responses_sent_total",
                        "SIP responses sent upstream (relayed or generated)", ["code"])
REQUESTS_OUT = Counter("hasip_sip_requests_forwarded_total", "SIP requests forwarded", ["method"])
PARSE_ERRORS = Counter("hasip_sip_parse_errors_total", "Messages that did not parse or failed "
                       "sanity checks", ["kind"])
RETRANSMISSIONS = Counter("hasip_sip_retransmissions_absorbed_total",
                          "Retransmitted requests absorbed by a server transaction", ["method"])
RETRANSMITTED_OUT = Counter("hasip_sip_retransmissions_sent_total",
                            "Requests and responses retransmitted by our timers", ["kind"])
STRAY_RESPONSES = Counter("hasip_sip_stray_responses_total",
                          "Responses that matched no transaction and were dropped")
TIMEOUTS = Counter("hasip_sip_transaction_timeouts_total", "Client transactions that timed out",
                   ["method"])
TRANSACTIONS = Gauge("hasip_sip_transactions", "Transactions held in memory", ["kind"])
IN_FLIGHT = Gauge("hasip_sip_transactions_in_flight",
                  "Server transactions still waiting for a final response")
LATENCY = Histogram(
    "hasip_sip_proxy_latency_seconds",
    "Time from receiving a message to sending it on (proxy processing time)",
    ["kind"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
)
TRANSPORT_ERRORS = Counter("hasip_transport_errors_total", "Send or connection errors",
                           ["transport"])
TCP_CONNECTIONS = Gauge("hasip_tcp_connections", "Open TCP connections")
TCP_CLOSED_SLOW = Counter("hasip_tcp_closed_slow_peer_total",
                          "TCP connections closed because the peer did not read")
UP = Gauge("hasip_up", "1 while the node serves SIP, 0 while it drains")


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics on ``host:port`` from a daemon thread."""
    start_http_server(port, addr=host)
