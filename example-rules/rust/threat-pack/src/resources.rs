//! Rules on single requests that need no pod spec: who changed what.

use peregrine_sdk::{Alert, format_list};

use crate::Ctx;
use crate::config::any_glob;

pub fn admission_webhook_changed(x: &Ctx) -> Option<Alert> {
    if any_glob(&x.config.webhook_managers, x.event.user_name()) {
        return None;
    }
    let what = match x.event.verb() {
        "delete" => "deleted",
        "create" => "created",
        _ => "changed",
    };
    Some(x.alert(&format!(
        "Admission {} {} {what}",
        x.event.resource().unwrap_or("configuration"),
        x.event.name().unwrap_or("<NA>")
    )))
}

/// The signer that issues apiserver client certificates.
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

pub fn client_certificate(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    let signer = e
        .request_pointer("/spec/signerName")
        .and_then(|v| v.as_str());
    let usages: Vec<&str> = e
        .request_pointer("/spec/usages")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|u| u.as_str()).collect())
        .unwrap_or_default();
    let client = signer == Some(CLIENT_SIGNER)
        || (signer.is_none_or(|s| s == "kubernetes.io/legacy-unknown")
            && usages.contains(&"client auth"));
    if !client {
        return None;
    }
    let what = match (e.verb(), e.subresource()) {
        ("create", None) => "Client certificate requested",
        (_, Some("approval")) => {
            let approved = e
                .request_pointer("/status/conditions")
                .and_then(|v| v.as_array())
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        c.get("type").and_then(|t| t.as_str()) == Some("Approved")
                            && c.get("status").and_then(|s| s.as_str()) != Some("False")
                    })
                });
            if !approved {
                return None;
            }
            "Client certificate request approved"
        }
        _ => return None,
    };
    let user = e.request_pointer("/spec/username").and_then(|v| v.as_str());
    Some(
        x.alert(&format!("{what} for signer {}", signer.unwrap_or("<NA>")))
            .field("ka.req.csr.signer", signer)
            .field("ka.req.csr.username", user),
    )
}

pub fn events_deleted(x: &Ctx) -> Option<Alert> {
    let group = x
        .event
        .object_ref
        .as_ref()
        .and_then(|o| o.api_group.as_deref())
        .unwrap_or("");
    if !matches!(group, "" | "events.k8s.io") {
        return None;
    }
    Some(x.alert("Kubernetes events deleted"))
}

pub fn security_agent_tampering(x: &Ctx) -> Option<Alert> {
    if !matches!(x.event.subresource(), None | Some("scale")) {
        return None;
    }
    let name = x.event.name()?;
    if !any_glob(&x.config.security_agents, name) {
        return None;
    }
    let what = match (x.event.verb(), x.event.subresource()) {
        ("delete", _) => "deleted",
        (_, Some("scale")) => "scaled",
        _ => "changed",
    };
    Some(x.alert(&format!("Security agent {name} {what}")))
}

pub fn cluster_wide_secret_list(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    if e.namespace().is_some_and(|n| !n.is_empty())
        || e.uri().contains("/namespaces/")
        || any_glob(&x.config.cluster_secret_readers, e.user_name())
    {
        return None;
    }
    Some(x.alert("Secrets listed across all namespaces"))
}

pub fn token_request(x: &Ctx) -> Option<Alert> {
    Some(x.alert(&format!(
        "Token requested for service account {}/{}",
        x.event.namespace().unwrap_or("<NA>"),
        x.event.name().unwrap_or("<NA>")
    )))
}

pub fn port_forward(x: &Ctx) -> Option<Alert> {
    if !x.first_for_request() {
        return None;
    }
    let ports = crate::command::query_values(x.event.uri(), "ports");
    Some(
        x.alert(&format!(
            "Port forward to pod, ports {}",
            format_list(&ports)
        ))
        .field("ka.uri.param[ports]", ports),
    )
}

pub fn kube_system_config(x: &Ctx) -> Option<Alert> {
    if x.event.namespace() != Some("kube-system") || x.event.subresource().is_some() {
        return None;
    }
    let kind = if x.event.resource() == Some("secrets") {
        "Secret"
    } else {
        "ConfigMap"
    };
    Some(x.alert(&format!(
        "{kind} kube-system/{} {}",
        x.event.name().unwrap_or("<NA>"),
        match x.event.verb() {
            "create" => "created",
            "delete" => "deleted",
            _ => "changed",
        }
    )))
}

