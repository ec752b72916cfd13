#!/usr/bin/env bash
# Tests deploy/ and the container image as docs/quickstart-kubernetes.md
# uses them, offline, on this machine:
#  1. the Secrets' files are made with deploy/kubernetes/secrets/generate.sh
#     (in a copy of deploy/), the kustomizations are rendered with
#     `kubectl kustomize`, and every object is validated against the
#     Kubernetes schemas (kubernetes-validate --strict); scripts/deploy_checks.py
#     checks what the schemas cannot (references between the objects, the
#     ServiceMonitor, the apiserver's audit policy, kubeconfig and flags);
#  2. the image is built from the Dockerfile (podman, vfs storage, chroot
#     isolation) with the release binary `make test` built, and run with a
#     read-only root filesystem and the rendered ConfigMap and Secrets
#     mounted where the Deployment mounts them: `serve --check-config`, then
#     `serve`, which must answer /healthz over TLS, refuse an event without
#     the token and alert on the quickstart's ConfigMap with credentials.
# `make test` runs it after the cargo tests (which build the binary).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=$ROOT/target/release/peregrine
CORPUS=${PEREGRINE_AUDIT_CORPUS:-$ROOT/../shared/audit-corpus}
work=$(mktemp -d "${TMPDIR:-/tmp}/peregrine-deploy.XXXXXX")
container=""
cleanup() {
    [[ -n $container ]] && podman "${podman_opts[@]}" rm -f "$container" >/dev/null 2>&1 || true
    [[ -d $work/containers ]] && podman "${podman_opts[@]}" system reset -f >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "test-deploy: FAILED: $*" >&2; exit 1; }
step() { echo "test-deploy: $*"; }

[[ -x $BIN ]] || fail "no $BIN: build it first (cargo build --release -p peregrine)"

# ---- 1. manifests ----
cp -r deploy "$work/deploy"
"$work/deploy/kubernetes/secrets/generate.sh" >/dev/null
token=$(cat "$work/deploy/kubernetes/secrets/webhook-token")
kubectl kustomize "$work/deploy/kubernetes" >"$work/rendered.yaml"
kubectl kustomize "$work/deploy/kubernetes-servicemonitor" >"$work/rendered-sm.yaml"
step "rendered $(grep -c '^kind:' "$work/rendered.yaml") objects ($(grep -c '^kind:' "$work/rendered-sm.yaml") with the ServiceMonitor)"

# Every object must pass; the only schema allowed to be missing is the
# Prometheus Operator's (a CRD), which deploy_checks.py checks instead.
validate() {
    local out
    out=$(python3 -m kubernetes_validate --strict "$1" 2>&1) || fail "kubernetes-validate $1:"$'\n'"$out"
    local unexpected
    unexpected=$(grep -v ' passed for resource ' <<<"$out" \
        | grep -v "Couldn't find schema for kind ServiceMonitor with api version monitoring.coreos.com/v1" || true)
    [[ -z $unexpected ]] || fail "kubernetes-validate $1:"$'\n'"$unexpected"
    step "$(grep -c ' passed for resource ' <<<"$out") objects valid against the Kubernetes $(python3 -m kubernetes_validate --version) schemas"
}
validate "$work/rendered.yaml"
validate "$work/rendered-sm.yaml"

# The webhook kubeconfig, filled in as the quickstart does, is one kubectl reads.
sed -e "s/PEREGRINE_ADDRESS/10.43.0.10/" -e "s/PEREGRINE_TOKEN/$token/" \
    deploy/kubernetes/apiserver/audit-webhook.yaml >"$work/audit-webhook.yaml"
