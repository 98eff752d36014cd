#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the static checks and the whole test
# suite: unit tests, RFC 4475 vectors, and end-to-end tests with SIPp.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff"
.venv/bin/ruff check hasip keepalive tests bench
echo "[test] mypy"
.venv/bin/mypy
echo "[test] pytest"
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
