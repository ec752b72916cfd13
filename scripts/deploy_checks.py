"""Offline checks of deploy/ beyond the schemas: the objects refer to each
other consistently, and the apiserver's files agree with them.

usage: deploy_checks.py RENDERED.yaml RENDERED-SERVICEMONITOR.yaml APISERVER_DIR WEBHOOK_KUBECONFIG
Exits 1 with one line per problem.
"""

import sys

import yaml

problems = []


def check(cond, what):
    if not cond:
        problems.append(what)


def objects(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(objs):
    out = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


rendered, rendered_sm, apiserver, kubeconfig = sys.argv[1:5]
objs = by_kind(objects(rendered))
for kind in ["Namespace", "ServiceAccount", "ConfigMap", "Secret", "PersistentVolumeClaim",
             "Deployment", "Service", "NetworkPolicy"]:
    check(kind in objs, f"kustomization renders no {kind}")
names = {(o["kind"], o["metadata"]["name"]) for k in objs.values() for o in k}
for k in objs.values():
    for o in k:
        if o["kind"] != "Namespace":
            check(o["metadata"].get("namespace") == "peregrine",
                  f"{o['kind']}/{o['metadata']['name']} is not in namespace peregrine")

dep = objs["Deployment"][0]
pod = dep["spec"]["template"]["spec"]
check(dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate",
      "the Deployment must run one replica with the Recreate strategy (the spool has one owner)")
psc = pod.get("securityContext", {})
check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532,
      "the pod must run as non-root UID 65532")
check(pod.get("automountServiceAccountToken") is False, "no ServiceAccount token in the pod")
(c,) = pod["containers"]
sc = c.get("securityContext", {})
check(sc.get("readOnlyRootFilesystem") is True, "the root filesystem must be read-only")
check(sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
check(sc.get("capabilities", {}).get("drop") == ["ALL"], "every capability dropped")
for res in ["requests", "limits"]:
    check(c.get("resources", {}).get(res, {}).get("memory"), f"a memory {res[:-1]}")
check("cpu" in c.get("resources", {}).get("requests", {}), "a CPU request")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(ports.get("https") == 8765, "the container serves on 8765, named https")
for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
    g = c.get(probe, {}).get("httpGet", {})
    check(g.get("path") == "/healthz" and g.get("port") == "https" and g.get("scheme") == "HTTPS",
          f"{probe} must GET /healthz over HTTPS")
check("--check-config" not in c["args"], "the container serves")
volumes = {v["name"]: v for v in pod["volumes"]}
for m in c["volumeMounts"]:
    check(m["name"] in volumes, f"mount {m['name']} has no volume")
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
for v in volumes.values():
    if "configMap" in v:
        check(("ConfigMap", v["configMap"]["name"]) in names, f"no ConfigMap {v['configMap']['name']}")
    if "secret" in v:
        check(("Secret", v["secret"]["secretName"]) in names, f"no Secret {v['secret']['secretName']}")
    if "persistentVolumeClaim" in v:
        check(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names,
              f"no PVC {v['persistentVolumeClaim']['claimName']}")

# The paths of peregrine.toml are where the volumes are mounted.
import tomllib

(cm,) = objs["ConfigMap"]
config = tomllib.loads(cm["data"]["peregrine.toml"])
check(mounts.get("/etc/peregrine/peregrine.toml") == "config", "the config is mounted where args say")
check(c["args"][:3] == ["serve", "--config", "/etc/peregrine/peregrine.toml"], "serve reads the mounted config")
state = next(p for p, n in mounts.items() if volumes[n].get("persistentVolumeClaim"))
for key, path in [("journal", config["server"]["journal"]["dir"]),
                  ("store", config["store"]["path"]),
                  ("spool", config["delivery"]["spool_dir"]),
                  ("cache", config["engine"]["cache_dir"])]:
    check(path.startswith(state + "/"), f"{key} ({path}) is not on the volume at {state}")
for path in [config["server"]["tls"]["cert_file"], config["server"]["tls"]["key_file"],
             *config["tenants"]["default"]["token_files"]]:
    parent = path.rsplit("/", 1)[0]
    check(parent in mounts and "secret" in volumes[mounts[parent]], f"{path} is not in a mounted Secret")
check(config["server"]["listen"].endswith(":8765"), "peregrine.toml listens on 8765")
check(config["auth"]["default_tenant_open"] is False, "/k8s-audit needs the token")
tls = next(o for o in objs["Secret"] if o["type"] == "kubernetes.io/tls")
check(volumes[mounts["/etc/peregrine/tls"]]["secret"]["secretName"] == tls["metadata"]["name"],
      "the TLS Secret is mounted at /etc/peregrine/tls")

(svc,) = objs["Service"]
(sp,) = svc["spec"]["ports"]
check(sp["port"] == 8765 and sp["targetPort"] == "https", "the Service forwards 8765 to the https port")
labels = pod and dep["spec"]["template"]["metadata"]["labels"]
check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "the Service selects the pod")
(np,) = objs["NetworkPolicy"]
check(all(labels.get(k) == v for k, v in np["spec"]["podSelector"]["matchLabels"].items()),
      "the NetworkPolicy selects the pod")
