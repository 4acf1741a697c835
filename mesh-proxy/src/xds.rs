//! The xDS client: one aggregated stream to pilot, incremental (Delta, the
//! default) or State of the World (as Envoy's default; `--xds-flavor sotw`).
//!
//! The proxy subscribes to every listener, route, cluster and endpoint
//! pilot has for it (wildcard). Each response is checked by building the
//! whole configuration it would lead to; only a configuration that builds
//! (and whose listeners bind) is swapped in and ACKed. Anything else is
//! NACKed with the reason and the last good configuration keeps serving.
//! When pilot goes away the proxy keeps serving and reconnects with
//! backoff, telling pilot which versions it holds so that only changes are
//! sent again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::envoy::config::core::v3::Node;
use mesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use mesh_proto::google::protobuf::Any;
use mesh_proto::google::rpc::Status;
use mesh_proto::types::XdsType;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::config::{Resources, Snapshot};
use crate::server::{Bound, Proxy};
use mesh_rules::{FieldError, FieldPath};
use tracing::Instrument;

/// What happened on the stream, for the caller to report.
#[derive(Debug)]
pub enum Event {
    /// The stream to pilot is up.
    Connected,
    /// The stream broke; the proxy keeps its configuration and retries.
    Disconnected(String),
    /// A configuration was swapped in; listeners bound by it are listed.
    Applied {
        /// The configuration version.
        version: String,
        /// Listeners newly bound.
        bound: Vec<Bound>,
    },
    /// No response for a while: memory used for checking was let go.
    Idle,
    /// A response was refused (NACKed); the old configuration serves on.
    Rejected {
        /// The xDS type of the response.
        type_url: String,
        /// Why.
        reason: String,
    },
}

/// Resources held, per type: name → (version, encoded resource).
type Held = HashMap<XdsType, BTreeMap<String, (String, Vec<u8>)>>;

fn decode_all<M: Message + Default>(held: &Held, kind: XdsType) -> Result<Vec<M>, FieldError> {
    held.get(&kind)
        .into_iter()
        .flatten()
        .map(|(name, (_, bytes))| {
            M::decode(bytes.as_slice()).map_err(|e| {
                let at = FieldPath::root().key(kind.to_string()).name(name.clone());
                FieldError::new(at, format!("cannot decode: {e}"))
            })
        })
        .collect()
}

fn resources(held: &Held) -> Result<Resources, FieldError> {
    Ok(Resources {
        listeners: decode_all(held, XdsType::Listener)?,
        clusters: decode_all(held, XdsType::Cluster)?,
        routes: decode_all(held, XdsType::Route)?,
        endpoints: decode_all(held, XdsType::Endpoint)?,
    })
}

/// Where pilot listens and how to reach it.
#[derive(Clone)]
pub struct Pilot {
    /// `host:port`.
    pub address: String,
    /// Mutual TLS (pilot's port 15012): the proxy's identity, and the
    /// SPIFFE ID pilot must present; plaintext (15010) without it.
    pub tls: Option<(Arc<crate::identity::Identity>, String)>,
}

impl Pilot {
    /// A connected ADS client (over TLS: connected at the first call).
    async fn client(&self) -> Result<AggregatedDiscoveryServiceClient<Channel>, String> {
        let address = &self.address;
        let channel = match &self.tls {
            Some((identity, expected)) => {
                crate::identity::grpc::channel(identity.clone(), address, expected.clone())
            }
            None => match Channel::from_shared(format!("http://{address}")) {
                Ok(e) => crate::identity::grpc::with_timeouts(e).connect().await,
                Err(e) => return Err(format!("pilot's address {address}: {e}")),
            },
        };
        channel
            .map(AggregatedDiscoveryServiceClient::new)
            .map_err(|e| format!("cannot connect to {address}: {e}"))
    }
}

