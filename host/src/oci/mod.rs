//! Rule modules as OCI artifacts: `peregrine rule push|pull` and the
//! `[[rules.sources]]` of type `oci` that `serve` pulls, caches and follows.
//!
//! The distribution protocol is oci-client's; this module decides what a
//! Peregrine rule artifact is (media types, annotations, limits), where
//! credentials and CAs come from, and when plain HTTP is allowed.

mod artifact;
pub mod config;
mod source;

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

pub use artifact::{
    ANNOTATION_CONTRACT, ANNOTATION_DIGEST, ANNOTATION_NAME, ANNOTATION_VERSION, Artifact,
    CONFIG_MEDIA_TYPE, MAX_LAYERS, MAX_MANIFEST_BYTES, MODULE_MEDIA_TYPE, ModuleArtifact, pull,
    push, resolve, validate_manifest,
};
pub use config::{OciSourceConfig, RuleSourceConfig};
pub use source::{OciSource, Pollers, SourceReport, Sources, SyncOutcome};

/// Why talking to a registry, or what it answered, did not give a module.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(
        "invalid reference `{reference}`: {message} (expected REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST)"
    )]
    Reference { reference: String, message: String },
    /// A local file (Docker config, CA) is missing or malformed.
    #[error("{0}")]
    Setup(String),
    /// The registry could not be reached, refused, or failed the request.
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    /// The registry answered, but not with a valid Peregrine rule artifact.
    #[error("{reference}: {message}")]
    Artifact { reference: String, message: String },
}

/// How to reach a registry: credentials, trust, and plain HTTP.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// A Docker config file (`{"auths": {"REGISTRY": {"auth": base64(user:pass)}}}`).
    pub docker_config: Option<PathBuf>,
    /// PEM file of CA certificates trusted for the registry, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Speak plain HTTP to a registry that is not on loopback.
    pub plain_http: bool,
}

pub fn parse_reference(reference: &str) -> Result<Reference, OciError> {
    let parsed: Reference = reference.parse().map_err(|e| OciError::Reference {
        reference: reference.to_string(),
        message: format!("{e}"),
    })?;
    // Without a registry host (Docker's rule: the first component has a `.`
    // or a `:`, or is `localhost`), a reference would silently mean Docker Hub.
    let first = reference.split('/').next().unwrap_or_default();
    let names_registry = reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if !names_registry {
        return Err(OciError::Reference {
            reference: reference.to_string(),
            message: "name the registry".into(),
        });
    }
    Ok(parsed)
}

/// The host part of `registry` (`host`, `host:port`, `[v6]:port`).
fn registry_host(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => registry,
    }
}

/// Docker's rule: registries on loopback may speak plain HTTP; any other
/// needs TLS unless plain HTTP is asked for. A CA file means TLS even on
/// loopback.
pub fn uses_plain_http(registry: &str, options: &RegistryOptions) -> bool {
    if options.plain_http {
        return true;
    }
    if options.ca_file.is_some() {
        return false;
    }
    let host = registry_host(registry);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A client for the registry of `reference`, and the credentials to use there.
pub(crate) fn client_for(
    reference: &Reference,
    options: &RegistryOptions,
) -> Result<(Client, RegistryAuth), OciError> {
    crate::tls::install_crypto_provider();
    let registry = reference.resolve_registry().to_string();
    let protocol = if uses_plain_http(&registry, options) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let mut extra_roots = Vec::new();
    if let Some(ca) = &options.ca_file {
        extra_roots.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: read_ca(ca)?,
        });
    }
    let config = ClientConfig {
        protocol,
        extra_root_certificates: extra_roots,
        // Rule artifacts are single manifests, never indexes to resolve.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        user_agent: concat!("peregrine/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    let client = Client::try_from(config).map_err(|e| {
        OciError::Setup(format!(
            "cannot set up the registry client: {}",
            error_chain(&e)
        ))
    })?;
    let auth = match &options.docker_config {
        Some(path) => credentials(path, &registry)?,
        None => RegistryAuth::Anonymous,
    };
    Ok((client, auth))
}

