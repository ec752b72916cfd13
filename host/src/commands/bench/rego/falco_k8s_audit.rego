# Twelve of Falco's k8s-audit rules (falcosecurity/plugins, k8saudit v0.18.0)
# in Rego, for `peregrine bench`'s peer figure. Each rule follows the same
# condition as the Rust pack (example-rules/rust/falco-k8s-audit/src/rules.rs)
# with the pack's default lists, and yields one alert object per match, with
# Falco's output text. `input` is one audit event as the apiserver posts it.
package falco

# --- Falco's lists (the pack's defaults) ---------------------------------

k8s_audit_stages := {"ResponseComplete"}

allowed_k8s_users := {
	"minikube", "minikube-user", "kubelet", "kops", "admin", "kube", "kube-proxy",
	"kube-apiserver-healthcheck", "kubernetes-admin", "cluster-autoscaler",
	"system:addon-manager", "cloud-controller-manager", "system:kube-controller-manager",
}

vertical_pod_autoscaler_users := {"vpa-recommender", "vpa-updater"}

eks_allowed_k8s_users := {
	"eks:node-manager", "eks:certificate-controller", "eks:fargate-scheduler", "eks:k8s-metrics",
	"eks:authenticator", "eks:cluster-event-watcher", "eks:nodewatcher",
	"eks:pod-identity-mutating-webhook", "eks:cloud-controller-manager",
	"eks:vpc-resource-controller", "eks:addon-manager",
}

k8s_audit_privileged_images := {
	"falcosecurity/falco", "docker.io/falcosecurity/falco", "public.ecr.aws/falcosecurity/falco",
	"docker.io/calico/node", "calico/node", "docker.io/cloudnativelabs/kube-router",
	"docker.io/docker/ucp-agent", "docker.io/mesosphere/mesos-slave", "docker.io/rook/toolbox",
	"docker.io/sysdig/sysdig", "gcr.io/google_containers/kube-proxy",
	"gcr.io/google-containers/startup-script", "gcr.io/projectcalico-org/node",
	"gke.gcr.io/kube-proxy", "gke.gcr.io/gke-metadata-server", "gke.gcr.io/netd-amd64",
	"gke.gcr.io/watcher-daemonset", "gcr.io/google-containers/prometheus-to-sd",
	"registry.k8s.io/ip-masq-agent-amd64", "registry.k8s.io/kube-proxy",
	"registry.k8s.io/prometheus-to-sd", "quay.io/calico/node", "sysdig/sysdig",
	"registry.k8s.io/dns/k8s-dns-node-cache", "mcr.microsoft.com/oss/kubernetes/kube-proxy",
}

k8s_audit_hostnetwork_images := {
	"gcr.io/google-containers/prometheus-to-sd", "gcr.io/projectcalico-org/typha",
	"gcr.io/projectcalico-org/node", "gke.gcr.io/gke-metadata-server", "gke.gcr.io/kube-proxy",
	"gke.gcr.io/netd-amd64", "registry.k8s.io/ip-masq-agent-amd64",
	"registry.k8s.io/prometheus-to-sd",
}

allowed_namespaces := {"kube-system", "kube-public", "default"}

known_sa_list := {
	"coredns", "coredns-autoscaler", "cronjob-controller", "daemon-set-controller",
	"deployment-controller", "disruption-controller", "endpoint-controller",
	"endpointslice-controller", "endpointslicemirroring-controller",
	"generic-garbage-collector", "horizontal-pod-autoscaler", "job-controller",
	"namespace-controller", "node-controller", "persistent-volume-binder",
	"pod-garbage-collector", "pv-protection-controller", "pvc-protection-controller",
	"replicaset-controller", "resourcequota-controller", "root-ca-cert-publisher",
	"service-account-controller", "statefulset-controller",
}

# --- Falco's fields and macros ---------------------------------------------

na(path) := object.get(input, path, "<NA>")

user := na(["user", "username"])

target_name := na(["objectRef", "name"])

target_ns := na(["objectRef", "namespace"])

target_resource := na(["objectRef", "resource"])

kevt if input.stage in k8s_audit_stages

non_system_user if not startswith(input.user.username, "system:")

response_successful if startswith(format_int(input.responseStatus.code, 10), "2")

pod if {
	input.objectRef.resource == "pods"
	not input.objectRef.subresource
}

pod_create if {
	kevt
	pod
	input.verb == "create"
}

kube_namespace if input.objectRef.namespace in {"kube-system", "kube-public"}

role_or_clusterrole if input.objectRef.resource in {"roles", "clusterroles"}

# Falco's image repository: before the first `:`, then before the first `@`.
repository(image) := split(split(image, ":")[0], "@")[0]

images_in(list) if {
	containers := input.requestObject.spec.containers
	count(containers) > 0
	every c in containers {
		repository(c.image) in list
	}
}

images := [c.image | some c in input.requestObject.spec.containers]

init_images := [c.image | some c in input.requestObject.spec.initContainers]

ephemeral_images := [c.image | some c in input.requestObject.spec.ephemeralContainers]

# Falco's any_container_privileged: regular, init or ephemeral containers.
any_container_privileged if {
	some list in ["containers", "initContainers", "ephemeralContainers"]
	some c in object.get(input.requestObject.spec, list, [])
	c.securityContext.privileged == true
}

endpoint(path) if input.requestURI == path

