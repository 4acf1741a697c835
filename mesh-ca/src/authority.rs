//! The CA's keys and certificates, and signing.
//!
//! The files are those of Istio's `cacerts` Secret, so a user's existing
//! plugged-in CA moves over unchanged:
//!
//! | file | what |
//! | --- | --- |
//! | `ca-cert.pem` | the certificate that signs workloads (a root or an intermediate) |
//! | `ca-key.pem` | its key (PKCS#8), mode 0600 |
//! | `cert-chain.pem` | the chain from `ca-cert.pem` up to the root, sent after each workload certificate |
//! | `root-cert.pem` | the trust bundle: every root workloads trust (two during a root rotation) |
//!
//! With none of them, [`Authority::load_or_create`] generates a self-signed
//! root and writes the four files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_rules::identity::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// How long a generated root lives.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Workload certificates start this long before they are signed, so a peer
/// whose clock is a little behind still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The shortest lifetime a caller may ask for.
pub const MIN_VALIDITY: Duration = Duration::from_secs(60);

/// Why the CA could not start from its files.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A file's content is not what it should be.
    #[error("{path}: {reason}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Some of the four files are there, some are not.
    #[error(
        "{dir}: has {present} but not {missing}; give all of ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem, or none to generate a root"
    )]
    Partial {
        /// The folder.
        dir: PathBuf,
        /// The files found.
        present: String,
        /// The files missing.
        missing: String,
    },
}

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// The CSR is not a valid PKCS#10 request (or its signature is wrong).
    #[error("the CSR is not a valid PEM PKCS#10 request: {0}")]
    BadCsr(String),
    /// The CSR asks for names other than the caller's identity.
    #[error(
        "the CSR asks for {asked}; a caller authenticated as {allowed} may only ask for exactly that URI SAN"
    )]
    NotYourIdentity {
        /// The SANs asked for.
        asked: String,
        /// The caller's identity.
        allowed: String,
    },
    /// The CSR asks for a CA certificate.
    #[error("the CSR asks for a CA certificate; workloads get leaf certificates only")]
    AsksForCa,
    /// The lifetime asked for is out of bounds.
    #[error(
        "a lifetime of {asked}s is out of bounds: ask for {min}s to {max}s (0 for the default)"
    )]
    Validity {
        /// Seconds asked for.
        asked: i64,
        /// The shortest allowed.
        min: u64,
        /// The longest allowed.
        max: u64,
    },
    /// rcgen could not build the certificate.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The file names of Istio's `cacerts` Secret.
pub const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

/// A loaded CA: signs workload certificates for one trust domain.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// When the signing certificate expires: no workload certificate outlives it.
    signer_expires: OffsetDateTime,
    /// PEM certificates sent after the workload's own.
    chain: Vec<String>,
    /// PEM roots workloads trust.
    roots: Vec<String>,
    trust_domain: String,
    /// Lifetime when the caller asks for none.
    pub default_validity: Duration,
    /// The longest lifetime a caller may ask for.
    pub max_validity: Duration,
}

