//! The inputs, indexed: every proxy's translation asks for services'
//! hosts and endpoints and for its Sidecar, and scanning every workload
//! for every service (or every rule) for every proxy grows as services ×
//! workloads × proxies. The registry part is built once per generation;
//! the rules part once per rule-store revision (endpoints change far more
//! often than rules).
//!
//! Both parts also carry digests of what they index, so that a proxy's
//! configuration is translated again only when something it can reach
//! changed ([`super::outbound_digest`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use mesh_rules::registry::{Health, Registry, Service, Workload};
use mesh_rules::rules::sidecar::SidecarIndex;
use mesh_rules::{Rule, Spec};
use xxhash_rust::xxh3::Xxh3;

use super::Inputs;

/// Each service's host, the workloads behind it and its digest, by the
/// service's place in the registry; services by host and by the
/// addresses of their workloads; the rules' index.
#[derive(Debug, Default)]
pub struct Index {
    hosts: Vec<String>,
    endpoints: Vec<Vec<usize>>,
    by_host: HashMap<String, Vec<usize>>,
    at_address: HashMap<IpAddr, Vec<usize>>,
    /// Per service: its definition and its endpoints' (what its outbound
    /// resources are made of, rules aside).
    digests: Vec<u64>,
    /// The services' alone (not their endpoints): while it stays, a
    /// service keeps its place, and only endpoints changed.
    shape: u64,
    /// The mesh settings'.
    pub(super) mesh: u64,
    pub(super) rules: Arc<RuleIndex>,
}

/// The rules, indexed: the Sidecars, and which rules concern which
/// destination host.
#[derive(Debug, Default)]
pub struct RuleIndex {
    pub(super) sidecars: SidecarIndex,
    /// Each rule's digest, in rule order.
    digests: Vec<u64>,
    /// Route rules and destination policies by their destination host
    /// (their places among the rules): they shape that host's resources
    /// only.
    by_host: HashMap<String, Vec<usize>>,
    /// Every other rule's: any of them may shape any proxy's resources.
    pub(super) global: u64,
}

impl RuleIndex {
    /// Indexes `rules`.
    pub fn of(rules: &[Rule]) -> Self {
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut global = Xxh3::new();
        let digests = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                // Rules hold no hasher-friendly form; their Debug form is
                // complete (every field) and built once per revision.
                let digest = xxhash_rust::xxh3::xxh3_64(format!("{rule:?}").as_bytes());
                let ns = rule.metadata.namespace();
                let host = match &rule.spec {
                    // (A gateway's routes concern hosts outside the mesh.)
                    Spec::RouteRule(r) if r.at_gateways.is_none() => r.destination.host(ns),
                    Spec::DestinationPolicy(p) => p.destination.host(ns),
                    _ => None,
                };
                match host {
                    Some(h) => by_host.entry(h.to_string()).or_default().push(i),
                    None => global.write_u64(digest),
                }
                digest
            })
            .collect();
        RuleIndex {
            sidecars: SidecarIndex::of(rules),
            digests,
            by_host,
            global: global.digest(),
        }
    }

    /// The digests of the rules that concern `host`, in rule order.
    pub(super) fn concerning<'a>(&'a self, host: &str) -> impl Iterator<Item = u64> + 'a {
        self.by_host
            .get(host)
            .into_iter()
            .flatten()
            .map(|&i| self.digests[i])
    }
}

/// XXH3 of a value's `Hash` form.
fn digest_of(value: &impl Hash) -> u64 {
    let mut h = Xxh3::new();
    value.hash(&mut h);
    h.finish()
}

impl Index {
    /// Indexes the registry and the rules of `inputs`.
    pub fn of(inputs: &Inputs<'_>) -> Self {
        Self::with_rules(inputs, Arc::new(RuleIndex::of(inputs.rules)))
    }

