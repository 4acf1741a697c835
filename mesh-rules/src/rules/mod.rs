//! The rule kinds of Istio 0.4 (`config.istio.io/v1alpha2`), also served
//! under the mesh's own API group with the same schema; and today's Istio
//! kinds ([`networking`]), translated into them.

mod destination_policy;
mod egress_rule;
pub mod gateway;
pub mod ingress;
pub mod networking;
mod rate_limit;
mod route_rule;
pub mod security;
pub mod sidecar;
mod status;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use destination_policy::*;
pub use egress_rule::*;
pub use rate_limit::*;
pub use route_rule::*;
pub use status::*;

use crate::check::Checker;
use crate::names;
use crate::path::FieldPath;

/// Istio 0.4's API group and version, accepted exactly as the seed wrote it.
pub const ISTIO_API_VERSION: &str = "config.istio.io/v1alpha2";
/// The mesh's own API group and version: same kinds, same schema.
pub const MESH_API_VERSION: &str = "config.mesh.dev/v1alpha1";
/// Every apiVersion a 0.4 rule may carry.
pub const API_VERSIONS: [&str; 2] = [ISTIO_API_VERSION, MESH_API_VERSION];

/// The namespace a rule lands in when its metadata names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A kind of rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Kind {
    /// How requests to a service are routed: matches, weighted versions, faults, retries.
    RouteRule,
    /// How a service's endpoints are chosen and protected: load balancing, circuit breaking.
    DestinationPolicy,
    /// Which destinations outside the mesh may be called.
    EgressRule,
    /// Today's Istio routing (`networking.istio.io`).
    VirtualService,
    /// Today's Istio subsets and traffic policy.
    DestinationRule,
    /// Today's Istio external services.
    ServiceEntry,
    /// Gateway API routes for mesh calls (parent: a Service).
    HttpRoute,
    /// How workloads take connections (mutual TLS modes).
    PeerAuthentication,
    /// Who may call workloads, and how.
    AuthorizationPolicy,
    /// Which hosts a workload's proxy may call (its configuration's scope).
    Sidecar,
    /// The ports and hosts an ingress gateway serves.
    Gateway,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 11] = [
        Kind::RouteRule,
        Kind::DestinationPolicy,
        Kind::EgressRule,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::HttpRoute,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::Sidecar,
        Kind::Gateway,
    ];

    /// The apiVersions the kind is written with.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::RouteRule | Kind::DestinationPolicy | Kind::EgressRule => &API_VERSIONS,
            Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry => {
                &networking::NETWORKING_API_VERSIONS
            }
            Kind::HttpRoute => &gateway::GATEWAY_API_VERSIONS,
            Kind::Sidecar => &sidecar::SIDECAR_API_VERSIONS,
            Kind::Gateway => &ingress::INGRESS_API_VERSIONS,
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => {
                &security::SECURITY_API_VERSIONS
            }
        }
    }

    /// The `kind:` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RouteRule => "RouteRule",
            Kind::DestinationPolicy => "DestinationPolicy",
            Kind::EgressRule => "EgressRule",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::HttpRoute => "HTTPRoute",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Sidecar => "Sidecar",
            Kind::Gateway => "Gateway",
        }
    }

    /// The resource's plural name in the Kubernetes API (`routerules`).
    pub fn plural(self) -> String {
        let kind = self.as_str().to_ascii_lowercase();
        // policy → policies, but gateway → gateways.
        match kind.strip_suffix('y') {
            Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{stem}ies"),
            _ => format!("{kind}s"),
        }
    }

    /// The name the CLI prints, as istioctl did (`route-rule`).
    pub fn cli_name(self) -> &'static str {
        match self {
            Kind::RouteRule => "route-rule",
            Kind::DestinationPolicy => "destination-policy",
            Kind::EgressRule => "egress-rule",
            Kind::VirtualService => "virtual-service",
            Kind::DestinationRule => "destination-rule",
            Kind::ServiceEntry => "service-entry",
            Kind::HttpRoute => "http-route",
            Kind::PeerAuthentication => "peer-authentication",
            Kind::AuthorizationPolicy => "authorization-policy",
            Kind::Sidecar => "sidecar",
            Kind::Gateway => "gateway",
        }
    }

    /// Reads a kind as a user types it on the command line: `RouteRule`,
    /// `route-rule`, `routerules`, `route-rules`, … (case-insensitive).
    pub fn from_cli(name: &str) -> Option<Kind> {
        let n: String = name
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        let n = n.strip_suffix('s').unwrap_or(&n);
        let n = n
            .strip_suffix("ie")
            .map(|s| format!("{s}y"))
            .unwrap_or_else(|| n.to_owned());
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().to_ascii_lowercase() == n)
    }

    /// Reads the `kind:` field's exact value.
    pub fn from_manifest(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

/// The metadata a rule carries (a subset of Kubernetes' ObjectMeta).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// The rule's name, unique within its kind and namespace.
    pub name: String,
    /// The namespace; [`DEFAULT_NAMESPACE`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels of the rule object itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the rule object itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The store revision of the rule's last change; a replace that gives it
    /// must match the stored one (optimistic concurrency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

impl Metadata {
    /// The namespace, defaulted.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        c.check(&path.key("name"), names::check_dns_subdomain(&self.name));
        if let Some(ns) = &self.namespace {
            c.check(&path.key("namespace"), names::check_dns_label(ns));
        }
        c.labels(&path.key("labels"), &self.labels);
        if let Some(rv) = &self.resource_version
            && rv.parse::<u64>().is_err()
        {
            c.fail(
                &path.key("resourceVersion"),
                format!("`{rv}` is not a revision: it must be a whole number as printed by `meshctl get`"),
            );
        }
    }
}

