//! A mesh workload's identity: its certificate (the key made here and
//! never written anywhere), the mesh's roots, and the rustls
//! configurations that present and check them. The sidecar and pilot
//! both stand on it: one for traffic between workloads, the other for
//! xDS over TLS.
//!
//! The certificate is swapped in place when renewed ([`ca`]): rustls asks
//! the resolvers for it at each handshake, so connections open keep going
//! and the next ones get the new one. Configurations are built once per
//! shape (ALPN, expected peers) and kept, so TLS sessions resume; a new
//! trust bundle rebuilds them.

pub mod ca;
pub mod grpc;
pub mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a certificate or roots could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// PEM or DER that does not parse.
    #[error("{0}")]
    Parse(String),
    /// rustls refused it.
    #[error("{0}")]
    Tls(#[from] rustls::Error),
}

/// rustls' *ring* provider with AES-128-GCM preferred (as BoringSSL, under
/// Envoy, prefers it): a third less cipher work per byte than AES-256,
/// ample for short-lived workload sessions; the other suites stay for
/// peers that want them.
fn provider() -> CryptoProvider {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    p
}

/// The certificate in force, shared with the configurations' resolvers.
#[derive(Debug, Default)]
struct Current(ArcSwapOption<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Current {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }
}

impl rustls::client::ResolvesClientCert for Current {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }

    fn has_certs(&self) -> bool {
        self.0.load().is_some()
    }
}

/// What `proxy-config secret` shows: never the key.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The identity (the certificate's URI SAN).
    pub identity: String,
    /// The chain, PEM, the workload's certificate first.
    pub chain: Vec<String>,
    /// When the certificate expires (RFC 3339).
    pub expires: String,
    /// When it was issued (RFC 3339).
    pub issued: String,
    /// The roots trusted, PEM.
    pub roots: Vec<String>,
}

/// What a client checks and offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientShape<'a> {
    /// Names this shape among the configurations kept (the same key, the
    /// same configuration: TLS sessions resume).
    pub key: u64,
    /// ALPN offered.
    pub alpn: &'a [String],
    /// URI SANs the server may present (secure naming); empty: any
    /// certificate of the mesh's roots.
    pub expected: &'a [String],
    /// Present the workload's own certificate (mutual TLS).
    pub client_certificate: bool,
}

/// The workload's identity and the TLS configurations built on it.
pub struct Identity {
    /// The SPIFFE ID this workload is.
    pub id: mesh_rules::identity::Identity,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    roots: ArcSwap<RootCertStore>,
    summary: Mutex<Summary>,
    servers: Mutex<HashMap<Vec<String>, Arc<ServerConfig>>>,
    clients: Mutex<HashMap<u64, Arc<ClientConfig>>>,
    /// The key (PKCS#8 PEM), kept only to hand to a local Envoy over SDS
    /// (`mesh-proxy sds`): never logged, written or dumped.
    key_pem: Mutex<Option<String>>,
    /// Counts changes of the certificate or roots (SDS pushes on each).
    changed: tokio::sync::watch::Sender<u64>,
}

