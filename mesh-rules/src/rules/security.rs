//! Security policies, modelled on Istio's (`security.istio.io`):
//! [`PeerAuthentication`] says how workloads take connections (mutual TLS
//! or plaintext), [`AuthorizationPolicy`] who may call them and how.
//!
//! Scope, as in Istio: a policy in the mesh's root namespace
//! ([`ROOT_NAMESPACE`]) with no selector is mesh-wide, one elsewhere with
//! no selector covers its namespace, one with a selector the workloads
//! whose labels match in its namespace.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::networking::Refused;
use crate::check::Checker;
use crate::path::FieldPath;

/// The apiVersions the security kinds are written with.
pub const SECURITY_API_VERSIONS: [&str; 3] = [
    "security.istio.io/v1",
    "security.istio.io/v1beta1",
    super::MESH_API_VERSION,
];

/// Where mesh-wide policies live (Istio's is `istio-system`).
pub const ROOT_NAMESPACE: &str = "mesh-system";

/// Which workloads of the policy's namespace it covers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// How a workload takes connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the policy above (namespace, then mesh).
    #[default]
    Unset,
    /// Plaintext only; callers do not use TLS.
    Disable,
    /// Mutual TLS or plaintext.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

/// A mode.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerMtls {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// How the selected workloads take connections.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// The workloads covered (none: the namespace, or the mesh from the
    /// root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode on every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Modes of single ports (the workload's port numbers), over `mtls`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u32, PeerMtls>,
}

impl PeerAuthentication {
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        if let Some(s) = &self.selector {
            c.labels(&path.key("selector").key("matchLabels"), &s.match_labels);
        }
        let ports = path.key("portLevelMtls");
        if !self.port_level_mtls.is_empty() && self.selector.is_none() {
            c.fail(
                &ports,
                "port-level modes need a `selector`: ports are a workload's, not a namespace's",
            );
        }
        for port in self.port_level_mtls.keys() {
            if *port == 0 || *port > 65535 {
                c.fail(
                    &ports.key(port.to_string()),
                    format!("{port} is not a port (1-65535)"),
                );
            }
        }
    }
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Requests must match an ALLOW policy (when any selects the workload).
    #[default]
    Allow,
    /// Matching requests are refused (before ALLOW policies are read).
    Deny,
    /// Matching requests are marked in the logs; nothing is refused.
    Audit,
    /// An external authorizer: refused.
    Custom,
}

/// Who may call the selected workloads, and how.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// The workloads covered (none: the namespace, or the mesh from the
    /// root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// ALLOW (default), DENY or AUDIT.
    #[serde(default)]
    pub action: Action,
    /// A request matches the policy when it matches one rule. An ALLOW
    /// policy with no rules matches nothing (so it denies everything).
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
    /// Refused: external authorizers (CUSTOM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Refused,
    /// Refused: Gateway API target references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Refused,
    /// Refused: Gateway API target references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_refs: Refused,
}

/// A rule: it matches when one `from`, one `to` and every `when` match
/// (an empty list matches anything).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Callers.
    #[serde(default)]
    pub from: Vec<From>,
    /// Operations.
    #[serde(default)]
    pub to: Vec<To>,
    /// Further conditions.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// A set of callers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct From {
    /// The callers.
    pub source: Source,
}

/// Callers, by their authenticated identity (mutual TLS). Each list,
/// when given, must match; `not…` lists must not.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// Principals (`cluster.local/ns/default/sa/svca`; `*` wildcards at
    /// either end).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Principals that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// The caller's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Refused: end-user (JWT) principals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_principals: Refused,
    /// Refused: end-user (JWT) principals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_request_principals: Refused,
    /// Refused: caller addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_blocks: Refused,
    /// Refused: caller addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ip_blocks: Refused,
    /// Refused: caller addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_blocks: Refused,
    /// Refused: caller addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_remote_ip_blocks: Refused,
}

/// A set of operations.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct To {
    /// The operations.
    pub operation: Operation,
}

/// Operations; each list, when given, must match; `not…` lists must not.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// Hosts (the Host/:authority header; `*` wildcards at either end).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Ports of the workload, as strings (`"8080"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Paths: exact, `/prefix/*`, `*suffix`, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A condition on a request attribute.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// The attribute: `request.headers[<name>]`, `source.principal`,
    /// `source.namespace`, `destination.port`.
    pub key: String,
    /// Values, one of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values none of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

impl Condition {
    /// The header a `request.headers[name]` condition reads.
    pub fn header(&self) -> Option<&str> {
        self.key
            .strip_prefix("request.headers[")?
            .strip_suffix(']')
            .filter(|h| !h.is_empty())
    }
}

/// The condition keys the mesh evaluates.
pub const CONDITION_KEYS: [&str; 4] = [
    "request.headers[<name>]",
    "source.principal",
    "source.namespace",
    "destination.port",
];

impl AuthorizationPolicy {
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        if let Some(s) = &self.selector {
            c.labels(&path.key("selector").key("matchLabels"), &s.match_labels);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let rpath = path.key("rules").index(i);
            for (j, to) in rule.to.iter().enumerate() {
                let opath = rpath.key("to").index(j).key("operation");
                let op = &to.operation;
                for (key, ports) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                    for (k, p) in ports.iter().enumerate() {
                        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
                            c.fail(
                                &opath.key(key).index(k),
                                format!("`{p}` is not a port (1-65535)"),
                            );
                        }
                    }
                }
                for (key, paths) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                    for (k, p) in paths.iter().enumerate() {
                        if p.len() > 1 && p[1..p.len() - 1].contains('*') {
                            c.fail(
                                &opath.key(key).index(k),
                                format!("`{p}`: `*` may only start or end a path"),
                            );
                        }
                    }
                }
            }
            for (j, w) in rule.when.iter().enumerate() {
                let wpath = rpath.key("when").index(j);
                let known = w.header().is_some()
                    || matches!(
                        w.key.as_str(),
                        "source.principal" | "source.namespace" | "destination.port"
                    );
                if !known {
                    c.fail(
                        &wpath.key("key"),
                        format!(
                            "`{}` is not a condition the mesh evaluates: use one of {}",
                            w.key,
                            CONDITION_KEYS.join(", ")
                        ),
                    );
                }
                if w.values.is_empty() && w.not_values.is_empty() {
                    c.fail(&wpath, "a condition needs `values` or `notValues`");
                }
            }
        }
    }
}
