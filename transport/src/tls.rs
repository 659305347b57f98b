//! TLS with rustls (ring provider): server, client and mutual TLS, ALPN `h2`.
//!
//! Certificates and keys are given as PEM. A client with no CA configured trusts nothing
//! unless the `tls-webpki-roots` feature adds the Mozilla root store.

use std::{fmt, sync::Arc};

use anygrpc_rt::BoxIo;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore, ServerConfig,
};

use crate::Status;

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

fn roots(pem: &[u8]) -> Result<RootCertStore, Status> {
    let mut store = RootCertStore::empty();
    for cert in certs(pem)? {
        store
            .add(cert)
            .map_err(|e| Status::invalid_argument(format!("invalid CA certificate: {e}")))?;
    }
    Ok(store)
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
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity(..)")
    }
}

/// TLS settings of a channel.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsConfig {
    ca_pem: Option<Vec<u8>>,
    domain_name: Option<String>,
    identity: Option<Identity>,
}

impl ClientTlsConfig {
    /// Default settings: verify the server against the configured roots.
    pub fn new() -> ClientTlsConfig {
        ClientTlsConfig::default()
    }

    /// Trusts the CA certificates in this PEM.
    pub fn ca_certificate(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca_pem = Some(pem.as_ref().to_vec());
        self
    }

    /// The name to verify the server certificate against (default: the channel's authority
    /// host), as `--server_host_override` does in the interop client.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    /// Presents a client certificate (mutual TLS).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    pub(crate) fn connector(self, default_host: &str) -> Result<TlsConnector, Status> {
        #[allow(unused_mut)]
        let mut store = match &self.ca_pem {
            Some(pem) => roots(pem)?,
            None => RootCertStore::empty(),
        };
        #[cfg(feature = "tls-webpki-roots")]
        if self.ca_pem.is_none() {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Status::internal(format!("TLS setup failed: {e}")))?
            .with_root_certificates(store);
        let mut config = match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(certs(&id.cert_pem)?, key(&id.key_pem)?)
                .map_err(|e| Status::invalid_argument(format!("invalid client identity: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let name = self.domain_name.as_deref().unwrap_or(default_host);
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| {
            Status::invalid_argument(format!("invalid TLS server name {name:?}: {e}"))
        })?;
        Ok(TlsConnector {
            connector: futures_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// A ready-to-use client TLS configuration.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    connector: futures_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsConnector {
    pub(crate) async fn connect(&self, io: BoxIo) -> Result<BoxIo, Status> {
        let stream = self
            .connector
            .connect(self.server_name.clone(), io)
            .await
            .map_err(|e| Status::unavailable(format!("TLS handshake failed: {e}")))?;
        check_alpn(stream.get_ref().1.alpn_protocol())?;
        Ok(anygrpc_rt::box_io(stream))
    }
}

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

/// TLS settings of a server.
#[derive(Debug, Clone)]
pub struct ServerTlsConfig {
    identity: Identity,
    client_ca_pem: Option<Vec<u8>>,
    client_auth_optional: bool,
}

impl ServerTlsConfig {
    /// Serves with this certificate and key.
    pub fn new(identity: Identity) -> ServerTlsConfig {
        ServerTlsConfig {
            identity,
            client_ca_pem: None,
            client_auth_optional: false,
        }
    }

    /// Requires clients to present a certificate signed by a CA in this PEM (mutual TLS).
    pub fn client_ca_root(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.client_ca_pem = Some(pem.as_ref().to_vec());
        self
    }

    /// With [`client_ca_root`](Self::client_ca_root): also accept clients without a
    /// certificate (those that present one must still pass verification).
    pub fn client_auth_optional(mut self, optional: bool) -> Self {
        self.client_auth_optional = optional;
        self
    }

    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, Status> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Status::internal(format!("TLS setup failed: {e}")))?;
        let builder = match &self.client_ca_pem {
            Some(pem) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(pem)?),
                    provider(),
                );
                let verifier = if self.client_auth_optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| Status::invalid_argument(format!("invalid client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                certs(&self.identity.cert_pem)?,
                key(&self.identity.key_pem)?,
            )
            .map_err(|e| Status::invalid_argument(format!("invalid server identity: {e}")))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(TlsAcceptor {
            acceptor: futures_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// A ready-to-use server TLS configuration.
#[derive(Clone)]
pub(crate) struct TlsAcceptor {
    acceptor: futures_rustls::TlsAcceptor,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

/// What a TLS server learned about its client, available to handlers in
/// [`Request::extensions`](crate::Request::extensions).
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Vec<CertificateDer<'static>>);

impl TlsAcceptor {
    pub(crate) async fn accept(
        &self,
        io: BoxIo,
    ) -> Result<(BoxIo, Option<PeerCertificates>), Status> {
        let stream = self
            .acceptor
            .accept(io)
            .await
            .map_err(|e| Status::unavailable(format!("TLS handshake failed: {e}")))?;
        let conn = stream.get_ref().1;
        check_alpn(conn.alpn_protocol())?;
        let peer = conn
            .peer_certificates()
            .map(|certs| PeerCertificates(certs.iter().map(|c| c.clone().into_owned()).collect()));
        Ok((anygrpc_rt::box_io(stream), peer))
    }
}
