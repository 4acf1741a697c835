//! The Kubernetes registry: Services, EndpointSlices and Pods of every
//! namespace, each kept by a kube-rs reflector (list, then watch; a broken
//! watch resumes from its last resource version, and a `410 Gone` relists
//! and swaps the whole store at once, so no endpoint is lost or kept
//! stale across a relist). Every change rebuilds the model from the
//! three stores ([`registry_of`], no I/O) and hands it to the world, which
//! folds bursts into one generation.
//!
//! What each object gives:
//! - a Service: name, namespace, ClusterIP (none for headless), its TCP
//!   ports with their protocol (`appProtocol`, else the port name's
//!   prefix) and target port (a named one resolved as the EndpointSlice
//!   controller resolved it), its selector. ExternalName Services are
//!   not mesh services.
//! - a Pod with an IP (not on the host's network, not finished): a
//!   workload with its labels and service account;
//! - the EndpointSlices: whether that workload takes traffic — ready
//!   (healthy), terminating but still serving (draining: no new requests,
//!   those in flight finish) or neither. A pod no slice lists yet goes by
//!   its Ready condition; a pod being deleted drains at once, before its
//!   slices say so.
//! - a Service without a selector (its EndpointSlices written by someone
//!   else: a database outside the cluster, a VM): each address its slices
//!   list is a workload of its own, labelled with the slices' label
//!   `kubernetes.io/service-name: <service>`, which the service then
//!   selects; the slices' conditions give its health and their ports the
//!   target ports.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use mesh_rules::registry::{self as model, Health, Protocol, Registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tracing::{debug, warn};

use crate::world::{Update, Updates};

/// The label EndpointSlices name their Service by.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The three watched stores and the signal that one of them moved.
pub struct Kubernetes {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    changed: Arc<Notify>,
}

/// A watched kind: `kind="Service"` (`EndpointSlice`, `Pod`).
type KindLabel = [(&'static str, String); 1];

/// Why a watch broke: the kind and `reason="expired"` (410 Gone: the
/// resource version was compacted away, so the kind is listed again) or
/// `reason="other"` (the watch resumes where it was).
type ErrorLabel = [(&'static str, String); 2];

/// The watches' metrics (shown on pilot's `/metrics`): completed lists per
/// kind — one at start, one more per relist — and broken watches.
#[derive(Clone, Default)]
pub struct WatchMetrics {
    lists: Family<KindLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
}

impl WatchMetrics {
    /// Adds the families to pilot's metrics.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "pilot_k8s_reg_lists",
            "Completed lists of a watched Kubernetes kind (the first, then one per relist)",
            self.lists.clone(),
        );
        registry.register(
            "pilot_k8s_reg_watch_errors",
            "Broken watches of a Kubernetes kind, by reason (expired: 410 Gone, relisted)",
            self.errors.clone(),
        );
    }

    fn listed(&self, kind: &str) {
        self.lists.get_or_create(&[("kind", kind.to_owned())]).inc();
    }

    fn failed(&self, kind: &str, e: &watcher::Error) {
        let reason = match e {
            watcher::Error::WatchError(status) if status.code == 410 => "expired",
            _ => "other",
        };
        self.errors
            .get_or_create(&[("kind", kind.to_owned()), ("reason", reason.to_owned())])
            .inc();
    }
}

/// The watches could not start.
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes watches ended before their first list")]
pub struct NotStarted;

impl Kubernetes {
    /// Starts watching every namespace's Services, EndpointSlices and Pods.
    pub fn start(client: Client, metrics: &WatchMetrics) -> Kubernetes {
        let changed = Arc::new(Notify::new());
        let watch = |_| Watch {
            changed: changed.clone(),
            metrics: metrics.clone(),
        };
        Kubernetes {
            services: reflect(Api::all(client.clone()), watch(()), slim_service),
            slices: reflect(Api::all(client.clone()), watch(()), slim_slice),
            pods: reflect(Api::all(client), watch(()), slim_pod),
            changed,
        }
    }

    /// Waits for the first full list of each kind (until then the model
    /// would be missing services or endpoints, and proxies told so).
    pub async fn synced(&self) -> Result<(), NotStarted> {
        self.services
            .wait_until_ready()
            .await
            .map_err(|_| NotStarted)?;
        self.slices
            .wait_until_ready()
            .await
            .map_err(|_| NotStarted)?;
        self.pods.wait_until_ready().await.map_err(|_| NotStarted)?;
        Ok(())
    }

    /// The model of what the stores hold now.
    pub fn registry(&self) -> Registry {
        registry_of(
            &self.services.state(),
            &self.slices.state(),
            &self.pods.state(),
        )
    }

    /// From now on, every change of the stores goes to `updates` as a
    /// new Kubernetes registry (changes arriving while one is built fold
    /// into the next).
    pub fn forward(self, updates: Updates) {
        tokio::spawn(async move {
            loop {
                self.changed.notified().await;
                let registry = self.registry();
                debug!(
                    services = registry.services.len(),
                    workloads = registry.workloads.len(),
                    "kubernetes registry"
                );
                updates.send(Update::Kubernetes(registry));
            }
        });
    }
}

/// Where a reflector reports.
struct Watch {
    changed: Arc<Notify>,
    metrics: WatchMetrics,
}

/// A reflector of `api`'s objects (trimmed by `slim` to what the model
/// reads, so thousands of pods cost little memory) that signals
/// `changed` on every change and on every completed (re)list.
fn reflect<K>(api: Api<K>, watch: Watch, slim: fn(&mut K)) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api).default_backoff().modify(slim).reflect(writer);
    let kind = K::kind(&()).into_owned();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(_) | Event::Delete(_)) => watch.changed.notify_one(),
                Ok(Event::InitDone) => {
                    watch.metrics.listed(&kind);
                    watch.changed.notify_one();
                }
                Ok(Event::Init | Event::InitApply(_)) => {}
                Err(e) => {
                    watch.metrics.failed(&kind, &e);
                    warn!(%kind, "watch failed, retrying: {e}");
                }
            }
        }
    });
    reader
}

