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
//!   controller resolved it), its selector. ExternalName Services and
//!   Services without a selector have no workloads here.
//! - a Pod with an IP (not on the host's network, not finished): a
//!   workload with its labels and service account;
//! - the EndpointSlices: whether that workload takes traffic — ready
//!   (healthy), terminating but still serving (draining: no new requests,
//!   those in flight finish) or neither. A pod no slice lists yet goes by
//!   its Ready condition; a pod being deleted drains at once, before its
//!   slices say so.

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

/// The watches could not start.
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes watches ended before their first list")]
pub struct NotStarted;

impl Kubernetes {
    /// Starts watching every namespace's Services, EndpointSlices and Pods.
    pub fn start(client: Client) -> Kubernetes {
        let changed = Arc::new(Notify::new());
        Kubernetes {
            services: reflect(Api::all(client.clone()), &changed, slim_service),
            slices: reflect(Api::all(client.clone()), &changed, slim_slice),
            pods: reflect(Api::all(client), &changed, slim_pod),
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

/// A reflector of `api`'s objects (trimmed by `slim` to what the model
/// reads, so thousands of pods cost little memory) that signals `changed`
/// on every change and on every completed (re)list.
fn reflect<K>(api: Api<K>, changed: &Arc<Notify>, slim: fn(&mut K)) -> Store<K>
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
    let changed = changed.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => changed.notify_one(),
                Ok(Event::Init | Event::InitApply(_)) => {}
                Err(e) => warn!(kind = %K::kind(&()), "watch failed, retrying: {e}"),
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
        for e in &slice.endpoints {
            let Some(pod) = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
            else {
                continue;
            };
            let c = e.conditions.as_ref();
            // Unset `ready` and `serving` mean ready (the API's reading).
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let said = Conditions {
                ready,
                serving: c.and_then(|c| c.serving).unwrap_or(ready),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            };
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
    let selector = spec.selector.clone().unwrap_or_default();
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
            let target_port = match &p.target_port {
                None => None,
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                Some(IntOrString::String(named)) => resolved
                    .get(&(namespace.as_str(), name.as_str(), port_name.as_str()))
                    .copied()
                    .or_else(|| named_port(pods, &namespace, &selector, named)),
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
        Some(c) if c.ready && !deleting => Health::Healthy,
        Some(c) if c.serving && (c.terminating || deleting) => Health::Draining,
        Some(_) => Health::Unhealthy,
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

    #[test]
    fn services_carry_their_tcp_ports_resolved_and_typed() {
        let (services, slices, pods) = ready();
        let r = registry_of(&services, &slices, &pods);
        let names: Vec<&str> = r.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["headless", "svcb"],
            "ExternalName is not a mesh service"
        );
        let svcb = &r.services[1];
        let cluster_ip = services[2].spec.as_ref().unwrap().cluster_ip.clone();
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
        let headless = &r.services[0];
        assert_eq!(headless.vip, None);
        assert_eq!(headless.ports[0].protocol, Some(Protocol::Grpc));
    }

    #[test]
    fn a_named_target_port_falls_back_to_the_pods_before_any_slice() {
        let (services, _, pods) = ready();
        let r = registry_of(&services, &[], &pods);
        assert_eq!(r.services[1].ports[0].target_port, Some(9997));
    }

    #[test]
    fn workloads_carry_identity_labels_and_readiness() {
        let (services, slices, pods) = ready();
        let r = registry_of(&services, &slices, &pods);
        assert_eq!(
            health(&r),
            [("svcb-v1", Health::Healthy), ("svcb-v2", Health::Unhealthy)]
        );
        let v1 = &r.workloads[0];
        assert_eq!(v1.service_account, "svcb");
        assert_eq!(v1.labels["version"], "v1");
        let ip = pods[0].status.as_ref().unwrap().pod_ip.clone();
        assert_eq!(Some(v1.address.to_string()), ip);
        assert_eq!(r.workloads[1].service_account, "default");
    }

    #[test]
    fn a_terminating_pod_drains_by_its_slices_or_its_deletion() {
        let (services, slices, pods) = terminating();
        let r = registry_of(&services, &slices, &pods);
        assert_eq!(
            health(&r),
            [
                ("svcb-v1", Health::Draining),
                ("svcb-v2", Health::Unhealthy)
            ]
        );
        // Before the slices say so, the deletion alone drains it.
        let (_, ready_slices, _) = ready();
        let r = registry_of(&services, &ready_slices, &pods);
        assert_eq!(r.workloads[0].health, Health::Draining);
        let r = registry_of(&services, &[], &pods);
        assert_eq!(r.workloads[0].health, Health::Draining);
    }
}
