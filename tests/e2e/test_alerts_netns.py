"""The alert rules (ops/prometheus/hasip-rules.yml) and the dashboard's
queries (ops/grafana/dashboard.py) in a real Prometheus scraping the
three-node replicating VIP cluster of tests/e2e/vipcluster.py under SIPp
calls and registrations (issue 16): every panel's query returns data;
healthy, nothing fires; kill -9 of VIP_A's owner fires
HasipNodeDown for it and VIP_A has an owner again (no VIP alert left
firing); the Asterisk stand-in stopped fires HasipDestinationDown and
HasipDestinationSetDown."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hasip.demo.sipp import Sipp
from tests.e2e.vipcluster import (
    CLIENT_IP,
    ROOT,
    VIP_A,
    ZK_IP,
    Cluster,
    cluster_missing,
    vip_cluster,
)

PROM_PORT = 9090
RULES = ROOT / "ops" / "prometheus" / "hasip-rules.yml"


def dashboard_panels() -> list:  # type: ignore[type-arg]
    """The panels of ops/grafana/dashboard.py (a script, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "hasip_dashboard", ROOT / "ops" / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.PANELS)


def _missing() -> str:
    missing = cluster_missing()
    if missing:
        return missing
    return "" if shutil.which("prometheus") else "prometheus is not installed"


class Prometheus:
    def __init__(self, c: Cluster) -> None:
        self.c = c
        cfg = c.workdir / "prometheus.yml"
        targets = ", ".join(f'"198.19.0.1{i}:9060"' for i in (1, 2, 3))
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: [\"{RULES}\"]\n"
            "scrape_configs:\n  - job_name: hasip\n    scrape_timeout: 900ms\n"
            f"    static_configs:\n      - targets: [{targets}]\n")
        self.proc = c.lab.popen("zk", [
            "prometheus", f"--config.file={cfg}",
            f"--storage.tsdb.path={c.workdir / 'prometheus-data'}",
            f"--web.listen-address={ZK_IP}:{PROM_PORT}"], c.workdir / "prometheus.log")

    def api(self, path: str) -> dict:
        code = ("import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
                f"'http://{ZK_IP}:{PROM_PORT}{path}',timeout=5).read().decode())")
        res = self.c.lab.run("zk", ["python3", "-c", code], timeout=30)
        return json.loads(res.stdout) if res.returncode == 0 else {}

    def query(self, expr: str) -> list[dict]:
        from urllib.parse import quote

        return self.api(f"/api/v1/query?query={quote(expr)}").get("data", {}).get("result", [])

    def firing(self) -> dict[str, list[dict[str, str]]]:
        alerts = self.api("/api/v1/alerts").get("data", {}).get("alerts", [])
        out: dict[str, list[dict[str, str]]] = {}
        for a in alerts:
            if a["state"] == "firing":
                out.setdefault(a["labels"]["alertname"], []).append(a["labels"])
        return out

    def wait(self, check, timeout: float, what: str):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            assert time.monotonic() < deadline, f"{what}: firing {self.firing()}"
            time.sleep(1.0)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Cluster, Prometheus]]:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    for c in vip_cluster(tmp_path, 1, replication=True,
                         extra_config={"metrics": {"listen": "0.0.0.0:9060"}}):
        prom = Prometheus(c)
        try:
            yield c, prom
        finally:
            prom.proc.terminate()


def test_alerts_fire_on_what_breaks_and_not_before(watched, tmp_path) -> None:
    cluster, prom = watched
    lab = cluster.lab
    with Sipp("uac.xml", 5070, tmp_path, remote=f"{VIP_A}:5060", calls=3000, rate=20,
              call_length_ms=500, local_ip=CLIENT_IP, netns=lab.ns("client")):
        # every node scraped, traffic flowing, and nothing firing
        prom.wait(lambda: len([r for r in prom.query('up{job="hasip"} == 1')]) == 3, 30,
                  "three targets up")
        prom.wait(lambda: prom.query('sum(rate(hasip_sip_requests_received_total'
                                     '{method="INVITE"}[10s])) > 5'), 30, "calls counted")
        # a phone registers (digest authentication, a binding replicated)
        with Sipp("register.xml", 5072, tmp_path, remote=f"{VIP_A}:5060", calls=1,
                  service="1010", local_ip=CLIENT_IP, netns=lab.ns("client"),
                  extra=("-au", "1010", "-ap", "demo1010", "-key", "contact_port", "5071",
                         "-key", "expires", "300")) as reg:
            assert reg.wait(20) == 0, reg.errors()
        panels = dashboard_panels()

        deadline = time.monotonic() + 30
        while empty := [p.title for p in panels if not prom.query(p.expr)]:
            assert time.monotonic() < deadline, f"dashboard panels without data: {empty}"
            time.sleep(1.0)
        assert prom.firing() == {}
        # kill -9 of VIP_A's owner: its node is down, VIP_A has its new owner
        cluster.nodes["n1"].kill()
        cluster.wait_owners({VIP_A: "n2"}, timeout=15)
        down = prom.wait(lambda: prom.firing().get("HasipNodeDown"), 40, "node down")
        assert [a["instance"] for a in down] == ["198.19.0.11:9060"]
        owned = prom.query(f'max by (vip) (keepalive_vip_owned{{vip="{VIP_A}"}})')
        assert owned and owned[0]["value"][1] == "1"
        assert not {"HasipVipWithoutOwner", "HasipVipOwnedTwice"} & set(prom.firing())
    # the Asterisk stand-in stops: its set has no node left
    cluster.asterisk.stop()
    survivors = {"198.19.0.12:9060", "198.19.0.13:9060"}

    def both_fire() -> dict | None:
        # each survivor's own series goes pending at its own scrape: wait
        # for the alert on both of them
        f = prom.firing()
        down = {a["instance"] for a in f.get("HasipDestinationDown", [])}
        return f if down == survivors and "HasipDestinationSetDown" in f else None

    firing = prom.wait(both_fire, 100, "destination down on both survivors")
    assert {a["set"] for a in firing["HasipDestinationSetDown"]} == {"1"}
