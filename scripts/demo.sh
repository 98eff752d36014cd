#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the demo: a hasip node on its embedded
# defaults between a SIPp caller and two SIPp answering nodes, then a cluster
# of three nodes replicating their state through a private ZooKeeper.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hasip demo "$@"
