//! `RouteRule`: how requests to a service are routed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::IstioService;
use crate::check::Checker;
use crate::duration::Duration;
use crate::names;
use crate::path::FieldPath;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Routes requests to `destination`: the rule with the highest `precedence`
/// whose `match` holds picks a backend version from `route` by weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    /// The service whose requests this rule routes.
    pub destination: IstioService,
    /// Higher precedence rules are evaluated first; ties have no defined order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precedence: Option<i64>,
    /// When the rule applies; always when absent.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<MatchCondition>,
    /// Weighted backends, chosen per request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<DestinationWeight>,
    /// Answer with an HTTP redirect instead of routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    /// Rewrite the path or authority before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Allow WebSocket upgrades on this route.
    #[serde(default, skip_serializing_if = "is_false")]
    pub websocket_upgrade: bool,
    /// Request timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_req_timeout: Option<HttpTimeout>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_req_retries: Option<HttpRetry>,
    /// Fault injection for HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_fault: Option<HttpFaultInjection>,
    /// Fault injection for TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4_fault: Option<L4FaultInjection>,
    /// Also send each request, fire-and-forget, to this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<IstioService>,
    /// Cross-origin resource sharing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Headers added to the forwarded request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
    /// A local rate limit on this route, kept by each caller's proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<super::RateLimit>,
    /// Set only by the conversion of a VirtualService bound to Gateways,
    /// never read from a file: the rule routes calls for a host at those
    /// Gateways' proxies, not the sidecars' calls.
    #[serde(skip)]
    pub at_gateways: Option<super::ingress::GatewayRoute>,
}

/// When a route rule applies.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchCondition {
    /// The calling service (and its labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IstioService>,
    /// TCP source/destination subnets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<L4MatchAttributes>,
    /// UDP source/destination subnets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<L4MatchAttributes>,
    /// Request attributes: headers, and the pseudo-header `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<MatchRequest>,
}

/// Layer-4 match on subnets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L4MatchAttributes {
    /// Source subnets (IP or CIDR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_subnet: Vec<String>,
    /// Destination subnets (IP or CIDR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnet: Vec<String>,
}

/// Request match: every named header must match; the key `uri` matches the path.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchRequest {
    /// Header name (lowercase) → how its value must match.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
}

/// Exactly one of `exact`, `prefix` or `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// The whole value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole value matches this RE2 regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// One weighted backend: a version of the destination (by labels) or another service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationWeight {
    /// Another service; the rule's destination when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IstioService>,
    /// Labels selecting the version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Percent of requests, 0..=100; may be omitted when there is one route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

/// An HTTP redirect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replacement path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replacement authority (host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// A rewrite of the forwarded request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replacement for the matched path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replacement authority (host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// Request timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpTimeout {
    /// The timeout policy.
    pub simple_timeout: SimpleTimeoutPolicy,
}

/// A fixed timeout, optionally overridden by a request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SimpleTimeoutPolicy {
    /// The timeout.
    pub timeout: Duration,
    /// A request header that may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_header_name: Option<String>,
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRetry {
    /// The retry policy.
    pub simple_retry: SimpleRetryPolicy,
}

/// Retry a failed request up to `attempts` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SimpleRetryPolicy {
    /// Number of retries.
    pub attempts: i64,
    /// Timeout of each try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// A request header that may override the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_header_name: Option<String>,
}

/// HTTP fault injection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay some requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Fail some requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

/// Delay a percentage of requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delay {
    /// Percent of requests, 0..=100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// A fixed delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    /// An exponentially distributed delay with this mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,
    /// A request header that may override the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_header_name: Option<String>,
}

/// Abort a percentage of requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    /// Percent of requests, 0..=100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Answer with this HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i64>,
    /// Answer with this gRPC status name (e.g. `UNAVAILABLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Answer with this HTTP/2 error name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    /// A request header that may override the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_header_name: Option<String>,
}

/// TCP fault injection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct L4FaultInjection {
    /// Limit bandwidth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// Close connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminate: Option<Terminate>,
}

/// Limit the bandwidth of a percentage of connections.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Throttle {
    /// Percent of connections, 0..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Downstream limit, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_limit_bps: Option<i64>,
    /// Upstream limit, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_limit_bps: Option<i64>,
    /// Start throttling after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_after_period: Option<Duration>,
    /// Start throttling after this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_after_bytes: Option<f64>,
    /// Throttle for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_for_period: Option<Duration>,
}

/// Close a percentage of connections after a while.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Terminate {
    /// Percent of connections, 0..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Close after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminate_after_period: Option<Duration>,
}

