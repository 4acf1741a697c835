//! `Sidecar` (Istio's `networking.istio.io` kind): which hosts a
//! workload's proxy may call, so pilot sends it those and nothing else.
//! A proxy that calls three services should not hold (nor be pushed) the
//! configuration of a thousand.
//!
//! Which Sidecar covers a workload, as in Istio: one in the workload's
//! namespace whose `workloadSelector` matches its labels, else the one in
//! its namespace without a selector, else the one without a selector in
//! the mesh's root namespace; with none, the proxy gets every host.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::networking::Refused;
use super::security::ROOT_NAMESPACE;
use crate::check::Checker;
use crate::path::FieldPath;
use crate::registry::labels_match;
use crate::{Rule, Spec, names};

/// The apiVersions a Sidecar is written with: Istio's, and the mesh's own.
pub const SIDECAR_API_VERSIONS: [&str; 4] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
    super::MESH_API_VERSION,
];

/// Which hosts the selected workloads' proxies may call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sidecar {
    /// The workloads covered (none: every workload of the namespace, or of
    /// the mesh from the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<SidecarSelector>,
    /// The hosts they may call (one entry; Istio's per-port entries are
    /// refused by name).
    #[serde(default)]
    pub egress: Vec<EgressListener>,
    /// What happens to calls to hosts outside the scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// Refused: inbound listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Refused,
    /// Refused: inbound connection pool settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Refused,
}

/// Labels that pick workloads (Istio's `WorkloadSelector`, field `labels`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarSelector {
    /// Labels a workload must all carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The hosts one outbound listener reaches.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressListener {
    /// `namespace/host`: namespace `*` (any), `.` (the Sidecar's own) or a
    /// name, or `~` (none); host `*`, `*.suffix`, a fully qualified name
    /// or an IP address.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Refused: a listener for one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Refused,
    /// Refused: the address the listener binds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Refused,
    /// Refused: capture mode per listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Refused,
}

/// Calls to hosts the mesh does not know.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// `REGISTRY_ONLY` (refused) or `ALLOW_ANY` (let through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Refused: an egress proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Refused,
}

/// The outbound modes a Sidecar may set.
pub const OUTBOUND_MODES: [&str; 2] = ["REGISTRY_ONLY", "ALLOW_ANY"];

impl Sidecar {
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        if let Some(s) = &self.workload_selector {
            c.labels(&path.key("workloadSelector").key("labels"), &s.labels);
        }
        let egress = path.key("egress");
        if self.egress.is_empty() {
            c.fail_key(
                &egress,
                "a Sidecar needs one `egress` entry listing the `hosts` its workloads call (`./*` for their own namespace, `*/*` for every host)",
            );
        }
        for (i, e) in self.egress.iter().enumerate() {
            let at = egress.index(i);
            if i > 0 {
                c.fail(
                    &at,
                    "only one egress entry is supported (several need `port`, which is not supported yet): list every host in the first",
                );
            }
            if e.hosts.is_empty() {
                c.fail_key(&at.key("hosts"), "an egress entry needs at least one host");
            }
            for (j, h) in e.hosts.iter().enumerate() {
                c.check(&at.key("hosts").index(j), HostScope::parse(h).map(|_| ()));
            }
        }
        if let Some(mode) = self
            .outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode.as_deref())
            && !OUTBOUND_MODES.contains(&mode)
        {
            c.fail(
                &path.key("outboundTrafficPolicy").key("mode"),
                format!("`{mode}` is not an outbound mode: use REGISTRY_ONLY or ALLOW_ANY"),
            );
        }
    }

    /// Whether the covered proxies may call `host` in `host_namespace`
    /// (a service's namespace, or an egress rule's), the Sidecar being in
    /// `own_namespace`. To ask for many hosts, read [`Sidecar::scope`] once.
    pub fn admits(&self, own_namespace: &str, host_namespace: &str, host: &str) -> bool {
        self.scope(own_namespace).admits(host_namespace, host)
    }

    /// The hosts, read once, for asking about many.
    pub fn scope<'a>(&'a self, own_namespace: &'a str) -> Scope<'a> {
        let mut scope = Scope {
            own_namespace,
            exact: std::collections::HashMap::new(),
            wildcards: Vec::new(),
        };
        for entry in self.egress.iter().flat_map(|e| &e.hosts) {
            let Ok(h) = HostScope::parse(entry) else {
                continue;
            };
            if h.host.starts_with('*') {
                scope.wildcards.push(h);
            } else {
                let host = h.host.to_ascii_lowercase();
                scope.exact.entry(host).or_default().push(h.namespace);
            }
        }
        scope
    }

    /// `ALLOW_ANY` → true, `REGISTRY_ONLY` → false, unset → `None`.
    pub fn allow_any(&self) -> Option<bool> {
        let mode = self.outbound_traffic_policy.as_ref()?.mode.as_deref()?;
        Some(mode == "ALLOW_ANY")
    }
}