fn watcher<K>(api: Api<K>) -> impl tokio_stream::Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default())
}

fn slim_service(s: &mut Service) {
    s.metadata.managed_fields = None;
    s.metadata.annotations = None;
    s.status = None;
}

fn slim_slice(s: &mut EndpointSlice) {
    s.metadata.managed_fields = None;
    s.metadata.annotations = None;
    for e in &mut s.endpoints {
        e.hints = None;
        e.deprecated_topology = None;
    }
}

fn slim_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.metadata.owner_references = None;
    if let Some(spec) = &mut p.spec {
        // Only the containers' named ports are read.
        let keep = |c: &mut Container| Container {
            name: std::mem::take(&mut c.name),
            ports: c.ports.take(),
            ..Default::default()
        };
        let containers = spec.containers.iter_mut().map(keep).collect();
        *spec = k8s_openapi::api::core::v1::PodSpec {
            containers,
            host_network: spec.host_network,
            service_account_name: spec.service_account_name.take(),
            ..Default::default()
        };
    }
    if let Some(status) = &mut p.status {
        *status = k8s_openapi::api::core::v1::PodStatus {
            conditions: status.conditions.take(),
            phase: status.phase.take(),
            pod_ip: status.pod_ip.take(),
            ..Default::default()
        };
    }
}