/// Follows `pilot` for ever, as `node` says who the proxy is; when `node`
/// changes (the pod's labels did), the stream is opened again so pilot
/// learns it.
pub async fn run(
    pilot: Pilot,
    flavor: Flavor,
    mut node: watch::Receiver<Node>,
    proxy: Arc<Proxy>,
    mut report: impl FnMut(Event),
) {
    let mut held: Held = HashMap::new();
    // Types pilot answered at least once: the first configuration is
    // applied only when all four arrived, so a listener never serves
    // before its routes and clusters exist.
    let mut seen: Vec<XdsType> = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let current = node.borrow_and_update().clone();
        let stream = stream_once(
            &pilot,
            flavor,
            &current,
            &proxy,
            &mut held,
            &mut seen,
            &mut report,
            &mut backoff,
        )
        .instrument(tracing::info_span!("xds", pilot = %pilot.address));
        let changed = async {
            if node.changed().await.is_err() {
                // Nobody can change the node any more.
                std::future::pending::<()>().await;
            }
        };
        let outcome = tokio::select! {
            outcome = stream => outcome,
            () = changed => {
                report(Event::Disconnected("the node changed; reconnecting".into()));
                continue;
            }
        };
        proxy
            .shared
            .stats
            .xds_connected
            .store(0, std::sync::atomic::Ordering::Relaxed);
        report(Event::Disconnected(outcome));
        if proxy.shared.draining() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The wire flavour of the aggregated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// Incremental: only changes cross the wire; a reconnecting proxy says
    /// what it holds.
    #[default]
    Delta,
    /// State of the World: each response holds every resource of its type.
    Sotw,
}

/// One response, whatever the flavour: resources added or changed (name,
/// version, body), names removed, or (SotW) the whole set of the type.
struct Update {
    type_url: String,
    nonce: String,
    /// The version the response states (SotW `version_info`, Delta
    /// `system_version_info`); the nonce when it states none.
    label: String,
    resources: Vec<(String, String, Any)>,
    removed: Vec<String>,
    /// The resources are the type's whole set (SotW).
    whole: bool,
}

/// The name a resource carries, for SotW responses (which do not name
/// them beside the body).
fn resource_name(kind: XdsType, any: &Any) -> Result<String, String> {
    use mesh_proto::envoy::config as c;
    let bytes = any.value.as_slice();
    let name = match kind {
        XdsType::Cluster => c::cluster::v3::Cluster::decode(bytes).map(|m| m.name),
        XdsType::Endpoint => {
            c::endpoint::v3::ClusterLoadAssignment::decode(bytes).map(|m| m.cluster_name)
        }
        XdsType::Listener => c::listener::v3::Listener::decode(bytes).map(|m| m.name),
        XdsType::Route => c::route::v3::RouteConfiguration::decode(bytes).map(|m| m.name),
    };
    name.map_err(|e| format!("a {kind} resource cannot be decoded: {e}"))
}

impl Update {
    fn delta(r: DeltaDiscoveryResponse) -> Update {
        let label = if r.system_version_info.is_empty() {
            r.nonce.clone()
        } else {
            r.system_version_info
        };
        Update {
            type_url: r.type_url,
            nonce: r.nonce,
            label,
            resources: r
                .resources
                .into_iter()
                .map(|res| (res.name, res.version, res.resource.unwrap_or_default()))
                .collect(),
            removed: r.removed_resources,
            whole: false,
        }
    }

    fn sotw(r: DiscoveryResponse) -> Incoming {
        let mut u = Update {
            type_url: r.type_url,
            nonce: r.nonce.clone(),
            label: if r.version_info.is_empty() {
                r.nonce
            } else {
                r.version_info
            },
            resources: vec![],
            removed: vec![],
            whole: true,
        };
        let Some(kind) = XdsType::from_type_url(&u.type_url) else {
            return Incoming::Update(u); // refused in `handle`, with the type's name
        };
        for any in r.resources {
            match resource_name(kind, &any) {
                Ok(name) => u.resources.push((name, u.label.clone(), any)),
                Err(e) => return Incoming::Unreadable(u, e),
            }
        }
        Incoming::Update(u)
    }
}

