//! Rules on pod specs: pods, ephemeral containers and workload templates.

use peregrine_sdk::k8s::{Container, PodSpec};
use peregrine_sdk::{Alert, format_list};

use crate::Ctx;

/// Capability names as written in a spec (`sys_admin`, `CAP_SYS_ADMIN`), in
/// the spelling of the configuration lists (`SYS_ADMIN`).
fn capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

fn dangerous_caps(x: &Ctx, c: &Container) -> Vec<String> {
    let Some(caps) = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
    else {
        return Vec::new();
    };
    caps.add
        .iter()
        .map(|a| capability(a))
        .filter(|a| {
            x.config
                .dangerous_capabilities
                .iter()
                .any(|d| capability(d) == *a)
        })
        .collect()
}

/// Whether `path` is `prefix` or below it ("/etcd" is not below "/etc").
fn under(path: &str, prefix: &str) -> bool {
    let path = normalise(path);
    let prefix = normalise(prefix);
    prefix == "/" && path == "/"
        || path == prefix
        || (prefix != "/"
            && path.starts_with(prefix)
            && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

fn normalise(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

fn container_label(c: &Container) -> String {
    match &c.image {
        Some(image) => format!("{}={image}", c.name),
        None => c.name.clone(),
    }
}

/// A direct change to a pod (no subresource) or its ephemeral containers.
fn pod_spec<'a>(x: &'a Ctx) -> Option<&'a PodSpec> {
    if !matches!(x.event.subresource(), None | Some("ephemeralcontainers")) {
        return None;
    }
    x.event.request_pod().map(|p| &p.spec)
}

pub fn dangerous_capabilities(x: &Ctx) -> Option<Alert> {
    let spec = pod_spec(x)?;
    let mut found: Vec<String> = Vec::new();
    let mut caps: Vec<String> = Vec::new();
    for c in spec.all_containers() {
        let added = dangerous_caps(x, c);
        if !added.is_empty() {
            found.push(format!("{}:{}", c.name, added.join("+")));
            caps.extend(added);
        }
    }
    if found.is_empty() {
        return None;
    }
    caps.sort();
    caps.dedup();
    Some(
        x.alert(&format!(
            "Pod adds dangerous capabilities {}",
            format_list(&found)
        ))
        .field("ka.req.pod.containers.add_capabilities", caps),
    )
}

/// Why a pod template is risky, each reason a short phrase.
fn template_risks(x: &Ctx, spec: &PodSpec) -> Vec<String> {
    let mut risks = Vec::new();
    for c in spec.all_containers() {
        if c.privileged() == Some(true) {
            risks.push(format!("privileged container {}", container_label(c)));
        }
        let caps = dangerous_caps(x, c);
        if !caps.is_empty() {
            risks.push(format!("container {} adds {}", c.name, caps.join("+")));
        }
    }
    for (flag, on) in [
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
        ("hostNetwork", spec.host_network),
    ] {
        if on == Some(true) {
            risks.push(flag.to_string());
        }
    }
    for path in spec.host_paths() {
        if x.config.sensitive_host_paths.iter().any(|p| under(path, p)) {
            risks.push(format!("hostPath {path}"));
        }
    }
    risks
}

pub fn risky_template(x: &Ctx) -> Option<Alert> {
    if x.event.subresource().is_some() {
        return None;
    }
    let spec = x.event.request_pod_spec()?;
    let risks = template_risks(x, spec);
    if risks.is_empty() {
        return None;
    }
    Some(
        x.alert(&format!("Workload template is risky: {}", risks.join(", ")))
            .field("threat.reasons", risks),
    )
}

pub fn host_takeover_mount(x: &Ctx) -> Option<Alert> {
    if x.event.subresource().is_some() {
        return None;
    }
    let spec = x.event.request_pod().map(|p| &p.spec)?;
    let paths: Vec<&str> = spec
        .host_paths()
        .filter(|path| {
            x.config
                .host_takeover_paths
                .iter()
                .any(|p| normalise(path) == normalise(p))
        })
        .collect();
    if paths.is_empty() {
        return None;
    }
    Some(
        x.alert(&format!(
            "Pod mounts the node's root or container runtime socket {}",
            format_list(&paths)
        ))
        .field("ka.req.pod.volumes.hostpath", paths),
    )
}

pub fn privileged_ephemeral(x: &Ctx) -> Option<Alert> {
    let pod = x.event.request_pod()?;
    let privileged: Vec<String> = pod
        .spec
        .ephemeral_containers
        .iter()
        .filter(|c| c.privileged() == Some(true))
        .map(container_label)
        .collect();
    if privileged.is_empty() {
        return None;
    }
    Some(
        x.alert(&format!(
            "Privileged ephemeral container added {}",
            format_list(&privileged)
        ))
        .field("ka.req.pod.ephemeral_containers.image", privileged),
    )
}

/// The registry host of an image reference, if it names one: the first
/// path component when it has a dot or a colon or is `localhost`.
fn registry_host(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// Whether a registry host is a bare IP address (v4, or v6 in brackets).
fn is_ip_host(host: &str) -> bool {
    if host.starts_with('[') {
        return true;
    }
    let addr = host.rsplit_once(':').map_or(host, |(a, _)| a);
    addr.parse::<std::net::Ipv4Addr>().is_ok()
}

pub fn ip_registry_image(x: &Ctx) -> Option<Alert> {
    if x.event.subresource().is_some() {
        return None;
    }
    let spec = x.event.request_pod_spec()?;
    let images: Vec<&str> = spec
        .all_containers()
        .filter_map(|c| c.image.as_deref())
        .filter(|image| {
            registry_host(image).is_some_and(|host| {
                is_ip_host(host) && !crate::config::any_glob(&x.config.allowed_registries, host)
            })
        })
        .collect();
    if images.is_empty() {
        return None;
    }
    Some(
        x.alert(&format!(
            "Image from a raw IP registry {}",
            format_list(&images)
        ))
        .field("ka.req.pod.containers.image", images),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_path_prefixes_respect_components() {
        assert!(under("/etc/", "/etc"));
        assert!(under("/etc/kubernetes", "/etc"));
        assert!(!under("/etcd-data", "/etc"));
        assert!(under("/", "/"));
        assert!(!under("/data", "/"));
    }

    #[test]
    fn ip_registries_are_told_from_named_ones() {
        assert!(registry_host("10.1.2.3:5000/x/y:1").is_some_and(is_ip_host));
        assert!(registry_host("10.1.2.3/x").is_some_and(is_ip_host));
        assert!(registry_host("[fd00::1]:5000/x").is_some_and(is_ip_host));
        assert!(!registry_host("registry.example.com:5000/x").is_some_and(is_ip_host));
        assert!(registry_host("nginx:1.25").is_none());
        assert!(registry_host("library/nginx").is_none());
        assert_eq!(capability("cap_sys_admin"), "SYS_ADMIN");
    }
}
