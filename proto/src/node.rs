//! Who a proxy is, as it tells pilot in the xDS `Node`: the metadata keys
//! Istio's proxies send (`NAME`, `NAMESPACE`, `LABELS`, `INSTANCE_IPS`,
//! `WORKLOAD_NAME`, `SERVICE_ACCOUNT`), so an Envoy bootstrap written for
//! Istio works unchanged.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::envoy::config::core::v3::Node;
use crate::google::protobuf::{Struct, Value, value::Kind};

/// Which proxy a node is, from its `user_agent_name`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyKind {
    /// mesh-proxy (or any proxy that does not say it is Envoy).
    #[default]
    MeshProxy,
    /// Envoy (`user_agent_name: envoy`).
    Envoy,
}

impl ProxyKind {
    /// The `user_agent_name` the proxy sends.
    pub fn user_agent(self) -> &'static str {
        match self {
            ProxyKind::MeshProxy => "mesh-proxy",
            ProxyKind::Envoy => "envoy",
        }
    }
}

/// What a proxy says about its workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMeta {
    /// The node id (unique per proxy).
    pub id: String,
    /// Namespace of the workload.
    pub namespace: String,
    /// The pod's name (Istio's `NAME`); with an address, the proxy
    /// registers it as a workload instance.
    pub name: String,
    /// The workload the pod belongs to: its Deployment, StatefulSet, …
    /// (Istio's `WORKLOAD_NAME`).
    pub workload: String,
    /// The workload's IP.
    pub ip: Option<IpAddr>,
    /// The workload's labels.
    pub labels: BTreeMap<String, String>,
    /// The workload's service account.
    pub service_account: String,
    /// No traffic redirection (`INTERCEPTION_MODE: NONE`, as in Istio):
    /// apps use the proxy explicitly.
    pub explicit: bool,
    /// With `explicit`, where the app listens (`MESH_APP_IP`; default
    /// 127.0.0.1).
    pub app_ip: Option<IpAddr>,
    /// Which proxy it is (its `user_agent_name`).
    pub kind: ProxyKind,
}

fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    }
}

fn get_string<'a>(s: &'a Struct, key: &str) -> Option<&'a str> {
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v),
        _ => None,
    }
}

/// The node type of a gateway proxy, the first `~`-separated part of its
/// id (Istio's; a sidecar's is `sidecar`).
pub const GATEWAY_NODE_TYPE: &str = "router";

impl NodeMeta {
    /// Whether the proxy is a gateway (its id starts `router~`).
    pub fn is_gateway(&self) -> bool {
        self.id.split_once('~').map(|(t, _)| t) == Some(GATEWAY_NODE_TYPE)
    }

    /// The xDS node carrying this metadata.
    pub fn to_node(&self) -> Node {
        let mut fields = std::collections::HashMap::new();
        fields.insert("NAMESPACE".into(), string(&self.namespace));
        if !self.name.is_empty() {
            fields.insert("NAME".into(), string(&self.name));
        }
        if !self.workload.is_empty() {
            fields.insert("WORKLOAD_NAME".into(), string(&self.workload));
        }
        if let Some(ip) = self.ip {
            fields.insert("INSTANCE_IPS".into(), string(&ip.to_string()));
        }
        if !self.service_account.is_empty() {
            fields.insert("SERVICE_ACCOUNT".into(), string(&self.service_account));
        }
        if self.explicit {
            fields.insert("INTERCEPTION_MODE".into(), string("NONE"));
        }
        if let Some(ip) = self.app_ip {
            fields.insert("MESH_APP_IP".into(), string(&ip.to_string()));
        }
        let labels = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), string(v)))
            .collect();
        fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(Struct { fields: labels })),
            },
        );
        Node {
            id: self.id.clone(),
            cluster: self.workload.clone(),
            metadata: Some(Struct { fields }),
            user_agent_name: self.kind.user_agent().into(),
            ..Node::default()
        }
    }

    /// Reads a node's metadata. Missing keys stay empty; the namespace
    /// defaults to `default`. `INSTANCE_IPS` may list several addresses
    /// (comma-separated); the first that parses is the workload's.
    pub fn from_node(node: &Node) -> NodeMeta {
        let empty = Struct::default();
        let md = node.metadata.as_ref().unwrap_or(&empty);
        let labels = match md.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(s)) => s
                .fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(v)) => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        NodeMeta {
            id: node.id.clone(),
            namespace: get_string(md, "NAMESPACE")
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_owned(),
            name: get_string(md, "NAME").unwrap_or_default().to_owned(),
            workload: get_string(md, "WORKLOAD_NAME")
                .unwrap_or_default()
                .to_owned(),
            ip: get_string(md, "INSTANCE_IPS")
                .and_then(|ips| ips.split(',').find_map(|ip| ip.trim().parse().ok())),
            labels,
            service_account: get_string(md, "SERVICE_ACCOUNT")
                .unwrap_or_default()
                .to_owned(),
            explicit: get_string(md, "INTERCEPTION_MODE") == Some("NONE"),
            app_ip: get_string(md, "MESH_APP_IP").and_then(|ip| ip.parse().ok()),
            kind: if node.user_agent_name == ProxyKind::Envoy.user_agent() {
                ProxyKind::Envoy
            } else {
                ProxyKind::MeshProxy
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_reads_istio_style_nodes() {
        let meta = NodeMeta {
            id: "sidecar~10.250.0.2~svca-1.default~default.svc.cluster.local".into(),
            namespace: "default".into(),
            name: "svca-1-7f9c".into(),
            workload: "svca-1".into(),
            ip: Some("10.250.0.2".parse().unwrap()),
            labels: [("app".to_owned(), "svca".to_owned())].into(),
            service_account: "svca".into(),
            explicit: true,
            app_ip: Some("127.11.0.2".parse().unwrap()),
            kind: ProxyKind::MeshProxy,
        };
        assert_eq!(NodeMeta::from_node(&meta.to_node()), meta);
        let envoy = Node {
            user_agent_name: "envoy".into(),
            ..meta.to_node()
        };
        assert_eq!(NodeMeta::from_node(&envoy).kind, ProxyKind::Envoy);
        let mut node = meta.to_node();
        node.metadata
            .as_mut()
            .unwrap()
            .fields
            .insert("INSTANCE_IPS".into(), string("fe80::1%eth0,10.250.0.9"));
        node.metadata.as_mut().unwrap().fields.remove("NAMESPACE");
        let read = NodeMeta::from_node(&node);
        assert_eq!(read.ip, Some("10.250.0.9".parse().unwrap()));
        assert_eq!(read.namespace, "default");
    }
}
