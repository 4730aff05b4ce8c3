#!/usr/bin/env bash
# Install and start the real services the test suite talks to.
#
#   scripts/services.sh [up]   install what is missing, start what is stopped,
#                              wait until each answers, write .services/env
#   scripts/services.sh up --gateway-only
#                              only what the gateway itself needs (RabbitMQ,
#                              SecantusDB): no Camunda engine, no seed venv
#   scripts/services.sh down   stop what `up` started: SecantusDB, RabbitMQ and
#                              the Camunda engine (see "Ownership" below)
#   scripts/services.sh env    print .services/env (source it in your shell)
#
# Services:
#   RabbitMQ    Debian's rabbitmq-server (3.10), 127.0.0.1:5672, guest/guest;
#               also amqps on 127.0.0.1:5671 with a test CA (.services/tls/)
#   SecantusDB  MongoDB-compatible server from PyPI, in .services/venv,
#               127.0.0.1:$SERVICES_MONGO_PORT (default 27017)
#   Camunda     7.24 test engine built with Maven from tests/camunda-engine/
#   Seed workers the seed gateway's Python workers, run unmodified by the tests
#               from $SEED_REFERENCE_DIR (default ../shared/seed-reference), in
#               their own venv .services/seed-venv
#   faketime    Debian's faketime, for the fault suite's skewed-clock replicas
#   chromium    Debian's chromium and chromedriver, and Selenium for Python in
#               .services/ui-venv, for the dashboard's browser test
#
# Everything this script creates lives under $REPO/.services/ (git-ignored),
# except RabbitMQ's own state, which the Debian package keeps in
# /var/lib/rabbitmq and /var/log/rabbitmq.
#
# Ownership: `up` reuses a server that already answers (a RabbitMQ someone
# started, a MongoDB on the port, an engine on Camunda's port) and records only
# the ones it starts itself, by pid: .services/rabbitmq.pid (the broker's
# Erlang VM), .services/secantus.pid, .services/camunda.pid. `down` stops a
# service only while the running one is the one recorded, and leaves every
# other one running, so a broker the machine ran before `up` survives `down`.
#
# Idempotent: a second `up` with everything running installs nothing and
# takes a few seconds. Must run as root (apt-get, and the Debian rabbitmq
# wrappers switch to the rabbitmq user themselves).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="$REPO/.services"
ENV_FILE="$SERVICES_DIR/env"

# rabbitmq-server, rabbitmqctl, ... are in /usr/sbin, which a non-login
# shell (CI) may not have on its PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# --- SecantusDB settings ----------------------------------------------------
MONGO_HOST=127.0.0.1
MONGO_PORT="${SERVICES_MONGO_PORT:-27017}"
# Pinned so every machine runs the same server. It is a pre-release; an exact
# `==` pin lets pip pick it without --pre.
SECANTUS_VERSION=0.7.0b3
VENV="$SERVICES_DIR/venv"
SECANTUS_PID_FILE="$SERVICES_DIR/secantus.pid"
SECANTUS_PORT_FILE="$SERVICES_DIR/secantus.port"
SECANTUS_LOG="$SERVICES_DIR/secantus.log"
SECANTUS_DATA="$SERVICES_DIR/mongo-data"
SECANTUS_CONFIG="$SERVICES_DIR/secantusd.toml"
SECANTUS_START_TIMEOUT=60
# The oplog. SecantusDB's defaults (100 000 entries, 1 h) are tiny next to mongod's (5 % of the
# disk, at least 990 MB), and it prunes inline: after every 1 000 entries, the write that made
# them deletes every entry over the cap or older than the retention. Once 100 000 documents
# have been written (one benchmark run writes more), that stalls the server for 30-55 ms every
# 1 000 documents; and after an idle hour, its code deletes everything older in one go.
# 2 000 000 entries is about mongod's smallest oplog at our task sizes (~500 B an entry, ~1 GB
# on disk); the count, not the clock, bounds it.
# docs/performance.md, finding 6, has the measurements.
SECANTUS_OPLOG_MAX_ENTRIES=2000000
SECANTUS_OPLOG_RETENTION_SECONDS=$((30 * 24 * 3600))

