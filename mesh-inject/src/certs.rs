//! The webhooks' serving certificate, made and rotated by mesh-inject
//! itself: no openssl step, no cert-manager.
//!
//! The certificate and the CA that signed it live in a Secret of the
//! mesh's namespace, so every replica serves the same one; the first to
//! start makes it. Each replica puts the CA into the `caBundle` of the
//! webhook configurations the bundle installs, and puts it back whenever
//! the configurations change (a `kubectl apply` of the bundle empties it).
//! At two thirds of its life the certificate is replaced by one from a new
//! CA; the Secret's bundle keeps the previous CA until the next rotation,
//! so the API server trusts the replicas still serving the old one.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tokio_stream::StreamExt;
use tracing::{info, warn};

/// Where the certificate lives and whom it serves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The mesh's namespace (the Secret's and the Service's).
    pub namespace: String,
    /// The webhooks' Service: the certificate's DNS names.
    pub service: String,
    /// The Secret holding the certificate, its key and the CA bundle.
    pub secret: String,
    /// The MutatingWebhookConfiguration to give the CA (empty: none).
    pub mutating: String,
    /// The ValidatingWebhookConfiguration to give the CA (empty: none).
    pub validating: String,
    /// How long a certificate is valid; it is replaced at two thirds.
    pub validity: Duration,
}

impl Settings {
    /// How often the Secret is checked: often enough to replace a
    /// certificate well before its end, at most every 30 s.
    pub fn check_every(&self) -> Duration {
        (self.validity / 6).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// Why the certificate could not be made, kept or announced.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused.
    #[error("cannot make the webhook certificate: {0}")]
    Make(#[from] rcgen::Error),
    /// rustls refused the pair.
    #[error("cannot serve the webhook certificate: {0}")]
    Serve(String),
    /// The API server refused or could not be reached.
    #[error("the Kubernetes API ({what}): {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Api { what, source }
}

const CA_KEY: &str = "ca.crt";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
/// When the certificate was made and when it ends (Unix seconds).
const NOT_BEFORE: &str = "mesh.dev/not-before";
const NOT_AFTER: &str = "mesh.dev/not-after";

/// A serving certificate, its key and the CAs clients should trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// PEM: the current CA first, then the previous one (if any).
    pub ca_bundle: String,
    /// PEM of the serving certificate.
    pub cert: String,
    /// PEM of its key.
    pub key: String,
    /// When it was made (Unix seconds).
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

impl Issued {
    /// A new CA and a certificate it signs for the Service's names; the
    /// bundle keeps `previous_ca` after the new CA.
    pub fn make(s: &Settings, previous_ca: Option<&str>) -> Result<Issued, CertError> {
        let now = time::OffsetDateTime::now_utc();
        let not_before = now - time::Duration::minutes(5);
        let not_after = now + time::Duration::try_from(s.validity).unwrap_or(time::Duration::DAY);

        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{} webhook CA", s.service));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (ca_params.not_before, ca_params.not_after) = (not_before, not_after);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let names = [
            s.service.clone(),
            format!("{}.{}", s.service, s.namespace),
            format!("{}.{}.svc", s.service, s.namespace),
            format!("{}.{}.svc.cluster.local", s.service, s.namespace),
        ];
        let mut leaf = CertificateParams::new(names.to_vec())?;
        leaf.distinguished_name
            .push(DnType::CommonName, names[2].clone());
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        (leaf.not_before, leaf.not_after) = (not_before, not_after);
        let key = KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &ca)?;

        let mut ca_bundle = ca.pem();
        if let Some(previous) = previous_ca.and_then(first_pem) {
            ca_bundle.push_str(&previous);
        }
        Ok(Issued {
            ca_bundle,
            cert: cert.pem(),
            key: key.serialize_pem(),
            // Its life counts from now (the certificate itself starts five
            // minutes back, for clocks behind this one).
            not_before: now.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
        })
    }

    /// Whether it is time to replace it: two thirds of its life are gone.
    pub fn due(&self, now: i64) -> bool {
        now >= self.not_before + (self.not_after - self.not_before) * 2 / 3
    }