/// A service named in a rule (Istio's `IstioService`): by short name and
/// optional namespace/domain, or by fully qualified host (`service`), with
/// optional labels that select a subset of its workloads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioService {
    /// Short service name (`svcb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace; the rule's namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// DNS domain suffix; `cluster.local` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Fully qualified host; for egress rules a host, `*.domain`, IP or CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Labels selecting a subset of the service's workloads.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl IstioService {
    /// Checks names and labels; `need_name` requires `name` or `service`.
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath, need_name: bool) {
        if let Some(n) = &self.name {
            c.check(&path.key("name"), names::check_dns_label(n));
        }
        if let Some(ns) = &self.namespace {
            c.check(&path.key("namespace"), names::check_dns_label(ns));
        }
        if let Some(d) = &self.domain {
            c.check(&path.key("domain"), names::check_host_name(d));
        }
        if need_name && self.name.is_none() && self.service.is_none() {
            c.fail(
                path,
                "a service needs `name` (short name) or `service` (fully qualified host)",
            );
        }
        c.labels(&path.key("labels"), &self.labels);
    }

    /// The service's fully qualified host name, for a rule in `rule_namespace`.
    pub fn host(&self, rule_namespace: &str) -> Option<crate::registry::HostName> {
        if let Some(s) = &self.service {
            return Some(crate::registry::HostName::new(s));
        }
        let name = self.name.as_deref()?;
        let ns = self.namespace.as_deref().unwrap_or(rule_namespace);
        let domain = self
            .domain
            .as_deref()
            .unwrap_or(crate::registry::DEFAULT_DOMAIN);
        Some(crate::registry::HostName::new(&format!(
            "{name}.{ns}.svc.{domain}"
        )))
    }
}

/// The spec of one rule, by kind.
// Each kind boxed: the largest is kilobytes inline, and every copy of a
// rule set (the store's snapshot, each world's list) would pay it per rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A route rule.
    RouteRule(Box<RouteRule>),
    /// A destination policy.
    DestinationPolicy(Box<DestinationPolicy>),
    /// An egress rule.
    EgressRule(Box<EgressRule>),
    /// A VirtualService.
    VirtualService(Box<networking::VirtualService>),
    /// A DestinationRule.
    DestinationRule(Box<networking::DestinationRule>),
    /// A ServiceEntry.
    ServiceEntry(Box<networking::ServiceEntry>),
    /// An HTTPRoute.
    HttpRoute(Box<gateway::HttpRoute>),
    /// A PeerAuthentication.
    PeerAuthentication(Box<security::PeerAuthentication>),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(Box<security::AuthorizationPolicy>),
    /// A Sidecar.
    Sidecar(Box<sidecar::Sidecar>),
    /// A Gateway.
    Gateway(Box<ingress::Gateway>),
}

