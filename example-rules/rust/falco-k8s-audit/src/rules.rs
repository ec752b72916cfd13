//! The 48 rules of Falco's `k8s_audit_rules.yaml` as released with the
//! k8saudit plugin v0.18.0 (falcosecurity/plugins, tag
//! `plugins/k8saudit/v0.18.0`), in the file's order, with Falco's names,
//! descriptions, priorities, tags and output formats.
//!
//! The order matters: Falco's default `rule_matching: first` keeps only the
//! alert of the first matching rule in file order, and the host implements it
//! by metadata order.
//!
//! Each condition is written out in full, stage included, so a rule never
//! depends on its prefilter to be correct; the prefilter only has to admit
//! every event the condition can match (a test checks this).

use std::collections::HashSet;

use peregrine_sdk::Priority;

use crate::config::{Config, ListId};
use crate::fields::{ContainerList, Ctx};

/// Which stages a rule's condition accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Falco's `kevt` macro: the stages in the list `k8s_audit_stages`.
    Kevt,
    /// Falco's `kevt_started`: `ResponseStarted`.
    Started,
    /// No stage condition at all.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultState {
    On,
    /// Off unless listed in `enable`; `falco_macro` is the macro that keeps
    /// it off in Falco's file, named in the docs so Falco users find it.
    Off {
        falco_macro: &'static str,
    },
}

pub type Condition = fn(&Config, &Ctx) -> bool;

pub struct RuleDef {
    pub id: &'static str,
    pub name: &'static str,
    pub desc: &'static str,
    pub priority: Priority,
    pub tags: &'static [&'static str],
    pub output: &'static str,
    pub stage: Stage,
    pub verbs: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub subresources: &'static [&'static str],
    pub default: DefaultState,
    /// Gated by Falco's `consider_activity_events` macro (`kactivity`).
    pub activity: bool,
    pub condition: Condition,
}

const BASE: RuleDef = RuleDef {
    id: "",
    name: "",
    desc: "",
    priority: Priority::Warning,
    tags: &["k8s"],
    output: "",
    stage: Stage::Kevt,
    verbs: &[],
    resources: &[],
    subresources: &[],
    default: DefaultState::On,
    activity: false,
    condition: |_, _| false,
};

const CREATE: &[&str] = &["create"];
const DELETE: &[&str] = &["delete"];
const GET: &[&str] = &["get"];
const CREATE_OR_GET: &[&str] = &["create", "get"];
const MODIFY: &[&str] = &["create", "update", "patch"];
const MODIFY_OR_DELETE: &[&str] = &["create", "update", "patch", "delete"];
const ROLES: &[&str] = &["roles", "clusterroles"];

// Falco's operators on the fields of `Ctx`. A missing field never matches;
// `in` on a list field needs every element in the set (and, the list being
// non-empty, at least one element), `intersects` needs one.

fn is_in(value: Option<&str>, set: &HashSet<String>) -> bool {
    value.is_some_and(|v| set.contains(v))
}

fn all_in(values: Option<&[String]>, sets: &[&HashSet<String>]) -> bool {
    values.is_some_and(|vs| vs.iter().all(|v| sets.iter().any(|s| s.contains(v))))
}

fn intersects(values: Option<&[String]>, items: &[&str]) -> bool {
    values.is_some_and(|vs| vs.iter().any(|v| items.contains(&v.as_str())))
}

fn intersects_set(values: Option<&[String]>, set: &HashSet<String>) -> bool {
    values.is_some_and(|vs| vs.iter().any(|v| set.contains(v)))
}

fn kevt(c: &Config, x: &Ctx) -> bool {
    is_in(x.stage(), c.list(ListId::K8sAuditStages))
}

fn non_system_user(x: &Ctx) -> bool {
    !x.user_name().is_some_and(|u| u.starts_with("system:"))
}

fn response_successful(x: &Ctx) -> bool {
    x.response_code().is_some_and(|c| c.starts_with('2'))
}

fn verb(x: &Ctx, verbs: &[&str]) -> bool {
    x.verb().is_some_and(|v| verbs.contains(&v))
}