endpoint(path) if startswith(input.requestURI, concat("", [path, "?"]))

alert(rule, priority, output) := {"rule": rule, "priority": priority, "output": output}

# --- The rules ---------------------------------------------------------------

alerts contains alert("Disallowed K8s User", "Warning", sprintf(
	"K8s Operation performed by user not in allowed list of users (user=%v target=%v/%v verb=%v uri=%v resp=%v)",
	[user, target_name, target_resource, input.verb, input.requestURI, na(["responseStatus", "code"])],
)) if {
	kevt
	non_system_user
	not input.user.username in allowed_k8s_users
	not input.user.username in vertical_pod_autoscaler_users
	not input.user.username in eks_allowed_k8s_users
}

alerts contains alert("Create Privileged Pod", "Warning", sprintf(
	"Pod started with privileged container (user=%v pod=%v resource=%v ns=%v images=%v init_images=%v ephemeral_images=%v)",
	[user, na(["responseObject", "metadata", "name"]), target_resource, target_ns, images, init_images, ephemeral_images],
)) if {
	pod_create
	any_container_privileged
	not images_in(k8s_audit_privileged_images)
}

alerts contains alert("Create HostNetwork Pod", "Warning", sprintf(
	"Pod started using host network (user=%v pod=%v resource=%v ns=%v images=%v)",
	[user, na(["responseObject", "metadata", "name"]), target_resource, target_ns, images],
)) if {
	pod_create
	input.requestObject.spec.hostNetwork == true
	not images_in(k8s_audit_hostnetwork_images)
}

alerts contains alert("Create NodePort Service", "Warning", sprintf(
	"NodePort Service Created (user=%v service=%v resource=%v ns=%v ports=%v)",
	[user, target_name, target_resource, target_ns, na(["requestObject", "spec", "ports"])],
)) if {
	kevt
	input.objectRef.resource == "services"
	input.verb == "create"
	input.requestObject.spec.type == "NodePort"
}

alerts contains alert("Anonymous Request Allowed", "Warning", sprintf(
	"Request by anonymous user allowed (user=%v verb=%v uri=%v reason=%v))",
	[user, input.verb, input.requestURI, na(["annotations", "authorization.k8s.io/reason"])],
)) if {
	kevt
	input.user.username == "system:anonymous"
	input.annotations["authorization.k8s.io/decision"] == "allow"
	not endpoint("/healthz")
	not endpoint("/livez")
	not endpoint("/readyz")
}

alerts contains alert("Attach/Exec Pod", "Notice", sprintf(
	"Attach/Exec to pod (user=%v pod=%v resource=%v ns=%v action=%v command=%v)",
	[user, target_name, target_resource, target_ns, input.objectRef.subresource, object.get(input, "requestURI", "<NA>")],
)) if {
	input.stage == "ResponseStarted"
	input.objectRef.resource == "pods"
	input.verb in {"create", "get"}
	input.objectRef.subresource in {"exec", "attach"}
}

alerts contains alert("port-forward", "Notice", sprintf(
	"Portforward to pod (user=%v pod=%v ns=%v action=%v )",
	[user, target_name, target_ns, input.objectRef.subresource],
)) if {
	input.objectRef.subresource == "portforward"
}

alerts contains alert("Create Disallowed Namespace", "Warning", sprintf(
	"Disallowed namespace created (user=%v ns=%v resource=%v)",
	[user, target_name, target_resource],
)) if {
	kevt
	input.objectRef.resource == "namespaces"
	input.verb == "create"
	not input.objectRef.name in allowed_namespaces
}

alerts contains alert("Service Account Created in Kube Namespace", "Warning", sprintf(
	"Service account created in kube namespace (user=%v serviceaccount=%v resource=%v ns=%v)",
	[user, target_name, target_resource, target_ns],
)) if {
	kevt
	input.objectRef.resource == "serviceaccounts"
	input.verb == "create"
	kube_namespace
	response_successful
	not input.objectRef.name in known_sa_list
}

alerts contains alert("System ClusterRole Modified/Deleted", "Warning", sprintf(
	"System ClusterRole/Role modified or deleted (user=%v role=%v resource=%v ns=%v action=%v)",
	[user, target_name, target_resource, target_ns, input.verb],
)) if {
	kevt
	role_or_clusterrole
	input.verb in {"create", "update", "patch", "delete"}
	startswith(input.objectRef.name, "system:")
	not input.objectRef.name in {"system:coredns", "system:managed-certificate-controller"}
}

alerts contains alert("Attach to cluster-admin Role", "Warning", sprintf(
	"Cluster Role Binding to cluster-admin role (user=%v subject=%v)",
	[user, na(["requestObject", "subjects"])],
)) if {
	kevt
	input.objectRef.resource == "clusterrolebindings"
	input.verb == "create"
	input.requestObject.roleRef.name == "cluster-admin"
}

alerts contains alert("ClusterRole With Wildcard Created", "Warning", sprintf(
	"Created Role/ClusterRole with wildcard (user=%v role=%v resource=%v rules=%v)",
	[user, target_name, target_resource, na(["requestObject", "rules"])],
)) if {
	kevt
	role_or_clusterrole
	input.verb == "create"
	some r in input.requestObject.rules
	wildcard(r)
}

wildcard(r) if "*" in r.resources

wildcard(r) if "*" in r.verbs
