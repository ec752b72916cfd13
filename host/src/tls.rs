//! TLS for the webhook, with optional client certificates (mutual TLS).
//!
//! Handshakes run on the connections' own tasks (`crate::connections`), so
//! a slow or hostile client cannot hold up the accept loop; connections that
//! fail the handshake are logged, counted and dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// Makes ring the process's default rustls crypto provider, once. The OCI
/// client (reqwest) is built without a provider of its own and uses the
/// default, so the process keeps one TLS stack; and since cargo unifies
/// features, any reqwest client in the same build relies on it too.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM bundle of CAs whose client certificates are accepted. When set,
    /// every client must present one (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("invalid PEM certificate in {}: {e}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

impl TlsConfig {
    pub fn acceptor(&self) -> anyhow::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?;
        let builder = match &self.client_ca_file {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca)? {
                    roots.add(c).map_err(|e| {
                        anyhow::anyhow!("invalid CA certificate in {}: {e}", ca.display())
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| anyhow::anyhow!("client certificate verifier: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| {
            anyhow::anyhow!(
                "cannot read a private key from {}: {e}",
                self.key_file.display()
            )
        })?;
        let mut config = builder
            .with_single_cert(certs(&self.cert_file)?, key)
            .map_err(|e| anyhow::anyhow!("server certificate and key do not match: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The TLS handshake of an accepted connection, within `timeout`; `None`
/// (logged and counted) when it fails or takes too long. Run on the
/// connection's own task, so a slow or hostile client holds up no other.
pub(crate) async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    let failure = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => return Some(tls),
        Ok(Err(e)) => format!("TLS handshake failed: {e}"),
        Err(_) => "TLS handshake timed out".to_string(),
    };
    metrics::counter!("peregrine_tls_handshake_failures_total").increment(1);
    tracing::debug!(%peer, "{failure}");
    None
}
