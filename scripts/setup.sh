#!/usr/bin/env bash
# Installs what hasip's demo, tests and benchmark need on Debian 12 (as root,
# or with sudo): Debian packages, then a virtualenv in .venv with the project
# and its test extras. Safe to run again; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# sip-tester: SIPp (phones, gateways, Asterisk stand-ins); mariadb-server and
# freeradius: the location store and the RADIUS server the tests start their
# own instances of; iptables: the NAT in the namespace test; kamailio: the
# benchmark's reference; zookeeper: the servers the cluster tests start
# (a Java program: it brings a JRE); tcpdump: the GARP and answerer checks;
# openssl: the certificates of the replication-over-TLS test; gcc and
# python3-dev: compiling the hot path (hasip/app/compiled.py); sipvicious: an
# attacker's password cracker (svcrack) the security tests point at a node;
# sipsak: a SIP client of its own that registers with digest there;
# rtpengine-daemon: the media relay the media tests start (userspace
# forwarding, their own ng and media ports); redis-server: how the nodes'
# rtpengines share their calls (the media failover test starts its own);
# prometheus: promtool checks and unit-tests the alert rules of ops/.
DEBS=(sip-tester kamailio iproute2 iptables tcpdump mariadb-server freeradius freeradius-utils
      zookeeper openssl python3-venv python3-dev gcc curl sipvicious sipsak rtpengine-daemon
      redis-server prometheus)
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
# The tests and benchmarks start private instances on free ports: the
# packaged services are not used, so stop any that the packages started.
for svc in kamailio freeradius mariadb zookeeper rtpengine-daemon redis-server prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

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
# The hot path compiled with mypyc from the same sources, unless it is
# already built from these very sources (HASIP_PURE_PYTHON=1 skips it and
# runs the sources alone).
if [ "${HASIP_PURE_PYTHON:-0}" != "1" ] && ! .venv/bin/hasip compile status | grep -qx compiled; then
  echo "[setup] compiling the hot path (about a minute)"
  .venv/bin/hasip compile build
fi
echo "[setup] ready: $(.venv/bin/hasip compile status), sipp $(sipp -v 2>/dev/null | grep -o 'v[0-9.]*' | head -1), $(.venv/bin/python --version)"
