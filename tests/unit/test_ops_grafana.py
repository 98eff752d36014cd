"""The Grafana dashboard is generated from code (ops/grafana/dashboard.py,
grafana-foundation-sdk): the committed JSON is what the code makes, every
panel has its query, and every metric a query names is exported. That the
queries return data from a live cluster is tests/e2e/test_alerts_netns.py's."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.unit.test_ops_rules import _exported

GRAFANA = Path(__file__).resolve().parents[2] / "ops" / "grafana"


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("hasip_dashboard", GRAFANA / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_dashboard_is_the_generated_one() -> None:
    pytest.importorskip("grafana_foundation_sdk")
    board = _module().build()
    committed = json.loads((GRAFANA / "hasip-dashboard.json").read_text())
    assert committed == board, "regenerate: python ops/grafana/dashboard.py > " \
                               "ops/grafana/hasip-dashboard.json"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) == len(_module().PANELS)
    assert all(p["targets"][0]["expr"] and p["targets"][0]["refId"] == "A" for p in panels)
    assert board["uid"] == "hasip-cluster"


def test_every_metric_a_panel_names_is_exported() -> None:
    used = {n for p in _module().PANELS
            for n in re.findall(r"\b((?:hasip|keepalive)_[a-z_]+)", p.expr)}
    exported = _exported()
    missing = sorted(n for n in used if n not in exported and not any(
        n == e + suffix for e in exported for suffix in ("_bucket", "_total")))
    assert used and not missing, missing
