"""The compiled hot path (hasip/app/compiled.py): used when built from these very
sources, the sources otherwise, never a mix. Run on a copy of the package so
that the tree under test is not touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hasip.app import compiled

ROOT = Path(compiled.__file__).resolve().parents[2]

PROBE = ("import json, hasip.app.compiled as c, hasip.sip.message as m, hasip.proxy.engine as p;"
         "print(json.dumps({'state': c.state, 'files': [m.__file__, p.__file__]}))")


def _built() -> bool:
    """A build of the sources as they are now."""
    if not compiled.MANIFEST.exists():
        return False
    recorded = json.loads(compiled.MANIFEST.read_text()).get("sources")
    return recorded == compiled.source_digests()


needs_build = pytest.mark.skipif(not _built(), reason="the hot path is not compiled from these "
                                 "sources here (scripts/setup.sh runs `hasip compile build`)")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "hasip", tmp_path / "hasip",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def probe(tree: Path, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tree, capture_output=True,
                         text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(tree), **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_build
def test_a_build_of_these_sources_runs_compiled(tree: Path) -> None:
    seen = probe(tree, HASIP_PURE_PYTHON="0")
    assert seen["state"] == {"compiled": True, "reason": ""}
    assert all(f.startswith(str(tree)) and f.endswith(".so") for f in seen["files"])


@needs_build
def test_one_changed_source_makes_every_hot_module_run_from_source(tree: Path) -> None:
    message = tree / "hasip" / "sip" / "message.py"
    message.write_text(message.read_text() + "\n# changed after the build\n")
    seen = probe(tree, HASIP_PURE_PYTHON="0")
    assert seen["state"]["compiled"] is False
    assert seen["state"]["reason"] == "sources changed since the build: hasip.sip.message"
    # core.py did not change, but it calls message.py's functions directly
    # when compiled: it must not run compiled beside a changed message.py.
    assert all(f.startswith(str(tree)) and f.endswith(".py") for f in seen["files"])


@needs_build
def test_a_build_for_another_python_is_not_used(tree: Path) -> None:
    manifest = tree / "hasip" / "compiled.json"
    data = json.loads(manifest.read_text())
    data["python"] = "cpython-39"
    manifest.write_text(json.dumps(data))
    seen = probe(tree, HASIP_PURE_PYTHON="0")
    assert seen["state"] == {"compiled": False, "reason": "built for cpython-39"}
    assert all(f.endswith(".py") for f in seen["files"])


def test_pure_python_on_request_and_without_a_build(tree: Path) -> None:
    seen = probe(tree, HASIP_PURE_PYTHON="1")
    assert seen["state"] == {"compiled": False, "reason": "HASIP_PURE_PYTHON=1"}
    assert all(f.endswith(".py") for f in seen["files"])
    (tree / "hasip" / "compiled.json").unlink(missing_ok=True)
    seen = probe(tree, HASIP_PURE_PYTHON="0")
    assert seen["state"] == {"compiled": False, "reason": "not built"}
    assert all(f.endswith(".py") for f in seen["files"])


def test_every_hot_module_has_its_source() -> None:
    assert len(set(compiled.MODULES)) == len(compiled.MODULES)
    for module in compiled.MODULES:
        assert compiled.source_path(module).is_file(), module