/// What the EndpointSlices say of one pod.
#[derive(Debug, Default, Clone, Copy)]
struct Conditions {
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// The model of these objects: services and workloads sorted by
/// namespace and name (a stable order keeps unchanged services in their
/// places, so pilot sees an endpoint change as only that).
pub fn registry_of(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    pods: &[Arc<Pod>],
) -> Registry {
    // Per pod, the best the slices say (a pod may back several services).
    let mut conditions: HashMap<(&str, &str), Conditions> = HashMap::new();
    // Per service and port name, the target port its slices resolved.
    let mut resolved: HashMap<(&str, &str, &str), u16> = HashMap::new();
    // Services whose slices someone else writes: their endpoints are the
    // workloads.
    let selectorless: std::collections::HashSet<(&str, &str)> = services
        .iter()
        .filter(|s| {
            s.spec.as_ref().is_some_and(|spec| {
                spec.type_.as_deref() != Some("ExternalName")
                    && spec.selector.as_ref().is_none_or(|l| l.is_empty())
            })
        })
        .filter_map(|s| {
            Some((
                s.metadata.namespace.as_deref()?,
                s.metadata.name.as_deref()?,
            ))
        })
        .collect();
    let mut endpoints: BTreeMap<(&str, &str, IpAddr), model::Workload> = BTreeMap::new();
    for slice in slices {
        let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            for p in slice.ports.iter().flatten() {
                if let (Some(port), name) = (p.port, p.name.as_deref().unwrap_or_default())
                    && let Ok(port) = u16::try_from(port)
                {
                    resolved.insert((namespace, service.as_str(), name), port);
                }
            }
        }
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|s| (namespace, s.as_str()))
            .filter(|key| selectorless.contains(key));
        if let Some((namespace, service)) = owner
            && slice.address_type != "FQDN"
        {
            for e in &slice.endpoints {
                let Some(address) = e.addresses.first().and_then(|a| a.parse().ok()) else {
                    continue;
                };
                let health = health_of(said(e), false);
                let w = endpoints
                    .entry((namespace, service, address))
                    .or_insert_with(|| model::Workload {
                        name: format!("{service}-{address}"),
                        namespace: namespace.to_owned(),
                        address,
                        labels: [(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into(),
                        service_account: "default".to_owned(),
                        health,
                    });
                // Listed twice (two slices of one service): the better
                // condition counts.
                if health == Health::Healthy || w.health == Health::Unhealthy {
                    w.health = health;
                }
            }
            continue;
        }
        for e in &slice.endpoints {
            let Some(pod) = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
            else {
                continue;
            };
            let said = said(e);
            let key = (
                pod.namespace.as_deref().unwrap_or(namespace),
                pod.name.as_deref().unwrap_or_default(),
            );
            let best = conditions.entry(key).or_insert(said);
            best.ready |= said.ready;
            best.serving |= said.serving;
            best.terminating &= said.terminating;
        }
    }
    let mut workloads: Vec<model::Workload> = pods
        .iter()
        .filter_map(|p| workload(p, &conditions))
        .chain(endpoints.into_values())
        .collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut services: Vec<model::Service> = services
        .iter()
        .filter_map(|s| service(s, &resolved, pods))
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Registry {
        services,
        workloads,
    }
}

fn service(
    s: &Service,
    resolved: &HashMap<(&str, &str, &str), u16>,
    pods: &[Arc<Pod>],
) -> Option<model::Service> {
    let spec = s.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let name = s.metadata.name.clone()?;
    let namespace = s
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let own_selector = spec.selector.clone().unwrap_or_default();
    // A Service without a selector selects the endpoints of its slices
    // (see the module's documentation).
    let selector = if own_selector.is_empty() {
        [(SERVICE_NAME_LABEL.to_owned(), name.clone())].into()
    } else {
        own_selector.clone()
    };
    let vip = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| *ip != "None")
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let ports = spec
        .ports
        .iter()
        .flatten()
        // The mesh carries TCP only.
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let port_name = p.name.clone().unwrap_or_default();
            let sliced = || {
                resolved
                    .get(&(namespace.as_str(), name.as_str(), port_name.as_str()))
                    .copied()
            };
            let target_port = match &p.target_port {
                // Without a selector the slices' writer says the port.
                _ if own_selector.is_empty() => sliced().or(match &p.target_port {
                    Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                    _ => None,
                }),
                None => None,
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                Some(IntOrString::String(named)) => {
                    sliced().or_else(|| named_port(pods, &namespace, &selector, named))
                }
            };
            Some(model::ServicePort {
                protocol: Protocol::declared(&port_name, p.app_protocol.as_deref()),
                name: port_name,
                port: u16::try_from(p.port).ok()?,
                target_port,
            })
        })
        .collect();
    Some(model::Service {
        name,
        namespace,
        vip,
        ports,
        selector,
    })
}

