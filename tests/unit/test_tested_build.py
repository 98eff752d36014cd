"""The build users run is the build that is tested: the unit tests run on
the compiled build and on the sources (scripts/test.sh), the end-to-end
tests refuse to run on anything but the compiled build unless told, and
they fail when a node logged an error (tests/e2e/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import conftest as e2e

ROOT = Path(__file__).resolve().parents[2]


def test_test_sh_runs_the_unit_tests_on_the_sources_too() -> None:
    script = (ROOT / "scripts" / "test.sh").read_text()
    lines = [line.strip() for line in script.splitlines() if not line.strip().startswith("#")]
    compiled = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/pytest"))
    assert "HASIP_PURE_PYTHON" not in lines[compiled]
    pure = [line for line in lines[compiled + 1:] if line.startswith("HASIP_PURE_PYTHON=1 ")]
    assert pure and pure[0].split()[1:] == [".venv/bin/pytest", "-q", "-p", "no:cacheprovider",
                                            "tests/unit"]
    assert "\n    scripts/test.sh\n" in (ROOT / "README.md").read_text()  # the command it gives


def run_e2e(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    test = "tests/e2e/test_keepalives.py::test_udp_crlf_keepalives_are_counted_not_parse_errors"
    environ = {k: v for k, v in os.environ.items()
               if k not in ("HASIP_PURE_PYTHON", "HASIP_TEST_PURE")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--basetemp={tmp_path / 'run'}", test],
                          cwd=ROOT, env={**environ, **env}, capture_output=True, text=True,
                          timeout=120)


def test_e2e_refuses_the_interpreted_build(tmp_path: Path) -> None:
    res = run_e2e(tmp_path, HASIP_PURE_PYTHON="1")
    assert res.returncode == 4, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "end-to-end tests refused: the compiled build is not in use" in out
    assert "hasip compile build" in out and "HASIP_TEST_PURE=1" in out
    res = run_e2e(tmp_path, HASIP_PURE_PYTHON="1", HASIP_TEST_PURE="1")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("line, error", [
    ("ts=2026-01-01T00:00:00.000Z level=error logger=hasip.proxy event=x", True),
    ('{"ts": 1.0, "level": "error", "logger": "hasip.proxy", "event": "x"}', True),
    ("Traceback (most recent call last):", True),
    ("ts=2026-01-01T00:00:00.000Z level=warning logger=hasip.proxy event=error_seen", False),
    ('ts=2026-01-01T00:00:00.000Z level=info logger=hasip event=x reason="level=error "', False),
    ('2026-01-01 00:00:00,000 [myid:] - ERROR [main:QuorumPeer] - zookeeper', False),
])
def test_error_lines_are_hasips_error_level_and_tracebacks(line: str, error: bool) -> None:
    assert bool(e2e.ERROR_LINE.search(line)) is error


def test_new_error_lines_reads_each_log_once(tmp_path: Path) -> None:
    node = tmp_path / "test_x0" / "hasip-5060.log"
    node.parent.mkdir()
    node.write_text("ts=1 level=info logger=hasip event=started\n"
                    "ts=2 level=error logger=hasip.proxy event=message_handling_failed\n")
    (tmp_path / "sipp.txt").write_text("level=error\n")   # not a log file
    assert e2e.new_error_lines(tmp_path) == [
        "hasip-5060.log: ts=2 level=error logger=hasip.proxy event=message_handling_failed"]
    assert e2e.new_error_lines(tmp_path) == []
    with node.open("a") as fh:
        fh.write("Traceback (most recent call last):\n  File x\nTypeError: boom\n")
    assert e2e.new_error_lines(tmp_path) == ["hasip-5060.log: Traceback (most recent call last):"]
