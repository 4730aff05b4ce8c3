#!/usr/bin/env bash
# Run the whole test suite against the real services:
#
#   scripts/test.sh [extra cargo test args...]
#
# 1. start (installing if needed) the services: scripts/services.sh up
# 2. cargo fmt --check, 3. cargo clippy -D warnings, 4. cargo test (unit tests and tests/it;
#    the fault suite runs on its own: scripts/faults.sh), 5. the benchmark's smoke mode
# Extra arguments go to `cargo test --all-targets`, e.g.
#   scripts/test.sh -- --nocapture
# Stops at the first failing step with its exit code.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

step() { printf '\n==> %s\n' "$*"; }

step "[1/5] services: scripts/services.sh up"
bash scripts/services.sh up
# shellcheck source=/dev/null
source .services/env

step "[2/5] cargo fmt --all -- --check"
cargo fmt --all -- --check

step "[3/5] cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
# The fault suite is not run here (scripts/faults.sh), but it must keep compiling and linting.
cargo clippy --test faults -- -D warnings

step "[4/5] cargo test --all-targets${*:+ $*}"
cargo test --all-targets "$@"

# The benchmark's smoke mode: it must run end to end and print its table; it judges no timing.
step "[5/5] benchmark smoke: scripts/bench.sh --smoke"
# Debug binaries: smoke mode judges no timing, and the step above built them with the same
# features (bench.sh builds them with `--tests`), so this compiles nothing.
BENCH_PROFILE=dev bash scripts/bench.sh --smoke

step "all checks passed"
