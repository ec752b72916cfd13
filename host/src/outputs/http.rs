//! What the HTTP outputs (webhook, Falcosidekick, Slack, Alertmanager)
//! share: the client with its TLS settings, and how a receiver's answer
//! becomes an acknowledgement, a retry or a refusal.
//!
//! The client is hyper's, with rustls on the ring provider passed in
//! explicitly. (reqwest without its default aws-lc provider needs a
//! process-wide default provider installed before any client is built,
//! which every other user of reqwest in the process would then depend on.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::BuildError;
use super::delivery::{OutputDeliveryConfig, SendError};

/// The keys every HTTP output has, flattened into its table: where it
/// sends, how long one request may take, TLS, and delivery. What `url`
/// means is the kind's (its doc says).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct HttpTargetConfig {
    /// The receiver's URL (http or https).
    pub url: String,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub delivery: OutputDeliveryConfig,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl HttpTargetConfig {
    /// `url`, checked.
    pub(crate) fn parsed_url(&self) -> Result<url::Url, BuildError> {
        parse_url("url", &self.url)
    }

    /// A client with this target's timeout and TLS settings.
    pub(crate) fn client(&self) -> Result<HttpClient, BuildError> {
        client(&self.tls, self.timeout_ms)
    }
}

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

/// The rustls client configuration: the system's roots plus `ca_file`,
/// and the client certificate if one is given.
fn tls_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, BuildError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    // Unreadable system certificates are not fatal: a private CA in
    // `ca_file` may be all this output needs.
    for e in &native.errors {
        tracing::debug!("system CA certificates: {e}");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = &tls.ca_file {
        let pem = read_file("tls.ca_file", ca)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                BuildError(format!(
                    "tls.ca_file {}: not PEM certificates: {e}",
                    ca.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(BuildError(format!(
                "tls.ca_file {}: holds no PEM certificate",
                ca.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| BuildError(format!("tls.ca_file {}: {e}", ca.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let pem = read_file("tls.client_cert_file", cert)?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    BuildError(format!(
                        "tls.client_cert_file {}: not PEM certificates: {e}",
                        cert.display()
                    ))
                })?;
            if chain.is_empty() {
                return Err(BuildError(format!(
                    "tls.client_cert_file {}: holds no PEM certificate",
                    cert.display()
                )));
            }
            let pem = read_file("tls.client_key_file", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                BuildError(format!(
                    "tls.client_key_file {}: not a PEM private key: {e}",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                BuildError(format!(
                    "tls.client_cert_file with tls.client_key_file: {e}"
                ))
            })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(BuildError(
            "tls.client_cert_file and tls.client_key_file go together".into(),
        )),
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTP(S) client with the output's TLS settings. Redirects are not
/// followed: a POST redirected elsewhere is a configuration mistake to
/// report, not to paper over.
pub(crate) fn client(tls: &TlsConfig, timeout_ms: u64) -> Result<HttpClient, BuildError> {
    if timeout_ms == 0 {
        return Err(BuildError("timeout_ms must be positive".into()));
    }
    let timeout = Duration::from_millis(timeout_ms);
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(tls)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(HttpClient {
        inner: Client::builder(TokioExecutor::new()).build(https),
        timeout,
    })
}

/// A client and the timeout of one request, answer included.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: HttpsClient,
    timeout: Duration,
}

impl HttpClient {
    /// GETs `url` (keys to fetch, not alerts to send): the status and at
    /// most `max` bytes of the body, within the client's timeout.
    pub(crate) async fn get(&self, url: &url::Url, max: usize) -> Result<(u16, Vec<u8>), String> {
        self.exchange(hyper::Method::GET, url, &[], Vec::new(), max)
            .await
    }

    /// POSTs `body` with `headers` (an API call of a pull source): the
    /// status and at most `max` bytes of the answer, within the timeout.
    pub(crate) async fn post(
        &self,
        url: &url::Url,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
        max: usize,
    ) -> Result<(u16, Vec<u8>), String> {
        self.exchange(hyper::Method::POST, url, headers, body, max)
            .await
    }

    async fn exchange(
        &self,
        method: hyper::Method,
        url: &url::Url,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
        max: usize,
    ) -> Result<(u16, Vec<u8>), String> {
        let uri: hyper::Uri = url
            .as_str()
            .parse()
            .map_err(|e| format!("{}: {e}", redact(url)))?;
        let mut req = hyper::Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("{}: {e}", redact(url)))?;
        req.headers_mut().insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("peregrine/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in headers {
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("{method} {}: header {name} is not valid", redact(url)))?;
            req.headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
        let exchange = async {
            let response = self
                .inner
                .request(req)
                .await
                .map_err(|e| format!("{method} {}: {}", redact(url), error_chain(&e)))?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            let mut incoming = response.into_body();
            while let Some(frame) = incoming.frame().await {
                let frame =
                    frame.map_err(|e| format!("{method} {}: {}", redact(url), error_chain(&e)))?;
                if let Some(chunk) = frame.data_ref() {
                    if body.len() + chunk.len() > max {
                        return Err(format!("{method} {}: answer over {max} bytes", redact(url)));
                    }
                    body.extend_from_slice(chunk);
                }
            }
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{method} {}: no answer within {} ms",
                redact(url),
                self.timeout.as_millis()
            )),
        }
    }
}

/// Parses an output's URL; only http and https are accepted.
pub(crate) fn parse_url(field: &str, url: &str) -> Result<url::Url, BuildError> {
    let u = url::Url::parse(url)
        .map_err(|e| BuildError(format!("{field} `{url}` is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(BuildError(format!(
            "{field} `{url}` must be an http:// or https:// URL"
        )));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(BuildError(format!(
            "{field}: put credentials in an Authorization header, not in the URL"
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
        if name == hyper::header::AUTHORIZATION {
            value.set_sensitive(true);
        }
        map.insert(name, value);
    }
    Ok(map)
}

/// One receiver: a client, a URL and the headers sent with every request.
pub(crate) struct HttpTarget {
    pub client: HttpClient,
    pub url: url::Url,
    pub headers: HeaderMap,
}

impl HttpTarget {
    /// POSTs a JSON body; any 2xx answer acknowledges it.
    pub async fn post_json(&self, body: Vec<u8>) -> Result<(), SendError> {
        let uri: hyper::Uri = self
            .url
            .as_str()
            .parse()
            .map_err(|e| SendError::retry(format!("{}: {e}", redact(&self.url))))?;
        let mut req = hyper::Request::post(uri)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::retry(format!("{}: {e}", redact(&self.url))))?;
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("peregrine/", env!("CARGO_PKG_VERSION"))),
        );
        for (k, v) in &self.headers {
            h.insert(k.clone(), v.clone());
        }
        let exchange = async {
            let response = self.client.inner.request(req).await.map_err(|e| {
                SendError::retry(format!("POST {}: {}", redact(&self.url), error_chain(&e)))
            })?;
            answer(&self.url, response).await
        };
        match tokio::time::timeout(self.client.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(SendError::retry(format!(
                "POST {}: no answer within {} ms",
                redact(&self.url),
                self.client.timeout.as_millis()
            ))),
        }
    }
}

/// Classifies a receiver's answer. Only a refusal of the alert itself (400,
/// 413, 422 and the like) drops it; authentication and addressing errors
/// (401, 403, 404) are retried, since an operator can fix them without the
/// alerts being lost meanwhile.
async fn answer(
    url: &url::Url,
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<(), SendError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // Read (a bounded part of) the body: it explains errors, and reading it
    // to the end lets the connection be reused.
    let mut body = Vec::new();
    let mut incoming = response.into_body();
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(f) => {
                if let Some(chunk) = f.data_ref()
                    && body.len() < ERROR_BODY_BYTES
                {
                    body.extend_from_slice(
                        &chunk[..chunk.len().min(ERROR_BODY_BYTES - body.len())],
                    );
                }
            }
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
pub(crate) fn redact(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("");
    if host.ends_with("slack.com") {
        return format!("{}://{host}/…", url.scheme());
    }
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{host}{port}{}", url.scheme(), url.path())
}

/// An error with its causes, which is where hyper says what went wrong
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
        assert!(client(&TlsConfig::default(), 1000).is_ok());
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
        assert!(parse_url("url", "http://user:pw@x/").is_err());
    }

    #[test]
    fn redaction_hides_secrets() {
        let u = url::Url::parse("https://hooks.slack.com/services/T000/B000/XXXX").unwrap();
        assert_eq!(redact(&u), "https://hooks.slack.com/…");
        let u = url::Url::parse("https://example.com:8443/path?token=x").unwrap();
        assert_eq!(redact(&u), "https://example.com:8443/path");
    }
}
