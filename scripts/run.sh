#!/usr/bin/env bash
# Start what the gateway needs (RabbitMQ and SecantusDB, installing them if
# needed: scripts/services.sh up --gateway-only), then run the gateway against
# them in release mode:
#
#   scripts/run.sh
#
# It takes no arguments: the gateway reads its settings from the environment
# and .env (see .env.gateway.example), e.g. `PORT=8080 scripts/run.sh`.
#
# No Camunda engine is started: the gateway talks to Camunda only when
# CAMUNDA_URL is set. To try report or pull mode against the test engine:
#   scripts/camunda-engine.sh up && source .services/camunda.env
#   CAMUNDA_URL=$CAMUNDA_TEST_URL scripts/run.sh
#
# Unless API_KEYS_FILE is set, it uses a development key file,
# .services/dev-api-keys.toml, made on the first run with one key of every
# scope; the key itself is kept in .services/dev-api-key and printed at start.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if [ "$#" -gt 0 ]; then
    echo "scripts/run.sh takes no arguments; configure the gateway with environment variables (see .env.gateway.example)" >&2
    exit 2
fi

bash scripts/services.sh up --gateway-only
# shellcheck source=/dev/null
source .services/env

if [ -z "${API_KEYS_FILE:-}" ]; then
    key_file="$REPO/.services/dev-api-keys.toml"
    secret_file="$REPO/.services/dev-api-key"
    if [ ! -s "$secret_file" ] || [ ! -s "$key_file" ]; then
        umask 077
        # 32 random bytes as hex: the key. The file keeps only its SHA-256.
        od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$secret_file"
        hash="$(tr -d '\n' <"$secret_file" | sha256sum | cut -d' ' -f1)"
        cat >"$key_file" <<TOML
# Development key made by scripts/run.sh; the key is in .services/dev-api-key.
[[keys]]
id = "dev"
hash = "sha256:$hash"
scopes = ["submit", "read", "operate", "admin"]
TOML
    fi
    export API_KEYS_FILE="$key_file"
    echo "development API key (every scope): $(cat "$secret_file")"
    echo "  try: curl -H \"X-API-Key: \$(cat .services/dev-api-key)\" localhost:\${PORT:-8000}/topics"
fi

# People read this output; containers keep the JSON default.
export LOG_FORMAT="${LOG_FORMAT:-pretty}"

exec cargo run --release --bin worker-api-gateway