# --- RabbitMQ settings ------------------------------------------------------
RABBIT_HOST=127.0.0.1
RABBIT_PORT=5672
RABBIT_START_TIMEOUT=120
RABBIT_ENV_CONF=/etc/rabbitmq/rabbitmq-env.conf
# The TLS listener the amqps tests use, configured by a file of ours in the
# server's conf.d (3.10 reads every /etc/rabbitmq/conf.d/*.conf).
RABBIT_TLS_PORT=5671
RABBIT_TLS_CONF=/etc/rabbitmq/conf.d/50-worker-gateway-tls.conf
# The OS pid of the broker `up` started (see Ownership); absent for one it found running.
RABBIT_PID_FILE="$SERVICES_DIR/rabbitmq.pid"

# --- Test certificates --------------------------------------------------------
# A test CA and a server certificate it signed (localhost, 127.0.0.1), made
# with the openssl CLI once and kept while they are valid for 30 more days.
# Tests that need other certificates make their own.
TLS_DIR="$SERVICES_DIR/tls"
TLS_CA="$TLS_DIR/ca.pem"
TLS_CA_KEY="$TLS_DIR/ca.key"
TLS_SERVER_CERT="$TLS_DIR/server.pem"
TLS_SERVER_KEY="$TLS_DIR/server.key"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command quietly; show its output only if it fails.
quiet() {
    local out
    if ! out="$("$@" 2>&1)"; then
        printf '%s\n' "$out" >&2
        return 1
    fi
}

# Close every fd above 2 in the current (sub)shell. Used right before
# exec'ing a long-lived server, so it keeps neither our lock (fd 9) nor any
# pipe the caller (a terminal multiplexer, a CI runner) handed down: a
# daemon holding the write end of a CI runner's pipe can stall the runner.
close_inherited_fds() {
    local fd
    for fd in /proc/self/fd/*; do
        fd="${fd##*/}"
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
}

# True if something accepts TCP connections on host:port.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        quiet apt-get update
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

require_root() {
    [ "$(id -u)" = 0 ] || die "run as root (needs apt-get and the rabbitmq user)"
}

# ============================================================================
# Test certificates
# ============================================================================

# True if the server certificate exists, chains to the CA, and stays valid
# for 30 days.
tls_material_valid() {
    [ -s "$TLS_CA" ] && [ -s "$TLS_CA_KEY" ] && [ -s "$TLS_SERVER_CERT" ] && [ -s "$TLS_SERVER_KEY" ] || return 1
    openssl verify -CAfile "$TLS_CA" "$TLS_SERVER_CERT" >/dev/null 2>&1 || return 1
    openssl x509 -checkend $((30 * 24 * 3600)) -noout -in "$TLS_SERVER_CERT" >/dev/null 2>&1
}

# Makes the test CA and server certificate unless valid ones exist. Sets
# TLS_MATERIAL_CHANGED=1 when it made new ones (a running server must reload).
TLS_MATERIAL_CHANGED=0
tls_material() {
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    if tls_material_valid; then
        return 0
    fi
    log "making the test CA and server certificate in $TLS_DIR"
    mkdir -p "$TLS_DIR"
    chmod 755 "$TLS_DIR"
    local ext="$TLS_DIR/server.ext" csr="$TLS_DIR/server.csr"
    quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TLS_CA_KEY" -out "$TLS_CA" -days 3650 -subj "/CN=worker-api-gateway test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    quiet openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TLS_SERVER_KEY" -out "$csr" -subj "/CN=localhost"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$ext"
    quiet openssl x509 -req -in "$csr" -CA "$TLS_CA" -CAkey "$TLS_CA_KEY" \
        -set_serial "0x$(openssl rand -hex 16)" -days 825 -extfile "$ext" -out "$TLS_SERVER_CERT"
    rm -f "$csr" "$ext"
    # The CA key stays root's; the server key is the broker's to read (it runs
    # as the rabbitmq user), nobody else's.
    chmod 600 "$TLS_CA_KEY"
    chmod 644 "$TLS_CA" "$TLS_SERVER_CERT"
    if getent group rabbitmq >/dev/null 2>&1; then
        chgrp rabbitmq "$TLS_SERVER_KEY"
        chmod 640 "$TLS_SERVER_KEY"
    else
        chmod 600 "$TLS_SERVER_KEY"
    fi
    tls_material_valid || die "the test certificates in $TLS_DIR do not verify"
    TLS_MATERIAL_CHANGED=1
}

