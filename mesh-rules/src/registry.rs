//! The service registry model shared by pilot and proxy: services, their
//! ports and virtual IPs, the workloads behind them, and host-name rules.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The cluster DNS domain when none is configured.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// An application protocol, as declared on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.x.
    Http,
    /// HTTP/2 (prior knowledge).
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
    /// TLS carrying HTTP; opaque to the proxy.
    Https,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    /// Reads a protocol name, case-insensitively.
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "https" => Protocol::Https,
            "tcp" => Protocol::Tcp,
            _ => return None,
        })
    }

    /// The protocol a port declares, Kubernetes-style: `appProtocol` wins,
    /// then the port name's prefix (`http-web`, `grpc`, `tcp-db`); `None`
    /// when nothing is declared and the proxy must detect it.
    pub fn declared(port_name: &str, app_protocol: Option<&str>) -> Option<Protocol> {
        if let Some(p) = app_protocol.and_then(Protocol::parse) {
            return Some(p);
        }
        let prefix = port_name.split('-').next().unwrap_or_default();
        Protocol::parse(prefix)
    }

    /// True for protocols the proxy routes per request.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
        })
    }
}

/// A fully qualified host name (`svcb.default.svc.cluster.local`), lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostName(String);

impl HostName {
    /// Wraps a host name as given, lowercased, without a trailing dot.
    pub fn new(host: &str) -> Self {
        HostName(host.trim_end_matches('.').to_ascii_lowercase())
    }

    /// The host of a service in the cluster.
    pub fn for_service(name: &str, namespace: &str, domain: &str) -> Self {
        HostName::new(&format!("{name}.{namespace}.svc.{domain}"))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The fully qualified names a client in `namespace` may mean by `name`,
    /// in the order the cluster resolver's search path tries them:
    /// `svcb` ≡ `svcb.default` ≡ `svcb.default.svc` ≡ `svcb.default.svc.cluster.local`.
    pub fn candidates(name: &str, namespace: &str, domain: &str) -> Vec<HostName> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let suffix = format!(".svc.{domain}");
        let mut out = Vec::with_capacity(4);
        if name.ends_with(&format!(".{domain}")) {
            out.push(HostName(name.clone()));
        }
        out.push(HostName(format!("{name}.{namespace}{suffix}")));
        out.push(HostName(format!("{name}.{domain}")));
        if !name.ends_with(".svc") {
            out.push(HostName(format!("{name}{suffix}")));
        }
        out.push(HostName(name));
        out.dedup();
        out
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// The port's name (`http`, `grpc-api`); its prefix may declare the protocol.
    #[serde(default)]
    pub name: String,
    /// The port clients call.
    pub port: u16,
    /// The port the workloads listen on; `port` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// The declared protocol; detected by the proxy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

impl ServicePort {
    /// The port the workloads listen on.
    pub fn target_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }

    /// The declared protocol (explicit, else by name prefix).
    pub fn declared_protocol(&self) -> Option<Protocol> {
        self.protocol
            .or_else(|| Protocol::declared(&self.name, None))
    }
}

/// A service: a stable name and virtual IP in front of a set of workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// Short name (`svcb`).
    pub name: String,
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The virtual IP clients connect to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Labels a workload must carry to back this service.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    crate::rules::DEFAULT_NAMESPACE.to_owned()
}

impl Service {
    /// The service's fully qualified host name in `domain`.
    pub fn host(&self, domain: &str) -> HostName {
        HostName::for_service(&self.name, &self.namespace, domain)
    }

    /// True when `workload` backs this service.
    pub fn selects(&self, workload: &Workload) -> bool {
        workload.namespace == self.namespace
            && !self.selector.is_empty()
            && labels_match(&self.selector, &workload.labels)
    }
}

/// Whether a workload takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Ready for traffic.
    #[default]
    Healthy,
    /// Not ready; gets no new traffic.
    Unhealthy,
    /// Going away; gets no new traffic while in-flight requests finish.
    Draining,
}

/// A workload instance (a pod): where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    /// Instance name (`svcb-v0.2-7d9f-abcde`).
    pub name: String,
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The instance's IP address.
    pub address: IpAddr,
    /// Labels (`app`, `version`, …).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The Kubernetes service account: the workload's identity.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// Health.
    #[serde(default)]
    pub health: Health,
}