/// What arrives on a stream.
enum Incoming {
    /// A response.
    Update(Update),
    /// A response that cannot be read (to be NACKed with the reason).
    Unreadable(Update, String),
    /// The stream ended, and why.
    End(String),
}

/// Sends the ACK (no error) or NACK of a response.
type Answer = Box<dyn FnMut(&Update, Option<String>) + Send>;

/// An open stream: its responses, and where its ACKs and NACKs go.
struct Wire {
    updates: mpsc::UnboundedReceiver<Incoming>,
    answer: Answer,
}

fn nack_status(message: String) -> Status {
    Status {
        code: 3, // INVALID_ARGUMENT
        message,
        details: vec![],
    }
}

/// Opens a Delta stream, telling pilot what is held.
async fn open_delta(
    client: &mut AggregatedDiscoveryServiceClient<Channel>,
    node: &Node,
    held: &Held,
) -> Result<Wire, String> {
    let (tx, rx) = mpsc::unbounded_channel();
    for kind in XdsType::PUSH_ORDER {
        let initial_resource_versions = held
            .get(&kind)
            .into_iter()
            .flatten()
            .map(|(n, (v, _))| (n.clone(), v.clone()))
            .collect();
        let _ = tx.send(DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: kind.type_url().to_owned(),
            initial_resource_versions,
            ..Default::default()
        });
    }
    let stream = client
        .delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| format!("pilot refused the stream: {}", e.message()))?
        .into_inner();
    let updates = forward_updates(stream, |r| Incoming::Update(Update::delta(r)));
    let answer = Box::new(move |u: &Update, error: Option<String>| {
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: u.type_url.clone(),
            response_nonce: u.nonce.clone(),
            error_detail: error.map(nack_status),
            ..Default::default()
        });
    });
    Ok(Wire { updates, answer })
}

/// Opens a State-of-the-World stream: one wildcard request per type; an
/// ACK repeats the response's version, a NACK the last accepted one.
async fn open_sotw(
    client: &mut AggregatedDiscoveryServiceClient<Channel>,
    node: &Node,
) -> Result<Wire, String> {
    let (tx, rx) = mpsc::unbounded_channel();
    for kind in XdsType::PUSH_ORDER {
        let _ = tx.send(DiscoveryRequest {
            node: Some(node.clone()),
            type_url: kind.type_url().to_owned(),
            ..Default::default()
        });
    }
    let stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| format!("pilot refused the stream: {}", e.message()))?
        .into_inner();
    let updates = forward_updates(stream, Update::sotw);
    let mut accepted: HashMap<String, String> = HashMap::new();
    let answer = Box::new(move |u: &Update, error: Option<String>| {
        if error.is_none() {
            accepted.insert(u.type_url.clone(), u.label.clone());
        }
        let _ = tx.send(DiscoveryRequest {
            type_url: u.type_url.clone(),
            version_info: accepted.get(&u.type_url).cloned().unwrap_or_default(),
            response_nonce: u.nonce.clone(),
            error_detail: error.map(nack_status),
            ..Default::default()
        });
    });
    Ok(Wire { updates, answer })
}

/// Reads a stream's responses on a task of their own.
fn forward_updates<R: Send + 'static>(
    mut stream: tonic::Streaming<R>,
    to_incoming: impl Fn(R) -> Incoming + Send + 'static,
) -> mpsc::UnboundedReceiver<Incoming> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (item, end) = match stream.message().await {
                Ok(Some(r)) => (to_incoming(r), false),
                Ok(None) => (Incoming::End("pilot closed the stream".into()), true),
                Err(e) => (
                    Incoming::End(format!("stream error: {}", e.message())),
                    true,
                ),
            };
            if tx.send(item).is_err() || end {
                return;
            }
        }
    });
    rx
}

