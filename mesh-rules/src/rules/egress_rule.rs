//! `EgressRule`: which destinations outside the mesh may be called.

use serde::{Deserialize, Serialize};

use super::IstioService;
use crate::check::Checker;
use crate::names;
use crate::path::FieldPath;
use crate::registry::{Protocol, parse_cidr};

fn is_false(b: &bool) -> bool {
    !*b
}

/// Opens `destination.service` (a host, `*.domain`, IP or CIDR) on the
/// listed ports; everything else outside the mesh stays refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    /// The external destination; only `service` is used.
    pub destination: IstioService,
    /// The ports opened, each with its protocol.
    pub ports: Vec<EgressPort>,
    /// Send the traffic through the egress gateway rather than directly.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_egress_proxy: bool,
    /// Addresses (IPs) the proxy sends HTTP calls to, whatever the caller
    /// resolved the host to (a mesh extension: a ServiceEntry's STATIC
    /// endpoints); none: where the caller connected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

/// A port of an external destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EgressPort {
    /// Port number, 1..=65535.
    pub port: i64,
    /// One of http, http2, grpc, https, tcp (any case).
    pub protocol: String,
}

/// Protocols an egress port may declare.
pub const EGRESS_PROTOCOLS: [&str; 5] = ["http", "http2", "grpc", "https", "tcp"];

impl EgressPort {
    /// The declared protocol, when it is one of [`EGRESS_PROTOCOLS`].
    pub fn protocol(&self) -> Option<Protocol> {
        let p = self.protocol.to_ascii_lowercase();
        if EGRESS_PROTOCOLS.contains(&p.as_str()) {
            Protocol::parse(&p)
        } else {
            None
        }
    }
}

impl EgressRule {
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        let dest = path.key("destination");
        self.destination.check(c, &dest, false);
        for field in ["name", "namespace", "domain"] {
            let set = match field {
                "name" => self.destination.name.is_some(),
                "namespace" => self.destination.namespace.is_some(),
                _ => self.destination.domain.is_some(),
            };
            if set {
                c.fail_key(
                    &dest.key(field),
                    format!(
                        "egress rules name their destination with `service` only; remove `{field}`"
                    ),
                );
            }
        }
        if !self.destination.labels.is_empty() {
            c.fail_key(
                &dest.key("labels"),
                "egress destinations are outside the mesh and have no labels",
            );
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.parse::<std::net::IpAddr>().is_err() {
                let at = path.key("endpoints").index(i);
                c.fail(&at, format!("`{e}` is not an IP address"));
            }
        }
        let is_cidr = match &self.destination.service {
            None => {
                c.fail(
                    &dest,
                    "`service` is required: a host, `*.domain`, IP address or CIDR",
                );
                false
            }
            Some(s) if s.parse::<std::net::IpAddr>().is_ok() => false,
            Some(s) if s.contains('/') => {
                if parse_cidr(s).is_none() {
                    c.fail(
                        &dest.key("service"),
                        format!("`{s}` is not a valid CIDR (e.g. 10.0.0.0/8)"),
                    );
                }
                true
            }
            Some(s) => {
                c.check(&dest.key("service"), names::check_host_name(s));
                false
            }
        };
        if self.ports.is_empty() {
            c.fail(&path.key("ports"), "at least one port is required");
        }
        for (i, port) in self.ports.iter().enumerate() {
            let p = path.key("ports").index(i);
            c.range(&p.key("port"), "port", port.port, 1, 65535);
            match port.protocol() {
                None => c.fail(
                    &p.key("protocol"),
                    format!(
                        "protocol `{}` is not supported: use one of {}",
                        port.protocol,
                        EGRESS_PROTOCOLS.join(", ")
                    ),
                ),
                Some(proto) if is_cidr && proto != Protocol::Tcp => c.fail(
                    &p.key("protocol"),
                    "a CIDR destination can only be opened for protocol tcp; name HTTP hosts by DNS name or IP",
                ),
                Some(_) => {}
            }
        }
    }
}