fn default_service_account() -> String {
    "default".to_owned()
}

impl Workload {
    /// The workload's SPIFFE identity in `trust_domain`.
    pub fn identity(&self, trust_domain: &str) -> crate::identity::Identity {
        crate::identity::Identity::new(trust_domain, &self.namespace, &self.service_account)
    }
}

/// Everything the mesh knows about what runs where.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Services.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Workload instances.
    #[serde(default)]
    pub workloads: Vec<Workload>,
}

impl Registry {
    /// The workloads backing `service`, in registry order.
    pub fn endpoints<'a>(
        &'a self,
        service: &'a Service,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads.iter().filter(move |w| service.selects(w))
    }

    /// The service a client in `namespace` means by `name` (short,
    /// `name.ns`, or fully qualified), by the cluster resolver's rules.
    pub fn lookup(&self, name: &str, namespace: &str, domain: &str) -> Option<&Service> {
        HostName::candidates(name, namespace, domain)
            .into_iter()
            .find_map(|h| self.services.iter().find(|s| s.host(domain) == h))
    }
}

/// True when every `selector` label is present in `labels` with the same value.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Reads `a.b.c.d/n`, `a.b.c.d` (a /32), or their IPv6 forms.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
        None => {
            let ip = s.parse::<IpAddr>().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_to_the_same_fqdn() {
        let fqdn = HostName::new("svcb.default.svc.cluster.local");
        for name in [
            "svcb",
            "svcb.default",
            "svcb.default.svc",
            "svcb.default.svc.cluster.local",
        ] {
            let c = HostName::candidates(name, "default", DEFAULT_DOMAIN);
            assert!(c.contains(&fqdn), "{name}: {c:?}");
        }
        assert_eq!(
            HostName::candidates("svcb", "other", DEFAULT_DOMAIN)[0].as_str(),
            "svcb.other.svc.cluster.local"
        );
    }

    #[test]
    fn protocol_from_port_name() {
        assert_eq!(Protocol::declared("http-web", None), Some(Protocol::Http));
        assert_eq!(Protocol::declared("grpc", None), Some(Protocol::Grpc));
        assert_eq!(
            Protocol::declared("web", Some("http2")),
            Some(Protocol::Http2)
        );
        assert_eq!(Protocol::declared("web", None), None);
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").map(|c| c.1), Some(8));
        assert_eq!(parse_cidr("10.1.2.3").map(|c| c.1), Some(32));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("x/8").is_none());
    }

    #[test]
    fn selectors() {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_owned(), "svcb".to_owned());
        labels.insert("version".to_owned(), "v0.2".to_owned());
        let w = Workload {
            name: "svcb-1".into(),
            namespace: "default".into(),
            address: "10.1.0.5".parse().unwrap(),
            labels,
            service_account: "default".into(),
            health: Health::Healthy,
        };
        let s = Service {
            name: "svcb".into(),
            namespace: "default".into(),
            vip: None,
            ports: vec![],
            selector: [("app".to_owned(), "svcb".to_owned())].into(),
        };
        assert!(s.selects(&w));
        assert_eq!(
            w.identity("cluster.local").to_string(),
            "spiffe://cluster.local/ns/default/sa/default"
        );
    }
}

/// The label Kubernetes puts the region of a node (and so its pods) under.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// The label of a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Where a workload runs, from its labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    /// Region.
    pub region: Option<String>,
    /// Zone within the region.
    pub zone: Option<String>,
}

impl Locality {
    /// The locality `labels` name.
    pub fn of(labels: &BTreeMap<String, String>) -> Locality {
        Locality {
            region: labels.get(REGION_LABEL).cloned(),
            zone: labels.get(ZONE_LABEL).cloned(),
        }
    }

    /// Whether it names anything.
    pub fn is_known(&self) -> bool {
        self.region.is_some() || self.zone.is_some()
    }

    /// How far `other` is from here: 0 the same zone, 1 the same region,
    /// 2 elsewhere (or unknown), the failover order.
    pub fn distance(&self, other: &Locality) -> u32 {
        match (self.region == other.region, self.zone == other.zone) {
            _ if self.region.is_none() || other.region.is_none() => 2,
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        }
    }
}
