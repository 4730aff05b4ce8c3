#!/usr/bin/env bash
# Benchmark the gateway against the test services and print one Markdown table:
#
#   scripts/bench.sh [--smoke] [--runs N] [other bench options, see --help]
#
# 1. start (installing if needed) the services: scripts/services.sh up
# 2. install wrk (Debian's package) if it is missing
# 3. cargo build --release --bins (the gateway and the `bench` binary)
# 4. target/release/bench "$@": raw limits of MongoDB and RabbitMQ, then the gateway binary as a
#    child process: submit throughput and latency, end-to-end say_hello, resident memory.
#
# --smoke is the CI mode: small counts, about a minute; it must finish and print its table, and
# it fails only when a step fails (it judges no timing). A full run takes several minutes per
# run; `--runs 3` prints medians, which is what the targets are judged on.
# Set BENCH_PROFILE=dev to skip the release build (figures are then meaningless; smoke only).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

log() { printf '[bench.sh] %s\n' "$*" >&2; }

log "services: scripts/services.sh up"
bash scripts/services.sh up >&2  # stdout is the table
# shellcheck source=/dev/null
source .services/env

if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk >/dev/null 2>&1; then
        # An old or missing package list: refresh it once and try again.
        apt-get update >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk >/dev/null
    fi
fi

# The in-flight memory phase holds one socket per task on each side (10 000 by default).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PROFILE="${BENCH_PROFILE:-release}"
if [ "$PROFILE" = release ]; then
    log "cargo build --release --bins"
    cargo build --release --bins
    BIN_DIR=target/release
else
    # `--tests`: build the binaries with the features the test build gives their dependencies.
    # Dev-dependencies switch some on (tokio's test-util, x509-parser's verify through rcgen), so
    # a plain `cargo build --bins` after `cargo test --all-targets` compiled a second copy of
    # ~22 crates (tokio and everything above it) only to run the smoke; this way scripts/test.sh's
    # smoke reuses what its test step built and compiles nothing.
    log "cargo build --bins --tests (BENCH_PROFILE=$PROFILE: figures are not representative)"
    cargo build --bins --tests
    BIN_DIR=target/debug
fi

exec "$BIN_DIR/bench" "$@"