    fn from_secret(secret: &Secret) -> Option<Issued> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        let annotations = secret.metadata.annotations.as_ref()?;
        let number = |k: &str| annotations.get(k)?.parse().ok();
        Some(Issued {
            ca_bundle: text(CA_KEY)?,
            cert: text(CERT_KEY)?,
            key: text(KEY_KEY)?,
            not_before: number(NOT_BEFORE)?,
            not_after: number(NOT_AFTER)?,
        })
    }

    fn to_secret(&self, s: &Settings, resource_version: Option<String>) -> Secret {
        let bytes = |t: &str| ByteString(t.as_bytes().to_vec());
        let mut secret = Secret {
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    (CA_KEY.to_owned(), bytes(&self.ca_bundle)),
                    (CERT_KEY.to_owned(), bytes(&self.cert)),
                    (KEY_KEY.to_owned(), bytes(&self.key)),
                ]
                .into(),
            ),
            ..Default::default()
        };
        secret.metadata.name = Some(s.secret.clone());
        secret.metadata.namespace = Some(s.namespace.clone());
        secret.metadata.resource_version = resource_version;
        secret.metadata.labels = Some([("app.kubernetes.io/part-of".into(), "mesh".into())].into());
        secret.metadata.annotations = Some(
            [
                (NOT_BEFORE.to_owned(), self.not_before.to_string()),
                (NOT_AFTER.to_owned(), self.not_after.to_string()),
            ]
            .into(),
        );
        secret
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, CertError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |e: &dyn std::fmt::Display| CertError::Serve(e.to_string());
        let chain = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|e| bad(&e))?;
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(chain, key, &provider)
            .map(Arc::new)
            .map_err(|e| bad(&e))
    }
}

/// The first PEM block of a bundle.
fn first_pem(bundle: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = bundle.find(END)? + END.len();
    Some(format!("{}\n", bundle[..end].trim_start()))
}

/// The certificate in force: servers resolve it per handshake, so a
/// rotation needs no restart.
#[derive(Debug)]
pub struct Serving(ArcSwap<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Serving {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Keeps the webhooks' certificate: made or read, announced in the
/// configurations' `caBundle`, followed and rotated.
pub struct Manager {
    client: Client,
    settings: Settings,
    serving: Arc<Serving>,
    issued: Issued,
}

impl Manager {
    /// Reads the Secret, or makes it when absent (or due), and gives the
    /// configurations its CA: when this returns, the API server can call.
    pub async fn start(client: Client, settings: Settings) -> Result<Manager, CertError> {
        let issued = current(&client, &settings).await?;
        let serving = Arc::new(Serving(ArcSwap::new(issued.certified_key()?)));
        let manager = Manager {
            client,
            settings,
            serving,
            issued,
        };
        manager.announce().await?;
        Ok(manager)
    }

    /// Where the certificate lives and whom it serves.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What TLS servers resolve their certificate through.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.clone()
    }

    /// Puts the CA bundle into both configurations where it is missing.
    async fn announce(&self) -> Result<(), CertError> {
        self.announce_to(
            &self.settings.mutating,
            |c: &MutatingWebhookConfiguration| {
                c.webhooks
                    .iter()
                    .flatten()
                    .map(|w| (w.name.clone(), w.client_config.clone()))
                    .collect()
            },
        )
        .await?;
        self.announce_to(
            &self.settings.validating,
            |c: &ValidatingWebhookConfiguration| {
                c.webhooks
                    .iter()
                    .flatten()
                    .map(|w| (w.name.clone(), w.client_config.clone()))
                    .collect()
            },
        )
        .await
    }

    /// Puts the CA bundle into the configuration `name` (none when empty),
    /// whose webhooks `hooks` lists.
    async fn announce_to<K>(
        &self,
        name: &str,
        hooks: impl Fn(&K) -> Vec<(String, WebhookClientConfig)>,
    ) -> Result<(), CertError>
    where
        K: kube::Resource<Scope = kube::core::ClusterResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        if name.is_empty() {
            return Ok(());
        }
        let api = Api::<K>::all(self.client.clone());
        let config = api
            .get(name)
            .await
            .map_err(api_err(format!("get {name}")))?;
        let bundle = self.issued.ca_bundle.as_bytes();
        patch_bundle(&api, name, &self.settings, &hooks(&config), bundle).await
    }

    /// Follows the configurations (their CA put back at once) and the
    /// Secret (another replica's rotation taken up; its own when due),
    /// checking the Secret every `every`. Runs until dropped.
    pub async fn run(mut self, every: Duration) {
        let changed = Arc::new(tokio::sync::Notify::new());
        let mut watches = tokio::task::JoinSet::new();
        if !self.settings.mutating.is_empty() {
            watches.spawn(notify_on_change(
                Api::<MutatingWebhookConfiguration>::all(self.client.clone()),
                self.settings.mutating.clone(),
                changed.clone(),
            ));
        }
        if !self.settings.validating.is_empty() {
            watches.spawn(notify_on_change(
                Api::<ValidatingWebhookConfiguration>::all(self.client.clone()),
                self.settings.validating.clone(),
                changed.clone(),
            ));
        }
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = tick.tick() => {
                    if let Err(e) = self.refresh().await {
                        warn!("webhook certificate: {e}");
                    }
                }
            }
            if let Err(e) = self.announce().await {
                warn!("webhook CA bundle: {e}");
            }
        }
    }

    /// Takes up the Secret's certificate, rotating it first when due.
    async fn refresh(&mut self) -> Result<(), CertError> {
        let next = current(&self.client, &self.settings).await?;
        if next != self.issued {
            info!(
                not_after = next.not_after,
                "webhook certificate replaced; serving the new one"
            );
            self.serving.0.store(next.certified_key()?);
            self.issued = next;
        }
        Ok(())
    }
}