fn resource(x: &Ctx, name: &str) -> bool {
    x.resource() == Some(name)
}

/// Falco's `pod` macro: the pod itself, not a subresource.
fn pod(x: &Ctx) -> bool {
    resource(x, "pods") && x.subresource().is_none()
}

fn pod_subresource(x: &Ctx) -> bool {
    resource(x, "pods") && x.subresource().is_some()
}

fn images_in(c: &Config, x: &Ctx, list: ListId) -> bool {
    all_in(x.image_repositories(), &[c.list(list)])
}

fn is_true(v: Option<String>) -> bool {
    v.as_deref() == Some("true")
}

/// Falco's `any_container_privileged`: a privileged regular, init or
/// ephemeral container.
fn any_container_privileged(x: &Ctx) -> bool {
    ContainerList::ALL
        .into_iter()
        .any(|list| intersects(x.privileged(list).as_deref(), &["true"]))
}

fn pod_create(c: &Config, x: &Ctx) -> bool {
    kevt(c, x) && pod(x) && verb(x, CREATE)
}

fn endpoint(x: &Ctx, path: &str) -> bool {
    x.uri()
        .is_some_and(|u| u == path || u.strip_prefix(path).is_some_and(|r| r.starts_with('?')))
}

fn kube_namespace(x: &Ctx) -> bool {
    matches!(x.namespace(), Some("kube-system" | "kube-public"))
}

fn role_or_clusterrole(x: &Ctx) -> bool {
    resource(x, "roles") || resource(x, "clusterroles")
}

/// The activity rules share one shape: `kactivity and <verb> and <resource>
/// and response_successful`.
fn activity(c: &Config, x: &Ctx, verbs: &[&str], res: &str) -> bool {
    kevt(c, x) && verb(x, verbs) && resource(x, res) && response_successful(x)
}

fn node_join(c: &Config, x: &Ctx) -> bool {
    kevt(c, x)
        && resource(x, "nodes")
        && verb(x, CREATE)
        && !is_in(x.name(), c.list(ListId::AllowedK8sNodes))
}

/// Defaults of the rules built on Falco's `kactivity` macro.
const ACTIVITY: RuleDef = RuleDef {
    priority: Priority::Informational,
    activity: true,
    ..BASE
};

