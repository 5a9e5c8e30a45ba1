# shellcheck shell=bash
# Shared helpers for scripts/test.sh and .ci/run: install and run throwaway PostgreSQL and Redis
# servers on loopback. Source this file; it defines functions only and changes no shell options.
#
#   p2_log MSG...                 print one step line to stderr
#   p2_ensure_cargo               put cargo on PATH ($HOME/.cargo/env) or fail
#   p2_apt_install PKG...         apt-get install (update first, once), quiet, non-interactive
#   p2_ensure_server_packages     install PostgreSQL server, redis-server and redis-tools if missing
#   p2_services_start             start (or reuse) PostgreSQL + Redis and export
#                                 P2_TEST_POSTGRES_URL / P2_TEST_REDIS_URL
#   p2_services_stop              stop what p2_services_start started and remove its temp dir
#                                 (idempotent; safe to call from an EXIT trap)
#   p2_ensure_schemathesis        install schemathesis (PyPI) into a venv in the cache dir if
#                                 missing and export P2_SCHEMATHESIS (the OpenAPI e2e test)
#   p2_ensure_python_websockets   install websockets (PyPI) into that venv if missing and export
#                                 P2_PYTHON (the permessage-deflate interop e2e test)

p2_log() {
    printf '==> %s\n' "$*" >&2
}

p2_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

p2_ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "${HOME:-/root}/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "${HOME:-/root}/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || p2_die "cargo not found on PATH (install Rust with rustup)"
}

# Run a command as root: directly when we are root, else through sudo when there is one.
p2_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        p2_die "need root (or sudo) to run: $*"
    fi
}

P2_APT_UPDATED=${P2_APT_UPDATED:-0}
p2_apt_install() {
    command -v apt-get >/dev/null 2>&1 || p2_die "apt-get not found; install these yourself: $*"
    if [ "$P2_APT_UPDATED" != 1 ]; then
        p2_log "apt-get update"
        p2_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
            || p2_die "apt-get update failed"
        P2_APT_UPDATED=1
    fi
    p2_log "apt-get install $*"
    p2_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >/dev/null || p2_die "apt-get install $* failed"
}

# Directory holding initdb/pg_ctl/postgres (newest installed major version), or empty.
p2_pg_bindir() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            best=$(printf '%s\n%s\n' "$best" "$d" | sed '/^$/d' | sort -V | tail -n 1)
        fi
    done
    if [ -z "$best" ] && command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        best=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
    fi
    printf '%s' "$best"
}

# Client tools: Debian puts psql/pg_isready on PATH through wrappers; fall back to the bindir.
p2_pg_tool() {
    local tool=$1 bindir
    if command -v "$tool" >/dev/null 2>&1; then
        command -v "$tool"
        return
    fi
    bindir=$(p2_pg_bindir)
    if [ -n "$bindir" ] && [ -x "$bindir/$tool" ]; then
        printf '%s\n' "$bindir/$tool"
        return
    fi
    return 1
}

p2_ensure_server_packages() {
    local pkgs=()
    [ -n "$(p2_pg_bindir)" ] || pkgs+=(postgresql)
    p2_pg_tool pg_isready >/dev/null || pkgs+=(postgresql-client)
    command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
    if [ "${#pkgs[@]}" -gt 0 ]; then
        p2_apt_install "${pkgs[@]}"
        # The Debian packages may start system-wide instances on the default ports; they do not
        # get in our way (we use other ports), so leave them alone.
    fi
    [ -n "$(p2_pg_bindir)" ] || p2_die "PostgreSQL server binaries (initdb, pg_ctl) not found"
    command -v redis-server >/dev/null 2>&1 || p2_die "redis-server not found"
}

# A free TCP port on 127.0.0.1 (not 5432/6379). Racy by nature; callers retry on bind failure.
p2_free_port() {
    local port
    if command -v python3 >/dev/null 2>&1; then
        port=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null) || port=""
        if [ -n "$port" ]; then
            printf '%s' "$port"
            return
        fi
    fi
    local i
    for i in $(seq 1 200); do
        port=$((20000 + RANDOM % 30000))
        # Nothing answering a connect there: take it.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s' "$port"
            return
        fi
    done
    p2_die "no free port found"
}

