//! Today's Istio kinds (`networking.istio.io/v1`): `VirtualService`,
//! `DestinationRule` and `ServiceEntry`, accepted beside the 0.4 kinds and
//! translated into them ([`crate::convert`]), so one translator serves
//! both. Fields the 0.4 model cannot express are read and refused by name
//! (`crate::support`), never dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::check::Checker;
use crate::duration::Duration;
use crate::path::FieldPath;

/// Istio's networking API versions, oldest last.
pub const NETWORKING_API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// A field read so it can be refused by name.
pub type Refused = Option<Value>;

/// How calls to `hosts` are routed: the first `http` entry whose `match`
/// holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualService {
    /// The services it routes (short names, `name.namespace`, or FQDNs).
    pub hosts: Vec<String>,
    /// Where it applies: `mesh` (the sidecars; the default) and Gateways
    /// (`name`, or `namespace/name`), whose proxies route by `hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// HTTP routes, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// Refused: TLS routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Refused,
    /// Refused: TCP routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Refused,
    /// Refused: visibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_to: Refused,
}

/// One HTTP route of a VirtualService.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    /// Names the route (and the rules it becomes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of these (none: every request).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
    /// Answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Rewrite before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Request timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Fault injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Copy requests to this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    /// CORS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Header changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    /// Refused: share of requests mirrored (every one is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Refused,
    /// Refused: several mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirrors: Refused,
    /// Refused: delegation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Refused,
    /// Refused: direct responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Refused,
}

/// A string condition: exactly one of `exact`, `prefix`, `regex`.
pub type StringMatch = super::StringMatch;

/// One match of an HTTP route: all its conditions hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    /// The path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Request headers (lowercase names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Labels of the calling workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Refused: the rest of Istio's match conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub scheme: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub authority: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub port: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub query_params: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub ignore_uri_case: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub without_headers: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub source_namespace: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub gateways: Refused,
}

/// A service (and subset) to send to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    /// The service.
    pub host: String,
    /// A subset a DestinationRule names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Refused: a port of the service (every port is routed alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Refused,
}

/// A weighted destination.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    /// Where.
    pub destination: Destination,
    /// Share (percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Refused: per-destination header changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Refused,
}

/// A redirect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redirect {
    /// New path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// New authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// The status: only 301 (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub scheme: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub port: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub derive_port: Refused,
}

/// A rewrite.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rewrite {
    /// Replacement of the matched path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// New authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Refused: regex rewrites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Refused,
}

/// Retries.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    /// Tries after the first.
    pub attempts: i64,
    /// Timeout of each try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Refused: conditions (the mesh retries 5xx, connect failures and resets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub retry_remote_localities: Refused,
}

/// A percentage (`value`, 0 to 100).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// The percentage.
    pub value: f64,
}

/// Fault injection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    /// Delay a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests with a status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A delay.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    /// Which share (every request when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// The deprecated whole-number share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// Refused: exponential delays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Refused,
}

/// An abort.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    /// The status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i64>,
    /// Which share (every request when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub grpc_status: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub http2_error: Refused,
}

/// CORS.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Allowed origins: `exact` ones (`regex: ".*"` is any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// The deprecated list of exact origins.
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
    /// How long a preflight answer is cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Whether credentials are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub unmatched_preflights: Refused,
}

/// Header changes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Headers {
    /// On the forwarded request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    /// Refused: on the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Refused,
}

/// Header operations: only `add` is supported.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderOperations {
    /// Headers appended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub set: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub remove: Refused,
}

/// Named versions of a service (`subsets`) and how calls to it are
/// balanced and protected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRule {
    /// The service.
    pub host: String,
    /// For every call to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Versions by labels, each with its own policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub export_to: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub workload_selector: Refused,
}

/// A version of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    /// Its name, as routes name it.
    pub name: String,
    /// The labels of its workloads.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its policy, over the service's field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Balancing, connection limits and outlier detection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub tls: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub port_level_settings: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub tunnel: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub proxy_protocol: Refused,
}

/// Balancing: `simple` only.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    /// `ROUND_ROBIN`, `LEAST_REQUEST` (or `LEAST_CONN`), `RANDOM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<String>,
    /// Session affinity by a header or the caller's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub locality_lb_setting: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub warmup_duration_secs: Refused,
}

/// Session affinity: the key of the endpoint a call goes to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHashLb {
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// The caller's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// A cookie (made by the proxy when absent and `ttl` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<super::HttpCookie>,
    /// Refused: a query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Refused,
    /// Refused: ring settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Refused,
    /// Refused: Maglev.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Refused,
    /// Refused: the ring's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Refused,
}