server=$(kubectl config view --kubeconfig "$work/audit-webhook.yaml" -o jsonpath='{.clusters[0].cluster.server}')
[[ $server == https://10.43.0.10:8765/k8s-audit ]] || fail "webhook kubeconfig server: $server"
python3 scripts/deploy_checks.py "$work/rendered.yaml" "$work/rendered-sm.yaml" \
    deploy/kubernetes/apiserver "$work/audit-webhook.yaml" || fail "deploy_checks.py"
step "objects, audit policy, webhook kubeconfig and apiserver flags agree"

# The ConfigMap and Secrets as the pod sees them: files under /etc/peregrine.
python3 - "$work/rendered.yaml" "$work/etc" <<'PY'
import base64, os, sys, yaml
objs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(o for o in objs if o["kind"] == "Deployment")
spec = dep["spec"]["template"]["spec"]
vols = {v["name"]: v for v in spec["volumes"]}
find = lambda kind, name: next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)
for m in spec["containers"][0]["volumeMounts"]:
    v = vols[m["name"]]
    if "configMap" in v:
        data = {k: val.encode() for k, val in find("ConfigMap", v["configMap"]["name"])["data"].items()}
    elif "secret" in v:
        data = {k: base64.b64decode(val) for k, val in find("Secret", v["secret"]["secretName"])["data"].items()}
    else:
        continue
    assert m["mountPath"].startswith("/etc/peregrine")
    dest = sys.argv[2] + m["mountPath"][len("/etc/peregrine"):]
    if "subPath" in m:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        open(dest, "wb").write(data[m["subPath"]])
    else:
        os.makedirs(dest, exist_ok=True)
        for k, val in data.items():
            open(os.path.join(dest, k), "wb").write(val)
PY
chmod -R a+rX "$work/etc"

# ---- 2. the image ----
scripts/image-rootfs.sh "$ROOT/target/image-rootfs" "$BIN" >/dev/null
podman_opts=(--root "$work/containers" --runroot "$work/run" --storage-driver vfs)
# crun refuses this kind of host (cgroups v1/v2 hybrid); runc runs here.
command -v runc >/dev/null && podman_opts+=(--runtime runc)
image=localhost/peregrine:test
podman "${podman_opts[@]}" build -q --isolation chroot --build-arg ROOTFS=prebuilt -t "$image" . >/dev/null \
    || fail "podman build"
step "image built: $(podman "${podman_opts[@]}" image inspect "$image" --format '{{.Size}}') bytes, user $(podman "${podman_opts[@]}" image inspect "$image" --format '{{.Config.User}}')"
[[ $(podman "${podman_opts[@]}" image inspect "$image" --format '{{.Config.User}} {{.Config.Cmd}}') == "65532:65532 [serve]" ]] \
    || fail "the image must run serve as 65532"

mkdir -p "$work/state" && chown 65532:65532 "$work/state" 2>/dev/null || chmod 0777 "$work/state"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Lower limits than the host's: a container may not raise them.
run_opts=(--read-only --network host --ulimit "nofile=4096:4096" --ulimit "nproc=4096:4096"
    -e "PEREGRINE_LISTEN=127.0.0.1:$port"
    -v "$work/etc/peregrine.toml:/etc/peregrine/peregrine.toml:ro"
    -v "$work/etc/tls:/etc/peregrine/tls:ro"
    -v "$work/etc/token:/etc/peregrine/token:ro"
    -v "$work/state:/var/lib/peregrine")
args=(serve --config /etc/peregrine/peregrine.toml --log-format json)

out=$(podman "${podman_opts[@]}" run --rm "${run_opts[@]}" "$image" "${args[@]}" --check-config --log warn 2>&1) \
    || fail "serve --check-config in the image:"$'\n'"$out"
grep -q '^config: /etc/peregrine/peregrine.toml: ok' <<<"$out" || fail "check-config: $out"
grep -q '^module falco_k8s_audit (global): ok' <<<"$out" || fail "check-config: $out"
step "serve --check-config accepts the ConfigMap's peregrine.toml in the image"

# The image holds nothing to run but Peregrine.
if podman "${podman_opts[@]}" run --rm "${run_opts[@]}" --entrypoint /bin/sh "$image" -c true >/dev/null 2>&1; then
    fail "the image has a shell"
fi

container=$(podman "${podman_opts[@]}" run -d "${run_opts[@]}" "$image" "${args[@]}")
curl_tls=(curl -sS --http1.1 --max-time 5 --cacert "$work/etc/tls/tls.crt"
    --resolve "peregrine.peregrine.svc:$port:127.0.0.1")
url=https://peregrine.peregrine.svc:$port
for _ in $(seq 1 240); do
    "${curl_tls[@]}" -f "$url/healthz" >/dev/null 2>&1 && break
    [[ $(podman "${podman_opts[@]}" inspect -f '{{.State.Running}}' "$container") == true ]] \
        || fail "serve exited:"$'\n'"$(podman "${podman_opts[@]}" logs "$container" 2>&1 | tail -20)"
    sleep 0.5
done
"${curl_tls[@]}" -f "$url/healthz" >/dev/null || fail "no /healthz over TLS"
step "serve answers /healthz over TLS with the Secret's certificate, on a read-only root filesystem"

# The quickstart's `kubectl exec` into the pod, run in the container.
doc_exec=$(sed -n 's/^kubectl -n peregrine exec deploy\/peregrine -- //p' docs/quickstart-kubernetes.md)
[[ -n $doc_exec ]] || fail "docs/quickstart-kubernetes.md has no kubectl exec line"
read -r -a doc_args <<<"$doc_exec"
out=$(podman "${podman_opts[@]}" exec "$container" "${doc_args[@]}" 2>&1) \
    || fail "$doc_exec in the running container:"$'\n'"$out"
grep -q '^config: /etc/peregrine/peregrine.toml: ok' <<<"$out" || fail "$doc_exec: $out"
step "the quickstart's \`$doc_exec\` passes in the running container"

# The first event of the recording: a ConfigMap created with AWS keys.
event=$work/event.json
head -n1 "$CORPUS/falco/create_configmap_sensitive_values.json" >"$event"
code=$("${curl_tls[@]}" -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary @"$event" "$url/k8s-audit")
[[ $code == 401 ]] || fail "an event without the token got $code, not 401"
code=$("${curl_tls[@]}" -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $token" --data-binary @"$event" "$url/k8s-audit")
[[ $code == 200 ]] || fail "the event with the token got $code: $("${curl_tls[@]}" -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $token" --data-binary @"$event" "$url/k8s-audit")"
# A loaded machine can take seconds to evaluate and flush; wait up to 60 s.
# grep reads the whole log (no -q): with pipefail, a grep that quits early
# makes the writer die of SIGPIPE and the pipeline fail although it matched.
rule="Create/Modify Configmap With Private Credentials"
for _ in $(seq 1 240); do
    podman "${podman_opts[@]}" logs "$container" 2>/dev/null | grep -F "\"rule\":\"$rule\"" >/dev/null && break
    sleep 0.25
done
podman "${podman_opts[@]}" logs "$container" 2>/dev/null | grep -F "\"rule\":\"$rule\"" >/dev/null \
    || fail "no alert in the pod's log:"$'\n'"$(podman "${podman_opts[@]}" logs "$container" 2>&1 | tail -20)"
# The API is closed once a tenant has a token; the webhook's token reads the
# default tenant's alerts, as the quickstart says.
code=$("${curl_tls[@]}" -o /dev/null -w '%{http_code}' "$url/api/v1/alerts")
[[ $code == 401 ]] || fail "the API without a token got $code, not 401"
"${curl_tls[@]}" -f -H "Authorization: Bearer $token" "$url/api/v1/alerts" | grep -F "$rule" >/dev/null \
    || fail "the alert is not in the API"
podman "${podman_opts[@]}" stop -t 10 "$container" >/dev/null
[[ -d $work/state/journal && -d $work/state/cache ]] || fail "no journal or cache on the state volume"
step "the quickstart's ConfigMap with credentials raised \"$rule\" (log and API); state is on the volume"