# host and port out of scheme://[user[:pw]@]host[:port][/...]
p2_url_host() { local u=${1#*://}; u=${u#*@}; u=${u%%/*}; u=${u%%\?*}; printf '%s' "${u%%:*}"; }
p2_url_port() {
    local u=${1#*://} def=$2; u=${u#*@}; u=${u%%/*}; u=${u%%\?*}
    if [[ $u == *:* ]]; then printf '%s' "${u##*:}"; else printf '%s' "$def"; fi
}

p2_pg_ready_url() {
    "$(p2_pg_tool pg_isready)" -q -t 2 -d "$1" >/dev/null 2>&1
}

p2_redis_ready_url() {
    [ "$(redis-cli -u "$1" ping 2>/dev/null)" = PONG ]
}

# Wait up to $2 seconds for command "$1 ..." to succeed.
p2_wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 0.2
    done
    p2_log "$what did not answer within ${secs}s"
    return 1
}

P2_SVC_DIR=""
P2_SVC_PG_STARTED=0
P2_SVC_REDIS_STARTED=0
P2_SVC_REDIS_PORT=""

p2_start_postgres() {
    local bindir port attempt runas=() pg_isready
    bindir=$(p2_pg_bindir)
    pg_isready=$(p2_pg_tool pg_isready)
    mkdir -p "$P2_SVC_DIR/pg"
    if [ "$(id -u)" -eq 0 ]; then
        # PostgreSQL refuses to run as root: run it as the `postgres` system user.
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
        chown -R postgres: "$P2_SVC_DIR"
        # (env -C: start from a directory postgres may enter, not the caller's cwd.)
        runas=(runuser -u postgres -- env -C "$P2_SVC_DIR")
    fi
    p2_log "initdb (PostgreSQL $(basename "$(dirname "$bindir")")) in $P2_SVC_DIR/pg"
    "${runas[@]}" "$bindir/initdb" -D "$P2_SVC_DIR/pg/data" -U postgres --auth=trust \
        --encoding=UTF8 --locale=C --no-sync >"$P2_SVC_DIR/pg/initdb.log" 2>&1 \
        || { cat "$P2_SVC_DIR/pg/initdb.log" >&2; p2_die "initdb failed"; }
    for attempt in 1 2 3 4 5; do
        port=$(p2_free_port)
        p2_log "starting PostgreSQL on 127.0.0.1:$port"
        # setsid: keep the server out of our process group, so Ctrl-C reaches cargo, not the
        # server, and the EXIT trap shuts it down cleanly. Durability is off: it is throwaway.
        if setsid -w "${runas[@]}" "$bindir/pg_ctl" -D "$P2_SVC_DIR/pg/data" -l "$P2_SVC_DIR/pg/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $P2_SVC_DIR/pg -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null 2>&1; then
            P2_SVC_PG_STARTED=1
            export P2_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
            p2_wait_for PostgreSQL 30 "$pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
                || p2_die "PostgreSQL did not become ready (log: $P2_SVC_DIR/pg/server.log)"
            return 0
        fi
        p2_log "PostgreSQL failed to start on port $port (attempt $attempt); server log:"
        tail -n 5 "$P2_SVC_DIR/pg/server.log" >&2 || true
    done
    p2_die "could not start PostgreSQL"
}

p2_start_redis() {
    local port attempt
    for attempt in 1 2 3 4 5; do
        port=$(p2_free_port)
        p2_log "starting Redis on 127.0.0.1:$port"
        rm -f "$P2_SVC_DIR/redis.pid"
        if redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
            --pidfile "$P2_SVC_DIR/redis.pid" --logfile "$P2_SVC_DIR/redis.log" \
            --save '' --appendonly no --dir "$P2_SVC_DIR" >/dev/null 2>&1 \
            && p2_wait_for Redis 10 p2_redis_ready_url "redis://127.0.0.1:$port/"; then
            P2_SVC_REDIS_STARTED=1
            P2_SVC_REDIS_PORT=$port
            export P2_TEST_REDIS_URL="redis://127.0.0.1:$port/"
            return 0
        fi
        p2_log "Redis failed to start on port $port (attempt $attempt); log:"
        tail -n 5 "$P2_SVC_DIR/redis.log" >&2 || true
        # It may have daemonized and then died, or still be around: make sure it is gone.
        if [ -s "$P2_SVC_DIR/redis.pid" ]; then kill "$(cat "$P2_SVC_DIR/redis.pid")" 2>/dev/null || true; fi
    done
    p2_die "could not start Redis"
}

p2_services_start() {
    local need_pg=1 need_redis=1
    if [ -n "${P2_TEST_POSTGRES_URL:-}" ] || [ -n "${P2_TEST_REDIS_URL:-}" ]; then
        # The caller's servers: only client tools are needed to check them.
        local pkgs=()
        if [ -n "${P2_TEST_POSTGRES_URL:-}" ] && ! p2_pg_tool pg_isready >/dev/null; then pkgs+=(postgresql-client); fi
        if [ -n "${P2_TEST_REDIS_URL:-}" ] && ! command -v redis-cli >/dev/null 2>&1; then pkgs+=(redis-tools); fi
        [ "${#pkgs[@]}" -eq 0 ] || p2_apt_install "${pkgs[@]}"
    fi
    if [ -n "${P2_TEST_POSTGRES_URL:-}" ]; then
        p2_log "using PostgreSQL at P2_TEST_POSTGRES_URL ($(p2_url_host "$P2_TEST_POSTGRES_URL"):$(p2_url_port "$P2_TEST_POSTGRES_URL" 5432))"
        p2_wait_for "PostgreSQL at P2_TEST_POSTGRES_URL" 10 p2_pg_ready_url "$P2_TEST_POSTGRES_URL" \
            || p2_die "P2_TEST_POSTGRES_URL is set but not reachable; unset it to start a throwaway server"
        need_pg=0
    fi
    if [ -n "${P2_TEST_REDIS_URL:-}" ]; then
        p2_log "using Redis at P2_TEST_REDIS_URL ($(p2_url_host "$P2_TEST_REDIS_URL"):$(p2_url_port "$P2_TEST_REDIS_URL" 6379))"
        p2_wait_for "Redis at P2_TEST_REDIS_URL" 10 p2_redis_ready_url "$P2_TEST_REDIS_URL" \
            || p2_die "P2_TEST_REDIS_URL is set but not reachable; unset it to start a throwaway server"
        need_redis=0
    fi
    if [ "$need_pg" -eq 0 ] && [ "$need_redis" -eq 0 ]; then
        return 0
    fi
    p2_ensure_server_packages
    P2_SVC_DIR=$(mktemp -d "${TMPDIR:-/tmp}/p2-test.XXXXXX")
    chmod 755 "$P2_SVC_DIR"
    [ "$need_pg" -eq 0 ] || p2_start_postgres
    [ "$need_redis" -eq 0 ] || p2_start_redis
    p2_log "P2_TEST_POSTGRES_URL=$P2_TEST_POSTGRES_URL"
    p2_log "P2_TEST_REDIS_URL=$P2_TEST_REDIS_URL"
}

p2_services_stop() {
    local pid i bindir runas=()
    if [ "$P2_SVC_REDIS_STARTED" = 1 ]; then
        P2_SVC_REDIS_STARTED=0
        p2_log "stopping Redis"
        pid=$(cat "$P2_SVC_DIR/redis.pid" 2>/dev/null || true)
        redis-cli -h 127.0.0.1 -p "$P2_SVC_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
        if [ -n "$pid" ]; then
            for ((i = 0; i < 50; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                [ "$i" -ne 25 ] || kill "$pid" 2>/dev/null || true
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    if [ "$P2_SVC_PG_STARTED" = 1 ]; then
        P2_SVC_PG_STARTED=0
        p2_log "stopping PostgreSQL"
        bindir=$(p2_pg_bindir)
        [ "$(id -u)" -ne 0 ] || runas=(runuser -u postgres -- env -C /)
        if ! "${runas[@]}" "$bindir/pg_ctl" -D "$P2_SVC_DIR/pg/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
            pid=$(head -n 1 "$P2_SVC_DIR/pg/data/postmaster.pid" 2>/dev/null || true)
            if [ -n "$pid" ]; then
                p2_log "pg_ctl stop failed; killing postmaster $pid"
                kill -9 "$pid" 2>/dev/null || true
            fi
        fi
    fi
    if [ -n "$P2_SVC_DIR" ] && [ -d "$P2_SVC_DIR" ]; then
        rm -rf "$P2_SVC_DIR"
        P2_SVC_DIR=""
    fi
}

# The schemathesis release the OpenAPI e2e test is run with (pinned: its generated requests, and
# so a seeded run, depend on the release).
P2_SCHEMATHESIS_VERSION=${P2_SCHEMATHESIS_VERSION:-4.32.5}
# The websockets release the permessage-deflate interop e2e test is run with (an independent
# client implementation of RFC 7692).
P2_WEBSOCKETS_VERSION=${P2_WEBSOCKETS_VERSION:-17.4}

# Creates (or repairs) the virtualenv under the user's cache dir and prints its path.
p2_ensure_venv() {
    local venv="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/polyproto/venv"
    command -v python3 >/dev/null 2>&1 || p2_apt_install python3 python3-venv
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$venv"
        mkdir -p "$(dirname "$venv")"
        p2_log "python3 -m venv $venv"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            # Debian's python3 ships venv (ensurepip) separately.
            rm -rf "$venv"
            p2_apt_install python3-venv
            python3 -m venv "$venv" >/dev/null || p2_die "python3 -m venv $venv failed"
        fi
    fi
    printf '%s\n' "$venv"
}

# Whether PACKAGE==VERSION is installed in the venv at $1.
p2_venv_has() {
    "$1/bin/python" -c "import importlib.metadata as m, sys
sys.exit(m.version('$2') != '$3')" 2>/dev/null
}

# pip-installs PACKAGE==VERSION into the venv at $1 unless it is there already.
p2_venv_install() {
    p2_venv_has "$1" "$2" "$3" && return 0
    p2_log "pip install $2==$3 into $1"
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check "$2==$3" \
        || p2_die "pip install $2==$3 failed"
}

# Installs schemathesis into a virtualenv under the user's cache dir (reused by later runs) when
# it is missing or another release, and exports P2_SCHEMATHESIS=<venv>/bin/schemathesis. A
# P2_SCHEMATHESIS that is already set to an executable is used as it is.
p2_ensure_schemathesis() {
    if [ -n "${P2_SCHEMATHESIS:-}" ] && [ -x "$P2_SCHEMATHESIS" ]; then
        p2_log "using schemathesis at P2_SCHEMATHESIS ($P2_SCHEMATHESIS)"
        return 0
    fi
    local venv
    venv=$(p2_ensure_venv)
    p2_venv_install "$venv" schemathesis "$P2_SCHEMATHESIS_VERSION"
    [ -x "$venv/bin/schemathesis" ] || p2_die "schemathesis was installed but $venv/bin/schemathesis is missing"
    export P2_SCHEMATHESIS="$venv/bin/schemathesis"
}

# Installs the websockets library into the same virtualenv and exports P2_PYTHON=<venv>/bin/python
# (the permessage-deflate interop test runs its client with it). A P2_PYTHON already set that
# imports websockets is used as it is.
p2_ensure_python_websockets() {
    if [ -n "${P2_PYTHON:-}" ] && "$P2_PYTHON" -c "import websockets" 2>/dev/null; then
        p2_log "using websockets under P2_PYTHON ($P2_PYTHON)"
        return 0
    fi
    local venv
    venv=$(p2_ensure_venv)
    p2_venv_install "$venv" websockets "$P2_WEBSOCKETS_VERSION"
    export P2_PYTHON="$venv/bin/python"
}