# ============================================================================
# RabbitMQ
# ============================================================================

# The Debian wrappers in /usr/sbin, run as root, `su` to the rabbitmq user,
# so HOME becomes /var/lib/rabbitmq and the server and the CLI share the
# Erlang cookie in /var/lib/rabbitmq/.erlang.cookie. Never call the tools in
# /usr/lib/rabbitmq/bin directly as root: they would read /root/.erlang.cookie
# and fail to authenticate.
rabbit_ctl() { timeout 60 rabbitmqctl "$@"; }
rabbit_ping() { timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
rabbit_app_running() { timeout 30 rabbitmq-diagnostics -q check_running >/dev/null 2>&1; }

# The OS pid of the running node's Erlang VM; fails when no node answers.
rabbit_os_pid() {
    local pid
    pid="$(rabbit_ctl eval -q 'os:getpid().' 2>/dev/null | tr -d '"[:space:]')" || return 1
    [ -n "$pid" ] || return 1
    echo "$pid"
}

# True if the running node is the one `up` started: its pid is the recorded one. A recorded
# pid that no longer runs (the broker was stopped and someone else started it) does not count.
rabbit_owned() {
    local want have
    want="$(cat "$RABBIT_PID_FILE" 2>/dev/null)" && [ -n "$want" ] || return 1
    have="$(rabbit_os_pid)" || return 1
    [ "$want" = "$have" ]
}

rabbit_install() {
    # Ask dpkg rather than look for the binary: an install that failed half
    # way leaves the binary but not the status "install ok installed".
    if [ "$(dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null)" = "install ok installed" ]; then
        return 0
    fi
    # Without systemd the package's postinst tries to start the server via
    # invoke-rc.d and can fail the whole install. A policy-rc.d that exits
    # 101 tells invoke-rc.d not to start anything; we start it ourselves
    # below. Only add one if the machine doesn't already have one.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    apt_install rabbitmq-server || rc=$?
    if [ "$added_policy" = 1 ]; then
        rm -f "$policy"
    fi
    [ "$rc" = 0 ] || die "installing rabbitmq-server failed"
}

# Erlang short node names are name@<short hostname>, and the CLI finds the
# node through epmd on that host. In containers the hostname often doesn't
# resolve, which breaks every rabbitmqctl call. Then pin the node name to
# rabbit@localhost in rabbitmq-env.conf, which the server and the CLI tools
# both read, so a plain `rabbitmqctl` typed by hand works too.
rabbit_fix_nodename() {
    local short
    short="$(hostname -s 2>/dev/null || hostname)"
    if getent hosts "$short" >/dev/null 2>&1; then
        return 0
    fi
    if grep -qE '^[[:space:]]*NODENAME=' "$RABBIT_ENV_CONF" 2>/dev/null; then
        return 0 # someone already chose a node name; respect it
    fi
    log "hostname '$short' does not resolve; using node name rabbit@localhost"
    mkdir -p "$(dirname "$RABBIT_ENV_CONF")"
    printf '\n# Added by scripts/services.sh: the hostname does not resolve.\nNODENAME=rabbit@localhost\n' \
        >>"$RABBIT_ENV_CONF"
}

# Writes the TLS listener's config (listeners.ssl, the test CA and server
# certificate; a client certificate is checked when offered, not required).
# Sets RABBIT_TLS_CONF_CHANGED=1 when the file was written anew.
RABBIT_TLS_CONF_CHANGED=0
rabbit_tls_config() {
    local want
    want="$(
        printf '# Written by scripts/services.sh: the TLS listener for the amqps tests.\n'
        printf 'listeners.ssl.default = %s:%s\n' "$RABBIT_HOST" "$RABBIT_TLS_PORT"
        printf 'ssl_options.cacertfile = %s\n' "$TLS_CA"
        printf 'ssl_options.certfile = %s\n' "$TLS_SERVER_CERT"
        printf 'ssl_options.keyfile = %s\n' "$TLS_SERVER_KEY"
        printf 'ssl_options.verify = verify_peer\n'
        printf 'ssl_options.fail_if_no_peer_cert = false\n'
    )"
    if [ -f "$RABBIT_TLS_CONF" ] && [ "$(cat "$RABBIT_TLS_CONF")" = "$want" ]; then
        return 0
    fi
    mkdir -p "$(dirname "$RABBIT_TLS_CONF")"
    log "writing $RABBIT_TLS_CONF (TLS listener on $RABBIT_HOST:$RABBIT_TLS_PORT)"
    printf '%s\n' "$want" >"$RABBIT_TLS_CONF"
    chmod 644 "$RABBIT_TLS_CONF"
    RABBIT_TLS_CONF_CHANGED=1
}

