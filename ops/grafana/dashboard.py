"""The hasip cluster dashboard, generated with grafana-foundation-sdk:
``python ops/grafana/dashboard.py > ops/grafana/hasip-dashboard.json``.

PANELS is the dashboard's content (row, title, query, legend, unit, kind);
the tests run every query against a real Prometheus scraping a cluster
(tests/e2e/test_alerts_netns.py) and check the committed JSON is what this
file generates (tests/unit/test_ops_grafana.py)."""

from __future__ import annotations

import json
import sys
from typing import NamedTuple


class Panel(NamedTuple):
    row: str
    title: str
    expr: str
    legend: str = ""
    unit: str = "short"
    kind: str = "timeseries"           # or "stat"


PANELS = [
    Panel("Cluster and VIPs", "Nodes up", 'count(up{job="hasip"} == 1)', kind="stat"),
    Panel("Cluster and VIPs", "VIP owner", "keepalive_vip_owned == 1", "{{vip}} on {{instance}}"),
    Panel("Cluster and VIPs", "ZooKeeper session", "keepalive_zookeeper_connected",
          "{{instance}}"),
    Panel("Cluster and VIPs", "VIPs taken (5 min)",
          "sum by (vip) (increase(keepalive_takeovers_total[5m]))", "{{vip}}"),
    Panel("SIP traffic", "Requests received", "sum by (method) "
          "(rate(hasip_sip_requests_received_total[1m]))", "{{method}}", "reqps"),
    Panel("SIP traffic", "Answers sent by class", 'sum by (class) (label_replace(rate('
          'hasip_sip_responses_sent_total[1m]), "class", "${1}xx", "code", "(.).."))',
          "{{class}}", "reqps"),
    Panel("SIP traffic", "Proxy latency p99", "histogram_quantile(0.99, sum by (le, kind) "
          "(rate(hasip_sip_proxy_latency_seconds_bucket[1m])))", "{{kind}}", "s"),
    Panel("SIP traffic", "Transactions held", "sum by (kind) (hasip_sip_transactions)",
          "{{kind}}"),
    Panel("Registrar and authentication", "Registered contacts",
          "sum by (instance) (hasip_registrar_contacts)", "{{instance}}"),
    Panel("Registrar and authentication", "Authentication outcomes",
          "sum by (result) (rate(hasip_auth_total[1m]))", "{{result}}", "reqps"),
    Panel("Registrar and authentication", "Sources banned", "max(hasip_security_bans)",
          kind="stat"),
    Panel("Asterisk destinations", "In rotation", "hasip_dispatcher_destination_up",
          "{{uri}} on {{instance}}"),
    Panel("Asterisk destinations", "Calls in progress",
          "max by (uri) (hasip_dispatcher_active_calls)", "{{uri}}"),
    Panel("Asterisk destinations", "Probe round trip",
          "max by (uri) (hasip_dispatcher_probe_rtt_seconds)", "{{uri}}", "s"),
    Panel("Dialogs", "Dialogs", "sum by (state) (hasip_dialogs)", "{{state}}"),
    Panel("Dialogs", "Dialogs ended", "sum by (reason) (rate(hasip_dialogs_ended_total[1m]))",
          "{{reason}}", "reqps"),
    Panel("Storage", "Waiting for the database",
          "sum by (instance) (hasip_location_write_queue + hasip_cdr_write_queue)",
          "{{instance}}"),
    Panel("Replication", "Peers linked", "hasip_replication_peers", "{{instance}}"),
    Panel("Replication", "Replication lag p99", "histogram_quantile(0.99, sum by (le, "
          "instance) (rate(hasip_replication_lag_seconds_bucket[1m])))", "{{instance}}", "s"),
]


def build() -> dict[str, object]:
    from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    source = DataSourceRef(type_val="prometheus", uid="${datasource}")
    board = (dashboard.Dashboard("hasip cluster").uid("hasip-cluster").tags(["hasip", "sip"])
             .refresh("10s").time("now-1h", "now").timezone("browser")
              .with_variable(dashboard.DatasourceVariable("datasource")
                            .label("Prometheus").type("prometheus")))
    row = ""
    for p in PANELS:
        if p.row != row:
            board = board.with_row(dashboard.Row(p.row))
            row = p.row
        query = (prometheus.Dataquery().expr(p.expr).legend_format(p.legend or "__auto")
                 .ref_id("A"))
        panel = (stat.Panel() if p.kind == "stat" else timeseries.Panel())
        panel = (panel.title(p.title).datasource(source).unit(p.unit).with_target(query)
                 .height(7).span(6 if p.kind == "stat" else 12))
        board = board.with_panel(panel)
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(board.build()))


def main() -> int:
    json.dump(build(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