/// A named target port as the selected pods declare it (for a Service
/// whose slices do not list it yet).
fn named_port(
    pods: &[Arc<Pod>],
    namespace: &str,
    selector: &BTreeMap<String, String>,
    named: &str,
) -> Option<u16> {
    if selector.is_empty() {
        return None;
    }
    pods.iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| model::labels_match(selector, l))
        })
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(named))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// What one slice endpoint says.
fn said(e: &k8s_openapi::api::discovery::v1::Endpoint) -> Conditions {
    let c = e.conditions.as_ref();
    // Unset `ready` and `serving` mean ready (the API's reading).
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    Conditions {
        ready,
        serving: c.and_then(|c| c.serving).unwrap_or(ready),
        terminating: c.and_then(|c| c.terminating).unwrap_or(false),
    }
}

/// Ready takes traffic; terminating (or being deleted) but serving
/// drains; anything else takes none.
fn health_of(c: Conditions, deleting: bool) -> Health {
    match c {
        c if c.ready && !deleting => Health::Healthy,
        c if c.serving && (c.terminating || deleting) => Health::Draining,
        _ => Health::Unhealthy,
    }
}

fn workload(p: &Pod, conditions: &HashMap<(&str, &str), Conditions>) -> Option<model::Workload> {
    let spec = p.spec.as_ref()?;
    let status = p.status.as_ref()?;
    if spec.host_network == Some(true)
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return None;
    }
    let address: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let name = p.metadata.name.clone()?;
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let pod_ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let said = conditions
        .get(&(namespace.as_str(), name.as_str()))
        .copied();
    let deleting = p.metadata.deletion_timestamp.is_some();
    let health = match said {
        Some(c) => health_of(c, deleting),
        None if pod_ready && !deleting => Health::Healthy,
        None if pod_ready => Health::Draining,
        None => Health::Unhealthy,
    };
    Some(model::Workload {
        name,
        namespace,
        address,
        labels: p.metadata.labels.clone().unwrap_or_default(),
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        health,
    })
}

#[cfg(test)]
mod tests {
    //! Over objects a real API server returned (recorded by the
    //! kube_registry test with `MESH_RECORD`): a Service per kind of
    //! port, one ready pod and one that never gets ready, then the ready
    //! one terminating.

    use super::*;

    type Objects = (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>, Vec<Arc<Pod>>);

    fn objects(json: &str) -> Objects {
        let list: serde_json::Value = serde_json::from_str(json).unwrap();
        let (mut services, mut slices, mut pods) = (vec![], vec![], vec![]);
        for item in list["items"].as_array().unwrap() {
            let item = item.clone();
            match item["kind"].as_str().unwrap() {
                "Service" => services.push(Arc::new(serde_json::from_value(item).unwrap())),
                "EndpointSlice" => slices.push(Arc::new(serde_json::from_value(item).unwrap())),
                "Pod" => pods.push(Arc::new(serde_json::from_value(item).unwrap())),
                other => panic!("unexpected kind {other}"),
            }
        }
        (services, slices, pods)
    }

    fn ready() -> Objects {
        objects(include_str!("../../tests/fixtures/kube-shop-ready.json"))
    }

    fn terminating() -> Objects {
        objects(include_str!(
            "../../tests/fixtures/kube-shop-terminating.json"
        ))
    }

    fn health(r: &Registry) -> Vec<(&str, Health)> {
        r.workloads
            .iter()
            .map(|w| (w.name.as_str(), w.health))
            .collect()
    }

