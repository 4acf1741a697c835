//! The ADS server: one gRPC stream per proxy, State-of-the-World or Delta,
//! carrying listeners, routes, clusters and endpoints.
//!
//! Each stream translates the current [`World`] for its proxy and sends,
//! per type in [`XdsType::PUSH_ORDER`], only what differs from what the proxy holds.
//! A proxy that is not affected by a change gets nothing. A NACK is logged
//! and shown in [`Status`]; what the proxy holds is rolled back to before
//! the refused response, so the refused resources are not sent again
//! until the inputs change.

mod cache;
mod flavor;
pub mod metrics;
mod server;
mod status;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mesh_proto::node::NodeMeta;
use mesh_proto::types::XdsType;
use mesh_rules::identity::Identity;
use mesh_rules::registry::{Health, Workload};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Streaming};
use tracing::warn;

pub use cache::{Inbound, Layers, OutboundCache, Resolved};
pub use server::AdsServer;
pub use status::{ProxyStatus, PushRecord, Status, TypeStatus};

use cache::lock;
use flavor::Flavor;
use stream::Stream;

use crate::translate::{Interception, ProxyNode};
use crate::world::{Update, Updates, World};

/// What translation needs to know of a proxy.
pub fn proxy_node(meta: &NodeMeta) -> ProxyNode {
    ProxyNode {
        namespace: meta.namespace.clone(),
        ip: meta.ip,
        labels: meta.labels.clone(),
        interception: if meta.is_gateway() {
            Interception::Gateway
        } else if meta.explicit {
            Interception::Explicit {
                app_ip: meta
                    .app_ip
                    .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
            }
        } else {
            Interception::Capture
        },
        kind: meta.kind,
    }
}

/// Proxies with an unanswered push at the same time: a thousand proxies
/// connecting together get their (full) configuration in waves, and so
/// does a change that concerns them all: pilot holds at most this many
/// proxies' responses.
const PUSH_CONCURRENCY: usize = 32;

/// How long a stream keeps its push permit without an answer: a proxy
/// that does not answer (stuck, or slow to read) holds up the others no
/// longer than this, and what it was sent stays with it alone.
const PERMIT_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

/// The discovery service.
#[derive(Clone)]
pub struct Discovery {
    worlds: watch::Receiver<Arc<World>>,
    updates: Updates,
    status: Arc<Status>,
    cache: Arc<OutboundCache>,
    /// Bounds the proxies with an unanswered push ([`PUSH_CONCURRENCY`]).
    gate: Arc<tokio::sync::Semaphore>,
    next_id: Arc<AtomicU64>,
}

impl Discovery {
    /// A service translating the worlds it is given; proxies' workloads are
    /// registered through `updates`; `metrics` are pilot's.
    pub fn new(
        worlds: watch::Receiver<Arc<World>>,
        updates: Updates,
        metrics: metrics::PilotMetrics,
    ) -> Self {
        Discovery {
            worlds,
            updates,
            status: Arc::new(Status::with_metrics(metrics)),
            cache: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(PUSH_CONCURRENCY)),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Status of connected proxies.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// The current world.
    pub fn world(&self) -> Arc<World> {
        self.worlds.borrow().clone()
    }

    /// The tonic service.
    pub fn into_service(self) -> AdsServer {
        AdsServer::new(self)
    }
}

/// A response on its way to the stream's encoder.
type Boxed<T> = Box<Result<T, tonic::Status>>;

impl Discovery {
    /// Registers the proxy's pod as a workload instance (by its pod name,
    /// else its workload's) while its stream is up.
    fn register(&self, id: u64, meta: &NodeMeta) {
        let name = if meta.name.is_empty() {
            &meta.workload
        } else {
            &meta.name
        };
        if let (false, Some(ip)) = (name.is_empty(), meta.ip) {
            self.updates.send(Update::Register(
                id,
                Workload {
                    name: name.clone(),
                    namespace: meta.namespace.clone(),
                    address: ip,
                    labels: meta.labels.clone(),
                    service_account: if meta.service_account.is_empty() {
                        "default".into()
                    } else {
                        meta.service_account.clone()
                    },
                    health: Health::default(),
                },
            ));
        }
    }

