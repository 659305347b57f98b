//! TLS with rustls (ring provider): server, client and mutual TLS, ALPN `h2`.
//!
//! - A client with no CA configured verifies servers against the platform's trust store
//!   (feature `tls-platform-verifier`, on by default: on Linux the system's CA bundle, or the
//!   file `SSL_CERT_FILE` names), or against the Mozilla roots (feature `tls-webpki-roots`).
//! - Certificates and keys are given as PEM, or a whole [`rustls::ClientConfig`] /
//!   [`rustls::ServerConfig`] is handed over ([`ClientTlsConfig::from_rustls`],
//!   [`ServerTlsConfig::from_rustls`]); either way ALPN is `h2` and nothing else.
//! - A server's certificate can be replaced while it runs ([`ReloadableIdentity`]).

use std::{fmt, sync::Arc};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use crate::Status;

mod client;
mod server;

pub use client::ClientTlsConfig;
pub(crate) use client::TlsConnector;
/// The rustls this crate speaks, for building a [`rustls::ClientConfig`] or
/// [`rustls::ServerConfig`] of your own.
pub use rustls;
pub(crate) use server::TlsAcceptor;
pub use server::{PeerCertificates, ReloadableIdentity, ServerTlsConfig};

const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Status> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Status::invalid_argument("no certificate found in PEM"));
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Status> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| Status::invalid_argument(format!("invalid PEM private key: {e}")))
}

fn roots(pem: &[u8]) -> Result<rustls::RootCertStore, Status> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certs(pem)? {
        store
            .add(cert)
            .map_err(|e| Status::invalid_argument(format!("invalid CA certificate: {e}")))?;
    }
    Ok(store)
}

/// Fails a connection whose peer did not agree to `h2`.
fn check_alpn(protocol: Option<&[u8]>) -> Result<(), Status> {
    match protocol {
        Some(ALPN_H2) => Ok(()),
        Some(other) => Err(Status::unavailable(format!(
            "TLS peer negotiated ALPN {:?}, not h2",
            String::from_utf8_lossy(other)
        ))),
        None => Err(Status::unavailable("TLS peer did not negotiate ALPN h2")),
    }
}

/// A certificate chain and its private key, in PEM.
#[derive(Clone)]
pub struct Identity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl Identity {
    /// An identity from a PEM certificate chain and a PEM private key.
    pub fn from_pem(cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Identity {
        Identity {
            cert_pem: cert_pem.as_ref().to_vec(),
            key_pem: key_pem.as_ref().to_vec(),
        }
    }

    /// The chain and key, parsed and checked to belong together, ready to sign handshakes.
    fn certified_key(&self) -> Result<rustls::sign::CertifiedKey, Status> {
        rustls::sign::CertifiedKey::from_der(
            certs(&self.cert_pem)?,
            key(&self.key_pem)?,
            &provider(),
        )
        .map_err(|e| Status::invalid_argument(format!("invalid identity: {e}")))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity(..)")
    }
}
