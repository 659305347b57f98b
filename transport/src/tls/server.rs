//! A server's TLS: its certificate (fixed, reloadable, or in a rustls config of your own),
//! the clients it asks for certificates, and the handshake.

use std::{
    fmt,
    sync::{Arc, PoisonError, RwLock},
};

use anygrpc_rt::BoxIo;
use rustls::{
    pki_types::CertificateDer,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};

use super::{check_alpn, provider, roots, Identity, ALPN_H2};
use crate::Status;

/// What a server presents.
#[derive(Debug, Clone)]
enum Presents {
    /// The same certificate for the server's life.
    Fixed(Identity),
    /// Whatever the reloadable identity holds at each handshake.
    Reloadable(ReloadableIdentity),
    /// A rustls configuration of the user's.
    Rustls(Arc<ServerConfig>),
}

/// TLS settings of a server.
#[derive(Debug, Clone)]
pub struct ServerTlsConfig {
    presents: Presents,
    client_ca_pem: Option<Vec<u8>>,
    client_auth_optional: bool,
}

impl ServerTlsConfig {
    /// Serves with this certificate and key.
    pub fn new(identity: Identity) -> ServerTlsConfig {
        ServerTlsConfig::presenting(Presents::Fixed(identity))
    }

    /// Serves with whatever certificate `identity` holds when each handshake starts: call
    /// [`ReloadableIdentity::reload`] to rotate it while the server runs. Connections made
    /// before a reload keep the certificate they were made with.
    pub fn reloadable(identity: ReloadableIdentity) -> ServerTlsConfig {
        ServerTlsConfig::presenting(Presents::Reloadable(identity))
    }

    /// Uses a rustls configuration of your own (its certificate resolver, client
    /// verification, versions, tickets). Its ALPN list is replaced by `h2`, which gRPC
    /// requires; [`client_ca_root`](Self::client_ca_root) cannot be added to it (binding
    /// fails `INVALID_ARGUMENT`).
    pub fn from_rustls(config: impl Into<Arc<ServerConfig>>) -> ServerTlsConfig {
        ServerTlsConfig::presenting(Presents::Rustls(config.into()))
    }

    fn presenting(presents: Presents) -> ServerTlsConfig {
        ServerTlsConfig {
            presents,
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
        let mut config = match &self.presents {
            Presents::Rustls(_) if self.client_ca_pem.is_some() => {
                return Err(Status::invalid_argument(
                    "a rustls ServerConfig of your own carries its own client verification: \
                     client_ca_root cannot be added to it",
                ))
            }
            Presents::Rustls(config) => ServerConfig::clone(config),
            Presents::Fixed(identity) => {
                let key = Arc::new(identity.certified_key()?);
                self.config(Arc::new(Fixed(key)))?
            }
            Presents::Reloadable(identity) => self.config(Arc::new(identity.clone()))?,
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(TlsAcceptor {
            acceptor: futures_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The rustls configuration these settings describe, presenting what `resolver` gives.
    fn config(&self, resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, Status> {
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
        Ok(builder.with_cert_resolver(resolver))
    }
}

/// One certificate for every handshake.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server certificate that can be replaced while the server runs: certificate rotation
/// without a restart. Clones share the certificate; keep one to [`reload`](Self::reload).
///
/// ```no_run
/// # fn rotate(cert: &[u8], key: &[u8], new_cert: &[u8], new_key: &[u8]) -> Result<(), anygrpc::Status> {
/// use anygrpc::tls::{Identity, ReloadableIdentity, ServerTlsConfig};
///
/// let identity = ReloadableIdentity::new(Identity::from_pem(cert, key))?;
/// let server = anygrpc::Server::builder().tls(ServerTlsConfig::reloadable(identity.clone()));
/// // Later, when the certificate is renewed: new handshakes present the new one.
/// identity.reload(Identity::from_pem(new_cert, new_key))?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ReloadableIdentity {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl ReloadableIdentity {
    /// Starts with `identity`; `INVALID_ARGUMENT` if its PEM does not parse or its key does
    /// not match its certificate.
    pub fn new(identity: Identity) -> Result<ReloadableIdentity, Status> {
        Ok(ReloadableIdentity {
            current: Arc::new(RwLock::new(Arc::new(identity.certified_key()?))),
        })
    }

    /// Presents `identity` from the next handshake on. One that does not parse, or whose key
    /// does not match its certificate, is refused (`INVALID_ARGUMENT`) and the current one
    /// stays.
    pub fn reload(&self, identity: Identity) -> Result<(), Status> {
        let key = Arc::new(identity.certified_key()?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }
}

impl fmt::Debug for ReloadableIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadableIdentity(..)")
    }
}

impl ResolvesServerCert for ReloadableIdentity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Some(current.clone())
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