pub const RULES: &[RuleDef] = &[
    RuleDef {
        id: "disallowed-k8s-user",
        name: "Disallowed K8s User",
        desc: "Detect any k8s operation by users outside of an allowed set of users.",
        output: "K8s Operation performed by user not in allowed list of users (user=%ka.user.name target=%ka.target.name/%ka.target.resource verb=%ka.verb uri=%ka.uri resp=%ka.response.code)",
        condition: |c, x| {
            kevt(c, x)
                && non_system_user(x)
                && !is_in(x.user_name(), c.list(ListId::AllowedK8sUsers))
                && !is_in(x.user_name(), c.list(ListId::VerticalPodAutoscalerUsers))
                && !is_in(x.user_name(), c.list(ListId::EksAllowedK8sUsers))
        },
        ..BASE
    },
    RuleDef {
        id: "create-disallowed-pod",
        name: "Create Disallowed Pod",
        desc: "Detect an attempt to start a pod with a container image outside of a list of allowed images.",
        output: "Pod started with container not in allowed list (user=%ka.user.name pod=%ka.resp.name ns=%ka.target.namespace images=%ka.req.pod.containers.image)",
        verbs: CREATE,
        resources: &["pods"],
        default: DefaultState::Off {
            falco_macro: "allowed_k8s_containers",
        },
        condition: |c, x| pod_create(c, x) && !images_in(c, x, ListId::AllowedK8sContainerImages),
        ..BASE
    },
    RuleDef {
        id: "create-privileged-pod",
        name: "Create Privileged Pod",
        desc: "Detect an attempt to start a pod with a privileged container",
        output: "Pod started with privileged container (user=%ka.user.name pod=%ka.resp.name resource=%ka.target.resource ns=%ka.target.namespace images=%ka.req.pod.containers.image init_images=%ka.req.pod.initContainers.image ephemeral_images=%ka.req.pod.ephemeralContainers.image)",
        verbs: CREATE,
        resources: &["pods"],
        condition: |c, x| {
            pod_create(c, x)
                && any_container_privileged(x)
                // As in Falco, only the regular containers' images are
                // checked against the trusted list.
                && !images_in(c, x, ListId::PrivilegedImages)
        },
        ..BASE
    },
    RuleDef {
        id: "create-sensitive-mount-pod",
        name: "Create Sensitive Mount Pod",
        desc: "Detect an attempt to start a pod with a volume from a sensitive host directory (i.e. /proc). Exceptions are made for known trusted images.",
        output: "Pod started with sensitive mount (user=%ka.user.name pod=%ka.resp.name ns=%ka.target.namespace resource=%ka.target.resource images=%ka.req.pod.containers.image volumes=%jevt.value[/requestObject/spec/volumes])",
        verbs: CREATE,
        resources: &["pods"],
        condition: |c, x| {
            pod_create(c, x)
                && intersects_set(
                    x.volume_host_paths().as_deref(),
                    c.list(ListId::SensitiveVolMountPaths),
                )
                && !images_in(c, x, ListId::SensitiveMountImages)
        },
        ..BASE
    },
    RuleDef {
        id: "create-hostnetwork-pod",
        name: "Create HostNetwork Pod",
        desc: "Detect an attempt to start a pod using the host network.",
        output: "Pod started using host network (user=%ka.user.name pod=%ka.resp.name resource=%ka.target.resource ns=%ka.target.namespace images=%ka.req.pod.containers.image)",
        verbs: CREATE,
        resources: &["pods"],
        condition: |c, x| {
            pod_create(c, x)
                && is_true(x.host_network())
                && !images_in(c, x, ListId::HostnetworkImages)
        },
        ..BASE
    },
    RuleDef {
        id: "create-hostpid-pod",
        name: "Create HostPid Pod",
        desc: "Detect an attempt to start a pod using the host pid namespace.",
        output: "Pod started using host pid namespace (user=%ka.user.name pod=%ka.resp.name resource=%ka.target.resource ns=%ka.target.namespace images=%ka.req.pod.containers.image)",
        verbs: CREATE,
        resources: &["pods"],
        condition: |c, x| {
            pod_create(c, x) && is_true(x.host_pid()) && !images_in(c, x, ListId::HostpidImages)
        },
        ..BASE
    },
    RuleDef {
        id: "create-hostipc-pod",
        name: "Create HostIPC Pod",
        desc: "Detect an attempt to start a pod using the host ipc namespace.",
        output: "Pod started using host ipc namespace (user=%ka.user.name pod=%ka.resp.name resource=%ka.target.resource ns=%ka.target.namespace images=%ka.req.pod.containers.image)",
        verbs: CREATE,
        resources: &["pods"],
        condition: |c, x| {
            pod_create(c, x) && is_true(x.host_ipc()) && !images_in(c, x, ListId::HostipcImages)
        },
        ..BASE
    },
    RuleDef {
        id: "create-nodeport-service",
        name: "Create NodePort Service",
        desc: "Detect an attempt to start a service with a NodePort service type",
        output: "NodePort Service Created (user=%ka.user.name service=%ka.target.name resource=%ka.target.resource ns=%ka.target.namespace ports=%ka.req.service.ports)",
        verbs: CREATE,
        resources: &["services"],
        condition: |c, x| {
            kevt(c, x)
                && resource(x, "services")
                && verb(x, CREATE)
                && x.service_type().as_deref() == Some("NodePort")
        },
        ..BASE
    },
    RuleDef {
        id: "create-modify-configmap-with-private-credentials",
        name: "Create/Modify Configmap With Private Credentials",
        desc: "Detect creating/modifying a configmap containing a private credential (aws key, password, etc.)",
        output: "K8s configmap with private credential (user=%ka.user.name verb=%ka.verb resource=%ka.target.resource configmap=%ka.req.configmap.name)",
        verbs: MODIFY,
        resources: &["configmaps"],
        condition: |c, x| {
            kevt(c, x)
                && resource(x, "configmaps")
                && verb(x, MODIFY)
                && x.configmap_obj().is_some_and(|obj| {
                    c.list(ListId::PrivateCredentialKeywords)
                        .iter()
                        .any(|k| obj.contains(k.as_str()))
                })
        },
        ..BASE
    },
    RuleDef {
        id: "anonymous-request-allowed",
        name: "Anonymous Request Allowed",
        desc: "Detect any request made by the anonymous user that was allowed",
        output: "Request by anonymous user allowed (user=%ka.user.name verb=%ka.verb uri=%ka.uri reason=%ka.auth.reason))",
        condition: |c, x| {
            kevt(c, x)
                && x.user_name() == Some("system:anonymous")
                && x.auth_decision() == Some("allow")
                && !endpoint(x, "/healthz")
                && !endpoint(x, "/livez")
                && !endpoint(x, "/readyz")
        },
        ..BASE
    },
    RuleDef {
        id: "attach-exec-pod",
        name: "Attach/Exec Pod",
        desc: "Detect any attempt to attach/exec to a pod",
        priority: Priority::Notice,
        output: "Attach/Exec to pod (user=%ka.user.name pod=%ka.target.name resource=%ka.target.resource ns=%ka.target.namespace action=%ka.target.subresource command=%ka.uri.param[command])",
        stage: Stage::Started,
        // `get`: kubectl 1.30 and later exec over WebSocket, which the
        // apiserver records as a `get` (EKS records every exec so).
        verbs: CREATE_OR_GET,
        resources: &["pods"],
        subresources: &["exec", "attach"],
        condition: |_, x| {
            x.stage() == Some("ResponseStarted")
                && pod_subresource(x)
                && verb(x, CREATE_OR_GET)
                && matches!(x.subresource(), Some("exec" | "attach"))
        },
        ..BASE
    },
    RuleDef {
        id: "port-forward",
        name: "port-forward",
        desc: "Detect any attempt to portforward",
        priority: Priority::Notice,
        output: "Portforward to pod (user=%ka.user.name pod=%ka.target.name ns=%ka.target.namespace action=%ka.target.subresource )",
        stage: Stage::Any,
        subresources: &["portforward"],
        condition: |_, x| x.subresource() == Some("portforward"),
        ..BASE
    },
    RuleDef {
        id: "ephemeral-containers-created",
        name: "EphemeralContainers Created",
        desc: "Detect any ephemeral container created",
        priority: Priority::Notice,
        output: "Ephemeral container is created in pod (user=%ka.user.name pod=%ka.target.name resource=%ka.target.resource ns=%ka.target.namespace ephemeral_container_name=%jevt.value[/requestObject/ephemeralContainers/0/name] ephemeral_container_image=%jevt.value[/requestObject/ephemeralContainers/0/image])",
        verbs: MODIFY,
        resources: &["pods"],
        subresources: &["ephemeralcontainers"],
        condition: |c, x| {
            kevt(c, x)
                && pod_subresource(x)
                && verb(x, MODIFY)
                && x.subresource() == Some("ephemeralcontainers")
        },
        ..BASE
    },
    RuleDef {
        id: "create-disallowed-namespace",
        name: "Create Disallowed Namespace",
        desc: "Detect any attempt to create a namespace outside of a set of known namespaces",
        output: "Disallowed namespace created (user=%ka.user.name ns=%ka.target.name resource=%ka.target.resource)",
        verbs: CREATE,
        resources: &["namespaces"],
        condition: |c, x| {
            kevt(c, x)
                && resource(x, "namespaces")
                && verb(x, CREATE)
                && !is_in(x.name(), c.list(ListId::AllowedNamespaces))
        },
        ..BASE
    },
    RuleDef {
        id: "pod-created-in-kube-namespace",
        name: "Pod Created in Kube Namespace",
        desc: "Detect any attempt to create a pod in the kube-system or kube-public namespaces",
        output: "Pod created in kube namespace (user=%ka.user.name pod=%ka.resp.name resource=%ka.target.resource ns=%ka.target.namespace images=%ka.req.pod.containers.image)",
        verbs: CREATE,
        resources: &["pods"],
        condition: |c, x| {
            // Falco's `allowed_kube_namespace_pods`: two separate `in` tests,
            // each against a list and the list it includes by reference.
            let repos = x.image_repositories();
            let allowed = all_in(
                repos,
                &[
                    c.list(ListId::UserAllowedKubeNamespaceImageList),
                    c.list(ListId::UserTrustedImageList),
                ],
            ) || all_in(
                repos,
                &[
                    c.list(ListId::AllowedKubeNamespaceImageList),
                    c.list(ListId::K8sImageList),
                ],
            );
            pod_create(c, x) && kube_namespace(x) && !allowed
        },
        ..BASE
    },
    RuleDef {
        id: "service-account-created-in-kube-namespace",
        name: "Service Account Created in Kube Namespace",
        desc: "Detect any attempt to create a serviceaccount in the kube-system or kube-public namespaces",
        output: "Service account created in kube namespace (user=%ka.user.name serviceaccount=%ka.target.name resource=%ka.target.resource ns=%ka.target.namespace)",
        verbs: CREATE,
        resources: &["serviceaccounts"],
        condition: |c, x| {
            kevt(c, x)
                && resource(x, "serviceaccounts")
                && verb(x, CREATE)
                && kube_namespace(x)
                && response_successful(x)
                && !(is_in(x.name(), c.list(ListId::KnownSaList))
                    || is_in(x.name(), c.list(ListId::UserKnownSaList)))
        },
        ..BASE
    },
    RuleDef {
        id: "system-clusterrole-modified-deleted",
        name: "System ClusterRole Modified/Deleted",
        desc: "Detect any attempt to modify/delete a ClusterRole/Role starting with system",
        output: "System ClusterRole/Role modified or deleted (user=%ka.user.name role=%ka.target.name resource=%ka.target.resource ns=%ka.target.namespace action=%ka.verb)",
        verbs: MODIFY_OR_DELETE,
        resources: ROLES,
        condition: |c, x| {
            kevt(c, x)
                && role_or_clusterrole(x)
                && verb(x, MODIFY_OR_DELETE)
                && x.name().is_some_and(|n| n.starts_with("system:"))
                && !matches!(
                    x.name(),
                    Some("system:coredns" | "system:managed-certificate-controller")
                )
        },
        ..BASE
    },
    RuleDef {
        id: "attach-to-cluster-admin-role",
        name: "Attach to cluster-admin Role",
        desc: "Detect any attempt to create a ClusterRoleBinding to the cluster-admin user",
        output: "Cluster Role Binding to cluster-admin role (user=%ka.user.name subject=%ka.req.binding.subjects)",
        verbs: CREATE,
        resources: &["clusterrolebindings"],
        condition: |c, x| {
            kevt(c, x)
                && resource(x, "clusterrolebindings")
                && verb(x, CREATE)
                && x.binding_role().as_deref() == Some("cluster-admin")
        },
        ..BASE
    },
    RuleDef {
        id: "clusterrole-with-wildcard-created",
        name: "ClusterRole With Wildcard Created",
        desc: "Detect any attempt to create a Role/ClusterRole with wildcard resources or verbs",
        output: "Created Role/ClusterRole with wildcard (user=%ka.user.name role=%ka.target.name resource=%ka.target.resource rules=%ka.req.role.rules)",
        verbs: CREATE,
        resources: ROLES,
        condition: |c, x| {
            kevt(c, x)
                && role_or_clusterrole(x)
                && verb(x, CREATE)
                && (intersects(x.role_rules_field("resources").as_deref(), &["*"])
                    || intersects(x.role_rules_field("verbs").as_deref(), &["*"]))
        },
        ..BASE
    },
    RuleDef {
        id: "clusterrole-with-write-privileges-created",
        name: "ClusterRole With Write Privileges Created",
        desc: "Detect any attempt to create a Role/ClusterRole that can perform write-related actions",
        priority: Priority::Notice,
        output: "Created Role/ClusterRole with write privileges (user=%ka.user.name role=%ka.target.name resource=%ka.target.resource rules=%ka.req.role.rules)",
        verbs: CREATE,
        resources: ROLES,
        condition: |c, x| {
            kevt(c, x)
                && role_or_clusterrole(x)
                && verb(x, CREATE)
                && intersects(
                    x.role_rules_field("verbs").as_deref(),
                    &["create", "update", "patch", "delete", "deletecollection"],
                )
        },
        ..BASE
    },
    RuleDef {
        id: "clusterrole-with-pod-exec-created",
        name: "ClusterRole With Pod Exec Created",
        desc: "Detect any attempt to create a Role/ClusterRole that can exec to pods",
        output: "Created Role/ClusterRole with pod exec privileges (user=%ka.user.name role=%ka.target.name resource=%ka.target.resource rules=%ka.req.role.rules)",
        verbs: CREATE,
        resources: ROLES,
        condition: |c, x| {
            kevt(c, x)
                && role_or_clusterrole(x)
                && verb(x, CREATE)
                && intersects(x.role_rules_field("resources").as_deref(), &["pods/exec"])
        },
        ..BASE
    },
    RuleDef {
        id: "k8s-deployment-created",
        name: "K8s Deployment Created",
        desc: "Detect any attempt to create a deployment",
        output: "K8s Deployment Created (user=%ka.user.name deployment=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: CREATE,
        resources: &["deployments"],
        condition: |c, x| activity(c, x, CREATE, "deployments"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-deployment-deleted",
        name: "K8s Deployment Deleted",
        desc: "Detect any attempt to delete a deployment",
        output: "K8s Deployment Deleted (user=%ka.user.name deployment=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: DELETE,
        resources: &["deployments"],
        condition: |c, x| activity(c, x, DELETE, "deployments"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-service-created",
        name: "K8s Service Created",
        desc: "Detect any attempt to create a service",
        output: "K8s Service Created (user=%ka.user.name service=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: CREATE,
        resources: &["services"],
        condition: |c, x| activity(c, x, CREATE, "services"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-service-deleted",
        name: "K8s Service Deleted",
        desc: "Detect any attempt to delete a service",
        output: "K8s Service Deleted (user=%ka.user.name service=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: DELETE,
        resources: &["services"],
        condition: |c, x| activity(c, x, DELETE, "services"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-configmap-created",
        name: "K8s ConfigMap Created",
        desc: "Detect any attempt to create a configmap",
        output: "K8s ConfigMap Created (user=%ka.user.name configmap=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: CREATE,
        resources: &["configmaps"],
        condition: |c, x| activity(c, x, CREATE, "configmaps"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-configmap-deleted",
        name: "K8s ConfigMap Deleted",
        desc: "Detect any attempt to delete a configmap",
        output: "K8s ConfigMap Deleted (user=%ka.user.name configmap=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: DELETE,
        resources: &["configmaps"],
        condition: |c, x| activity(c, x, DELETE, "configmaps"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-namespace-created",
        name: "K8s Namespace Created",
        desc: "Detect any attempt to create a namespace",
        output: "K8s Namespace Created (user=%ka.user.name namespace=%ka.target.name resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: CREATE,
        resources: &["namespaces"],
        condition: |c, x| activity(c, x, CREATE, "namespaces"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-namespace-deleted",
        name: "K8s Namespace Deleted",
        desc: "Detect any attempt to delete a namespace",
        output: "K8s Namespace Deleted (user=%ka.user.name namespace=%ka.target.name resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: DELETE,
        resources: &["namespaces"],
        condition: |c, x| activity(c, x, DELETE, "namespaces") && non_system_user(x),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-serviceaccount-created",
        name: "K8s Serviceaccount Created",
        desc: "Detect any attempt to create a service account",
        output: "K8s Serviceaccount Created (user=%ka.user.name serviceaccount=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: CREATE,
        resources: &["serviceaccounts"],
        condition: |c, x| activity(c, x, CREATE, "serviceaccounts"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-serviceaccount-deleted",
        name: "K8s Serviceaccount Deleted",
        desc: "Detect any attempt to delete a service account",
        output: "K8s Serviceaccount Deleted (user=%ka.user.name serviceaccount=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: DELETE,
        resources: &["serviceaccounts"],
        condition: |c, x| activity(c, x, DELETE, "serviceaccounts"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-role-created",
        name: "K8s Role Created",
        desc: "Detect any attempt to create a role",
        output: "K8s Role Created (user=%ka.user.name role=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource rules=%ka.req.role.rules resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: CREATE,
        resources: &["roles"],
        condition: |c, x| activity(c, x, CREATE, "roles"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-role-deleted",
        name: "K8s Role Deleted",
        desc: "Detect any attempt to delete a role",
        output: "K8s Role Deleted (user=%ka.user.name role=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: DELETE,
        resources: &["roles"],
        condition: |c, x| activity(c, x, DELETE, "roles"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-clusterrole-created",
        name: "K8s ClusterRole Created",
        desc: "Detect any attempt to create a cluster role",
        output: "K8s ClusterRole Created (user=%ka.user.name role=%ka.target.name resource=%ka.target.resource rules=%ka.req.role.rules resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: CREATE,
        resources: &["clusterroles"],
        condition: |c, x| activity(c, x, CREATE, "clusterroles"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-clusterrole-deleted",
        name: "K8s ClusterRole Deleted",
        desc: "Detect any attempt to delete a cluster role",
        output: "K8s ClusterRole Deleted (user=%ka.user.name role=%ka.target.name resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: DELETE,
        resources: &["clusterroles"],
        condition: |c, x| activity(c, x, DELETE, "clusterroles"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-rolebinding-created",
        name: "K8s RoleBinding Created",
        desc: "Detect any attempt to create a rolebinding",
        output: "K8s RoleBinding Created (user=%ka.user.name binding=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource subjects=%ka.req.binding.subjects role=%ka.req.binding.role resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: CREATE,
        resources: &["rolebindings"],
        condition: |c, x| activity(c, x, CREATE, "rolebindings"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-rolebinding-deleted",
        name: "K8s RoleBinding Deleted",
        desc: "Detect any attempt to delete a rolebinding",
        output: "K8s RoleBinding Deleted (user=%ka.user.name binding=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: DELETE,
        resources: &["rolebindings"],
        condition: |c, x| activity(c, x, DELETE, "rolebindings"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-clusterrolebinding-created",
        name: "K8s ClusterRoleBinding Created",
        desc: "Detect any attempt to create a clusterrolebinding",
        output: "K8s ClusterRoleBinding Created (user=%ka.user.name binding=%ka.target.name resource=%ka.target.resource subjects=%ka.req.binding.subjects role=%ka.req.binding.role resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: CREATE,
        resources: &["clusterrolebindings"],
        condition: |c, x| activity(c, x, CREATE, "clusterrolebindings"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-clusterrolebinding-deleted",
        name: "K8s ClusterRoleBinding Deleted",
        desc: "Detect any attempt to delete a clusterrolebinding",
        output: "K8s ClusterRoleBinding Deleted (user=%ka.user.name binding=%ka.target.name resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: DELETE,
        resources: &["clusterrolebindings"],
        condition: |c, x| activity(c, x, DELETE, "clusterrolebindings"),
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-secret-created",
        name: "K8s Secret Created",
        desc: "Detect any attempt to create a secret. Service account tokens are excluded.",
        output: "K8s Secret Created (user=%ka.user.name secret=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: CREATE,
        resources: &["secrets"],
        condition: |c, x| {
            activity(c, x, CREATE, "secrets")
                && x.namespace().is_some_and(|n| n != "kube-system")
                && non_system_user(x)
        },
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-secret-deleted",
        name: "K8s Secret Deleted",
        desc: "Detect any attempt to delete a secret. Service account tokens are excluded.",
        output: "K8s Secret Deleted (user=%ka.user.name secret=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: DELETE,
        resources: &["secrets"],
        condition: |c, x| {
            activity(c, x, DELETE, "secrets")
                && x.namespace().is_some_and(|n| n != "kube-system")
                && non_system_user(x)
        },
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-secret-get-successfully",
        name: "K8s Secret Get Successfully",
        desc: "Detect any attempt to get a secret. Service account tokens are excluded.",
        output: "K8s Secret Get Successfully (user=%ka.user.name secret=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: GET,
        resources: &["secrets"],
        condition: |c, x| activity(c, x, GET, "secrets"),
        priority: Priority::Error,
        ..ACTIVITY
    },
    RuleDef {
        id: "k8s-secret-get-unsuccessfully-tried",
        name: "K8s Secret Get Unsuccessfully Tried",
        desc: "Detect an unsuccessful attempt to get the secret. Service account tokens are excluded.",
        output: "K8s Secret Get Unsuccessfully Tried (user=%ka.user.name secret=%ka.target.name ns=%ka.target.namespace resource=%ka.target.resource resp=%ka.response.code decision=%ka.auth.decision reason=%ka.auth.reason)",
        verbs: GET,
        resources: &["secrets"],
        condition: |c, x| {
            kevt(c, x) && resource(x, "secrets") && verb(x, GET) && !response_successful(x)
        },
        priority: Priority::Warning,
        ..ACTIVITY
    },
    RuleDef {
        id: "all-k8s-audit-events",
        name: "All K8s Audit Events",
        desc: "Match all K8s Audit Events",
        priority: Priority::Debug,
        output: "K8s Audit Event received (user=%ka.user.name verb=%ka.verb uri=%ka.uri obj=%jevt.obj)",
        default: DefaultState::Off {
            falco_macro: "consider_all_events",
        },
        condition: kevt,
        ..BASE
    },
    RuleDef {
        id: "full-k8s-administrative-access",
        name: "Full K8s Administrative Access",
        desc: "Detect any k8s operation by a user name that may be an administrator with full access.",
        output: "K8s Operation performed by full admin user (user=%ka.user.name target=%ka.target.name/%ka.target.resource verb=%ka.verb uri=%ka.uri resp=%ka.response.code)",
        default: DefaultState::Off {
            falco_macro: "allowed_full_admin_users",
        },
        condition: |c, x| {
            kevt(c, x)
                && non_system_user(x)
                && is_in(x.user_name(), c.list(ListId::FullAdminK8sUsers))
        },
        ..BASE
    },
    RuleDef {
        id: "ingress-object-without-tls-certificate-created",
        name: "Ingress Object without TLS Certificate Created",
        desc: "Detect any attempt to create an ingress without TLS certification.",
        priority: Priority::Warning,
        tags: &["k8s", "network"],
        output: "K8s Ingress Without TLS Cert Created (user=%ka.user.name ingress=%ka.target.name namespace=%ka.target.namespace resource=%ka.target.resource)",
        verbs: CREATE,
        resources: &["ingresses"],
        condition: |c, x| {
            activity(c, x, CREATE, "ingresses") && x.jevt_value("/requestObject/spec/tls").is_none()
        },
        ..ACTIVITY
    },
    RuleDef {
        id: "untrusted-node-successfully-joined",
        name: "Untrusted Node Successfully Joined the Cluster",
        desc: "Detect a node successfully joined the cluster outside of the list of allowed nodes.",
        priority: Priority::Error,
        output: "Node not in allowed list successfully joined the cluster (user=%ka.user.name node=%ka.target.name resource=%ka.target.resource)",
        verbs: CREATE,
        resources: &["nodes"],
        default: DefaultState::Off {
            falco_macro: "allow_all_k8s_nodes",
        },
        condition: |c, x| node_join(c, x) && response_successful(x),
        ..BASE
    },
    RuleDef {
        id: "untrusted-node-unsuccessfully-tried-to-join",
        name: "Untrusted Node Unsuccessfully Tried to Join the Cluster",
        desc: "Detect an unsuccessful attempt to join the cluster for a node not in the list of allowed nodes.",
        output: "Node not in allowed list tried unsuccessfully to join the cluster  (user=%ka.user.name node=%ka.target.name reason=%ka.response.reason resource=%ka.target.resource)",
        verbs: CREATE,
        resources: &["nodes"],
        default: DefaultState::Off {
            falco_macro: "allow_all_k8s_nodes",
        },
        condition: |c, x| node_join(c, x) && !response_successful(x),
        ..BASE
    },
];