/// Cross-origin resource sharing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Allowed origins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    /// Allowed methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long the preflight answer may be cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Whether credentials are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
}

/// gRPC status names accepted by `abort.grpcStatus`.
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

pub(crate) fn check_percent(c: &mut Checker, path: &FieldPath, percent: Option<f64>) {
    if let Some(p) = percent {
        c.range(&path.key("percent"), "percent", p, 0.0, 100.0);
    }
}

fn check_subnet(c: &mut Checker, path: &FieldPath, s: &str) {
    if crate::registry::parse_cidr(s).is_none() {
        c.fail(
            path,
            format!("`{s}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
        );
    }
}

fn check_positive(c: &mut Checker, path: &FieldPath, d: &Duration) {
    if d.get() < std::time::Duration::from_millis(1) {
        c.fail(
            path,
            format!("duration `{d}` is too short: it must be at least 1ms"),
        );
    }
}

fn check_override_header(c: &mut Checker, path: &FieldPath, h: &Option<String>) {
    if let Some(h) = h {
        c.check(&path.key("overrideHeaderName"), names::check_header_name(h));
    }
}

impl RouteRule {
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        self.destination.check(c, &path.key("destination"), true);
        if let Some(m) = &self.match_ {
            m.check(c, &path.key("match"));
        }
        self.check_routes(c, &path.key("route"));
        self.check_redirect_and_rewrite(c, path);
        if let Some(t) = &self.http_req_timeout {
            let p = path.key("httpReqTimeout").key("simpleTimeout");
            check_positive(c, &p.key("timeout"), &t.simple_timeout.timeout);
            check_override_header(c, &p, &t.simple_timeout.override_header_name);
        }
        if let Some(r) = &self.http_req_retries {
            let p = path.key("httpReqRetries").key("simpleRetry");
            c.range(
                &p.key("attempts"),
                "attempts",
                r.simple_retry.attempts,
                0,
                100,
            );
            if let Some(d) = &r.simple_retry.per_try_timeout {
                check_positive(c, &p.key("perTryTimeout"), d);
            }
            check_override_header(c, &p, &r.simple_retry.override_header_name);
        }
        self.check_faults_mirror_cors(c, path);
        if let Some(r) = &self.rate_limit {
            r.check(c, &path.key("rateLimit"));
        }
        for name in self.append_headers.keys() {
            if let Err(e) = names::check_header_name(name) {
                c.fail_key(&path.key("appendHeaders").key(name.clone()), e.message);
            }
        }
    }

    /// Each route's destination, labels and weight; weights sum to 100.
    fn check_routes(&self, c: &mut Checker, route: &FieldPath) {
        for (i, r) in self.route.iter().enumerate() {
            let p = route.index(i);
            if let Some(d) = &r.destination {
                d.check(c, &p.key("destination"), true);
            }
            c.labels(&p.key("labels"), &r.labels);
            match r.weight {
                Some(w) => c.range(&p.key("weight"), "weight", w, 0, 100),
                None if self.route.len() > 1 => c.fail(
                    &p,
                    "weight is missing: every route needs a weight (0 to 100) when a rule has more than one",
                ),
                None => {}
            }
        }
        let weights: Vec<i64> = self.route.iter().filter_map(|r| r.weight).collect();
        let all_given = weights.len() == self.route.len();
        let in_range = weights.iter().all(|w| (0..=100).contains(w));
        if all_given && in_range && !weights.is_empty() {
            let sum: i64 = weights.iter().sum();
            if sum != 100 {
                c.fail(route, format!("weights sum to {sum}; they must sum to 100"));
            }
        }
    }

    fn check_redirect_and_rewrite(&self, c: &mut Checker, path: &FieldPath) {
        if self.redirect.is_some() && !self.route.is_empty() {
            c.fail_key(
                &path.key("redirect"),
                "a rule with `redirect` cannot also have `route`: a redirect answers the request itself",
            );
        }
        if self.redirect.is_some() && self.rewrite.is_some() {
            c.fail_key(
                &path.key("rewrite"),
                "a rule cannot have both `redirect` and `rewrite`",
            );
        }
        if self.redirect.is_some() {
            let forwarding = [
                ("httpReqTimeout", self.http_req_timeout.is_some()),
                ("httpReqRetries", self.http_req_retries.is_some()),
                ("appendHeaders", !self.append_headers.is_empty()),
            ];
            for (field, set) in forwarding {
                if set {
                    c.fail_key(
                        &path.key(field),
                        format!("a rule with `redirect` forwards nothing, so `{field}` would do nothing: drop one of them"),
                    );
                }
            }
        }
        if let Some(r) = &self.redirect
            && r.uri.is_none()
            && r.authority.is_none()
        {
            c.fail(
                &path.key("redirect"),
                "a redirect needs `uri`, `authority` or both",
            );
        }
        if let Some(r) = &self.rewrite
            && r.uri.is_none()
            && r.authority.is_none()
        {
            c.fail(
                &path.key("rewrite"),
                "a rewrite needs `uri`, `authority` or both",
            );
        }
    }

    fn check_faults_mirror_cors(&self, c: &mut Checker, path: &FieldPath) {
        if let Some(f) = &self.http_fault {
            f.check(c, &path.key("httpFault"));
        }
        if let Some(f) = &self.l4_fault {
            let p = path.key("l4Fault");
            if let Some(t) = &f.throttle {
                check_percent(c, &p.key("throttle"), t.percent);
            }
            if let Some(t) = &f.terminate {
                check_percent(c, &p.key("terminate"), t.percent);
            }
        }
        if let Some(m) = &self.mirror {
            m.check(c, &path.key("mirror"), true);
        }
        if let Some(cors) = &self.cors_policy {
            let p = path.key("corsPolicy");
            for (field, list) in [
                ("allowHeaders", &cors.allow_headers),
                ("exposeHeaders", &cors.expose_headers),
            ] {
                for (i, h) in list.iter().enumerate() {
                    c.check(&p.key(field).index(i), names::check_header_name(h));
                }
            }
        }
    }
}