/// Shows who, and whether certified: never the key.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id.uri())
            .field("certified", &self.certified())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// An identity with no certificate yet.
    pub fn new(id: mesh_rules::identity::Identity) -> Identity {
        Identity {
            id,
            provider: Arc::new(provider()),
            current: Arc::default(),
            roots: ArcSwap::from_pointee(RootCertStore::empty()),
            summary: Mutex::default(),
            servers: Mutex::default(),
            clients: Mutex::default(),
            key_pem: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Changes to the certificate or roots, counted.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The chain, the key (PKCS#8 PEM) and the roots, PEM, for a local
    /// Envoy's SDS; `None` before the first certificate.
    pub fn secrets(&self) -> Option<(String, String, String)> {
        let key = self
            .key_pem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let s = self.summary();
        Some((s.chain.concat(), key, s.roots.concat()))
    }

    /// Whether a certificate is in force.
    pub fn certified(&self) -> bool {
        self.current.0.load().is_some()
    }

    /// What the certificate and roots are, for the admin endpoint.
    pub fn summary(&self) -> Summary {
        self.summary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a new certificate (PEM chain, the workload's first) with its
    /// PKCS#8 key in force, and the roots when they changed.
    pub fn install(
        &self,
        chain: &[String],
        key_pem: &str,
        roots: &[String],
    ) -> Result<(), IdentityError> {
        let key_der = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| IdentityError::Parse(format!("the key is not PEM: {e}")))?;
        let certs = chain
            .iter()
            .map(|p| verify::der_of(p))
            .collect::<Result<Vec<CertificateDer<'static>>, _>>()?;
        let leaf = certs
            .first()
            .ok_or_else(|| IdentityError::Parse("empty chain".into()))?;
        let facts = verify::facts(leaf)?;
        if facts.uri.as_deref() != Some(self.id.uri().as_str()) {
            return Err(IdentityError::Parse(format!(
                "the CA issued {:?}, not {}",
                facts.uri, self.id
            )));
        }
        let key = self.provider.key_provider.load_private_key(key_der)?;
        self.set_roots(roots)?;
        self.current
            .0
            .store(Some(Arc::new(CertifiedKey::new(certs, key))));
        *self.summary.lock().unwrap_or_else(|p| p.into_inner()) = Summary {
            identity: self.id.uri(),
            chain: chain.to_vec(),
            expires: facts.not_after,
            issued: facts.not_before,
            roots: roots.to_vec(),
        };
        *self.key_pem.lock().unwrap_or_else(|p| p.into_inner()) = Some(key_pem.to_owned());
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Trusts exactly `roots` (PEM certificates) from now on: a root
    /// rotation's bundle reaches the proxy without waiting for a renewal.
    pub fn trust(&self, roots: &[String]) -> Result<(), IdentityError> {
        self.set_roots(roots)?;
        self.summary.lock().unwrap_or_else(|p| p.into_inner()).roots = roots.to_vec();
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Trusts exactly `roots` (PEM); configurations are rebuilt if they
    /// changed.
    fn set_roots(&self, roots: &[String]) -> Result<(), IdentityError> {
        let mut store = RootCertStore::empty();
        for pem in roots {
            store.add(verify::der_of(pem)?)?;
        }
        if store.roots == self.roots.load().roots {
            return Ok(());
        }
        self.roots.store(Arc::new(store));
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// The server side of TLS: `alpn` accepted in order of preference;
    /// with `require_client_certificate`, clients must present one of the
    /// mesh's roots (else it is checked when offered).
    pub fn server_config(
        &self,
        alpn: &[String],
        require_client_certificate: bool,
    ) -> Result<Arc<ServerConfig>, IdentityError> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let key = alpn
            .iter()
            .cloned()
            .chain(require_client_certificate.then(|| "\0mtls".to_owned()))
            .collect::<Vec<_>>();
        if let Some(c) = servers.get(&key) {
            return Ok(c.clone());
        }
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?;
        let roots = self.roots.load_full();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, self.provider.clone());
        let verifier = if require_client_certificate {
            verifier.build()
        } else {
            verifier.allow_unauthenticated().build()
        }
        .map_err(|e| IdentityError::Parse(format!("client verifier: {e}")))?;
        let mut config = builder
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.current.clone());
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        let config = Arc::new(config);
        servers.insert(key, config.clone());
        Ok(config)
    }

    /// The client side of TLS, kept under `shape.key`.
    pub fn client_config(&self, shape: &ClientShape) -> Result<Arc<ClientConfig>, IdentityError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&shape.key) {
            return Ok(c.clone());
        }
        let verifier = verify::SpiffeServerVerifier::new(
            self.roots.load_full(),
            shape.expected.to_vec(),
            self.provider.clone(),
        );
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = if shape.client_certificate {
            builder.with_client_cert_resolver(self.current.clone())
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = shape.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        let config = Arc::new(config);
        clients.insert(shape.key, config.clone());
        Ok(config)
    }
}
