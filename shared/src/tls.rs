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

/// How the Postgres server is authenticated: libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, the server not authenticated.
    Prefer,
    /// TLS, the server not authenticated; with `DATABASE_CA_CERT`, as
    /// `verify-ca` (libpq does the same when a root certificate is present).
    Require,
    /// TLS; the server's certificate must chain to `DATABASE_CA_CERT`. Its
    /// name is not checked.
    VerifyCa,
    /// TLS; the certificate must chain to the public web PKI or to
    /// `DATABASE_CA_CERT`, and name the host connected to. Recommended.
    VerifyFull,
}

impl TlsMode {
    /// Whether a connection in this mode is encrypted to a server whose
    /// identity nobody checked (or not encrypted at all).
    pub fn authenticates_server(self, ca_pinned: bool) -> bool {
        match self {
            TlsMode::Disable | TlsMode::Prefer => false,
            TlsMode::Require => ca_pinned,
            TlsMode::VerifyCa | TlsMode::VerifyFull => true,
        }
    }
}

fn pinned_roots(ca_cert_pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("cannot parse the PEM certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate found in the PEM text".into());
    }
    Ok(roots)
}

/// TLS for Postgres in `mode`, with `ca_cert_pem` (`DATABASE_CA_CERT`) pinned
/// when given. Supabase and RDS sign their servers' certificates with CAs of
/// their own (published for download), not with public web roots, so
/// `verify-full` against them needs that CA pinned.
pub fn postgres_client_config(mode: TlsMode, ca_cert_pem: Option<&str>) -> Result<ClientConfig, String> {
    let pinned = ca_cert_pem.map(pinned_roots).transpose()?;
    let provider = provider();
    match (mode, pinned) {
        (TlsMode::VerifyFull, pinned) => {
            let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(pinned) = pinned {
                roots.roots.extend(pinned.roots);
            }
            Ok(builder().with_root_certificates(roots).with_no_client_auth())
        }
        (TlsMode::VerifyCa | TlsMode::Require, Some(pinned)) => {
            let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(pinned), provider)
                .build()
                .map_err(|e| format!("unusable CA certificate: {e}"))?;
            Ok(builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { chain }))
                .with_no_client_auth())
        }
        (TlsMode::VerifyCa, None) => Err(
            "sslmode=verify-ca needs DATABASE_CA_CERT, the CA the server's certificate must chain to (use verify-full to check the public web PKI and the host name)"
                .into(),
        ),
        (TlsMode::Disable | TlsMode::Prefer | TlsMode::Require, _) => {
            let algorithms = provider.signature_verification_algorithms;
            Ok(builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly { algorithms }))
                .with_no_client_auth())
        }
    }
}

/// libpq's `verify-ca`: the chain must lead to a pinned CA; the certificate
/// may be for any name (useful where the host name is an IP address or an
/// alias the certificate does not list).
#[derive(Debug)]
struct ChainOnly {
    chain: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .chain
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
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
