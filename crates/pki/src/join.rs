//! Reaching a controller before having credentials: the joining machine knows only a token
//! and the SHA-256 fingerprint of the cluster CA. It checks the controller's certificate
//! chain against that fingerprint before sending anything, so a token is never handed to an
//! impostor.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::sha256_hex;

/// Accepts a server whose chain carries the CA with the pinned fingerprint and whose
/// certificate that CA signed for the name dialled.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| sha256_hex(c) == self.fingerprint).ok_or_else(|| {
            rustls::Error::General("the controller's CA does not match the pinned fingerprint".into())
        })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a channel for joining could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JoinChannelError {
    #[error("CA fingerprint {0:?}: expected 64 hex digits (SHA-256)")]
    Fingerprint(String),
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{address}: {source}")]
    ServerName { address: String, source: rustls::pki_types::InvalidDnsNameError },
    /// Shows the innermost cause: tonic's own message ("transport error") says nothing.
    #[error("{address}: {}", innermost(.source))]
    Connect { address: String, source: tonic::transport::Error },
}

fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// A channel to the controller at `address` (host:port) over TLS checked against the CA
/// fingerprint, presenting no client certificate (only joining is allowed that way).
pub async fn pinned_channel(
    address: &str,
    fingerprint: &str,
    timeout: Duration,
) -> Result<Channel, JoinChannelError> {
    let fingerprint = fingerprint.trim().to_ascii_lowercase().replace(':', "");
    if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(JoinChannelError::Fingerprint(fingerprint));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { fingerprint, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host).trim_matches(['[', ']']);
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|source| JoinChannelError::ServerName { address: address.to_string(), source })?;
    let target = address.to_string();
    let failed = |source| JoinChannelError::Connect { address: address.to_string(), source };
    Endpoint::from_shared(format!("http://{address}"))
        .map_err(failed)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (connector, server_name, target) = (connector.clone(), server_name.clone(), target.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(failed)
}