impl Spec {
    /// The rule's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::RouteRule(_) => Kind::RouteRule,
            Spec::DestinationPolicy(_) => Kind::DestinationPolicy,
            Spec::EgressRule(_) => Kind::EgressRule,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::HttpRoute(_) => Kind::HttpRoute,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Spec::Sidecar(_) => Kind::Sidecar,
            Spec::Gateway(_) => Kind::Gateway,
        }
    }

    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        match self {
            Spec::RouteRule(r) => r.check(c, path),
            Spec::DestinationPolicy(r) => r.check(c, path),
            Spec::EgressRule(r) => r.check(c, path),
            Spec::VirtualService(r) => r.check(c, path),
            Spec::DestinationRule(r) => r.check(c, path),
            Spec::ServiceEntry(r) => r.check(c, path),
            Spec::HttpRoute(r) => r.check(c, path),
            Spec::PeerAuthentication(r) => r.check(c, path),
            Spec::AuthorizationPolicy(r) => r.check(c, path),
            Spec::Sidecar(r) => r.check(c, path),
            Spec::Gateway(r) => r.check(c, path),
        }
    }
}

/// The identity of a rule in a store: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RuleKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for RuleKey {
    /// `route-rule/default/route-rules-svcb`, as istioctl printed it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.kind.cli_name(),
            self.namespace,
            self.name
        )
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The apiVersion it was written with, one of [`API_VERSIONS`]; kept so
    /// that what a user reads back is what they wrote.
    pub api_version: String,
    /// The metadata.
    pub metadata: Metadata,
    /// The spec.
    pub spec: Spec,
}

impl Rule {
    /// The rule's kind.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// The rule's identity.
    pub fn key(&self) -> RuleKey {
        RuleKey {
            kind: self.kind(),
            namespace: self.metadata.namespace().to_owned(),
            name: self.metadata.name.clone(),
        }
    }

    /// The host of the service the rule is about (its `spec.destination`;
    /// the first host of today's kinds).
    pub fn destination_host(&self) -> Option<crate::registry::HostName> {
        let ns = self.metadata.namespace();
        let host = |h: &str| crate::convert::service(h, ns).host(ns);
        match &self.spec {
            Spec::RouteRule(r) => r.destination.host(ns),
            Spec::DestinationPolicy(r) => r.destination.host(ns),
            Spec::EgressRule(r) => r.destination.host(ns),
            Spec::VirtualService(v) => host(v.hosts.first()?),
            Spec::DestinationRule(d) => host(&d.host),
            Spec::ServiceEntry(e) => host(e.hosts.first()?),
            Spec::HttpRoute(r) => {
                crate::convert::parent_service(r.parent_refs.first()?, ns).host(ns)
            }
            Spec::PeerAuthentication(_)
            | Spec::AuthorizationPolicy(_)
            | Spec::Sidecar(_)
            | Spec::Gateway(_) => None,
        }
    }

    /// The rule as a Kubernetes-style object (`apiVersion`, `kind`,
    /// `metadata`, `spec`), ready to print as YAML or JSON.
    pub fn to_value(&self) -> serde_json::Value {
        let spec = match &self.spec {
            Spec::RouteRule(s) => serde_json::to_value(s),
            Spec::DestinationPolicy(s) => serde_json::to_value(s),
            Spec::EgressRule(s) => serde_json::to_value(s),
            Spec::VirtualService(s) => serde_json::to_value(s),
            Spec::DestinationRule(s) => serde_json::to_value(s),
            Spec::ServiceEntry(s) => serde_json::to_value(s),
            Spec::HttpRoute(s) => serde_json::to_value(s),
            Spec::PeerAuthentication(s) => serde_json::to_value(s),
            Spec::AuthorizationPolicy(s) => serde_json::to_value(s),
            Spec::Sidecar(s) => serde_json::to_value(s),
            Spec::Gateway(s) => serde_json::to_value(s),
        }
        .expect("rule specs serialize to JSON");
        serde_json::json!({
            "apiVersion": self.api_version,
            "kind": self.kind().as_str(),
            "metadata": self.metadata,
            "spec": spec,
        })
    }
}
