//! Getting and renewing the workload's certificate from mesh-ca: a new key
//! made here for each certificate, a CSR for exactly the workload's
//! SPIFFE ID, the credential from a file (projected tokens are rewritten
//! by the kubelet, so it is read each time), renewal at half the lifetime
//! with jitter, retries with backoff while the CA is away (the
//! certificate in force keeps serving until it expires).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::ca::CertificateRequest;
use mesh_proto::ca::certificate_service_client::CertificateServiceClient;
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tracing::{info, warn};

use super::{Identity, verify};

/// The command-line flags naming mesh-ca, shared by every binary that
/// holds an identity (sidecar, SDS agent, pilot); without `--ca-address`
/// there is no CA and no identity.
#[derive(Debug, Clone, clap::Args)]
pub struct CaFlags {
    /// mesh-ca's address (`host:port`, gRPC over TLS).
    #[arg(long, env = "MESH_CA_ADDRESS", value_name = "HOST:PORT", requires_all = ["ca_roots", "ca_token_file"])]
    pub ca_address: Option<String>,
    /// The name on mesh-ca's serving certificate.
    #[arg(
        long,
        env = "MESH_CA_SERVER_NAME",
        default_value = "mesh-ca.mesh-system.svc"
    )]
    pub ca_server_name: String,
    /// The mesh's roots (PEM; mesh-ca's `root-cert.pem`), followed.
    #[arg(long, env = "MESH_CA_ROOTS", value_name = "FILE")]
    pub ca_roots: Option<PathBuf>,
    /// The credential mesh-ca checks (a bootstrap or service-account
    /// token), re-read at each renewal.
    #[arg(long, env = "MESH_CA_TOKEN_FILE", value_name = "FILE")]
    pub ca_token_file: Option<PathBuf>,
    /// The certificate lifetime asked for (`24h`, `10m`); the CA's
    /// default when not given.
    #[arg(long, env = "MESH_CERT_VALIDITY", value_parser = validity)]
    pub cert_validity: Option<Duration>,
    /// The trust domain of the identities.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = mesh_rules::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

fn validity(s: &str) -> Result<Duration, String> {
    mesh_rules::Duration::parse(s)
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

impl CaFlags {
    /// The settings, when a CA is named.
    pub fn settings(&self) -> Option<CaSettings> {
        let (Some(address), Some(roots), Some(token)) =
            (&self.ca_address, &self.ca_roots, &self.ca_token_file)
        else {
            return None;
        };
        Some(CaSettings {
            address: address.clone(),
            server_name: self.ca_server_name.clone(),
            roots_file: roots.clone(),
            token_file: token.clone(),
            validity: self.cert_validity,
        })
    }
}

/// An identity being kept certified: the first certificate arrives on
/// `first`; the roots file is followed while `roots_watch` lives.
pub struct Certifying {
    /// The identity (no certificate until `first` fires).
    pub identity: Arc<Identity>,
    /// Told once the first certificate is in force.
    pub first: tokio::sync::oneshot::Receiver<()>,
    /// Follows the roots file; dropping it stops following.
    pub roots_watch: mesh_runtime::watch::FileWatch,
}

/// Starts keeping `id` certified by the CA of `settings`, on a thread of
/// its own (renewals never wait on the caller's runtime).
pub fn certify(
    id: mesh_rules::identity::Identity,
    settings: CaSettings,
) -> Result<Certifying, CaError> {
    let identity = Arc::new(Identity::new(id));
    let roots_watch = follow_roots(identity.clone(), &settings)?;
    let (first_tx, first) = tokio::sync::oneshot::channel();
    let keep = identity.clone();
    std::thread::Builder::new()
        .name("certificate".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(keep_certified(keep, settings, first_tx));
        })
        .map_err(|e| CaError::Local(format!("cannot start the certificate thread: {e}")))?;
    Ok(Certifying {
        identity,
        first,
        roots_watch,
    })
}

/// Where and how to ask for certificates.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// mesh-ca's address (`host:port`, gRPC over TLS).
    pub address: String,
    /// The name mesh-ca's serving certificate carries.
    pub server_name: String,
    /// The mesh's roots (PEM): trusted for mesh-ca and for peers; re-read
    /// at each renewal, so a root rotation reaches the proxy.
    pub roots_file: PathBuf,
    /// The credential (a bootstrap or service-account token).
    pub token_file: PathBuf,
    /// The lifetime asked for (`None`: the CA's default).
    pub validity: Option<Duration>,
}

