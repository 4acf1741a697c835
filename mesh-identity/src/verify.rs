//! Checking peers by SPIFFE ID: mesh certificates carry a URI SAN and no
//! DNS name, so the server check is the chain to the mesh's roots plus
//! the URI among those pilot says may serve the destination (secure
//! naming), not a host name.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::IdentityError;

/// The DER of the first certificate in `pem`.
pub fn der_of(pem: &str) -> Result<CertificateDer<'static>, IdentityError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| IdentityError::Parse(format!("not a PEM certificate: {e}")))?;
    Ok(CertificateDer::from(block.contents))
}

/// What the proxy reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The URI SAN (the SPIFFE ID), if any.
    pub uri: Option<String>,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Seconds from the start to the end of validity.
    pub lifetime: i64,
    /// Seconds from the Unix epoch to the end of validity.
    pub expires_at: i64,
    /// The serial number, hex.
    pub serial: String,
}

/// Reads `der`'s identity and validity.
pub fn facts(der: &CertificateDer<'_>) -> Result<Facts, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| IdentityError::Parse(format!("not an X.509 certificate: {e}")))?;
    let rfc3339 = |t: x509_parser::time::ASN1Time| {
        t.to_datetime()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let validity = cert.validity();
    Ok(Facts {
        uri: uri_san(&cert),
        not_before: rfc3339(validity.not_before),
        not_after: rfc3339(validity.not_after),
        lifetime: validity.not_after.timestamp() - validity.not_before.timestamp(),
        expires_at: validity.not_after.timestamp(),
        serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
    })
}

fn uri_san(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some((*u).to_owned()),
        _ => None,
    })
}

/// The SPIFFE ID of a peer's certificate (its first URI SAN).
pub fn peer_identity(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    uri_san(&cert)
}

/// Verifies a server's chain to the mesh's roots and its URI SAN.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    /// Trusts `roots`; the server must be one of `expected` (any when empty).
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: Vec<String>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        SpiffeServerVerifier {
            roots,
            expected,
            provider,
        }
    }
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    let kind = match e {
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(kind)
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        if self.expected.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        let presented = peer_identity(end_entity);
        match presented {
            Some(uri) if self.expected.contains(&uri) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(NotExpected {
                    presented,
                    expected: self.expected.clone(),
                })),
            ))),
        }
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
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server whose identity is not one that may serve the destination.
#[derive(Debug)]
struct NotExpected {
    presented: Option<String>,
    expected: Vec<String>,
}

impl std::fmt::Display for NotExpected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server is {}, not one of {} (secure naming)",
            self.presented.as_deref().unwrap_or("no SPIFFE ID"),
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for NotExpected {}
