#!/usr/bin/env bash
# Run the fault-injection suite (tests/faults, see docs/reliability.md) against the real
# services. It stops, kills and freezes the shared RabbitMQ and MongoDB-wire servers, so it runs
# alone, one scenario at a time, and brings the services back after each.
#
#   scripts/faults.sh [test name filters...]              # CI size: FAULTS_N=200, FAULTS_SLOW_N=1000
#   FAULTS_N=1000 FAULTS_SLOW_N=10000 scripts/faults.sh    # the full run
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/services.sh up
# shellcheck source=/dev/null
source .services/env
exec cargo test --release --test faults -- --nocapture "$@"