pub fn crd_deleted(x: &Ctx) -> Option<Alert> {
    Some(x.alert(&format!(
        "CustomResourceDefinition {} deleted",
        x.event.name().unwrap_or("<all>")
    )))
}

pub fn node_modified(x: &Ctx) -> Option<Alert> {
    if x.event.subresource().is_some() {
        return None;
    }
    Some(x.alert(&format!(
        "Node {} changed by a person",
        x.event.name().unwrap_or("<NA>")
    )))
}

pub fn privileged_impersonation(x: &Ctx) -> Option<Alert> {
    let target = x.event.impersonated_user.as_ref()?;
    let groups: Vec<&str> = target
        .groups
        .iter()
        .filter(|g| any_glob(&x.config.privileged_groups, g))
        .map(String::as_str)
        .collect();
    let user = any_glob(&x.config.privileged_identities, &target.username);
    if groups.is_empty() && !user {
        return None;
    }
    let who = if user {
        target.username.clone()
    } else {
        format!("group {}", groups.join(","))
    };
    Some(
        x.alert(&format!("Privileged identity impersonated: {who}"))
            .field("ka.impuser.name", target.username.as_str())
            .field("ka.impuser.groups", target.groups.as_slice()),
    )
}

pub fn anonymous_allowed(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    let anonymous = e.user_name() == "system:anonymous"
        || e.user_groups()
            .iter()
            .any(|g| g == "system:unauthenticated");
    if !anonymous {
        return None;
    }
    let path = e.uri().split('?').next().unwrap_or("");
    if any_glob(&x.config.anonymous_allowed_paths, path) {
        return None;
    }
    Some(
        x.alert(&format!("Anonymous request allowed to {path}"))
            .field("ka.uri", path),
    )
}

pub fn kube_system_serviceaccount(x: &Ctx) -> Option<Alert> {
    if x.event.namespace() != Some("kube-system") || x.event.subresource().is_some() {
        return None;
    }
    let name = x.event.name().or_else(|| {
        x.event
            .request_pointer("/metadata/name")
            .and_then(|v| v.as_str())
    });
    Some(x.alert(&format!(
        "Service account kube-system/{} created",
        name.unwrap_or("<NA>")
    )))
}

pub fn service_exposed(x: &Ctx) -> Option<Alert> {
    if x.event.subresource().is_some() {
        return None;
    }
    let service = x.event.request_service()?;
    let kind = service.spec.type_.as_deref().unwrap_or("");
    let mut how = Vec::new();
    if matches!(kind, "LoadBalancer" | "NodePort") {
        how.push(format!("type {kind}"));
    }
    if !service.spec.external_ips.is_empty() {
        how.push(format!(
            "externalIPs {}",
            format_list(&service.spec.external_ips)
        ));
    }
    if how.is_empty() {
        return None;
    }
    Some(
        x.alert(&format!(
            "Service exposed outside the cluster: {}",
            how.join(", ")
        ))
        .field("ka.req.service.type", kind)
        .field(
            "ka.req.service.external_ips",
            service.spec.external_ips.as_slice(),
        ),
    )
}

pub fn cronjob_changed(x: &Ctx) -> Option<Alert> {
    // `cronjobs/status` is the controller recording the last run.
    if x.event.subresource().is_some() {
        return None;
    }
    let name = x.event.name().or_else(|| {
        x.event
            .request_pointer("/metadata/name")
            .and_then(|v| v.as_str())
    });
    Some(x.alert(&format!(
        "CronJob {}/{} {}",
        x.event.namespace().unwrap_or("<NA>"),
        name.unwrap_or("<NA>"),
        if x.event.verb() == "create" {
            "created"
        } else {
            "modified"
        }
    )))
}

pub fn daemonset_created(x: &Ctx) -> Option<Alert> {
    if x.event.subresource().is_some() {
        return None;
    }
    let name = x.event.name().or_else(|| {
        x.event
            .request_pointer("/metadata/name")
            .and_then(|v| v.as_str())
    });
    Some(x.alert(&format!(
        "DaemonSet {}/{} created",
        x.event.namespace().unwrap_or("<NA>"),
        name.unwrap_or("<NA>")
    )))
}