check([p["port"] for r in np["spec"]["ingress"] for p in r["ports"]] == [8765],
      "the NetworkPolicy lets in 8765 only")

# The ServiceMonitor overlay: the base plus a monitor that finds the Service.
sm_objs = by_kind(objects(rendered_sm))
(sm,) = sm_objs.get("ServiceMonitor", [None])
check(sm is not None, "the servicemonitor overlay renders a ServiceMonitor")
if sm:
    check(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
    check(all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()),
          "the ServiceMonitor selects the Service")
    (ep,) = sm["spec"]["endpoints"]
    check(ep["port"] == sp["name"] and ep["path"] == "/metrics" and ep["scheme"] == "https",
          "the ServiceMonitor scrapes /metrics over HTTPS on the Service's port")
    check(ep["tlsConfig"]["ca"]["secret"]["name"] == tls["metadata"]["name"], "its CA is the TLS Secret")
    check(sum(len(v) for v in sm_objs.values()) == sum(len(v) for v in objs.values()) + 1,
          "the overlay is the base plus the ServiceMonitor")

# The apiserver side.
with open(f"{apiserver}/audit-policy.yaml") as f:
    policy = yaml.safe_load(f)
check(policy["apiVersion"] == "audit.k8s.io/v1" and policy["kind"] == "Policy", "audit policy kind")
levels = {"None", "Metadata", "Request", "RequestResponse"}
for i, r in enumerate(policy["rules"]):
    check(r.get("level") in levels, f"audit policy rule {i}: level {r.get('level')}")
    unknown = set(r) - {"level", "users", "userGroups", "verbs", "resources", "namespaces",
                        "nonResourceURLs", "omitStages", "omitManagedFields"}
    check(not unknown, f"audit policy rule {i}: unknown fields {unknown}")
check(policy["rules"][-1] == {"level": "Metadata"}, "the policy ends with a catch-all Metadata rule")
cm_rules = [r for r in policy["rules"]
            if any("configmaps" in g.get("resources", []) for g in r.get("resources", []))]
check(cm_rules and cm_rules[0]["level"] in ("Request", "RequestResponse")
      and "create" in cm_rules[0].get("verbs", []),
      "configmap writes are recorded with their body (the credentials rule reads it)")

with open(kubeconfig) as f:
    kc = yaml.safe_load(f)
(cl,) = kc["clusters"]
check(cl["cluster"]["server"].endswith(":8765/k8s-audit"), "the webhook posts to :8765/k8s-audit")
check(cl["cluster"]["tls-server-name"] == "peregrine.peregrine.svc", "the webhook checks the certificate's name")
check(kc["users"][0]["user"]["token"], "the webhook sends a token")

flags = {"audit-policy-file": "/etc/peregrine-audit/audit-policy.yaml",
         "audit-webhook-config-file": "/etc/peregrine-audit/audit-webhook.yaml",
         "audit-webhook-mode": "batch",
         "audit-webhook-batch-max-wait": "1s"}
with open(f"{apiserver}/k3s-config.yaml") as f:
    k3s = dict(a.split("=", 1) for a in yaml.safe_load(f)["kube-apiserver-arg"])
with open(f"{apiserver}/kubeadm-config.yaml") as f:
    kubeadm = yaml.safe_load(f)["apiServer"]
with open(f"{apiserver}/kind-cluster.yaml") as f:
    kind = yaml.safe_load(f)
(cp,) = kind["nodes"]
kind_api = yaml.safe_load(cp["kubeadmConfigPatches"][0])["apiServer"]
for name, args in [("k3s", k3s), ("kubeadm", kubeadm["extraArgs"]), ("kind", kind_api["extraArgs"])]:
    for k, v in flags.items():
        check(str(args.get(k)) == v, f"{name}: --{k} is {args.get(k)!r}, not {v!r}")
for name, api in [("kubeadm", kubeadm), ("kind", kind_api)]:
    check(any(v["mountPath"] == "/etc/peregrine-audit" for v in api["extraVolumes"]),
          f"{name}: the apiserver pod mounts /etc/peregrine-audit")
check(cp["extraMounts"][0]["containerPath"] == "/etc/peregrine-audit", "kind: the node mounts the files")
import os
for f in ["audit-policy.yaml", "audit-webhook.yaml"]:
    check(os.path.exists(f"{apiserver}/{f}"), f"apiserver/{f} exists")

for p in problems:
    print(f"deploy check: {p}")
sys.exit(1 if problems else 0)
