#!/usr/bin/env bash
# Load benchmarks of the home server (see bench/README.md).
#
#   scripts/bench.sh [p2-bench flags]     # issues 3 and 4: wrk against the gateway's HTTP routes
#   scripts/bench.sh ws [p2-ws-bench flags]  # issue 9: WebSocket connections and event latency
#   scripts/bench.sh federation [flags]      # issue 10: foreign sign-ins and foreign cert reads
#
# Default: installs wrk (Debian package) when it is missing, builds `p2-bench` in release
# mode, runs it with the arguments given here, and copies its report (stdout) to
# target/bench-latest.txt.
#
# `ws`: installs redis-server when it is missing (unless P2_TEST_REDIS_URL names a Redis),
# builds `p2-ws-bench` and the `polyproto` binary in release mode, raises the open-file limit
# (10 000 connections are 10 000 sockets in the bench and in the gateway, which inherits the
# limit), runs it, and copies its report to target/bench-ws-latest.txt.
#
#   scripts/bench.sh --duration 30 -c 64  # any p2-bench flag; `scripts/bench.sh --help` lists them
#   scripts/bench.sh ws -n 1000 --gateways 1  # `scripts/bench.sh ws --help` lists the others
#
# Progress and the stack's logs go to stderr. Runs from any directory. Exit status: that of
# the bench (0 even when a target is missed; non-zero when a measurement failed), or non-zero
# when installing or building failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib-services.sh
. "$ROOT/scripts/lib-services.sh"

p2_ensure_cargo

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-$ROOT/target}

if [ "${1:-}" = ws ]; then
    shift
    if [ -z "${P2_TEST_REDIS_URL:-}" ]; then
        command -v redis-server >/dev/null 2>&1 || p2_apt_install redis-server
    fi
    p2_log "cargo build --release -p p2-bench --bin p2-ws-bench; cargo build --release --bin polyproto"
    cargo build --release -p p2-bench --bin p2-ws-bench
    cargo build --release -p polyproto-server --bin polyproto
    # As many open files as the hard limit allows (root may raise that too).
    want=200000
    if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want" ]; then
        ulimit -Hn "$want" 2>/dev/null || true
    fi
    ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
    out="$target_dir/bench-ws-latest.txt"
    p2_log "running p2-ws-bench${*:+ $*} (open-file limit $(ulimit -n)); report also in $out"
    "$target_dir/release/p2-ws-bench" --polyproto "$target_dir/release/polyproto" "$@" | tee "$out"
    exit "${PIPESTATUS[0]}"
fi

if [ "${1:-}" = federation ]; then
    shift
    command -v wrk >/dev/null 2>&1 || p2_apt_install wrk
    p2_log "cargo build --release -p p2-bench --bin p2-bench"
    cargo build --release -p p2-bench --bin p2-bench
    out="$target_dir/bench-federation-latest.txt"
    p2_log "running p2-bench federation${*:+ $*}; report also in $out"
    "$target_dir/release/p2-bench" federation "$@" | tee "$out"
    exit "${PIPESTATUS[0]}"
fi

command -v wrk >/dev/null 2>&1 || p2_apt_install wrk

p2_log "cargo build --release -p p2-bench"
cargo build --release -p p2-bench

out="$target_dir/bench-latest.txt"

p2_log "running p2-bench${*:+ $*}; report also in $out"
"$target_dir/release/p2-bench" "$@" | tee "$out"
