"""The Prometheus alert rules (ops/prometheus/): promtool accepts them and
their unit tests pass, and every metric they name is one a node exports
(a rule on a misspelt metric never fires, and nothing says so)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

OPS = Path(__file__).resolve().parents[2] / "ops" / "prometheus"
RULES = OPS / "hasip-rules.yml"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


def test_promtool_checks_the_rules_and_runs_their_tests() -> None:
    promtool = _promtool()
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "hasip-rules.test.yml"], cwd=OPS,
                          capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout + test.stderr


def _exported() -> set[str]:
    import keepalive.metrics  # noqa: F401 - registers keepalive's metrics
    from hasip.telemetry import metrics

    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_the_rules_name_is_exported() -> None:
    doc = yaml.safe_load(RULES.read_text())
    used: set[str] = set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            used |= set(re.findall(r"\b((?:hasip|keepalive)_[a-z_]+)", rule["expr"]))
    exported = _exported()
    missing = sorted(n for n in used if n not in exported and not any(
        n == e + suffix for e in exported for suffix in ("_bucket", "_total")))
    assert used and not missing, f"rules name metrics no node exports: {missing}"