#[allow(clippy::too_many_arguments)]
async fn stream_once(
    pilot: &Pilot,
    flavor: Flavor,
    node: &Node,
    proxy: &Proxy,
    held: &mut Held,
    seen: &mut Vec<XdsType>,
    report: &mut impl FnMut(Event),
    backoff: &mut Duration,
) -> String {
    let mut client = match pilot.client().await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let opened = match flavor {
        Flavor::Delta => open_delta(&mut client, node, held).await,
        Flavor::Sotw => open_sotw(&mut client, node).await,
    };
    let Wire {
        mut updates,
        mut answer,
    } = match opened {
        Ok(w) => w,
        Err(e) => return e,
    };
    let connected = &proxy.shared.stats.xds_connected;
    connected.store(1, std::sync::atomic::Ordering::Relaxed);
    report(Event::Connected);
    *backoff = Duration::from_millis(100);
    // The descriptor pool checks incoming resources. It is kept while
    // responses come in bursts and let go when the stream is quiet, so an
    // idle sidecar does not hold it.
    let mut checking = None;
    loop {
        let next = if checking.is_some() {
            match tokio::time::timeout(Duration::from_secs(2), updates.recv()).await {
                Ok(r) => r,
                Err(_) => {
                    checking = None;
                    report(Event::Idle);
                    continue;
                }
            }
        } else {
            updates.recv().await
        };
        let pool = checking.get_or_insert_with(|| mesh_proto::descriptors::Schema::Proxy.pool());
        let (u, error) = match next {
            Some(Incoming::Update(u)) => {
                let error = handle(&u, pool, proxy, held, seen, report).err();
                (u, error)
            }
            Some(Incoming::Unreadable(u, why)) => (u, Some(why)),
            Some(Incoming::End(why)) => return why,
            None => return "pilot closed the stream".into(),
        };
        if let Some(reason) = &error {
            // A NACK is a refused configuration like a refused file.
            let rejected = &proxy.shared.stats.config_rejected;
            rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            report(Event::Rejected {
                type_url: u.type_url.clone(),
                reason: reason.clone(),
            });
        }
        answer(&u, error);
    }
}

/// Applies one response to a copy of what is held; keeps the copy only
/// when the whole configuration builds and applies.
fn handle(
    r: &Update,
    pool: &prost_reflect::DescriptorPool,
    proxy: &Proxy,
    held: &mut Held,
    seen: &mut Vec<XdsType>,
    report: &mut impl FnMut(Event),
) -> Result<(), String> {
    let Some(kind) = XdsType::from_type_url(&r.type_url) else {
        return Err(format!("type {} is not supported", r.type_url));
    };
    let mut next = held.clone();
    let of_type = next.entry(kind).or_default();
    if r.whole {
        of_type.clear();
    }
    for name in &r.removed {
        of_type.remove(name);
    }
    for (name, version, any) in &r.resources {
        if any.type_url != r.type_url {
            return Err(format!(
                "resource {name} is a {}, the response is for {}",
                any.type_url, r.type_url
            ));
        }
        crate::config::check_resource(pool, kind, name, &any.value).map_err(|e| e.to_string())?;
        of_type.insert(name.clone(), (version.clone(), any.value.clone()));
    }
    let complete = XdsType::PUSH_ORDER
        .iter()
        .all(|t| *t == kind || seen.contains(t));
    let label = r.label.clone();
    let snapshot = resources(&next)
        .and_then(|res| Snapshot::from_xds(&label, res, Some(&proxy.shared.config.load())))
        .map_err(|e| e.to_string())?;
    if complete {
        let bound = proxy.apply(snapshot).map_err(|e| format!("{e:#}"))?;
        report(Event::Applied {
            version: label,
            bound,
        });
    }
    if !seen.contains(&kind) {
        seen.push(kind);
    }
    *held = next;
    Ok(())
}
