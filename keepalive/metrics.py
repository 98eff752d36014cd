"""Prometheus metrics of keepalive (in the process's default registry, so
``hasip run`` exposes them with its own)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

VIP_OWNED = Gauge("keepalive_vip_owned", "1 while this node holds the VIP", ["vip"])
ELECTIONS = Counter("keepalive_elections_total",
                    "Times this node found a VIP without owner and was first in rank", ["vip"])
TAKEOVERS = Counter("keepalive_takeovers_total", "VIPs taken by this node", ["vip"])
RELEASES = Counter("keepalive_releases_total", "VIPs given up by this node, by reason",
                   ["vip", "reason"])
TAKEOVER_SECONDS = Histogram("keepalive_takeover_seconds",
                             "From seeing a VIP without owner to holding and announcing it",
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
GARP_SENT = Counter("keepalive_garp_sent_total",
                    "Gratuitous ARP / unsolicited NA frames sent", ["vip"])
CONFLICTS = Counter("keepalive_conflicts_total",
                    "Takeovers refused because another host answered ARP for the VIP", ["vip"])
ZK_CONNECTED = Gauge("keepalive_zookeeper_connected", "1 while the ZooKeeper session is usable")
ZK_EVENTS = Counter("keepalive_zookeeper_events_total",
                    "ZooKeeper session events (suspended, lost, connected)", ["event"])
HEALTHY = Gauge("keepalive_service_healthy", "1 while the guarded service is healthy")
DRAINING = Gauge("keepalive_draining", "1 while this node is drained by an operator")