impl MatchCondition {
    fn check(&self, c: &mut Checker, path: &FieldPath) {
        if let Some(s) = &self.source {
            s.check(c, &path.key("source"), true);
        }
        for (field, l4) in [("tcp", &self.tcp), ("udp", &self.udp)] {
            if let Some(l4) = l4 {
                let p = path.key(field);
                for (i, s) in l4.source_subnet.iter().enumerate() {
                    check_subnet(c, &p.key("sourceSubnet").index(i), s);
                }
                for (i, s) in l4.destination_subnet.iter().enumerate() {
                    check_subnet(c, &p.key("destinationSubnet").index(i), s);
                }
            }
        }
        if let Some(r) = &self.request {
            let p = path.key("request").key("headers");
            for (name, m) in &r.headers {
                let hp = p.key(name.clone());
                if let Err(e) = names::check_header_name(name) {
                    c.fail_key(&hp, e.message);
                }
                m.check(c, &hp);
            }
        }
    }
}

impl StringMatch {
    fn check(&self, c: &mut Checker, path: &FieldPath) {
        let set = [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            c.fail(
                path,
                format!(
                    "a string match needs exactly one of `exact`, `prefix` or `regex`; found {set}"
                ),
            );
        }
        if let Some(re) = &self.regex {
            c.regex(&path.key("regex"), re);
        }
    }
}

impl HttpFaultInjection {
    fn check(&self, c: &mut Checker, path: &FieldPath) {
        if let Some(d) = &self.delay {
            let p = path.key("delay");
            check_percent(c, &p, d.percent);
            match (&d.fixed_delay, &d.exponential_delay) {
                (Some(_), Some(_)) | (None, None) => c.fail(
                    &p,
                    "a delay needs exactly one of `fixedDelay` or `exponentialDelay`",
                ),
                (Some(x), None) => check_positive(c, &p.key("fixedDelay"), x),
                (None, Some(x)) => check_positive(c, &p.key("exponentialDelay"), x),
            }
            check_override_header(c, &p, &d.override_header_name);
        }
        if let Some(a) = &self.abort {
            let p = path.key("abort");
            check_percent(c, &p, a.percent);
            let set = [
                a.http_status.is_some(),
                a.grpc_status.is_some(),
                a.http2_error.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                c.fail(
                    &p,
                    "an abort needs exactly one of `httpStatus`, `grpcStatus` or `http2Error`",
                );
            }
            if let Some(s) = a.http_status {
                c.range(&p.key("httpStatus"), "httpStatus", s, 200, 599);
            }
            if let Some(g) = &a.grpc_status
                && !GRPC_STATUS_NAMES.contains(&g.as_str())
            {
                c.fail(
                    &p.key("grpcStatus"),
                    format!(
                        "`{g}` is not a gRPC status: use one of {}",
                        GRPC_STATUS_NAMES.join(", ")
                    ),
                );
            }
            check_override_header(c, &p, &a.override_header_name);
        }
    }
}