/// A Sidecar's hosts, read: exact names by name, wildcards in a list.
#[derive(Debug)]
pub struct Scope<'a> {
    own_namespace: &'a str,
    exact: std::collections::HashMap<String, Vec<Namespaces<'a>>>,
    wildcards: Vec<HostScope<'a>>,
}

impl Scope<'_> {
    /// The exact host names in scope when the scope has no wildcard (so a
    /// caller can look those up rather than ask about every host).
    pub fn exact_hosts(&self) -> Option<impl Iterator<Item = &str>> {
        self.wildcards
            .is_empty()
            .then(|| self.exact.keys().map(String::as_str))
    }

    /// Whether `host` in `host_namespace` is in scope.
    pub fn admits(&self, host_namespace: &str, host: &str) -> bool {
        let lower = host.to_ascii_lowercase();
        self.exact.get(&lower).is_some_and(|namespaces| {
            namespaces
                .iter()
                .any(|n| n.admits(self.own_namespace, host_namespace))
        }) || self
            .wildcards
            .iter()
            .any(|w| w.admits(self.own_namespace, host_namespace, &lower))
    }
}

/// One `namespace/host` entry, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostScope<'a> {
    namespace: Namespaces<'a>,
    host: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Namespaces<'a> {
    Any,
    Own,
    None,
    Named(&'a str),
}

impl<'a> Namespaces<'a> {
    fn parse(ns: &'a str) -> Result<Self, crate::error::FieldError> {
        Ok(match ns {
            "*" => Namespaces::Any,
            "." => Namespaces::Own,
            "~" => Namespaces::None,
            n => {
                names::check_dns_label(n)?;
                Namespaces::Named(n)
            }
        })
    }

    fn admits(&self, own_namespace: &str, host_namespace: &str) -> bool {
        match self {
            Namespaces::Any => true,
            Namespaces::Own => host_namespace == own_namespace,
            Namespaces::None => false,
            Namespaces::Named(n) => *n == host_namespace,
        }
    }
}

impl<'a> HostScope<'a> {
    fn parse(entry: &'a str) -> Result<Self, crate::error::FieldError> {
        let bad = |why: &str| {
            crate::error::FieldError::message(format!(
                "`{entry}` is not a host entry: {why}; write `namespace/host` (`./*`, `*/*`, `prod/svcb.prod.svc.cluster.local`, `*/*.example.com`)"
            ))
        };
        let (ns, host) = entry
            .split_once('/')
            .ok_or_else(|| bad("it has no namespace"))?;
        let namespace = Namespaces::parse(ns).map_err(|e| bad(&e.message))?;
        if host != "*" && host.parse::<IpAddr>().is_err() {
            names::check_host_name(host).map_err(|e| bad(&e.message))?;
            if !host.contains('.') {
                return Err(bad(
                    "a host is a fully qualified name (`svcb.default.svc.cluster.local`), a wildcard or an IP address",
                ));
            }
        }
        Ok(HostScope { namespace, host })
    }

    /// A Gateway server's host: the `namespace/` part is optional (any
    /// namespace), and a host may be a single label or a wildcard.
    pub(crate) fn parse_server(entry: &'a str) -> Result<Self, crate::error::FieldError> {
        let bad = |why: &str| {
            crate::error::FieldError::message(format!(
                "`{entry}` is not a host entry: {why}; write `*`, `*.example.com` or `pay.example.com`, optionally after `namespace/` (`*`, `.` or a namespace)"
            ))
        };
        let (namespace, host) = match entry.split_once('/') {
            Some((ns, host)) => (Namespaces::parse(ns).map_err(|e| bad(&e.message))?, host),
            None => (Namespaces::Any, entry),
        };
        if host != "*" && names::check_host_name(host).is_err() {
            return Err(bad("it is not a DNS name"));
        }
        Ok(HostScope { namespace, host })
    }

