//! The service behind a cluster, as the standard metrics name it
//! (`destination_service`, `…_name`, `…_namespace`), and whether its
//! endpoints are mesh workloads that take part in the peer exchange.
//!
//! Read from the cluster's metadata, where Istio's control plane puts it
//! (`filter_metadata.istio.services: [{host, name, namespace}]`); pilot
//! puts it only on clusters of mesh services, so a cluster that carries it
//! takes part in the exchange. Without metadata the service is read from
//! an Istio-style cluster name (`outbound|80|v1|svcb.default.svc.cluster.local`)
//! and the exchange is off.

use mesh_proto::envoy::config::cluster::v3 as xcluster;
use mesh_proto::google::protobuf::{Struct, Value, value::Kind};
use mesh_rules::FieldError;

use super::err;

/// A service's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// Its host name (`svcb.default.svc.cluster.local`, or an outside host).
    pub host: String,
    /// Its short name.
    pub name: String,
    /// Its namespace (`unknown` for hosts outside the cluster).
    pub namespace: String,
}

/// What a cluster's metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMeta {
    /// The service behind it.
    pub service: std::sync::Arc<Service>,
    /// Its endpoints are mesh sidecars: requests carry the peer header.
    pub peer_exchange: bool,
}

impl Service {
    /// Every label `unknown`: a request that reached no service, or one
    /// past the metrics' cardinality bound.
    pub fn unknown() -> std::sync::Arc<Service> {
        static UNKNOWN: std::sync::LazyLock<std::sync::Arc<Service>> =
            std::sync::LazyLock::new(|| {
                let unknown = crate::telemetry::peer::UNKNOWN;
                std::sync::Arc::new(Service {
                    host: unknown.into(),
                    name: unknown.into(),
                    namespace: unknown.into(),
                })
            });
        UNKNOWN.clone()
    }

    /// The service a cluster named `name` reaches when its metadata says
    /// nothing: the host of an Istio-style name, else the name itself.
    fn from_name(name: &str) -> Service {
        let host = name.rsplit('|').next().filter(|h| !h.is_empty());
        let host = host.unwrap_or(name);
        let mut labels = host.split('.');
        let short = labels.next().unwrap_or(host);
        let namespace = match (labels.next(), host.ends_with(".svc.cluster.local")) {
            (Some(ns), true) => ns,
            _ => crate::telemetry::peer::UNKNOWN,
        };
        Service {
            host: host.to_owned(),
            name: short.to_owned(),
            namespace: namespace.to_owned(),
        }
    }
}

fn string(v: &Value) -> Option<&str> {
    match v.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

/// Reads `filter_metadata.istio`: only `services`, whose first entry names
/// the service.
fn istio(s: &Struct, path: &str) -> Result<Option<Service>, FieldError> {
    let mut found = None;
    for (key, v) in &s.fields {
        let here = format!("{path}.{key}");
        let Some(Kind::ListValue(list)) = (key == "services").then_some(()).and(v.kind.as_ref())
        else {
            return Err(err(
                here,
                "mesh-proxy reads only `services` (a list of {host, name, namespace})",
            ));
        };
        for (i, entry) in list.values.iter().enumerate() {
            let Some(Kind::StructValue(e)) = &entry.kind else {
                return Err(err(
                    format!("{here}[{i}]"),
                    "expected {host, name, namespace}",
                ));
            };
            let mut svc = Service::from_name("");
            for (k, v) in &e.fields {
                let slot = match k.as_str() {
                    "host" => &mut svc.host,
                    "name" => &mut svc.name,
                    "namespace" => &mut svc.namespace,
                    _ => return Err(err(format!("{here}[{i}].{k}"), "use host, name, namespace")),
                };
                *slot = string(v)
                    .ok_or_else(|| err(format!("{here}[{i}].{k}"), "expected a string"))?
                    .to_owned();
            }
            found = found.or(Some(svc));
        }
    }
    Ok(found)
}

impl ClusterMeta {
    /// What `c` (at `path`) says about its service; any other metadata is
    /// refused, since nothing would read it.
    pub fn of(c: &xcluster::Cluster, path: &str) -> Result<ClusterMeta, FieldError> {
        let mut service = None;
        let filters = c.metadata.iter().flat_map(|m| &m.filter_metadata);
        for (filter, s) in filters {
            let here = format!("{path}.metadata.filter_metadata.{filter}");
            match filter.as_str() {
                "istio" => service = istio(s, &here)?,
                _ => {
                    return Err(err(
                        here,
                        "mesh-proxy reads only the `istio` metadata (services)",
                    ));
                }
            }
        }
        Ok(ClusterMeta {
            peer_exchange: service.is_some(),
            service: std::sync::Arc::new(service.unwrap_or_else(|| Service::from_name(&c.name))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(json: &str) -> Result<ClusterMeta, String> {
        let c: xcluster::Cluster =
            mesh_proto::json::from_yaml(mesh_proto::descriptors::Schema::Xds, json).unwrap();
        ClusterMeta::of(&c, "clusters[0]").map_err(|e| e.to_string())
    }

    #[test]
    fn metadata_names_the_service_and_the_exchange() {
        let m = cluster(
            r#"{"name": "c", "metadata": {"filter_metadata": {
                "istio": {"services": [{"host": "svcb.default.svc.cluster.local", "name": "svcb", "namespace": "default"}]}}}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                m.service.host.as_str(),
                m.service.name.as_str(),
                m.service.namespace.as_str()
            ),
            ("svcb.default.svc.cluster.local", "svcb", "default")
        );
        assert!(m.peer_exchange);
    }

    #[test]
    fn without_metadata_the_name_tells() {
        let m = cluster(r#"{"name": "outbound|80|v0.1|svcb.default.svc.cluster.local"}"#).unwrap();
        assert_eq!(
            (m.service.name.as_str(), m.service.namespace.as_str()),
            ("svcb", "default")
        );
        assert!(!m.peer_exchange);
        let m = cluster(r#"{"name": "outbound|443||api.example.com"}"#).unwrap();
        assert_eq!(
            (m.service.host.as_str(), m.service.namespace.as_str()),
            ("api.example.com", "unknown")
        );
        let m = cluster(r#"{"name": "backend"}"#).unwrap();
        assert_eq!(m.service.host, "backend");
    }

    #[test]
    fn other_metadata_is_refused_by_path() {
        let e = cluster(r#"{"name": "c", "metadata": {"filter_metadata": {"acme": {"x": 1}}}}"#)
            .unwrap_err();
        assert!(
            e.contains("clusters[0].metadata.filter_metadata.acme"),
            "{e}"
        );
        let e = cluster(
            r#"{"name": "c", "metadata": {"filter_metadata": {"istio": {"default_original_port": 80}}}}"#,
        )
        .unwrap_err();
        assert!(
            e.contains("filter_metadata.istio.default_original_port"),
            "{e}"
        );
    }
}