# A node started before the TLS listener was configured (or before its
# certificates were renewed) must restart once to load it. The plain listener
# comes back with it; tests running meanwhile see the broker go down and back.
rabbit_restart_for_tls() {
    local changed="$1"
    rabbit_ping || return 0
    if [ "$changed" != 1 ] && port_open "$RABBIT_HOST" "$RABBIT_TLS_PORT"; then
        return 0
    fi
    log "restarting RabbitMQ once to load its TLS listener ($RABBIT_TLS_CONF)"
    quiet rabbit_ctl stop || die "rabbitmqctl stop failed"
    local deadline=$((SECONDS + RABBIT_START_TIMEOUT))
    while rabbit_ping; do
        [ "$SECONDS" -lt "$deadline" ] || die "RabbitMQ did not stop in ${RABBIT_START_TIMEOUT}s"
        sleep 1
    done
}

rabbit_up() {
    rabbit_install
    rabbit_fix_nodename
    # Ours if it is the node we recorded, or if none runs and we start it below. One running
    # without our record is someone else's, and stays so even if it is restarted for TLS below.
    local ours=0
    if rabbit_owned || ! rabbit_ping; then
        ours=1
    fi
    tls_material
    rabbit_tls_config
    if [ "$TLS_MATERIAL_CHANGED" = 1 ] || [ "$RABBIT_TLS_CONF_CHANGED" = 1 ]; then
        rabbit_restart_for_tls 1
    else
        rabbit_restart_for_tls 0
    fi

    if ! rabbit_ping; then
        log "starting RabbitMQ"
        # RABBITMQ_NODE_IP_ADDRESS: listen for AMQP on loopback only (the
        # guest user may only log in from loopback anyway). The wrapper's
        # `su` keeps the environment.
        (
            close_inherited_fds
            export RABBITMQ_NODE_IP_ADDRESS="$RABBIT_HOST" RABBITMQ_NODE_PORT="$RABBIT_PORT"
            exec rabbitmq-server -detached
        ) </dev/null >>"$SERVICES_DIR/rabbitmq-start.log" 2>&1 ||
            die "rabbitmq-server -detached failed (see $SERVICES_DIR/rabbitmq-start.log and /var/log/rabbitmq/)"
        # `await_startup` fails at once while the node isn't registered with
        # epmd yet, so first poll until the node answers at all.
        local deadline=$((SECONDS + RABBIT_START_TIMEOUT))
        until rabbit_ping; do
            [ "$SECONDS" -lt "$deadline" ] ||
                die "RabbitMQ node did not come up in ${RABBIT_START_TIMEOUT}s (see /var/log/rabbitmq/)"
            sleep 1
        done
        quiet rabbit_ctl await_startup --timeout "$RABBIT_START_TIMEOUT" ||
            die "RabbitMQ did not finish booting (see /var/log/rabbitmq/)"
    elif ! rabbit_app_running; then
        # The Erlang node is up but the rabbit app isn't: it is either still
        # booting (someone else just started it), or was stopped with
        # `rabbitmqctl stop_app`. (`rabbitmq-diagnostics is_booting` can't
        # tell: it exits 0 either way, hence the eval.)
        if [ "$(rabbit_ctl eval -q 'rabbit:is_booting().' 2>/dev/null)" = true ]; then
            log "RabbitMQ is booting; waiting"
            quiet rabbit_ctl await_startup --timeout "$RABBIT_START_TIMEOUT" ||
                die "RabbitMQ did not finish booting (see /var/log/rabbitmq/)"
        else
            # (Very early in a boot is_booting is still false; start_app then
            # may complain, and waiting for the boot is the right answer.)
            log "RabbitMQ node is up but the app is stopped: start_app"
            quiet rabbit_ctl start_app ||
                quiet rabbit_ctl await_startup --timeout "$RABBIT_START_TIMEOUT" ||
                die "rabbitmqctl start_app failed"
        fi
    fi

    rabbit_app_running || die "RabbitMQ is not running after start"
    port_open "$RABBIT_HOST" "$RABBIT_PORT" ||
        die "RabbitMQ runs but nothing listens on $RABBIT_HOST:$RABBIT_PORT"
    # The TLS listener starts with the app, right after the plain one.
    local deadline=$((SECONDS + 30))
    until port_open "$RABBIT_HOST" "$RABBIT_TLS_PORT"; do
        [ "$SECONDS" -lt "$deadline" ] ||
            die "RabbitMQ runs but its TLS listener is not on $RABBIT_HOST:$RABBIT_TLS_PORT (see /var/log/rabbitmq/, $RABBIT_TLS_CONF)"
        sleep 1
    done
    if [ "$ours" = 1 ]; then
        local pid
        pid="$(rabbit_os_pid)" || die "RabbitMQ runs but does not tell its pid"
        echo "$pid" >"$RABBIT_PID_FILE"
        log "RabbitMQ ready on $RABBIT_HOST:$RABBIT_PORT (amqps on $RABBIT_TLS_PORT; pid $pid, started by services.sh)"
    else
        rm -f "$RABBIT_PID_FILE"
        log "RabbitMQ ready on $RABBIT_HOST:$RABBIT_PORT (amqps on $RABBIT_TLS_PORT; already running" \
            "when found, so '$0 down' leaves it running)"
    fi
}

