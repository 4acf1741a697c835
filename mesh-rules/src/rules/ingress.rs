//! Istio's `Gateway` (`networking.istio.io`): the ports and host names a
//! gateway proxy (`mesh-proxy gateway`) serves. What arrives there is
//! routed by the VirtualServices that name the Gateway in `gateways`, by
//! host and path, to services of the mesh.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::networking::Refused;
use super::sidecar::HostScope;
use crate::check::Checker;
use crate::path::FieldPath;
use crate::registry::{Protocol, labels_match};

/// The apiVersions a Gateway is written with: Istio's, and the mesh's own.
pub const INGRESS_API_VERSIONS: [&str; 4] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
    super::MESH_API_VERSION,
];

/// The VirtualService `gateways` entry that means the sidecars.
pub const MESH_GATEWAY: &str = "mesh";

/// Ports and hosts a set of gateway proxies serves.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gateway {
    /// The gateway proxies it configures: those (in any namespace) whose
    /// labels include all of these.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// What they listen on.
    #[serde(default)]
    pub servers: Vec<Server>,
}

/// One port of the gateway and the hosts served on it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    /// The port the gateway proxy listens on.
    pub port: GatewayPort,
    /// `[namespace/]host`: the hosts served (`*`, `*.example.com`,
    /// `pay.example.com`); the namespace part (`*` when absent, `.` for the
    /// Gateway's own) limits which namespaces' VirtualServices may bind.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Refused: TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Refused,
    /// Refused: the address to bind (the proxy binds every address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Refused,
    /// Refused: a default endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Refused,
    /// Refused: the server's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Refused,
}

/// A gateway port.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayPort {
    /// The port number the proxy binds.
    pub number: i64,
    /// `HTTP`, `HTTP2` or `GRPC` (others are refused).
    pub protocol: String,
    /// The port's name (the listener's filter chain carries it).
    #[serde(default)]
    pub name: String,
    /// Refused: a different port on the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Refused,
}

impl GatewayPort {
    /// The port's protocol.
    pub fn protocol(&self) -> Option<Protocol> {
        Protocol::parse(&self.protocol.to_ascii_lowercase())
    }
}

impl Gateway {
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        let selector = path.key("selector");
        if self.selector.is_empty() {
            c.fail_key(
                &selector,
                "a Gateway needs a `selector` naming its proxies' labels (the mesh's bundle labels them `mesh: ingressgateway`)",
            );
        }
        c.labels(&selector, &self.selector);
        let servers = path.key("servers");
        if self.servers.is_empty() {
            c.fail_key(&servers, "a Gateway needs at least one server");
        }
        let mut ports = BTreeMap::new();
        for (i, s) in self.servers.iter().enumerate() {
            let at = servers.index(i);
            let port = at.key("port");
            c.range(&port.key("number"), "port", s.port.number, 1, 65535);
            if ports.insert(s.port.number, i).is_some() {
                c.fail(
                    &port.key("number"),
                    format!(
                        "port {} is served twice: list every host of a port in one server",
                        s.port.number
                    ),
                );
            }
            if s.port.protocol().is_none() {
                c.fail(
                    &port.key("protocol"),
                    format!(
                        "`{}` is not a protocol: use HTTP, HTTP2, GRPC, HTTPS or TCP",
                        s.port.protocol
                    ),
                );
            }
            if s.hosts.is_empty() {
                c.fail_key(
                    &at.key("hosts"),
                    "a server needs at least one host (`*` for every host)",
                );
            }
            for (j, h) in s.hosts.iter().enumerate() {
                c.check(
                    &at.key("hosts").index(j),
                    HostScope::parse_server(h).map(|_| ()),
                );
            }
        }
    }

    /// Whether it configures a proxy with `labels`.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty() && labels_match(&self.selector, labels)
    }
}

impl Server {
    /// Whether the server serves `host` as bound by a VirtualService in
    /// `namespace`, the Gateway being in `own_namespace`.
    pub fn serves(&self, own_namespace: &str, namespace: &str, host: &str) -> bool {
        self.hosts.iter().any(|h| {
            HostScope::parse_server(h).is_ok_and(|s| s.admits_host(own_namespace, namespace, host))
        })
    }
}

/// Where a route converted from a VirtualService applies at gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRoute {
    /// The Gateways (namespace, name) whose proxies apply it.
    pub gateways: Vec<(String, String)>,
    /// The host it routes (as the VirtualService wrote it: `*`,
    /// `*.example.com`, `pay.example.com`, `svca`).
    pub host: String,
}

/// A Gateway named by a VirtualService's `gateways` entry (`name` in its
/// own namespace, or `namespace/name`).
pub fn gateway_ref(entry: &str, rule_namespace: &str) -> (String, String) {
    match entry.split_once('/') {
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (rule_namespace.to_owned(), entry.to_owned()),
    }
}