    fn service<'a>(r: &'a Registry, name: &str) -> &'a model::Service {
        r.services.iter().find(|s| s.name == name).unwrap()
    }

    fn object<'a, K: Resource>(objects: &'a [Arc<K>], name: &str) -> &'a K {
        objects
            .iter()
            .find(|o| o.meta().name.as_deref() == Some(name))
            .unwrap()
    }

    #[test]
    fn services_carry_their_tcp_ports_resolved_and_typed() {
        let (services, slices, pods) = ready();
        let r = registry_of(&services, &slices, &pods);
        let names: Vec<&str> = r.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["db", "headless", "svcb"],
            "ExternalName is not a mesh service"
        );
        let svcb = service(&r, "svcb");
        let cluster_ip = object(&services, "svcb")
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .clone();
        assert_eq!(svcb.vip.map(|ip| ip.to_string()), cluster_ip);
        let ports: Vec<(&str, u16, Option<u16>, Option<Protocol>)> = svcb
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.target_port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                ("http", 80, Some(9997), Some(Protocol::Http)),
                ("metrics", 9090, Some(9090), Some(Protocol::Http)),
            ],
            "UDP dropped, the named target port resolved, appProtocol read"
        );
        let headless = service(&r, "headless");
        assert_eq!(headless.vip, None);
        assert_eq!(headless.ports[0].protocol, Some(Protocol::Grpc));
    }

    #[test]
    fn a_named_target_port_falls_back_to_the_pods_before_any_slice() {
        let (services, _, pods) = ready();
        let r = registry_of(&services, &[], &pods);
        assert_eq!(service(&r, "svcb").ports[0].target_port, Some(9997));
    }

    #[test]
    fn a_service_without_selector_is_backed_by_its_slices_addresses() {
        let (services, slices, pods) = ready();
        let r = registry_of(&services, &slices, &pods);
        let db = service(&r, "db");
        assert_eq!(
            db.ports[0].target_port,
            Some(15432),
            "the slice's port, not the Service's targetPort"
        );
        let backing: Vec<(&str, Health)> = r
            .workloads
            .iter()
            .filter(|w| db.selects(w))
            .map(|w| (w.name.as_str(), w.health))
            .collect();
        assert_eq!(
            backing,
            [
                ("db-192.0.2.10", Health::Healthy),
                ("db-192.0.2.11", Health::Unhealthy)
            ]
        );
        // No pod is selected by it, nor any address by the pods' services.
        assert!(
            r.workloads
                .iter()
                .filter(|w| w.name.starts_with("svcb"))
                .all(|w| !db.selects(w))
        );
        let svcb = service(&r, "svcb");
        assert!(
            r.workloads
                .iter()
                .filter(|w| w.name.starts_with("db"))
                .all(|w| !svcb.selects(w))
        );
        // Without its slices, it has no endpoints (and no port to guess).
        let r = registry_of(&services, &[], &pods);
        assert!(r.workloads.iter().all(|w| !w.name.starts_with("db")));
        assert_eq!(service(&r, "db").ports[0].target_port, Some(5432));
    }

    #[test]
    fn workloads_carry_identity_labels_and_readiness() {
        let (services, slices, pods) = ready();
        let r = registry_of(&services, &slices, &pods);
        assert_eq!(
            health(&r)[2..],
            [("svcb-v1", Health::Healthy), ("svcb-v2", Health::Unhealthy)]
        );
        let v1 = &r.workloads[2];
        assert_eq!(v1.service_account, "svcb");
        assert_eq!(v1.labels["version"], "v1");
        let ip = object(&pods, "svcb-v1")
            .status
            .as_ref()
            .unwrap()
            .pod_ip
            .clone();
        assert_eq!(Some(v1.address.to_string()), ip);
        assert_eq!(r.workloads[3].service_account, "default");
    }

    #[test]
    fn a_terminating_pod_drains_by_its_slices_or_its_deletion() {
        let (services, slices, pods) = terminating();
        let r = registry_of(&services, &slices, &pods);
        assert_eq!(
            health(&r)[2..],
            [
                ("svcb-v1", Health::Draining),
                ("svcb-v2", Health::Unhealthy)
            ]
        );
        // Before the slices say so, the deletion alone drains it.
        let (_, ready_slices, _) = ready();
        let r = registry_of(&services, &ready_slices, &pods);
        assert_eq!(r.workloads[2].health, Health::Draining);
        let r = registry_of(&services, &[], &pods);
        assert_eq!(r.workloads[0].health, Health::Draining);
    }
}