impl Authority {
    /// Reads the CA from `dir`, or creates a self-signed root there when the
    /// folder has none of the files.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Authority, LoadError> {
        let present: Vec<&str> = FILES.into_iter().filter(|f| dir.join(f).exists()).collect();
        if present.is_empty() {
            create_root(dir, trust_domain)?;
        } else if present.len() < FILES.len() {
            let missing: Vec<&str> = FILES.into_iter().filter(|f| !present.contains(f)).collect();
            return Err(LoadError::Partial {
                dir: dir.to_owned(),
                present: present.join(", "),
                missing: missing.join(", "),
            });
        }
        Authority::load(dir, trust_domain)
    }

    /// Reads the CA from the four files in `dir`.
    pub fn load(dir: &Path, trust_domain: &str) -> Result<Authority, LoadError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| LoadError::Io { path, source })
        };
        let content = |name: &str, reason: String| LoadError::Content {
            path: dir.join(name),
            reason,
        };
        let key = KeyPair::from_pem(&read("ca-key.pem")?)
            .map_err(|e| content("ca-key.pem", format!("not a PKCS#8 PEM key: {e}")))?;
        let cert = read("ca-cert.pem")?;
        let signer_expires = not_after(&cert).map_err(|e| content("ca-cert.pem", e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key)
            .map_err(|e| content("ca-cert.pem", format!("not a CA certificate: {e}")))?;
        let chain =
            certificates(&read("cert-chain.pem")?).map_err(|e| content("cert-chain.pem", e))?;
        let roots =
            certificates(&read("root-cert.pem")?).map_err(|e| content("root-cert.pem", e))?;
        Ok(Authority {
            issuer,
            signer_expires,
            chain,
            roots,
            trust_domain: trust_domain.to_owned(),
            default_validity: Duration::from_secs(24 * 3600),
            max_validity: Duration::from_secs(90 * 24 * 3600),
        })
    }

    /// The trust domain identities are issued in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots workloads trust, PEM concatenated.
    pub fn trust_bundle(&self) -> String {
        self.roots.concat()
    }

    /// Signs `csr_pem` for `identity`: the certificate's only SAN is the
    /// identity's URI, whatever else the CSR holds, and the CSR must ask for
    /// exactly that. `validity_seconds` 0 means the default. Returns the
    /// chain, the workload's certificate first.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        validity_seconds: i64,
    ) -> Result<Vec<String>, SignError> {
        let validity = self.validity(validity_seconds)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let uri = identity.uri();
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => format!("URI:{}", u.as_str()),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [format!("URI:{uri}")] {
            return Err(SignError::NotYourIdentity {
                asked: if asked.is_empty() {
                    "no SAN".into()
                } else {
                    asked.join(", ")
                },
                allowed: uri,
            });
        }
        if matches!(csr.params.is_ca, IsCa::Ca(_)) {
            return Err(SignError::AsksForCa);
        }
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            uri.try_into()
                .map_err(|e| SignError::Signing(format!("{e}")))?,
        )];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + validity).min(self.signer_expires);
        params.serial_number = Some(serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        Ok(std::iter::once(cert.pem())
            .chain(self.chain.iter().cloned())
            .collect())
    }

    /// A certificate for the CA's own gRPC endpoint, for `names` (DNS names
    /// or IP addresses), with a fresh key; PEM (chain, key).
    pub fn serving_certificate(&self, names: &[String]) -> Result<(String, String), SignError> {
        let key = KeyPair::generate().map_err(|e| SignError::Signing(e.to_string()))?;
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(|e| SignError::Signing(e.to_string()))?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "mesh-ca");
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + self.max_validity).min(self.signer_expires);
        params.serial_number = Some(serial());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        let chain = std::iter::once(cert.pem()).chain(self.chain.iter().cloned());
        Ok((chain.collect(), key.serialize_pem()))
    }

    fn validity(&self, seconds: i64) -> Result<Duration, SignError> {
        if seconds == 0 {
            return Ok(self.default_validity);
        }
        let bounds = MIN_VALIDITY.as_secs()..=self.max_validity.as_secs();
        match u64::try_from(seconds) {
            Ok(s) if bounds.contains(&s) => Ok(Duration::from_secs(s)),
            _ => Err(SignError::Validity {
                asked: seconds,
                min: *bounds.start(),
                max: *bounds.end(),
            }),
        }
    }
}

/// 16 random bytes, positive (RFC 5280 asks for a positive serial ≤ 20 bytes).
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Generates a self-signed root in `dir` and writes the four files.
fn create_root(dir: &Path, trust_domain: &str) -> Result<(), LoadError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LoadError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let failed = |e: rcgen::Error| LoadError::Content {
        path: dir.join("ca-cert.pem"),
        reason: format!("generating the root failed: {e}"),
    };
    let key = KeyPair::generate().map_err(failed)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, "mesh root CA");
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + ROOT_LIFETIME;
    params.serial_number = Some(serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(failed)?.pem();
    // The key first, private from its first byte; then the certificates.
    for (name, text, mode) in [
        ("ca-key.pem", key.serialize_pem(), 0o600),
        ("ca-cert.pem", cert.clone(), 0o644),
        ("cert-chain.pem", cert.clone(), 0o644),
        ("root-cert.pem", cert, 0o644),
    ] {
        let path = dir.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(io(&path))?;
    }
    tracing::info!(dir = %dir.display(), "generated a self-signed root");
    Ok(())
}

/// The PEM certificates in `text`, each re-encoded on its own.
fn certificates(text: &str) -> Result<Vec<String>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    let certs: Vec<String> = blocks
        .iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| {
            pem::encode_config(
                b,
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
        })
        .collect();
    if certs.is_empty() {
        return Err("holds no CERTIFICATE block".into());
    }
    Ok(certs)
}

/// When the first certificate in `pem_text` expires.
pub fn not_after(pem_text: &str) -> Result<OffsetDateTime, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.to_datetime())
}