/// Connection limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    /// TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    /// HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

/// TCP limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    /// Connections to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub connect_timeout: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub tcp_keepalive: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub max_connection_duration: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub idle_timeout: Refused,
}

/// HTTP limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    /// Requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i64>,
    /// Requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i64>,
    /// Requests per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i64>,
    /// Retries in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub idle_timeout: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub h2_upgrade_policy: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub use_client_protocol: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub max_concurrent_streams: Refused,
}

/// Outlier detection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// 5xx answers in a row that eject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<i64>,
    /// The deprecated name of the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i64>,
    /// How often ejected endpoints are looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Ejection time per ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Percent of endpoints that may be out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub consecutive_gateway_errors: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub consecutive_local_origin_failures: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub split_external_local_origin_errors: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub min_health_percent: Refused,
}

/// A service outside the mesh that callers may reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntry {
    /// Its host names.
    pub hosts: Vec<String>,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` (the default) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `NONE` or `DNS`: the caller resolves the name, the proxy lets the
    /// call through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub addresses: Refused,
    /// With `resolution: STATIC`, where calls go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub workload_selector: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub export_to: Refused,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub subject_alt_names: Refused,
}

/// An endpoint of a ServiceEntry: an address only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// Its IP address.
    pub address: String,
    /// Refused: per-endpoint ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Refused,
    /// Refused: labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Refused,
    /// Refused: network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Refused,
    /// Refused: locality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Refused,
    /// Refused: weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Refused,
    /// Refused: identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Refused,
}

/// A port of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// The number.
    pub number: i64,
    /// `HTTP`, `HTTP2`, `GRPC`, `TCP`, `HTTPS`, `TLS`, …
    pub protocol: String,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub target_port: Refused,
}

impl VirtualService {
    /// Whether it routes the sidecars' calls (`gateways` empty or naming
    /// `mesh`).
    pub fn at_mesh(&self) -> bool {
        self.gateways.is_empty()
            || self
                .gateways
                .iter()
                .any(|g| g == super::ingress::MESH_GATEWAY)
    }

    /// The Gateways it is bound to (namespace, name), for a rule in
    /// `rule_namespace`.
    pub fn bound_gateways(&self, rule_namespace: &str) -> Vec<(String, String)> {
        self.gateways
            .iter()
            .filter(|g| *g != super::ingress::MESH_GATEWAY)
            .map(|g| super::ingress::gateway_ref(g, rule_namespace))
            .collect()
    }

    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        if self.hosts.is_empty() {
            c.fail_key(&path.key("hosts"), "at least one host is required");
        }
        for (i, g) in self.gateways.iter().enumerate() {
            let at = path.key("gateways").index(i);
            let (ns, name) = super::ingress::gateway_ref(g, "default");
            if g.contains('/') {
                c.check(&at, crate::names::check_dns_label(&ns));
            }
            c.check(&at, crate::names::check_dns_subdomain(&name));
        }
        for (i, h) in self.http.iter().enumerate() {
            let at = path.key("http").index(i);
            let weights: Vec<i64> = h.route.iter().filter_map(|r| r.weight).collect();
            if h.route.len() > 1 && weights.iter().sum::<i64>() != 100 {
                c.fail(
                    &at.key("route"),
                    format!(
                        "weights sum to {}; with several destinations they must sum to 100",
                        weights.iter().sum::<i64>()
                    ),
                );
            }
            if h.route.is_empty() && h.redirect.is_none() {
                c.fail_key(&at, "a route needs `route` or `redirect`");
            }
            for (j, m) in h.matches.iter().enumerate() {
                c.labels(
                    &at.key("match").index(j).key("sourceLabels"),
                    &m.source_labels,
                );
            }
        }
    }
}

impl DestinationRule {
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        for (i, s) in self.subsets.iter().enumerate() {
            let at = path.key("subsets").index(i);
            c.check(&at.key("name"), crate::names::check_dns_label(&s.name));
            c.labels(&at.key("labels"), &s.labels);
            if self.subsets[..i].iter().any(|o| o.name == s.name) {
                c.fail(
                    &at.key("name"),
                    format!("subset `{}` is named twice", s.name),
                );
            }
        }
    }
}

impl ServiceEntry {
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        if self.hosts.is_empty() {
            c.fail_key(&path.key("hosts"), "at least one host is required");
        }
        for (i, p) in self.ports.iter().enumerate() {
            let at = path.key("ports").index(i);
            c.range(&at.key("number"), "port", p.number, 1, 65535);
        }
    }
}
