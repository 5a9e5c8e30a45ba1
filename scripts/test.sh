#!/usr/bin/env bash
# Runs every test of the workspace against a real PostgreSQL and a real Redis.
#
#   scripts/test.sh [EXTRA CARGO TEST ARGS...]
#       e.g. scripts/test.sh -p p2-model      scripts/test.sh -p p2-session -- --nocapture
#   scripts/test.sh --services-only -- CMD [ARGS...]
#       start the servers, run CMD with the variables below exported, stop the servers
#
# What it does:
#   1. installs the PostgreSQL server, redis-server and redis-tools with apt-get if missing
#      (Debian/Ubuntu, as root or with sudo);
#   2. starts a throwaway PostgreSQL cluster (trust auth, user `postgres`) and a Redis without
#      persistence in a fresh temp dir, each on a free 127.0.0.1 port;
#   3. exports P2_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres and
#      P2_TEST_REDIS_URL=redis://127.0.0.1:PORT/ and waits until both answer;
#   3b. installs schemathesis (PyPI, the pinned release) into the virtualenv
#      ${XDG_CACHE_HOME:-$HOME/.cache}/polyproto/venv when it is missing (python3 -m venv; apt-get
#      install python3-venv if needed) and exports P2_SCHEMATHESIS=<venv>/bin/schemathesis for
#      the OpenAPI e2e test (an executable P2_SCHEMATHESIS already set is used as it is), and
#      the websockets library into the same venv, exporting P2_PYTHON=<venv>/bin/python for the
#      permessage-deflate interop test (a P2_PYTHON that imports websockets is used as it is);
#   3c. without a package selection (and unless P2_DEPLOY_CHECKED=1), runs
#      scripts/check-deploy.sh: the deployment files, offline (it installs its own tools);
#   4. runs `cargo test --workspace --doc`, then, if that passed,
#      `cargo test --workspace --all-targets [EXTRA ARGS]` (extra args go to the second command
#      only; but if they select packages with -p/--package, both commands test just those
#      packages, without --workspace), and ends with the line `tests: N passed, N failed`;
#   5. always (success, failure, Ctrl-C) stops both servers and removes the temp dir, and exits
#      with cargo's status.
#
# If P2_TEST_POSTGRES_URL and/or P2_TEST_REDIS_URL are already set, those servers are used
# (they must answer within 10 s) and nothing is started for them.
# Other environment is passed through to the tests unchanged, e.g. TEST_LOG=1 to see the
# services' logs in test output, RUST_BACKTRACE=1, CARGO_TARGET_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib-services.sh
. "$ROOT/scripts/lib-services.sh"

services_only=0
if [ "${1:-}" = "--services-only" ]; then
    services_only=1
    shift
    [ "${1:-}" != "--" ] || shift
    [ "$#" -gt 0 ] || p2_die "usage: $0 --services-only -- CMD [ARGS...]"
elif [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

# shellcheck disable=SC2317,SC2329  # invoked by the trap
on_exit() {
    local status=$?
    trap - EXIT INT TERM
    p2_services_stop
    exit "$status"
}
trap on_exit EXIT
# Ctrl-C / kill: leave through the EXIT trap with the conventional status.
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$services_only" -eq 0 ]; then
    p2_ensure_cargo
fi
p2_services_start
p2_ensure_schemathesis
p2_ensure_python_websockets

status=0
if [ "$services_only" -eq 1 ]; then
    p2_log "running: $*"
    "$@" || status=$?
else
    # `--workspace` would override `-p`: with a package selection among the extra args, test
    # those packages (doc tests too) instead of the whole workspace.
    scope=(--workspace)
    pkgs=()
    prev=""
    for arg in "$@"; do
        [ "$arg" != "--" ] || break
        case "$prev" in -p | --package) pkgs+=(-p "$arg") ;; esac
        case "$arg" in
            --package=*) pkgs+=(-p "${arg#--package=}") ;;
            -p?*) pkgs+=(-p "${arg#-p}") ;;
        esac
        prev=$arg
    done
    [ "${#pkgs[@]}" -eq 0 ] || scope=()
    # The deployment files are part of "every test": checked offline first (compose renders
    # and refuses without its secrets, the kustomize base and both overlays render and
    # validate, hadolint, shellcheck). Skipped for a package selection, and when the caller
    # ran it already (.ci/run sets P2_DEPLOY_CHECKED=1).
    deploy_status=0
    if [ "${#pkgs[@]}" -eq 0 ] && [ "${P2_DEPLOY_CHECKED:-0}" != 1 ]; then
        p2_log "scripts/check-deploy.sh"
        bash "$ROOT/scripts/check-deploy.sh" || deploy_status=$?
    fi
    # Doc tests first (few), then every target; both outputs are kept to count the results.
    results="$(mktemp)"
    doc_scope=("${scope[@]}")
    [ "${#pkgs[@]}" -eq 0 ] || doc_scope=("${pkgs[@]}")
    p2_log "cargo test ${doc_scope[*]} --doc"
    cargo test "${doc_scope[@]}" --doc 2>&1 | tee -a "$results" || status=$?
    if [ "$status" -eq 0 ]; then
        p2_log "cargo test${scope[*]:+ ${scope[*]}} --all-targets $*"
        cargo test "${scope[@]}" --all-targets "$@" 2>&1 | tee -a "$results" || status=$?
    fi
    passed=$(sed -n 's/^test result: .*[^0-9]\([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\1/p' "$results" | awk '{s+=$1} END {print s+0}')
    failed=$(sed -n 's/^test result: .*[^0-9]\([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\2/p' "$results" | awk '{s+=$1} END {print s+0}')
    rm -f "$results"
    if [ "$deploy_status" -ne 0 ]; then
        p2_log "the deployment checks failed (exit $deploy_status)"
        failed=$((failed + 1))
        [ "$status" -ne 0 ] || status=$deploy_status
    fi
    if [ "$status" -eq 0 ]; then
        p2_log "all tests passed"
    else
        p2_log "tests failed (exit $status)"
        [ "$failed" -gt 0 ] || failed=1
    fi
    # The plain closing line CI reads: the totals over every test binary.
    printf 'tests: %d passed, %d failed\n' "$passed" "$failed"
fi
exit "$status"
