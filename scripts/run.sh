#!/usr/bin/env bash
# Start the services (installing them if needed), then run the gateway
# against them in release mode. Arguments go to the gateway binary:
#
#   scripts/run.sh [gateway args...]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/services.sh up
# shellcheck source=/dev/null
source .services/env

# People read this output; containers keep the JSON default.
export LOG_FORMAT="${LOG_FORMAT:-pretty}"

exec cargo run --release --bin worker-api-gateway -- "$@"
