//! TLS termination with rustls, for deployments without a proxy in front.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Builds an acceptor from PEM files: a certificate chain and a private key.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = {
        let pem = std::fs::read(cert)
            .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?;
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .with_context(|| format!("bad PEM in TLS certificate {}", cert.display()))?
    };
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key: PrivateKeyDer<'static> = {
        let pem =
            std::fs::read(key).with_context(|| format!("cannot read TLS key {}", key.display()))?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .with_context(|| format!("bad PEM in TLS key {}", key.display()))?
            .with_context(|| format!("no private key in {}", key.display()))?
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