    /// Whether `host`, bound from `host_namespace`, is covered.
    pub(crate) fn admits_host(
        &self,
        own_namespace: &str,
        host_namespace: &str,
        host: &str,
    ) -> bool {
        self.admits(own_namespace, host_namespace, host)
    }

    fn admits(&self, own_namespace: &str, host_namespace: &str, host: &str) -> bool {
        self.namespace.admits(own_namespace, host_namespace)
            && (self.host == "*"
                || self.host.eq_ignore_ascii_case(host)
                || self.host.strip_prefix('*').is_some_and(|suffix| {
                    host.len() > suffix.len()
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                }))
    }
}

/// The Sidecars of a rule set by namespace and selector label, so that
/// finding a workload's is a few lookups, not a scan of every rule.
#[derive(Debug, Default)]
pub struct SidecarIndex {
    /// Sidecars with a selector, by (namespace, one of its labels), in
    /// rule order.
    selecting: HashMap<(String, String, String), Vec<usize>>,
    /// The first Sidecar without a selector, by namespace.
    namespace_wide: HashMap<String, usize>,
}

impl SidecarIndex {
    /// Indexes the Sidecars of `rules`.
    pub fn of(rules: &[Rule]) -> Self {
        let mut index = SidecarIndex::default();
        for (i, r) in rules.iter().enumerate() {
            let Spec::Sidecar(s) = &r.spec else { continue };
            let ns = r.metadata.namespace();
            // Any one label finds it; a selector without labels selects
            // every workload, like no selector.
            match s
                .workload_selector
                .as_ref()
                .and_then(|w| w.labels.iter().next())
            {
                Some((k, v)) => index
                    .selecting
                    .entry((ns.to_owned(), k.clone(), v.clone()))
                    .or_default()
                    .push(i),
                None => {
                    index.namespace_wide.entry(ns.to_owned()).or_insert(i);
                }
            }
        }
        index
    }

    /// The Sidecar covering a workload of `namespace` with `labels` (see
    /// the module's order), with its place in the `rules` the index was
    /// built of; `None` when the workload may call every host.
    pub fn covering<'a>(
        &self,
        rules: &'a [Rule],
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<(usize, &'a Sidecar)> {
        let sidecar = |i: usize| match &rules.get(i)?.spec {
            Spec::Sidecar(s) => Some((i, &**s)),
            _ => None,
        };
        let selecting = labels
            .iter()
            .filter_map(|(k, v)| {
                self.selecting
                    .get(&(namespace.to_owned(), k.clone(), v.clone()))
            })
            .flatten()
            .copied()
            .filter(|&i| {
                sidecar(i).is_some_and(|(_, s)| {
                    s.workload_selector
                        .as_ref()
                        .is_some_and(|w| labels_match(&w.labels, labels))
                })
            })
            .min();
        selecting
            .or_else(|| self.namespace_wide.get(namespace).copied())
            .or_else(|| self.namespace_wide.get(ROOT_NAMESPACE).copied())
            .and_then(sidecar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(hosts: &[&str]) -> Sidecar {
        Sidecar {
            egress: vec![EgressListener {
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn hosts_admit_by_namespace_and_name() {
        let s = sidecar(&["./*", "prod/svcb.prod.svc.cluster.local", "*/*.example.com"]);
        assert!(s.admits("default", "default", "svca.default.svc.cluster.local"));
        assert!(s.admits("default", "prod", "svcb.prod.svc.cluster.local"));
        assert!(!s.admits("default", "prod", "svcc.prod.svc.cluster.local"));
        assert!(s.admits("default", "egress", "api.example.com"));
        assert!(!s.admits("default", "egress", "example.com"));
        let none = sidecar(&["~/*"]);
        assert!(!none.admits("default", "default", "svca.default.svc.cluster.local"));
        let ip = sidecar(&["./10.0.0.7"]);
        assert!(ip.admits("default", "default", "10.0.0.7"));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in ["svcb", "default/svcb", "a.b/*", "./a.*.com", "/x"] {
            assert!(HostScope::parse(bad).is_err(), "{bad}");
        }
        for good in [
            "*/*",
            "./*",
            "~/*",
            "prod/*.prod.svc.cluster.local",
            "./10.1.2.3",
        ] {
            assert!(HostScope::parse(good).is_ok(), "{good}");
        }
    }
}