/// Why a certificate was not obtained.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A local file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// mesh-ca could not be reached.
    #[error("cannot reach mesh-ca at {address}: {source}")]
    Connect {
        /// Its address.
        address: String,
        /// What failed.
        source: tonic::transport::Error,
    },
    /// mesh-ca refused.
    #[error("mesh-ca refused: {0}")]
    Refused(String),
    /// The key or CSR could not be made, or the answer not used.
    #[error("{0}")]
    Local(String),
}

fn read(path: &PathBuf) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::File {
        path: path.clone(),
        source,
    })
}

/// The PEM certificates in `text`, one string each.
pub fn pem_blocks(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .filter_map(|b| {
            b.find("-----BEGIN CERTIFICATE-----")
                .map(|i| format!("{}\n", &b[i..]))
        })
        .collect()
}

/// Asks for one certificate and puts it in force; returns how long until
/// it should be renewed.
pub async fn renew(identity: &Identity, ca: &CaSettings) -> Result<Duration, CaError> {
    let roots_text = read(&ca.roots_file)?;
    let roots = pem_blocks(&roots_text);
    let token = read(&ca.token_file)?;
    let key = KeyPair::generate().map_err(|e| CaError::Local(format!("key: {e}")))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| CaError::Local(format!("CSR: {e}")))?;
    let uri = identity.id.uri();
    params.subject_alt_names = vec![SanType::URI(
        uri.clone()
            .try_into()
            .map_err(|e| CaError::Local(format!("SAN: {e}")))?,
    )];
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| CaError::Local(format!("CSR: {e}")))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&roots_text))
        .domain_name(&ca.server_name);
    let connect = |source| CaError::Connect {
        address: ca.address.clone(),
        source,
    };
    let channel = Channel::from_shared(format!("https://{}", ca.address))
        .map_err(|e| CaError::Local(format!("address {}: {e}", ca.address)))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)
        .map_err(connect)?
        .connect()
        .await
        .map_err(connect)?;
    let mut request = tonic::Request::new(CertificateRequest {
        csr,
        validity_seconds: ca.validity.map_or(0, |v| v.as_secs() as i64),
    });
    let bearer = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| CaError::Local("the token is not a valid header value".into()))?;
    request.metadata_mut().insert("authorization", bearer);
    let chain = CertificateServiceClient::new(channel)
        .create_certificate(request)
        .await
        .map_err(|s| CaError::Refused(s.message().to_owned()))?
        .into_inner()
        .cert_chain;
    let leaf = chain
        .first()
        .ok_or_else(|| CaError::Refused("an empty chain".into()))?;
    let facts = verify::der_of(leaf)
        .and_then(|d| verify::facts(&d))
        .map_err(|e| CaError::Local(e.to_string()))?;
    identity
        .install(&chain, &key.serialize_pem(), &roots)
        .map_err(|e| CaError::Local(e.to_string()))?;
    info!(identity = %uri, expires = %facts.not_after, "certificate in force");
    Ok(renew_after(&facts))
}

/// Half the lifetime from issue, minus up to a tenth of it at random, so
/// a fleet started together does not renew together.
fn renew_after(facts: &verify::Facts) -> Duration {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let lifetime = facts.lifetime.max(1) as f64;
    let issued = facts.expires_at - facts.lifetime;
    let at = issued as f64 + lifetime * (0.5 - 0.1 * fastrand::f64());
    Duration::from_secs_f64((at - now as f64).max(1.0))
}

/// Gets the first certificate (retrying until it comes), then keeps it
/// renewed; `first` is told once one is in force.
pub async fn keep_certified(
    identity: Arc<Identity>,
    ca: CaSettings,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut backoff = Duration::from_millis(200);
    loop {
        match renew(&identity, &ca).await {
            Ok(next) => {
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
                backoff = Duration::from_millis(200);
                tokio::time::sleep(next).await;
            }
            Err(e) => {
                warn!("certificate not renewed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Follows the roots file: a new trust bundle (a root rotation's two
/// roots, then the new one alone) is in force as soon as it is written.
pub fn follow_roots(
    identity: Arc<Identity>,
    ca: &CaSettings,
) -> Result<mesh_runtime::watch::FileWatch, CaError> {
    let last = std::fs::read(&ca.roots_file).unwrap_or_default();
    let shown = ca.roots_file.display().to_string();
    mesh_runtime::watch::follow(&ca.roots_file, last, move |bytes| {
        let roots = pem_blocks(&String::from_utf8_lossy(bytes));
        if roots.is_empty() {
            warn!("{shown}: no certificate; keeping the roots in force");
            return;
        }
        match identity.trust(&roots) {
            Ok(()) => info!(roots = roots.len(), "trust bundle changed"),
            Err(e) => warn!("{shown}: {e}; keeping the roots in force"),
        }
    })
    .map_err(|e| CaError::Local(format!("cannot follow {}: {e}", ca.roots_file.display())))
}
