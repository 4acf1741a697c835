//! `DestinationPolicy`: how a service's endpoints are chosen and protected.

use serde::{Deserialize, Serialize};

use super::IstioService;
use crate::check::Checker;
use crate::duration::Duration;
use crate::path::FieldPath;

/// Load balancing and circuit breaking for calls to `destination` (a version
/// of it when `destination.labels` is set), optionally only from `source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationPolicy {
    /// The service (and version, by labels) the policy governs.
    pub destination: IstioService,
    /// Apply only to calls from this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IstioService>,
    /// How an endpoint is picked per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    /// Connection limits and outlier ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// A local rate limit kept by each of the destination's own proxies
    /// on the calls they receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<super::RateLimit>,
    /// Session affinity: calls with the same key go to the same endpoint
    /// while the endpoints stay the same (in place of `loadBalancing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

/// Where the affinity key comes from: exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHash {
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// The caller's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// A cookie, made by the proxy for a caller without one when `ttl`
    /// is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
}

/// An affinity cookie.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HttpCookie {
    /// Its name.
    pub name: String,
    /// Its path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Its lifetime (`0s`: a session cookie); without it the proxy makes
    /// no cookie and calls without one are not hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LoadBalancing {
    /// The algorithm.
    pub name: LoadBalancer,
}

/// Load-balancing algorithms, named as in Istio 0.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum LoadBalancer {
    /// Each endpoint in turn.
    #[serde(rename = "ROUND_ROBIN")]
    RoundRobin,
    /// The less loaded of two random endpoints.
    #[serde(rename = "LEAST_CONN")]
    LeastConn,
    /// A random endpoint.
    #[serde(rename = "RANDOM")]
    Random,
}

/// Circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// The policy.
    pub simple_cb: SimpleCircuitBreakerPolicy,
}

/// Connection-pool limits and outlier detection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SimpleCircuitBreakerPolicy {
    /// Maximum connections to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    /// Maximum requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_pending_requests: Option<i64>,
    /// Maximum requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_requests: Option<i64>,
    /// How long an ejected endpoint stays out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_window: Option<Duration>,
    /// Consecutive 5xx answers that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_consecutive_errors: Option<i64>,
    /// How often endpoints are examined for ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_detection_interval: Option<Duration>,
    /// Requests per connection before it is closed (1 disables keep-alive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_requests_per_connection: Option<i64>,
    /// Percent of endpoints that may be ejected at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_ejection_percent: Option<i64>,
    /// Maximum retries in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_retries: Option<i64>,
}

fn http_header_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
}

impl DestinationPolicy {
    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        self.destination.check(c, &path.key("destination"), true);
        if let Some(s) = &self.source {
            s.check(c, &path.key("source"), true);
        }
        if let Some(r) = &self.rate_limit {
            r.check(c, &path.key("rateLimit"));
        }
        if let Some(h) = &self.consistent_hash {
            let at = path.key("consistentHash");
            let keys = usize::from(h.http_header_name.is_some())
                + usize::from(h.use_source_ip == Some(true))
                + usize::from(h.http_cookie.is_some());
            if keys != 1 {
                let what = "give exactly one of httpHeaderName, httpCookie and useSourceIp: true";
                c.fail_key(&at, what);
            }
            if let Some(k) = &h.http_cookie
                && http_header_name_invalid(&k.name)
            {
                let at = at.key("httpCookie").key("name");
                c.fail(&at, format!("`{}` is not a cookie name", k.name));
            }
            if let Some(name) = &h.http_header_name
                && http_header_name_invalid(name)
            {
                c.fail(
                    &at.key("httpHeaderName"),
                    format!("`{name}` is not a header name"),
                );
            }
            if self.load_balancing.is_some() {
                let why = "consistentHash picks the endpoint: it replaces loadBalancing";
                c.fail_key(&path.key("loadBalancing"), why);
            }
        }
        if let Some(cb) = &self.circuit_breaker {
            let p = path.key("circuitBreaker").key("simpleCb");
            let s = &cb.simple_cb;
            for (field, v) in [
                ("maxConnections", s.max_connections),
                ("httpMaxPendingRequests", s.http_max_pending_requests),
                ("httpMaxRequests", s.http_max_requests),
                ("httpConsecutiveErrors", s.http_consecutive_errors),
                (
                    "httpMaxRequestsPerConnection",
                    s.http_max_requests_per_connection,
                ),
                ("httpMaxRetries", s.http_max_retries),
            ] {
                if let Some(v) = v {
                    c.range(&p.key(field), field, v, 1, i64::from(u32::MAX));
                }
            }
            for (field, d) in [
                ("sleepWindow", &s.sleep_window),
                ("httpDetectionInterval", &s.http_detection_interval),
            ] {
                if d.as_ref().is_some_and(|d| d.get().is_zero()) {
                    c.fail(&p.key(field), format!("{field} must be longer than 0"));
                }
            }
            if let Some(v) = s.http_max_ejection_percent {
                c.range(
                    &p.key("httpMaxEjectionPercent"),
                    "httpMaxEjectionPercent",
                    v,
                    0,
                    100,
                );
            }
        }
    }
}