/// Wakes `changed` on every change of the object `name` (its watch
/// retried with backoff when it fails).
async fn notify_on_change<K>(api: Api<K>, name: String, changed: Arc<tokio::sync::Notify>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    use kube::runtime::WatchStreamExt;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(e) => warn!(configuration = %name, "watch failed, retrying: {e}"),
        }
    }
}

/// The Secret's certificate; a new one written first when it is absent,
/// unreadable or due. Of replicas racing to write, the first wins and the
/// others read what it wrote.
async fn current(client: &Client, s: &Settings) -> Result<Issued, CertError> {
    let api = Api::<Secret>::namespaced(client.clone(), &s.namespace);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for _ in 0..3 {
        let existing = api
            .get_opt(&s.secret)
            .await
            .map_err(api_err(format!("get secret {}", s.secret)))?;
        let kept = existing.as_ref().and_then(Issued::from_secret);
        if let Some(issued) = kept.as_ref().filter(|i| !i.due(now)) {
            return Ok(issued.clone());
        }
        let issued = Issued::make(s, kept.as_ref().map(|k| k.ca_bundle.as_str()))?;
        let written = match &existing {
            None => {
                api.create(&PostParams::default(), &issued.to_secret(s, None))
                    .await
            }
            Some(old) => {
                let rv = old.metadata.resource_version.clone();
                api.replace(&s.secret, &PostParams::default(), &issued.to_secret(s, rv))
                    .await
            }
        };
        match written {
            Ok(_) => {
                info!(secret = %s.secret, not_after = issued.not_after, "webhook certificate made");
                return Ok(issued);
            }
            // Another replica wrote first: read its certificate.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(api_err(format!("write secret {}", s.secret))(e)),
        }
    }
    Err(CertError::Serve(format!(
        "secret {} kept changing under three attempts",
        s.secret
    )))
}

/// Sets `caBundle` on every webhook of a configuration that calls the
/// Service, where it differs.
async fn patch_bundle<K>(
    api: &Api<K>,
    name: &str,
    s: &Settings,
    webhooks: &[(String, WebhookClientConfig)],
    bundle: &[u8],
) -> Result<(), CertError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    // Webhooks merge by name (strategic merge): only their caBundle changes.
    let changes: Vec<_> = webhooks
        .iter()
        .filter(|(_, client)| {
            client
                .service
                .as_ref()
                .is_some_and(|svc| svc.name == s.service && svc.namespace == s.namespace)
        })
        .filter(|(_, client)| client.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle))
        .map(|(name, _)| json!({"name": name, "clientConfig": {"caBundle": encoded}}))
        .collect();
    if changes.is_empty() {
        return Ok(());
    }
    let patch = Patch::Strategic(json!({ "webhooks": changes }));
    api.patch(name, &PatchParams::default(), &patch)
        .await
        .map_err(api_err(format!("patch {name}")))?;
    info!(configuration = name, "webhook CA bundle set");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            namespace: "mesh-system".into(),
            service: "mesh-inject".into(),
            secret: "mesh-inject-tls".into(),
            mutating: String::new(),
            validating: String::new(),
            validity: Duration::from_secs(3 * 3600),
        }
    }

    #[test]
    fn a_certificate_is_due_at_two_thirds_of_its_life() {
        let issued = Issued::make(&settings(), None).unwrap();
        let start = issued.not_before;
        let life = issued.not_after - start;
        assert!(!issued.due(start + life / 2));
        assert!(issued.due(start + life * 2 / 3));
    }

    #[test]
    fn a_rotation_keeps_the_previous_ca_until_the_next() {
        let first = Issued::make(&settings(), None).unwrap();
        assert_eq!(first.ca_bundle.matches("BEGIN CERTIFICATE").count(), 1);
        let second = Issued::make(&settings(), Some(&first.ca_bundle)).unwrap();
        assert_eq!(second.ca_bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(second.ca_bundle.ends_with(&first.ca_bundle));
        let third = Issued::make(&settings(), Some(&second.ca_bundle)).unwrap();
        assert_eq!(third.ca_bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(!third.ca_bundle.contains(&first.ca_bundle));
        // The secret round-trips what a replica serves.
        let secret = second.to_secret(&settings(), None);
        assert_eq!(Issued::from_secret(&secret), Some(second.clone()));
        second.certified_key().unwrap();
    }
}
