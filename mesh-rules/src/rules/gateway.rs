//! Gateway API's `HTTPRoute` (`gateway.networking.k8s.io/v1`) for mesh
//! routing (GAMMA: a parent that is a Service), translated into RouteRules
//! ([`crate::convert`]). What the 0.4 model cannot express is read and
//! refused by name (`crate::support`).

use serde::{Deserialize, Serialize};

use super::networking::Refused;
use crate::check::Checker;
use crate::duration::Duration;
use crate::path::FieldPath;

/// Gateway API's versions of HTTPRoute.
pub const GATEWAY_API_VERSIONS: [&str; 2] = [
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1beta1",
];

/// Routes for calls to the Services it names as parents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    /// The Services whose calls it routes.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// The rules; the most specific match wins.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
    /// Refused: host names (a gateway's concern).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostnames: Refused,
}

/// A parent: a Service (GAMMA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// `""` (core) for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` (Gateways are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its name.
    pub name: String,
    /// Its namespace (the route's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Refused: one port only (every port of the Service is routed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Refused,
    /// Refused: a gateway listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Refused,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Names the rule (and the RouteRules it becomes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of these (none: every request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    /// What is done to the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted Services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Refused: retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Refused,
    /// Refused: session persistence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Refused,
}

/// A match: all its conditions hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Refused: query parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_params: Refused,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// `PathPrefix` (the default), `Exact` or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The path (`/` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The header.
    pub name: String,
    /// The value.
    pub value: String,
}

/// A filter.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// Which one.
    #[serde(rename = "type")]
    pub kind: String,
    /// `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// `URLRewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// `RequestMirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    /// Refused: response header changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Refused,
    /// Refused: extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Refused,
    /// Refused: CORS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Refused,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Request header changes: `add` only.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    /// Appended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<NameValue>,
    /// Refused: replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Refused,
    /// Refused: removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Refused,
}

/// A path change.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// The new prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// A redirect.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    /// New host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// New path (`ReplaceFullPath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// The status: only 301 (Gateway API's default, 302, is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i64>,
    /// Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Refused,
    /// Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Refused,
}

/// A rewrite.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    /// New host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// New path prefix (`ReplacePrefixMatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// A mirror.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    /// Where copies go.
    pub backend_ref: BackendRef,
    /// Refused: a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Refused,
    /// Refused: a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Refused,
}

/// A Service to send to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// `""` (core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its name.
    pub name: String,
    /// Its namespace (the route's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its port: the mesh calls the backend on the port the call came to,
    /// so every backend of a rule must give the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Relative weight (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Refused: per-backend filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Refused,
}

/// Timeouts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// Refused: each try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Refused,
}

impl HttpRoute {
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        if self.parent_refs.is_empty() {
            c.fail_key(
                &path.key("parentRefs"),
                "at least one parent (a Service) is required",
            );
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = path.key("rules").index(i);
            let weights: Vec<i64> = r
                .backend_refs
                .iter()
                .map(|b| b.weight.unwrap_or(1))
                .collect();
            for (j, w) in weights.iter().enumerate() {
                let p = at.key("backendRefs").index(j).key("weight");
                c.range(&p, "weight", *w, 0, 1_000_000);
            }
            if !r.backend_refs.is_empty() && weights.iter().sum::<i64>() == 0 {
                c.fail(
                    &at.key("backendRefs"),
                    "weights sum to 0: no backend would be called",
                );
            }
            let redirects = r.filters.iter().any(|f| f.request_redirect.is_some());
            if r.backend_refs.is_empty() && !redirects {
                c.fail_key(&at, "a rule needs backendRefs or a RequestRedirect filter");
            }
            for (j, m) in r.matches.iter().enumerate() {
                let mp = at.key("matches").index(j);
                if let Some(p) = &m.path
                    && p.kind.as_deref() == Some("RegularExpression")
                {
                    c.regex(
                        &mp.key("path").key("value"),
                        p.value.as_deref().unwrap_or(""),
                    );
                }
                for (k, h) in m.headers.iter().enumerate() {
                    if h.kind.as_deref() == Some("RegularExpression") {
                        c.regex(&mp.key("headers").index(k).key("value"), &h.value);
                    }
                }
            }
        }
    }
}
