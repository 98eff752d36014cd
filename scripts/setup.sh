#!/usr/bin/env bash
# Installs what hasip's demo, tests and benchmark need on Debian 12 (as root,
# or with sudo): Debian packages, then a virtualenv in .venv with the project
# and its test extras. Safe to run again; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(sip-tester kamailio iproute2 tcpdump python3-venv python3-dev curl)
missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "[setup] installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Kamailio is only the benchmark's reference: make sure no packaged service runs.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet kamailio 2>/dev/null; then
  systemctl stop kamailio || true
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import hasip, pytest, hypothesis, uvloop" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "[setup] installing hasip and its test extras into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi
echo "[setup] ready: sipp $(sipp -v 2>/dev/null | grep -o 'v[0-9.]*' | head -1), $(.venv/bin/python --version)"
