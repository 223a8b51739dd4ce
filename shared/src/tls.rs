//! rustls client configuration (ring provider, no OpenSSL) for Postgres and for
//! the HTTPS calls we make ourselves.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"))
}

/// Public web PKI roots, for HTTPS endpoints such as Supabase's JWKS.
pub fn web_client_config() -> ClientConfig {
    let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    builder().with_root_certificates(roots).with_no_client_auth()
}

/// TLS for Postgres. With a CA certificate the server must present a chain to it
/// for its host name (libpq's `verify-full`). Without one the connection is
/// encrypted but the server is not authenticated, which is what libpq's
/// `sslmode=require` does and what Supabase's and RDS's connection strings expect.
pub fn postgres_client_config(ca_cert_pem: Option<&str>) -> Result<ClientConfig, String> {
    match ca_cert_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("cannot parse the PEM certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("no certificate found in the PEM text".into());
            }
            Ok(builder().with_root_certificates(roots).with_no_client_auth())
        }
        None => {
            let algorithms = provider().signature_verification_algorithms;
            Ok(builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly { algorithms }))
                .with_no_client_auth())
        }
    }
}

/// Accepts any server certificate but still checks the handshake signatures, so
/// the session is encrypted to whoever holds the presented certificate's key.
#[derive(Debug)]
struct EncryptOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