    fn disconnect(&self, id: u64) {
        self.updates.send(Update::Unregister(id));
        lock(&self.status.proxies).remove(&id);
    }
}

impl Discovery {
    /// Serves one proxy's stream until it ends: requests (subscriptions,
    /// ACKs, NACKs) and new worlds, each answered with what changed.
    ///
    /// Over TLS, `peer` is the client's certificate identity: a proxy may
    /// only speak for a workload of its own namespace and service account
    /// (else it could register itself as another and be sent its traffic).
    fn drive<F: Flavor>(
        &self,
        mut requests: Streaming<F::Request>,
        peer: Option<Identity>,
    ) -> mpsc::Receiver<Boxed<F::Response>> {
        // Boxed: the channel's slots are allocated 32 at a time and a
        // response is ~200 bytes inline (6 KiB per idle stream unboxed).
        let (tx, rx) = mpsc::channel::<Boxed<F::Response>>(16);
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(Some(first)) = requests.message().await else {
                return;
            };
            let meta = NodeMeta::from_node(&F::node(&first).cloned().unwrap_or_default());
            if let Err(refused) = speaks_for_itself(peer.as_ref(), &meta) {
                warn!(node = %meta.id, "{}", refused.message());
                let _ = tx.send(Box::new(Err(refused))).await;
                return;
            }
            let id = this.next_id.fetch_add(1, Ordering::Relaxed);
            let mut s = Stream::new(id, &meta, this.status.clone(), this.cache.clone(), F::NAME);
            this.register(id, &meta);
            let mut worlds = this.worlds.clone();
            if worlds.wait_for(|w| w.warm).await.is_err() {
                return;
            }
            // Requests are boxed: they are ~600 bytes inline, and what the
            // loop holds across its awaits is kept for the stream's life.
            let mut next = Some(Box::new(first));
            'stream: loop {
                if let Some(req) = next.take() {
                    let Some(kind) = XdsType::from_type_url(F::type_url(&req)) else {
                        continue;
                    };
                    let moved = s.refresh(&worlds.borrow_and_update().clone());
                    if !F::nonce(&req).is_empty() {
                        s.answer(kind, F::nonce(&req), F::error(&req));
                    }
                    let (changed, force) = F::subscribe(s.subs.entry(kind).or_default(), &req);
                    if changed {
                        s.take_permit(&this.gate).await;
                        if let Some(p) = s.push(kind, force, F::SOTW, false)
                            && tx.send(Box::new(Ok(F::response(p)))).await.is_err()
                        {
                            break 'stream;
                        }
                    }
                    // A world published since the last one is seen here
                    // (and not again below): its changes go out now, or a
                    // proxy whose ACK crossed the last change of a burst
                    // would keep the configuration before it.
                    if moved && push_changes::<F>(&mut s, &this.gate, &tx).await.is_err() {
                        break 'stream;
                    }
                    s.handled();
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(s.permit_deadline()), if s.holds_permit() => {
                        s.release_permit();
                    }
                    r = requests.message() => match r {
                        Ok(Some(req)) => next = Some(Box::new(req)),
                        _ => break 'stream,
                    },
                    c = worlds.changed() => {
                        if c.is_err() { break 'stream; }
                        let world = worlds.borrow_and_update().clone();
                        if s.refresh(&world)
                            && push_changes::<F>(&mut s, &this.gate, &tx).await.is_err()
                        {
                            break 'stream;
                        }
                        s.handled();
                    }
                }
            }
            this.disconnect(id);
        });
        rx
    }
}

/// Sends what the stream's new world changed for its proxy. A change
/// every proxy must get (a route of a service all reach) goes out in
/// waves like first pushes, so pilot never holds every proxy's copy at
/// once. Err when the proxy has gone.
async fn push_changes<F: Flavor>(
    s: &mut Stream,
    gate: &Arc<tokio::sync::Semaphore>,
    tx: &mpsc::Sender<Boxed<F::Response>>,
) -> Result<(), ()> {
    if !s.may_push() {
        return Ok(());
    }
    s.take_permit(gate).await;
    for p in s.pushes(F::SOTW) {
        tx.send(Box::new(Ok(F::response(p)))).await.map_err(drop)?;
    }
    Ok(())
}

/// The SPIFFE ID of the client's certificate over TLS (`None` over
/// plaintext); a certificate without one is refused.
fn peer_identity<T>(request: &Request<T>) -> Result<Option<Identity>, tonic::Status> {
    let Some(chain) = request.peer_certs() else {
        return Ok(None);
    };
    let uri = chain
        .first()
        .and_then(|leaf| mesh_identity::verify::peer_identity(leaf))
        .ok_or_else(|| tonic::Status::unauthenticated("the client certificate has no SPIFFE ID"))?;
    uri.parse()
        .map(Some)
        .map_err(|e: mesh_rules::identity::IdentityError| {
            tonic::Status::unauthenticated(e.to_string())
        })
}

/// Whether the node a proxy announces is one its certificate may speak
/// for: the same namespace and service account.
fn speaks_for_itself(peer: Option<&Identity>, meta: &NodeMeta) -> Result<(), tonic::Status> {
    let Some(peer) = peer else {
        return Ok(());
    };
    let account = if meta.service_account.is_empty() {
        "default"
    } else {
        &meta.service_account
    };
    if peer.namespace == meta.namespace && peer.service_account == account {
        return Ok(());
    }
    Err(tonic::Status::permission_denied(format!(
        "the certificate is {peer}, but the node says namespace {:?}, service account {account:?}: \
         a proxy may only speak for its own workload",
        meta.namespace
    )))
}
