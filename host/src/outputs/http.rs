//! What the HTTP outputs (webhook, Falcosidekick, Slack, Alertmanager)
//! share: the client with its TLS settings, and how a receiver's answer
//! becomes an acknowledgement, a retry or a refusal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};

use super::BuildError;
use super::delivery::SendError;

/// TLS settings of an HTTP output (`tls = { ... }`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of CA certificates to trust in addition to the system's
    /// (for a receiver with a private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

/// Default request timeout of the HTTP outputs.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// Largest part of an error answer kept for the log.
const ERROR_BODY_BYTES: usize = 1024;

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path)
        .map_err(|e| BuildError(format!("cannot read {what} {}: {e}", path.display())))
}

/// An HTTP client with the output's TLS settings and timeout. Redirects are
/// not followed: a POST redirected to another address is a configuration
/// mistake to report, not to paper over.
pub(crate) fn client(tls: &TlsConfig, timeout_ms: u64) -> Result<reqwest::Client, BuildError> {
    // reqwest is built without a default crypto provider (ring is smaller
    // and quicker to build than aws-lc); install ours once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if timeout_ms == 0 {
        return Err(BuildError("timeout_ms must be positive".into()));
    }
    let timeout = Duration::from_millis(timeout_ms);
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("peregrine/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &tls.ca_file {
        let pem = read_file("tls.ca_file", ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            BuildError(format!(
                "tls.ca_file {}: not a PEM certificate bundle: {e}",
                ca.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(BuildError(format!(
                "tls.ca_file {}: holds no PEM certificate",
                ca.display()
            )));
        }
        b = b.tls_certs_merge(certs);
    }
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read_file("tls.client_cert_file", cert)?;
            pem.push(b'\n');
            pem.extend(read_file("tls.client_key_file", key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                BuildError(format!(
                    "tls.client_cert_file {} with tls.client_key_file {}: not a PEM certificate and private key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            b = b.identity(id);
        }
        (None, None) => {}
        _ => {
            return Err(BuildError(
                "tls.client_cert_file and tls.client_key_file go together".into(),
            ));
        }
    }
    b.build()
        .map_err(|e| BuildError(format!("cannot build the HTTP client: {}", error_chain(&e))))
}

/// Parses an output's URL; only http and https are accepted.
pub(crate) fn parse_url(field: &str, url: &str) -> Result<reqwest::Url, BuildError> {
    let u = reqwest::Url::parse(url)
        .map_err(|e| BuildError(format!("{field} `{url}` is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(BuildError(format!(
            "{field} `{url}` must be an http:// or https:// URL"
        )));
    }
    Ok(u)
}

/// Turns configured headers into a header map, refusing invalid ones.
pub(crate) fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap, BuildError> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| BuildError(format!("headers: `{k}` is not a valid header name")))?;
        let mut value = HeaderValue::from_str(v).map_err(|_| {
            BuildError(format!(
                "headers: the value of `{k}` is not a valid header value"
            ))
        })?;
        if name == reqwest::header::AUTHORIZATION {
            value.set_sensitive(true);
        }
        map.insert(name, value);
    }
    Ok(map)
}

/// One receiver: a client, a URL and the headers sent with every request.
pub(crate) struct HttpTarget {
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    pub headers: HeaderMap,
}

impl HttpTarget {
    /// POSTs a JSON body; any 2xx answer acknowledges it.
    pub async fn post_json(&self, body: Vec<u8>) -> Result<(), SendError> {
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                SendError::retry(format!("POST {}: {}", redact(&self.url), error_chain(&e)))
            })?;
        answer(&self.url, response).await
    }
}

/// Classifies a receiver's answer. Only a refusal of the alert itself (400,
/// 413, 422 and the like) drops it; authentication and addressing errors
/// (401, 403, 404) are retried, since an operator can fix them without the
/// alerts being lost meanwhile.
async fn answer(url: &reqwest::Url, mut response: reqwest::Response) -> Result<(), SendError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // Read (a bounded part of) the body: it explains errors, and reading it
    // lets the connection be reused.
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() < ERROR_BODY_BYTES {
                    body.extend_from_slice(
                        &chunk[..chunk.len().min(ERROR_BODY_BYTES - body.len())],
                    );
                }
            }
            Ok(None) => break,
            Err(e) => {
                if status.is_success() {
                    // The receiver said yes before the body broke off.
                    break;
                }
                return Err(SendError::retry(format!(
                    "POST {}: HTTP {status}, then the answer broke off: {}",
                    redact(url),
                    error_chain(&e)
                )));
            }
        }
    }
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("POST {}: HTTP {status}", redact(url))
    } else {
        format!("POST {}: HTTP {status}: {text}", redact(url))
    };
    let code = status.as_u16();
    let refused =
        status.is_client_error() && !matches!(code, 401 | 403 | 404 | 407 | 408 | 409 | 425 | 429);
    if refused {
        Err(SendError::Rejected(message))
    } else {
        Err(SendError::Retry {
            message,
            retry_after,
        })
    }
}

/// A URL fit for logs: no credentials, no query (Slack's secret is in the
/// path, so for hooks.slack.com only the host is kept).
pub(crate) fn redact(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    if host.ends_with("slack.com") {
        return format!("{}://{host}/…", url.scheme());
    }
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{host}{port}{}", url.scheme(), url.path())
}

/// An error with its causes, which is where reqwest says what went wrong
/// ("connection refused", "certificate not trusted").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_headers_and_tls_files_are_checked() {
        assert!(parse_url("url", "ftp://x/").is_err());
        assert!(parse_url("url", "not a url").is_err());
        assert!(parse_url("url", "http://127.0.0.1:2801/").is_ok());
        let mut h = BTreeMap::new();
        h.insert("Bad Header".to_string(), "x".to_string());
        assert!(header_map(&h).is_err());
        let tls = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = client(&tls, 1000).err().unwrap();
        assert!(err.0.contains("/nonexistent/ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not pem").unwrap();
        let tls = TlsConfig {
            ca_file: Some(garbage),
            ..Default::default()
        };
        assert!(client(&tls, 1000).is_err());
        let tls = TlsConfig {
            client_cert_file: Some("/x".into()),
            ..Default::default()
        };
        assert!(client(&tls, 1000).err().unwrap().0.contains("go together"));
    }

    #[test]
    fn redaction_hides_secrets() {
        let u = reqwest::Url::parse("https://hooks.slack.com/services/T000/B000/XXXX").unwrap();
        assert_eq!(redact(&u), "https://hooks.slack.com/…");
        let u = reqwest::Url::parse("https://user:pw@example.com:8443/path?token=x").unwrap();
        assert_eq!(redact(&u), "https://example.com:8443/path");
    }
}