fn read_ca(path: &Path) -> Result<Vec<u8>, OciError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path)
        .map_err(|e| OciError::Setup(format!("cannot read CA file {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OciError::Setup(format!("CA file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(OciError::Setup(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(pem)
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// The `auths` entry key a Docker config uses for a registry: `host[:port]`,
/// sometimes written as a URL (`https://index.docker.io/v1/`).
fn auth_key_registry(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// Credentials for `registry` from a Docker config file; anonymous when the
/// file has no entry for it.
pub(crate) fn credentials(path: &Path, registry: &str) -> Result<RegistryAuth, OciError> {
    let setup = |m: String| OciError::Setup(format!("Docker config {}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| setup(format!("cannot read: {e}")))?;
    let config: DockerConfig =
        serde_json::from_str(&text).map_err(|e| setup(format!("not a Docker config: {e}")))?;
    let docker_hub =
        |r: &str| matches!(r, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    let Some((key, entry)) = config.auths.iter().find(|(k, _)| {
        let k = auth_key_registry(k);
        k.eq_ignore_ascii_case(registry) || (docker_hub(k) && docker_hub(registry))
    }) else {
        tracing::debug!(registry, file = %path.display(), "no credentials for the registry: anonymous");
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| setup(format!("auths.\"{key}\".auth is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| setup(format!("auths.\"{key}\".auth is not UTF-8")))?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| {
            setup(format!(
                "auths.\"{key}\".auth is not base64 of user:password"
            ))
        })?;
        return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
    }
    if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(user.clone(), pass.clone()));
    }
    if entry.identitytoken.is_some() {
        return Err(setup(format!(
            "auths.\"{key}\" holds an identity token, which Peregrine does not use: give a user and password (or token) as `auth`"
        )));
    }
    Err(setup(format!(
        "auths.\"{key}\" has neither `auth` nor `username` and `password`"
    )))
}

/// An error and its causes on one line: reqwest's own message hides why a
/// connection failed.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A registry failure with what to check.
pub(crate) fn registry_error(
    reference: &Reference,
    auth: &RegistryAuth,
    options: &RegistryOptions,
    e: oci_client::errors::OciDistributionError,
) -> OciError {
    use oci_client::errors::OciDistributionError as E;
    let registry = reference.resolve_registry().to_string();
    let unauthorized = match &e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => true,
        E::ServerError { code, .. } => *code == 401 || *code == 403,
        E::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                oci_client::errors::OciErrorCode::Unauthorized
                    | oci_client::errors::OciErrorCode::Denied
            )
        }),
        _ => false,
    };
    let mut message = error_chain(&e);
    if unauthorized {
        message = match (auth, &options.docker_config) {
            (RegistryAuth::Anonymous, Some(f)) => format!(
                "authentication required, and {} has no credentials for {registry} ({message})",
                f.display()
            ),
            (RegistryAuth::Anonymous, None) => format!(
                "authentication required: give a Docker config file with credentials for {registry} ({message})"
            ),
            (RegistryAuth::Basic(user, _), _) => format!(
                "the registry refused the credentials of user `{user}`: check the Docker config file ({message})"
            ),
            (RegistryAuth::Bearer(_), _) => {
                format!("the registry refused the token ({message})")
            }
        };
    } else if matches!(e, E::RequestError(_)) {
        let plain = uses_plain_http(&registry, options);
        let lower = message.to_ascii_lowercase();
        if !plain && (lower.contains("certificate") || lower.contains("unknownissuer")) {
            message.push_str(" (is the registry's CA in the CA file?)");
        } else if !plain && lower.contains("invalidcontenttype") {
            message.push_str(" (the registry may speak plain HTTP: see plain_http)");
        }
    }
    OciError::Registry { registry, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_may_use_plain_http_others_need_tls() {
        let none = RegistryOptions::default();
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.0.0.1",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            assert!(uses_plain_http(r, &none), "{r}");
        }
        for r in [
            "registry.example",
            "registry.example:5000",
            "10.0.0.1:5000",
            "localhost.example",
        ] {
            assert!(!uses_plain_http(r, &none), "{r}");
        }
        let plain = RegistryOptions {
            plain_http: true,
            ..Default::default()
        };
        assert!(uses_plain_http("registry.example:5000", &plain));
        let ca = RegistryOptions {
            ca_file: Some("ca.pem".into()),
            ..Default::default()
        };
        assert!(!uses_plain_http("127.0.0.1:5000", &ca));
    }

    #[test]
    fn credentials_come_from_the_docker_config_by_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {
                "127.0.0.1:5000": {"auth": "YWxpY2U6czNjcjN0OmFuZC1tb3Jl"},
                "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
                "ghcr.io": {"identitytoken": "x"}
            }, "credsStore": "desktop"}"#,
        )
        .unwrap();
        match credentials(&path, "127.0.0.1:5000").unwrap() {
            RegistryAuth::Basic(u, p) => {
                assert_eq!((u.as_str(), p.as_str()), ("alice", "s3cr3t:and-more"))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(credentials(&path, "docker.io").unwrap(), RegistryAuth::Basic(u, _) if u == "bob")
        );
        assert!(matches!(
            credentials(&path, "other.example").unwrap(),
            RegistryAuth::Anonymous
        ));
        let err = credentials(&path, "ghcr.io").unwrap_err().to_string();
        assert!(err.contains("identity token"), "{err}");
        std::fs::write(&path, "not json").unwrap();
        let err = credentials(&path, "x").unwrap_err().to_string();
        assert!(err.contains("not a Docker config"), "{err}");
        let err = credentials(&dir.path().join("none.json"), "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn references_must_name_their_registry() {
        assert!(parse_reference("127.0.0.1:5000/rules/falco:1.0").is_ok());
        assert!(parse_reference("registry.example/rules/falco@sha256:0123456789012345678901234567890123456789012345678901234567890123").is_ok());
        let err = parse_reference("falco:1.0").unwrap_err().to_string();
        assert!(err.contains("name the registry"), "{err}");
        let err = parse_reference("rules/falco:1.0").unwrap_err().to_string();
        assert!(err.contains("name the registry"), "{err}");
        assert!(parse_reference("localhost/rules/falco:1.0").is_ok());
        let err = parse_reference("registry.example/Rules:bad tag")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid reference"), "{err}");
    }
}
