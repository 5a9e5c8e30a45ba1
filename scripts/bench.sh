#!/usr/bin/env bash
# Load benchmark of the home server (issues 3 and 4, "Performance"; see bench/README.md).
# Installs wrk (Debian package) when it is missing, builds `p2-bench` in release mode, runs it
# with the arguments given here, and copies its report (stdout) to target/bench-latest.txt.
# Progress and the stack's logs go to stderr. Runs from any directory.
#
#   scripts/bench.sh                      # defaults: wrk -t2 -c32, 10 s runs after 2 s warm-ups
#   scripts/bench.sh --duration 30 -c 64  # any p2-bench flag; `scripts/bench.sh --help` lists them
#
# Exit status: that of p2-bench (0 even when a target is missed; non-zero when a measurement
# failed), or non-zero when installing or building failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib-services.sh
. "$ROOT/scripts/lib-services.sh"

p2_ensure_cargo
command -v wrk >/dev/null 2>&1 || p2_apt_install wrk

p2_log "cargo build --release -p p2-bench"
cargo build --release -p p2-bench

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-$ROOT/target}
out="$target_dir/bench-latest.txt"

p2_log "running p2-bench${*:+ $*}; report also in $out"
"$target_dir/release/p2-bench" "$@" | tee "$out"