rabbit_down() {
    if ! command -v rabbitmqctl >/dev/null 2>&1; then
        return 0
    fi
    if ! rabbit_ping; then
        log "RabbitMQ is not running"
    elif rabbit_owned; then
        log "stopping RabbitMQ (pid $(cat "$RABBIT_PID_FILE"), started by '$0 up')"
        quiet rabbit_ctl stop || die "rabbitmqctl stop failed"
    else
        log "RabbitMQ was not started by '$0 up': left running"
    fi
    rm -f "$RABBIT_PID_FILE"
}

# ============================================================================
# SecantusDB (MongoDB wire protocol)
# ============================================================================

mongo_ping() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$MONGO_HOST" "$MONGO_PORT" >/dev/null 2>&1 <<'EOF'
import sys
import pymongo

host, port = sys.argv[1], int(sys.argv[2])
client = pymongo.MongoClient(host, port, serverSelectionTimeoutMS=1000,
                             connectTimeoutMS=1000)
client.admin.command("ping")
EOF
}

secantus_installed() {
    [ -x "$VENV/bin/secantusd-py" ] || return 1
    local have
    have="$("$VENV/bin/python" -c \
        'import importlib.metadata as m, pymongo; print(m.version("SecantusDB"))' 2>/dev/null)" ||
        return 1
    [ "$have" = "$SECANTUS_VERSION" ]
}

