//! The xDS client: one incremental (Delta) aggregated stream to pilot.
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
use mesh_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use mesh_proto::google::rpc::Status;
use mesh_proto::types::XdsType;
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::config::{ConfigError, Resources, Snapshot};
use crate::server::{Bound, Proxy};
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

fn decode_all<M: Message + Default>(held: &Held, kind: XdsType) -> Result<Vec<M>, ConfigError> {
    held.get(&kind)
        .into_iter()
        .flatten()
        .map(|(name, (_, bytes))| {
            M::decode(bytes.as_slice()).map_err(|e| ConfigError {
                path: format!("{kind}[{name}]"),
                message: format!("cannot decode: {e}"),
            })
        })
        .collect()
}

fn resources(held: &Held) -> Result<Resources, ConfigError> {
    Ok(Resources {
        listeners: decode_all(held, XdsType::Listener)?,
        clusters: decode_all(held, XdsType::Cluster)?,
        routes: decode_all(held, XdsType::Route)?,
        endpoints: decode_all(held, XdsType::Endpoint)?,
    })
}

/// Follows pilot at `address` (`host:port`) for ever, as `node` says who
/// the proxy is; when `node` changes (the pod's labels did), the stream is
/// opened again so pilot learns it.
pub async fn run(
    address: String,
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
            &address,
            &current,
            &proxy,
            &mut held,
            &mut seen,
            &mut report,
            &mut backoff,
        )
        .instrument(tracing::info_span!("xds", pilot = %address));
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
        report(Event::Disconnected(outcome));
        if proxy.shared.draining() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_once(
    address: &str,
    node: &Node,
    proxy: &Proxy,
    held: &mut Held,
    seen: &mut Vec<XdsType>,
    report: &mut impl FnMut(Event),
    backoff: &mut Duration,
) -> String {
    let mut client =
        match AggregatedDiscoveryServiceClient::connect(format!("http://{address}")).await {
            Ok(c) => c,
            Err(e) => return format!("cannot connect to {address}: {e}"),
        };
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
    let response = client
        .delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await;
    let mut responses = match response {
        Ok(r) => r.into_inner(),
        Err(e) => return format!("pilot refused the stream: {}", e.message()),
    };
    report(Event::Connected);
    *backoff = Duration::from_millis(100);
    // The descriptor pool checks incoming resources. It is kept while
    // responses come in bursts and let go when the stream is quiet, so an
    // idle sidecar does not hold it.
    let mut checking = None;
    loop {
        let next = if checking.is_some() {
            match tokio::time::timeout(Duration::from_secs(2), responses.message()).await {
                Ok(r) => r,
                Err(_) => {
                    checking = None;
                    report(Event::Idle);
                    continue;
                }
            }
        } else {
            responses.message().await
        };
        let r: DeltaDiscoveryResponse = match next {
            Ok(Some(r)) => r,
            Ok(None) => return "pilot closed the stream".into(),
            Err(e) => return format!("stream error: {}", e.message()),
        };
        let pool = checking.get_or_insert_with(mesh_proto::descriptors::pool);
        let error = handle(&r, pool, proxy, held, seen, report).err();
        if let Some(reason) = &error {
            // A NACK is a refused configuration like a refused file.
            let rejected = &proxy.shared.stats.config_rejected;
            rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            report(Event::Rejected {
                type_url: r.type_url.clone(),
                reason: reason.clone(),
            });
        }
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: 3, // INVALID_ARGUMENT
                message,
                details: vec![],
            }),
            ..Default::default()
        });
    }
}

/// Applies one response to a copy of what is held; keeps the copy only
/// when the whole configuration builds and applies.
fn handle(
    r: &DeltaDiscoveryResponse,
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
    for name in &r.removed_resources {
        of_type.remove(name);
    }
    for res in &r.resources {
        let Some(any) = &res.resource else {
            return Err(format!("resource {} has no body", res.name));
        };
        if any.type_url != r.type_url {
            return Err(format!(
                "resource {} is a {}, the response is for {}",
                res.name, any.type_url, r.type_url
            ));
        }
        crate::config::check_resource(pool, kind, &res.name, &any.value)
            .map_err(|e| e.to_string())?;
        of_type.insert(res.name.clone(), (res.version.clone(), any.value.clone()));
    }
    let complete = XdsType::PUSH_ORDER
        .iter()
        .all(|t| *t == kind || seen.contains(t));
    let label = if r.system_version_info.is_empty() {
        r.nonce.clone()
    } else {
        r.system_version_info.clone()
    };
    let snapshot = resources(&next)
        .and_then(|res| Snapshot::from_xds(&label, res))
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
