#!/usr/bin/env bash
# Real Camunda 7.24 engine (Spring Boot, H2 in-memory, REST at /engine-rest) for the test suite.
#
#   scripts/camunda-engine.sh [up]    build the jar if needed, start the engine, wait until ready,
#                                     write .services/camunda.env (export CAMUNDA_TEST_URL=...)
#   scripts/camunda-engine.sh down    stop the engine started by `up` (its pid in .services/camunda.pid);
#                                     an engine `up` found running is left alone
#   scripts/camunda-engine.sh status  exit 0 if the engine answers, 1 otherwise
#   scripts/camunda-engine.sh build   only (re)build the jar if it is stale
#
# Environment:
#   SERVICES_CAMUNDA_PORT     port to listen on (default 8089)
#   CAMUNDA_JAVA_OPTS         JVM options (default: modest heap, fast start-up)
#   CAMUNDA_START_TIMEOUT     seconds to wait for readiness (default 180)
#
# State (log, pid, env file) lives in $REPO/.services/. The H2 database is in memory:
# every start is a fresh, empty engine.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENGINE_DIR="$REPO/tests/camunda-engine"
JAR="$ENGINE_DIR/target/camunda-test-engine.jar"
STATE="$REPO/.services"
LOG="$STATE/camunda.log"
PIDFILE="$STATE/camunda.pid"
ENVFILE="$STATE/camunda.env"
PORT="${SERVICES_CAMUNDA_PORT:-8089}"
BASE="http://127.0.0.1:$PORT/engine-rest"
TIMEOUT="${CAMUNDA_START_TIMEOUT:-180}"
JAVA_OPTS="${CAMUNDA_JAVA_OPTS:--Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k}"

log() { echo "camunda-engine: $*" >&2; }

ensure_tools() {
  local missing=()
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      log "installing ${missing[*]}"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      log "missing tools: ${missing[*]} (install them first)"
      exit 1
    fi
  fi
}

jar_is_stale() {
  [[ -f "$JAR" ]] || return 0
  [[ "$ENGINE_DIR/pom.xml" -nt "$JAR" ]] && return 0
  [[ -n "$(find "$ENGINE_DIR/src" -type f -newer "$JAR" -print -quit)" ]] && return 0
  return 1
}

build() {
  jar_is_stale || return 0
  log "building $JAR"
  local t0=$SECONDS
  # Offline first (works once the local Maven cache holds everything), then online.
  if ! (cd "$ENGINE_DIR" && mvn -o -q -B package -DskipTests >"$STATE/camunda-build.log" 2>&1); then
    log "offline build failed, retrying online"
    if ! (cd "$ENGINE_DIR" && mvn -q -B package -DskipTests >"$STATE/camunda-build.log" 2>&1); then
      tail -n 40 "$STATE/camunda-build.log" >&2
      log "build failed (full log: $STATE/camunda-build.log)"
      exit 1
    fi
  fi
  touch "$JAR"
  log "built in $((SECONDS - t0))s"
}

# HTTP status of GET /engine-rest/engine ("000" when nothing answers).
probe() {
  curl -s -o /dev/null -m 3 -w '%{http_code}' "$BASE/engine" 2>/dev/null || true
}

# True if the recorded pid still runs our engine (not a recycled pid: `down` kills it).
pid_alive() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$(basename "$JAR")"
}

write_env() {
  printf 'export CAMUNDA_TEST_URL=%s\n' "$BASE" >"$ENVFILE"
}

wait_ready() {
  local t0=$SECONDS
  while ((SECONDS - t0 < TIMEOUT)); do
    if [[ "$(probe)" == "200" ]]; then
      log "ready at $BASE after $((SECONDS - t0))s"
      return 0
    fi
    if ! pid_alive; then
      tail -n 60 "$LOG" >&2 || true
      log "engine process exited during start-up (log: $LOG)"
      rm -f "$PIDFILE"
      return 1
    fi
    sleep 1
  done
  tail -n 60 "$LOG" >&2 || true
  log "engine not ready after ${TIMEOUT}s (log: $LOG)"
  return 1
}

up() {
  mkdir -p "$STATE"
  local code
  code="$(probe)"
  if [[ "$code" == "200" ]]; then
    write_env
    if pid_alive; then
      log "already running at $BASE (pid $(cat "$PIDFILE"))"
    else
      log "an engine not started by this script answers at $BASE: using it ('$0 down' leaves it running)"
    fi
    return 0
  fi
  if pid_alive; then
    local pid
    pid="$(cat "$PIDFILE")"
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--server.port=$PORT "; then
      log "an engine started by this script (pid $pid) runs on another port; run '$0 down' first"
      exit 1
    fi
    # Started earlier and still booting.
    log "engine (pid $pid) is starting, waiting"
    wait_ready
    write_env
    return 0
  fi
  if [[ "$code" != "000" ]]; then
    log "port $PORT is taken by something that is not a Camunda engine (HTTP $code)"
    exit 1
  fi
  ensure_tools
  build
  rm -f "$ENVFILE"
  log "starting on port $PORT (log: $LOG)"
  # shellcheck disable=SC2086
  setsid nohup java $JAVA_OPTS -jar "$JAR" --server.port="$PORT" >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_ready
  write_env
}

down() {
  if pid_alive; then
    local pid i
    pid="$(cat "$PIDFILE")"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
    fi
    log "stopped (pid $pid)"
  else
    log "not running (no live pid in $PIDFILE)"
  fi
  rm -f "$PIDFILE" "$ENVFILE"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status)
    if [[ "$(probe)" == "200" ]]; then log "up at $BASE"; else log "down"; exit 1; fi
    ;;
  build) mkdir -p "$STATE"; ensure_tools; build ;;
  *) echo "usage: $0 [up|down|status|build]" >&2; exit 2 ;;
esac
