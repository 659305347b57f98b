//! A channel's TLS: which servers it trusts, what it presents, and the handshake.

use std::{fmt, sync::Arc};

use anygrpc_rt::BoxIo;
use rustls::{
    client::WantsClientCert, pki_types::ServerName, ClientConfig, ConfigBuilder, WantsVerifier,
};

use super::{certs, check_alpn, key, provider, roots, Identity, ALPN_H2};
use crate::Status;

/// TLS settings of a channel.
///
/// With no [`ca_certificate`](Self::ca_certificate), servers are verified against the
/// platform's trust store (feature `tls-platform-verifier`, on by default; on Linux it reads
/// the system's CA bundle, or only the file `SSL_CERT_FILE` names when that is set), or
/// against the Mozilla roots when the feature `tls-webpki-roots` is on (it then takes the
/// platform's place).
#[derive(Debug, Clone, Default)]
pub struct ClientTlsConfig {
    ca_pem: Option<Vec<u8>>,
    domain_name: Option<String>,
    identity: Option<Identity>,
    rustls: Option<Arc<ClientConfig>>,
}

impl ClientTlsConfig {
    /// Default settings: verify the server against the default trust store.
    pub fn new() -> ClientTlsConfig {
        ClientTlsConfig::default()
    }

    /// Uses a rustls configuration of your own (its roots or verifier, client certificate,
    /// versions, resumption, key log). Its ALPN list is replaced by `h2`, which gRPC
    /// requires; [`domain_name`](Self::domain_name) still applies, and
    /// [`ca_certificate`](Self::ca_certificate) and [`identity`](Self::identity) cannot be
    /// added to it (the channel's build fails `INVALID_ARGUMENT`).
    pub fn from_rustls(config: impl Into<Arc<ClientConfig>>) -> ClientTlsConfig {
        ClientTlsConfig {
            rustls: Some(config.into()),
            ..ClientTlsConfig::default()
        }
    }

    /// Trusts the CA certificates in this PEM, and only those.
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
        let mut config = match &self.rustls {
            Some(_) if self.ca_pem.is_some() || self.identity.is_some() => {
                return Err(Status::invalid_argument(
                    "a rustls ClientConfig of your own carries its own roots and identity: \
                     ca_certificate and identity cannot be added to it",
                ))
            }
            Some(config) => ClientConfig::clone(config),
            None => self.config()?,
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

    /// The rustls configuration these settings describe.
    fn config(&self) -> Result<ClientConfig, Status> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Status::internal(format!("TLS setup failed: {e}")))?;
        let builder = match &self.ca_pem {
            Some(pem) => builder.with_root_certificates(roots(pem)?),
            None => default_trust(builder)?,
        };
        match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(certs(&id.cert_pem)?, key(&id.key_pem)?)
                .map_err(|e| Status::invalid_argument(format!("invalid client identity: {e}"))),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

type Builder<S> = ConfigBuilder<ClientConfig, S>;

/// The Mozilla roots, when the `tls-webpki-roots` feature asks for them.
#[cfg(feature = "tls-webpki-roots")]
fn default_trust(builder: Builder<WantsVerifier>) -> Result<Builder<WantsClientCert>, Status> {
    let mut store = rustls::RootCertStore::empty();
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(builder.with_root_certificates(store))
}

/// The platform's trust store, through rustls-platform-verifier. It is loaded once per
/// process (on Linux, reading and parsing the CA bundle takes milliseconds), as grpc-go
/// loads the system pool once.
#[cfg(all(feature = "tls-platform-verifier", not(feature = "tls-webpki-roots")))]
fn default_trust(builder: Builder<WantsVerifier>) -> Result<Builder<WantsClientCert>, Status> {
    use std::sync::OnceLock;

    use rustls::client::danger::ServerCertVerifier;

    type Loaded = Result<Arc<dyn ServerCertVerifier>, String>;
    static PLATFORM: OnceLock<Loaded> = OnceLock::new();
    let verifier = PLATFORM.get_or_init(|| {
        rustls_platform_verifier::Verifier::new(provider())
            .map(|verifier| Arc::new(verifier) as Arc<dyn ServerCertVerifier>)
            .map_err(|e| e.to_string())
    });
    match verifier {
        Ok(verifier) => Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())),
        Err(e) => Err(Status::unavailable(format!(
            "TLS: the platform's trust store could not be loaded ({e}); \
             give the CA with ClientTlsConfig::ca_certificate"
        ))),
    }
}

/// No store to fall back on: a CA must be given.
#[cfg(not(any(feature = "tls-platform-verifier", feature = "tls-webpki-roots")))]
fn default_trust(_: Builder<WantsVerifier>) -> Result<Builder<WantsClientCert>, Status> {
    Err(Status::invalid_argument(
        "TLS: no CA certificate given, and no trust store built in \
         (features tls-platform-verifier, tls-webpki-roots)",
    ))
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
