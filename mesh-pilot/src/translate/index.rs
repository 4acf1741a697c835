//! The inputs, indexed once per generation: every proxy's translation
//! asks for services' hosts and endpoints and for its Sidecar, and
//! scanning every workload for every service (or every rule) for every
//! proxy grows as services × workloads × proxies.

use std::collections::HashMap;

use mesh_rules::registry::{Registry, Service, Workload};
use mesh_rules::rules::sidecar::SidecarIndex;

use super::Inputs;

/// Each service's host and the workloads behind it, by the service's
/// place in the registry; services by host; the Sidecars.
#[derive(Debug, Default)]
pub struct Index {
    hosts: Vec<String>,
    endpoints: Vec<Vec<usize>>,
    by_host: HashMap<String, Vec<usize>>,
    pub(super) sidecars: SidecarIndex,
}

impl Index {
    /// Indexes the registry and the Sidecars of `inputs`.
    pub fn of(inputs: &Inputs<'_>) -> Self {
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
        let endpoints = registry
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
        Index {
            hosts,
            endpoints,
            by_host,
            sidecars: SidecarIndex::of(inputs.rules),
        }
    }

    /// Whether the index was built from a registry of this shape.
    pub(super) fn fits(&self, registry: &Registry) -> bool {
        self.hosts.len() == registry.services.len()
    }

    /// The services with their hosts and endpoints, in registry order.
    pub(super) fn services<'a>(
        &'a self,
        registry: &'a Registry,
    ) -> impl Iterator<Item = (&'a Service, &'a str, Endpoints<'a>)> + 'a {
        (0..registry.services.len()).map(move |i| self.service(registry, i))
    }

    /// Those of `hosts` only (exact names), in registry order.
    pub(super) fn services_named<'a>(
        &'a self,
        registry: &'a Registry,
        hosts: impl Iterator<Item = &'a str>,
    ) -> impl Iterator<Item = (&'a Service, &'a str, Endpoints<'a>)> + 'a {
        let mut ids: Vec<usize> = hosts
            .filter_map(|h| self.by_host.get(h))
            .flatten()
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(move |i| self.service(registry, i))
    }

    fn service<'a>(
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
    pub(super) fn iter(self) -> impl Iterator<Item = &'a Workload> {
        self.ids.iter().map(move |&i| &self.workloads[i])
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
            .services(&registry)
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
}