    /// Indexes the registry of `inputs`, with `rules` the index of its
    /// rules (kept from an earlier generation with the same rules).
    pub fn with_rules(inputs: &Inputs<'_>, rules: Arc<RuleIndex>) -> Self {
        debug_assert_eq!(
            rules.digests.len(),
            inputs.rules.len(),
            "another rules' index"
        );
        let registry = inputs.registry;
        let domain = inputs.mesh.domain.as_str();
        // Workloads by (namespace, one label): a service's candidates are
        // those carrying the first pair of its selector.
        let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        for (i, w) in registry.workloads.iter().enumerate() {
            for (k, v) in &w.labels {
                by_label
                    .entry((w.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        let endpoints: Vec<Vec<usize>> = registry
            .services
            .iter()
            .map(|s| {
                let Some((k, v)) = s.selector.iter().next() else {
                    return Vec::new();
                };
                by_label
                    .get(&(s.namespace.as_str(), k.as_str(), v.as_str()))
                    .map(|c| {
                        c.iter()
                            .copied()
                            .filter(|&i| s.selects(&registry.workloads[i]))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        let hosts: Vec<String> = registry
            .services
            .iter()
            .map(|s| s.host(domain).to_string())
            .collect();
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, h) in hosts.iter().enumerate() {
            by_host.entry(h.clone()).or_default().push(i);
        }
        let mut at_address: HashMap<IpAddr, Vec<usize>> = HashMap::new();
        for (i, ids) in endpoints.iter().enumerate() {
            for &w in ids {
                let at = at_address.entry(registry.workloads[w].address).or_default();
                if at.last() != Some(&i) {
                    at.push(i);
                }
            }
        }
        let shape = digest_of(&registry.services);
        let digests = registry
            .services
            .iter()
            .zip(&endpoints)
            .map(|(s, ids)| {
                let mut h = Xxh3::new();
                s.hash(&mut h);
                for &w in ids {
                    registry.workloads[w].hash(&mut h);
                }
                h.finish()
            })
            .collect();
        Index {
            hosts,
            endpoints,
            by_host,
            at_address,
            digests,
            shape,
            // MeshConfig holds a float: its Debug form stands in for Hash.
            mesh: digest_of(&format!("{:?}", inputs.mesh)),
            rules,
        }
    }

    /// Whether the index was built from a registry of this shape.
    pub(super) fn fits(&self, registry: &Registry) -> bool {
        self.hosts.len() == registry.services.len()
    }

    /// Every service's place in the registry.
    pub(super) fn all(&self) -> std::ops::Range<usize> {
        0..self.hosts.len()
    }

    /// The places of the services named `hosts` (exact names), in
    /// registry order.
    pub(super) fn named<'a>(&self, hosts: impl Iterator<Item = &'a str>) -> Vec<usize> {
        let mut ids: Vec<usize> = hosts
            .filter_map(|h| self.by_host.get(h))
            .flatten()
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The places of the services with a workload at `address`, in
    /// registry order.
    pub(super) fn at(&self, address: IpAddr) -> &[usize] {
        self.at_address.get(&address).map_or(&[], Vec::as_slice)
    }

    /// The host of the service at `i`.
    pub(super) fn host(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// The digest of the service at `i` and its endpoints.
    pub(super) fn digest(&self, i: usize) -> u64 {
        self.digests[i]
    }

    /// The places of the services whose endpoints are all that changed
    /// from `before` to this index, when that is all that changed in the
    /// registry (the same services in the same order); `None` otherwise.
    pub fn endpoints_changed_since(&self, before: &Index) -> Option<Vec<usize>> {
        (self.shape == before.shape
            && self.mesh == before.mesh
            && self.digests.len() == before.digests.len())
        .then(|| {
            self.digests
                .iter()
                .zip(&before.digests)
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(i, _)| i)
                .collect()
        })
    }

    /// The service at `i`, its host and its endpoints.
    pub(super) fn service<'a>(
        &'a self,
        registry: &'a Registry,
        i: usize,
    ) -> (&'a Service, &'a str, Endpoints<'a>) {
        let e = Endpoints {
            ids: &self.endpoints[i],
            workloads: &registry.workloads,
        };
        (&registry.services[i], self.hosts[i].as_str(), e)
    }
}

/// The workloads behind one service (read only when asked for).
#[derive(Debug, Clone, Copy)]
pub(super) struct Endpoints<'a> {
    ids: &'a [usize],
    workloads: &'a [Workload],
}

impl<'a> Endpoints<'a> {
    /// The workloads that take new requests: an unhealthy or draining one
    /// is left out (requests in flight to it finish; its own sidecar keeps
    /// its inbound configuration, `at_address` still lists it).
    pub(super) fn iter(self) -> impl Iterator<Item = &'a Workload> {
        self.ids
            .iter()
            .map(move |&i| &self.workloads[i])
            .filter(|w| w.health == Health::Healthy)
    }
}

#[cfg(test)]
mod tests {
    /// The index gives what scanning gives, service by service.
    #[test]
    fn the_index_agrees_with_a_scan() {
        let yaml = "services:\n- {name: a, vip: 10.0.0.1, ports: [{name: http, port: 80}], selector: {app: a}}\n- {name: b, namespace: other, vip: 10.0.0.2, ports: [{name: http, port: 80}], selector: {app: a, version: v2}}\n- {name: c, vip: 10.0.0.3, ports: [{name: http, port: 80}]}\nworkloads:\n- {name: a1, address: 10.1.0.1, labels: {app: a, version: v1}}\n- {name: a2, address: 10.1.0.2, labels: {app: a, version: v2}}\n- {name: b1, namespace: other, address: 10.1.0.3, labels: {app: a, version: v2}}\n- {name: b2, namespace: other, address: 10.1.0.4, labels: {app: a, version: v1}}\n";
        let registry = crate::registry::from_yaml("r.yaml", yaml).unwrap();
        let mesh = crate::translate::MeshConfig::default();
        let inputs = crate::translate::Inputs {
            registry: &registry,
            rules: &[],
            mesh: &mesh,
        };
        let index = super::Index::of(&inputs);
        let got: Vec<(String, Vec<String>)> = index
            .all()
            .map(|i| index.service(&registry, i))
            .map(|(_, h, e)| (h.to_owned(), e.iter().map(|w| w.name.clone()).collect()))
            .collect();
        let scanned: Vec<(String, Vec<String>)> = registry
            .services
            .iter()
            .map(|s| {
                let e = registry.endpoints(s).map(|w| w.name.clone()).collect();
                (s.host("cluster.local").to_string(), e)
            })
            .collect();
        assert_eq!(got, scanned);
        assert_eq!(got[0].1, ["a1", "a2"]);
        assert_eq!(got[1].1, ["b1"]);
        assert!(got[2].1.is_empty());
    }

    /// Unhealthy and draining workloads take no new requests, yet their
    /// own sidecars still find themselves by address.
    #[test]
    fn only_healthy_workloads_are_endpoints() {
        let yaml = "services:\n- {name: a, vip: 10.0.0.1, ports: [{name: http, port: 80}], selector: {app: a}}\nworkloads:\n- {name: a1, address: 10.1.0.1, labels: {app: a}}\n- {name: a2, address: 10.1.0.2, labels: {app: a}, health: unhealthy}\n- {name: a3, address: 10.1.0.3, labels: {app: a}, health: draining}\n";
        let registry = crate::registry::from_yaml("r.yaml", yaml).unwrap();
        let mesh = crate::translate::MeshConfig::default();
        let index = super::Index::of(&crate::translate::Inputs {
            registry: &registry,
            rules: &[],
            mesh: &mesh,
        });
        let (_, _, endpoints) = index.service(&registry, 0);
        let names: Vec<&str> = endpoints.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["a1"]);
        assert_eq!(index.at("10.1.0.3".parse().unwrap()), [0]);
    }

    /// Only endpoints changed: the services whose endpoints did are named;
    /// a changed service (or a new one) is a change of anything.
    #[test]
    fn an_endpoint_change_names_its_services() {
        let services = "services:\n- {name: a, vip: 10.0.0.1, ports: [{name: http, port: 80}], selector: {app: a}}\n- {name: b, vip: 10.0.0.2, ports: [{name: http, port: 80}], selector: {app: b}}\n";
        let index = |yaml: &str| {
            let registry = crate::registry::from_yaml("r.yaml", yaml).unwrap();
            let mesh = crate::translate::MeshConfig::default();
            super::Index::of(&crate::translate::Inputs {
                registry: &registry,
                rules: &[],
                mesh: &mesh,
            })
        };
        let before = index(&format!(
            "{services}workloads:\n- {{name: a1, address: 10.1.0.1, labels: {{app: a}}}}\n"
        ));
        let b1 = index(&format!(
            "{services}workloads:\n- {{name: a1, address: 10.1.0.1, labels: {{app: a}}}}\n- {{name: b1, address: 10.1.0.2, labels: {{app: b}}}}\n"
        ));
        assert_eq!(b1.endpoints_changed_since(&before), Some(vec![1]));
        assert_eq!(before.endpoints_changed_since(&before), Some(vec![]));
        let moved = index(&format!(
            "{services}workloads:\n- {{name: a1, address: 10.1.0.9, labels: {{app: a}}}}\n"
        ));
        assert_eq!(moved.endpoints_changed_since(&before), Some(vec![0]));
        assert_eq!(moved.at("10.1.0.9".parse().unwrap()), [0]);
        let renamed = index(&services.replace("name: b,", "name: c,"));
        assert_eq!(renamed.endpoints_changed_since(&before), None);
    }
}