# Creates the venv $1 unless it exists (Debian's own python3 needs python3-venv for
# `python3 -m venv`).
make_venv() {
    if ! command -v python3 >/dev/null 2>&1 ||
        ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3 python3-venv
    fi
    if [ ! -x "$1/bin/python" ]; then
        log "creating venv $1"
        quiet python3 -m venv "$1"
    fi
}

secantus_install() {
    if secantus_installed; then
        return 0
    fi
    make_venv "$VENV"
    log "pip install SecantusDB==$SECANTUS_VERSION pymongo"
    # SecantusDB depends on pymongo today; name it anyway since the ping
    # check above needs it.
    quiet "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
        "SecantusDB==$SECANTUS_VERSION" pymongo
    secantus_installed || die "SecantusDB install did not produce secantusd-py"
}

# Pid of our SecantusDB if its pid file names a live secantusd process.
secantus_pid() {
    local pid
    [ -f "$SECANTUS_PID_FILE" ] || return 1
    pid="$(cat "$SECANTUS_PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid belonging to something else.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q secantusd || return 1
    echo "$pid"
}

secantus_up() {
    secantus_install
    mkdir -p "$SECANTUS_DATA"

    if mongo_ping; then
        if secantus_pid >/dev/null; then
            log "SecantusDB (pid $(secantus_pid)) already answers on $MONGO_HOST:$MONGO_PORT"
        else
            log "a MongoDB-wire server not started here answers on $MONGO_HOST:$MONGO_PORT: using it" \
                "('$0 down' leaves it running)"
        fi
        return 0
    fi

    local pid
    if pid="$(secantus_pid)"; then
        local running_port
        running_port="$(cat "$SECANTUS_PORT_FILE" 2>/dev/null || echo '?')"
        if [ "$running_port" != "$MONGO_PORT" ]; then
            die "SecantusDB already runs (pid $pid) on port $running_port, not $MONGO_PORT; run '$0 down' first"
        fi
        log "SecantusDB (pid $pid) is running but not answering yet; waiting"
    else
        if port_open "$MONGO_HOST" "$MONGO_PORT"; then
            die "port $MONGO_HOST:$MONGO_PORT is taken by something that does not answer a MongoDB ping"
        fi
        # An empty config file passed with --config turns off the launcher's
        # auto-discovery of ./secantusd.toml, ~/.secantus/secantusd.toml and
        # /etc/secantus/secantusd.toml, so the flags below are all that count.
        [ -f "$SECANTUS_CONFIG" ] ||
            printf '# Intentionally empty: scripts/services.sh passes every setting as a flag.\n' \
                >"$SECANTUS_CONFIG"
        log "starting SecantusDB on $MONGO_HOST:$MONGO_PORT (log: $SECANTUS_LOG)"
        printf '\n==== %s services.sh: starting secantusd-py on port %s\n' \
            "$(date -Is)" "$MONGO_PORT" >>"$SECANTUS_LOG"
        # setsid + nohup: detach from our terminal/session so it outlives this
        # script and a closed shell. setsid doesn't fork here (a background
        # job in a script isn't a process-group leader), and nohup and the
        # script shebang exec, so $! is the server's own pid.
        (
            cd "$SERVICES_DIR"
            close_inherited_fds
            exec setsid nohup "$VENV/bin/secantusd-py" \
                --config "$SECANTUS_CONFIG" \
                --host "$MONGO_HOST" \
                --port "$MONGO_PORT" \
                --storage-path "$SECANTUS_DATA" \
                --enable-test-commands \
                --oplog-max-entries "$SECANTUS_OPLOG_MAX_ENTRIES" \
                --oplog-retention-seconds "$SECANTUS_OPLOG_RETENTION_SECONDS" \
                </dev/null >>"$SECANTUS_LOG" 2>&1
        ) &
        pid=$!
        echo "$pid" >"$SECANTUS_PID_FILE"
        echo "$MONGO_PORT" >"$SECANTUS_PORT_FILE"
    fi

    local deadline=$((SECONDS + SECANTUS_START_TIMEOUT))
    until mongo_ping; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$SECANTUS_LOG" >&2 || true
            die "SecantusDB exited during startup (log: $SECANTUS_LOG)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$SECANTUS_LOG" >&2 || true
            die "SecantusDB did not answer a ping within ${SECANTUS_START_TIMEOUT}s"
        fi
        sleep 0.5
    done
    log "SecantusDB ready on $MONGO_HOST:$MONGO_PORT (pid $pid)"
}

