"""Where the RFC 4475 torture messages are (../shared/testdata/rfc4475 beside
the repository, or $HASIP_RFC4475_DIR), and their manifest."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIR = Path(os.environ.get("HASIP_RFC4475_DIR", ROOT.parent / "shared" / "testdata" / "rfc4475"))


def manifest() -> list[tuple[str, str, str]]:
    """(file, section, class) rows; empty when the data is absent."""
    path = DIR / "MANIFEST.tsv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [(r["file"], r["rfc4475_section"], r["class"])
                for r in csv.DictReader(fh, delimiter="\t")]


def require() -> None:
    if not (DIR / "MANIFEST.tsv").exists():
        pytest.skip(f"RFC 4475 test data not found at {DIR} (set HASIP_RFC4475_DIR)")


def cases(kind: str | None = None) -> list[str]:
    rows = manifest()
    if not rows:
        return ["<absent>"]
    return [f for f, _, c in rows if kind is None or c == kind]


def read(name: str) -> bytes:
    require()
    return (DIR / name).read_bytes()
