//! A member's server side of mutual TLS, with a certificate that can be replaced while it
//! serves: a renewed credential is presented from the next handshake on, and connections
//! already open keep going. (tonic's own TLS server fixes its certificate at start.)

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::{Credentials, PkiError};

/// A client that connects and then says nothing is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate a member presents, replaceable while it serves.
#[derive(Debug)]
pub struct Presented {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

fn certificate_error(what: &str, e: impl std::fmt::Display) -> PkiError {
    PkiError::Certificate(format!("{what}: {e}"))
}

fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| certificate_error("unreadable certificate", e))
}

fn certified_key(credentials: &Credentials, provider: &CryptoProvider) -> Result<CertifiedKey, PkiError> {
    // The CA's certificate travels with the member's, so that a joining machine can check it
    // against the fingerprint it was given.
    let mut chain = certificates(&credentials.cert)?;
    chain.extend(certificates(&credentials.ca)?);
    let key = PrivateKeyDer::from_pem_slice(credentials.key.as_bytes())
        .map_err(|e| certificate_error("unreadable private key", e))?;
    let key = provider.key_provider.load_private_key(key).map_err(|e| certificate_error("private key", e))?;
    let certified = CertifiedKey::new(chain, key);
    certified.keys_match().map_err(|e| certificate_error("certificate and key", e))?;
    Ok(certified)
}

impl Presented {
    pub fn new(credentials: &Credentials) -> Result<Arc<Presented>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = RwLock::new(Arc::new(certified_key(credentials, &provider)?));
        Ok(Arc::new(Presented { current, provider }))
    }

    /// Presents `credentials` from the next handshake on; refused (and the old one kept) when
    /// its certificate and key do not belong together.
    pub fn replace(&self, credentials: &Credentials) -> Result<(), PkiError> {
        let next = Arc::new(certified_key(credentials, &self.provider)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// The server configuration: present this certificate, ask for one from the cluster CA
    /// (`ca_pem`). Clients without one get through the handshake only to be refused
    /// everything but joining.
    pub fn server_config(self: &Arc<Self>, ca_pem: &str) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let mut roots = RootCertStore::empty();
        for ca in certificates(ca_pem)? {
            roots.add(ca).map_err(|e| certificate_error("cluster CA", e))?;
        }
        let clients = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| certificate_error("client verification", e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| certificate_error("TLS versions", e))?
            .with_client_cert_verifier(clients)
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Presented {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

/// The connections accepted on `listener`, each through its TLS handshake (run concurrently,
/// so that one slow client holds up no other). Failed handshakes are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (accepted, stream) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            // Stops (and lets go of the port) once the server stops taking connections.
            let next = tokio::select! {
                () = accepted.closed() => return,
                next = listener.accept() => next,
            };
            let (tcp, peer) = match next {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Small request/response messages: without TCP_NODELAY, Nagle's algorithm and
            // delayed ACKs add ~40 ms to replies.
            let _ = tcp.set_nodelay(true);
            let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, Role};

    fn presented_leaf(presented: &Presented) -> CertificateDer<'static> {
        presented.current.read().unwrap().cert[0].clone()
    }

    #[test]
    fn a_renewed_credential_is_presented_and_a_mismatched_one_refused() {
        let ca = Authority::create("c").unwrap();
        let first = ca.issue(Role::Controller, "1", &["127.0.0.1".into()]).unwrap();
        let renewed = ca.issue(Role::Controller, "1", &["127.0.0.1".into()]).unwrap();
        let presented = Presented::new(&first).unwrap();
        assert_eq!(presented.current.read().unwrap().cert.len(), 2, "the CA travels with the leaf");
        assert_eq!(presented_leaf(&presented), certificates(&first.cert).unwrap()[0]);

        let mismatched = Credentials { key: first.key.clone(), ..renewed.clone() };
        assert!(presented.replace(&mismatched).is_err());
        assert_eq!(presented_leaf(&presented), certificates(&first.cert).unwrap()[0], "the old one stays");

        presented.replace(&renewed).unwrap();
        assert_eq!(presented_leaf(&presented), certificates(&renewed.cert).unwrap()[0]);
        assert!(presented.server_config(&first.ca).is_ok());
    }
}