secantus_down() {
    local pid
    if ! pid="$(secantus_pid)"; then
        log "no SecantusDB started by '$0 up' is running (no live pid in $SECANTUS_PID_FILE);" \
            "a server on the port started otherwise is left running"
        rm -f "$SECANTUS_PID_FILE" "$SECANTUS_PORT_FILE"
        return 0
    fi
    log "stopping SecantusDB (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # It takes a few seconds to close WiredTiger cleanly; don't cut that short.
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "SecantusDB did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$SECANTUS_PID_FILE" "$SECANTUS_PORT_FILE"
}

# ============================================================================
# Camunda 7.24 test engine (tests/camunda-engine/, built with Maven and started
# by scripts/camunda-engine.sh, which is idempotent and waits until the REST API
# answers). Tests read CAMUNDA_TEST_URL; the gateway itself only talks to
# Camunda when CAMUNDA_URL is set. An engine already answering on its port is
# reused; `down` stops only an engine whose pid camunda-engine.sh recorded.
# ============================================================================

# fd 9 (the lock) is closed for the engine, or the long-lived JVM would hold the lock for good.
camunda_up() { bash "$REPO/scripts/camunda-engine.sh" up 9>&-; }
camunda_down() { bash "$REPO/scripts/camunda-engine.sh" down || true; }
camunda_env() {
    [ -f "$SERVICES_DIR/camunda.env" ] && grep '^export ' "$SERVICES_DIR/camunda.env"
    return 0
}

# ============================================================================
# The seed's Python workers (tests/it/seed_workers/ runs them in place, as
# real clients of the gateway and of Camunda). Nothing here starts them; this
# only gives them a venv with their own requirements.txt, and tells the tests
# where they and that venv's python are. A missing seed reference is a
# failure, not a skip: those tests cannot run without it.
# ============================================================================

SEED_REFERENCE_DIR="${SEED_REFERENCE_DIR:-$REPO/../shared/seed-reference}"
SEED_VENV="$SERVICES_DIR/seed-venv"
# Records the sha256 of the requirements file the venv was built from.
SEED_VENV_STAMP="$SEED_VENV/.requirements.sha256"

seed_requirements() { echo "$SEED_REFERENCE_DIR/camunda-workers-platform/workers/requirements.txt"; }

