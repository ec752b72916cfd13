//! Rules on RBAC objects and on the kubelet API.

use peregrine_sdk::k8s::{PolicyRule, Subject};
use peregrine_sdk::{Alert, format_list};

use crate::Ctx;

fn subject_label(s: &Subject) -> String {
    let kind = s.kind.as_deref().unwrap_or("?");
    match (&s.namespace, &s.name) {
        (Some(ns), Some(name)) => format!("{kind}:{ns}/{name}"),
        (None, Some(name)) => format!("{kind}:{name}"),
        _ => kind.to_string(),
    }
}

fn role_ref(x: &Ctx) -> String {
    x.event
        .request_binding()
        .map(|b| {
            format!(
                "{}/{}",
                b.role_ref.kind.as_deref().unwrap_or("?"),
                b.role_ref.name.as_deref().unwrap_or("?")
            )
        })
        .unwrap_or_default()
}

const EVERYONE: &[&str] = &[
    "system:anonymous",
    "system:unauthenticated",
    "system:authenticated",
];

pub fn binding_to_everyone(x: &Ctx) -> Option<Alert> {
    if x.event.subresource().is_some() {
        return None;
    }
    let binding = x.event.request_binding()?;
    let everyone: Vec<String> = binding
        .subjects
        .iter()
        .filter(|s| s.name.as_deref().is_some_and(|n| EVERYONE.contains(&n)))
        .map(subject_label)
        .collect();
    if everyone.is_empty() {
        return None;
    }
    let role = role_ref(x);
    Some(
        x.alert(&format!("Role {role} bound to {}", format_list(&everyone)))
            .field("ka.req.binding.subjects", everyone)
            .field("ka.req.binding.role", role),
    )
}

pub fn admin_binding(x: &Ctx) -> Option<Alert> {
    if x.event.subresource().is_some() {
        return None;
    }
    let binding = x.event.request_binding()?;
    let name = binding.role_ref.name.as_deref()?;
    if !crate::config::any_glob(&x.config.admin_roles, name) {
        return None;
    }
    let subjects: Vec<String> = binding.subjects.iter().map(subject_label).collect();
    Some(
        x.alert(&format!("Binding to {name} for {}", format_list(&subjects)))
            .field("ka.req.binding.subjects", subjects)
            .field("ka.req.binding.role", name),
    )
}

fn any(list: &[String], wanted: &[&str]) -> bool {
    list.iter().any(|v| wanted.contains(&v.as_str()))
}

/// Whether a policy rule grants the core-group resource `resource`
/// (`nodes/proxy`), directly or through a wildcard.
fn grants(rule: &PolicyRule, resource: &str) -> bool {
    let (parent, _) = resource.split_once('/').unwrap_or((resource, ""));
    let core = rule.api_groups.is_empty() || any(&rule.api_groups, &["", "*"]);
    core && rule
        .resources
        .iter()
        .any(|r| r == resource || r == "*" || *r == format!("{parent}/*"))
}

pub fn nodes_proxy(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    if e.resource() == Some("nodes") {
        if e.subresource() != Some("proxy") {
            return None;
        }
        // The path after /proxy/ is the kubelet endpoint (exec, run, pods, ...).
        let endpoint = e
            .uri()
            .split_once("/proxy/")
            .map(|(_, rest)| rest.split('?').next().unwrap_or(rest).to_string())
            .unwrap_or_default();
        return Some(
            x.alert(&format!(
                "Kubelet API reached through nodes/proxy: /{endpoint}"
            ))
            .field("threat.kubelet_path", format!("/{endpoint}")),
        );
    }
    if !matches!(e.verb(), "create" | "update" | "patch") || e.subresource().is_some() {
        return None;
    }
    let role = e.request_role()?;
    let granting: Vec<String> = role
        .rules
        .iter()
        .filter(|r| grants(r, "nodes/proxy"))
        .map(|r| format!("{}:{}", r.resources.join("+"), r.verbs.join("+")))
        .collect();
    if granting.is_empty() {
        return None;
    }
    Some(
        x.alert(&format!(
            "Role grants nodes/proxy {}",
            format_list(&granting)
        ))
        .field("ka.req.role.rules", granting),
    )
}

pub fn escalation_verbs(x: &Ctx) -> Option<Alert> {
    if x.event.subresource().is_some() {
        return None;
    }
    let role = x.event.request_role()?;
    let mut found = Vec::new();
    for r in &role.rules {
        for verb in ["escalate", "bind", "impersonate"] {
            if r.verbs.iter().any(|v| v == verb) {
                found.push(format!("{verb} on {}", r.resources.join("+")));
            }
        }
        // Wildcard roles are Falco's "ClusterRole With Wildcard Created".
        if any(&r.verbs, &["create", "*"])
            && any(
                &r.resources,
                &["serviceaccounts/token", "serviceaccounts/*"],
            )
        {
            found.push("create on serviceaccounts/token".to_string());
        }
    }
    if found.is_empty() {
        return None;
    }
    Some(
        x.alert(&format!("Role grants {}", found.join(", ")))
            .field("ka.req.role.rules", found),
    )
}
