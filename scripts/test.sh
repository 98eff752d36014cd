#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the static checks and the whole test
# suite: unit tests, RFC 4475 vectors, and end-to-end tests with SIPp, on the
# compiled build; then the unit tests again on the sources.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff"
.venv/bin/ruff check hasip keepalive tests bench
echo "[test] mypy"
.venv/bin/mypy
echo "[test] pytest (the compiled build, as shipped)"
.venv/bin/pytest -q -p no:cacheprovider "$@"
# The sources are the truth the build is made from: the unit tests run on
# them too (the compiled build and the interpreted one must agree). With
# arguments (a selection of tests), only that selection runs, compiled.
if [ "$#" -eq 0 ]; then
    echo "[test] unit tests on the sources (HASIP_PURE_PYTHON=1)"
    HASIP_PURE_PYTHON=1 .venv/bin/pytest -q -p no:cacheprovider tests/unit
fi