seed_workers_venv() {
    [ -d "$SEED_REFERENCE_DIR" ] ||
        die "seed reference not found at $SEED_REFERENCE_DIR (set SEED_REFERENCE_DIR to the folder holding camunda-workers-platform/)"
    SEED_REFERENCE_DIR="$(cd "$SEED_REFERENCE_DIR" && pwd)"
    local requirements
    requirements="$(seed_requirements)"
    [ -f "$requirements" ] || die "seed reference has no $requirements"

    local want
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [ -x "$SEED_VENV/bin/python" ] && [ "$(cat "$SEED_VENV_STAMP" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    make_venv "$SEED_VENV"
    log "pip install -r $requirements (seed workers)"
    quiet "$SEED_VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$requirements" ||
        die "installing the seed workers' requirements failed"
    # The import the workers make first: a half-installed venv fails here, not in a test.
    quiet "$SEED_VENV/bin/python" -c 'import camunda.external_task.external_task_worker, pika, prometheus_client' ||
        die "the seed venv cannot import the workers' dependencies"
    echo "$want" >"$SEED_VENV_STAMP"
    log "seed workers' venv ready: $SEED_VENV"
}

# ============================================================================
# faketime
# ============================================================================

# The fault suite runs gateway replicas with skewed clocks under Debian's
# faketime: its libfaketime, preloaded with FAKETIME=-5m (tests/faults/gateway.rs).
faketime_install() {
    command -v faketime >/dev/null 2>&1 || apt_install faketime
}

# ============================================================================
# Browser (the dashboard's test)
# ============================================================================

# tests/it/ui.rs drives Debian's chromium through its chromedriver with Selenium
# for Python, in a venv of its own.
UI_VENV="$SERVICES_DIR/ui-venv"
SELENIUM_VERSION=4.45.0
browser_install() {
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 ||
        apt_install chromium chromium-driver fonts-dejavu-core
    make_venv "$UI_VENV"
    if ! "$UI_VENV/bin/python" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM_VERSION')" 2>/dev/null; then
        log "installing selenium $SELENIUM_VERSION into $UI_VENV"
        quiet "$UI_VENV/bin/pip" install --quiet "selenium==$SELENIUM_VERSION"
    fi
}

# ============================================================================
# Env file and commands
# ============================================================================

write_env() {
    local tmp="$ENV_FILE.tmp.$$"
    {
        echo "# Written by scripts/services.sh up; source it: . .services/env"
        echo "export SERVICES_DIR=$SERVICES_DIR"
        echo "export MONGODB_URI=mongodb://$MONGO_HOST:$MONGO_PORT"
        echo "export RABBITMQ_URL=amqp://guest:guest@$RABBIT_HOST:$RABBIT_PORT/%2f"
        echo "export RABBITMQ_TLS_URL=amqps://guest:guest@$RABBIT_HOST:$RABBIT_TLS_PORT/%2f"
        echo "export SERVICES_TLS_CA=$TLS_CA"
        echo "export SEED_REFERENCE_DIR=$SEED_REFERENCE_DIR"
        echo "export SEED_WORKERS_PYTHON=$SEED_VENV/bin/python"
        echo "export UI_TEST_PYTHON=$UI_VENV/bin/python"
        camunda_env
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
}

# Serialise concurrent runs (say, scripts/test.sh in two terminals). fd 9 is
# closed for the long-lived servers we start (close_inherited_fds), so they
# don't keep the lock.
take_lock() {
    mkdir -p "$SERVICES_DIR"
    exec 9>"$SERVICES_DIR/.lock"
    flock -w 300 9 || die "another services.sh is still running (lock $SERVICES_DIR/.lock)"
}

cmd_up() {
    local gateway_only=0
    case "${1:-}" in
        "") ;;
        --gateway-only) gateway_only=1 ;;
        *) die "unknown option '$1' (use: up [--gateway-only])" ;;
    esac
    require_root
    take_lock
    local start=$SECONDS
    rabbit_up
    secantus_up
    # The engine (a JVM of some 300 MB) and the seed workers' venv serve the tests only.
    [ "$gateway_only" = 1 ] || camunda_up
    [ "$gateway_only" = 1 ] || seed_workers_venv
    faketime_install
    [ "$gateway_only" = 1 ] || browser_install
    write_env
    echo "services up in $((SECONDS - start))s: RabbitMQ $RABBIT_HOST:$RABBIT_PORT (amqps $RABBIT_TLS_PORT), SecantusDB $MONGO_HOST:$MONGO_PORT; env in $ENV_FILE"
}

cmd_down() {
    require_root
    take_lock
    camunda_down
    secantus_down
    rabbit_down
    echo "services down"
}

cmd_env() {
    [ -f "$ENV_FILE" ] || die "$ENV_FILE does not exist; run '$0 up' first"
    cat "$ENV_FILE"
}

case "${1:-up}" in
    up) cmd_up "${2:-}" ;;
    down) cmd_down ;;
    env) cmd_env ;;
    -h | --help | help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" ;;
    *) die "unknown command '$1' (use: up | down | env)" ;;
esac
