//! DestinationPolicy → the settings of the outbound clusters it governs:
//! the load-balancing algorithm, circuit-breaker thresholds, outlier
//! detection and requests per connection, as Istio 0.4 mapped them onto
//! Envoy's cluster.

use mesh_proto::envoy::config::cluster::v3::{self as xcluster, Cluster};
use mesh_proto::envoy::config::core::v3 as xcore;
use mesh_proto::envoy::config::route::v3 as xroute;
use mesh_proto::envoy::extensions::upstreams::http::v3 as upstream;
use mesh_proto::google::protobuf::UInt32Value;
use mesh_rules::rules::{DestinationPolicy, LoadBalancer, SimpleCircuitBreakerPolicy};
use prost::Message;

use super::build::{HTTP_PROTOCOL_OPTIONS, any, duration};

/// Applies `p` to one of its destination's clusters.
pub fn apply(c: &mut Cluster, p: &DestinationPolicy) {
    if let Some(lb) = &p.load_balancing {
        use xcluster::cluster::LbPolicy;
        c.lb_policy = match lb.name {
            LoadBalancer::RoundRobin => LbPolicy::RoundRobin,
            // Istio's LEAST_CONN is Envoy's least request.
            LoadBalancer::LeastConn => LbPolicy::LeastRequest,
            LoadBalancer::Random => LbPolicy::Random,
        } as i32;
    }
    if p.consistent_hash.is_some() {
        c.lb_policy = xcluster::cluster::LbPolicy::RingHash as i32;
    }
    if let Some(cb) = &p.circuit_breaker {
        circuit_breaker(c, &cb.simple_cb);
    }
}

/// Whether `p` ejects failing endpoints (outlier detection).
pub fn ejects(p: &DestinationPolicy) -> bool {
    p.circuit_breaker
        .as_ref()
        .is_some_and(|cb| ejecting(&cb.simple_cb))
}

/// Whether a simple circuit breaker sets any of outlier detection.
fn ejecting(s: &SimpleCircuitBreakerPolicy) -> bool {
    s.http_consecutive_errors.is_some()
        || s.http_detection_interval.is_some()
        || s.sleep_window.is_some()
        || s.http_max_ejection_percent.is_some()
}

/// The route hash policy of a consistent-hash policy: the key Envoy hashes
/// to pick the endpoint.
pub fn hash_policy(p: &DestinationPolicy) -> Option<xroute::route_action::HashPolicy> {
    use xroute::route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier,
    };
    let h = p.consistent_hash.as_ref()?;
    let specifier = match (&h.http_header_name, &h.http_cookie) {
        (Some(name), _) => PolicySpecifier::Header(Header {
            header_name: name.to_ascii_lowercase(),
            ..Default::default()
        }),
        (None, Some(c)) => PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            ttl: c.ttl.as_ref().map(|d| super::build::duration(d.get())),
            path: c.path.clone().unwrap_or_default(),
            ..Default::default()
        }),
        (None, None) => {
            PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
        }
    };
    Some(xroute::route_action::HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    })
}

fn count(v: Option<i64>) -> Option<UInt32Value> {
    // mesh-rules checked the range (1..=u32::MAX, or 0..=100).
    v.map(|v| UInt32Value {
        value: u32::try_from(v).unwrap_or(u32::MAX),
    })
}

fn circuit_breaker(c: &mut Cluster, s: &SimpleCircuitBreakerPolicy) {
    let thresholds = xcluster::circuit_breakers::Thresholds {
        max_connections: count(s.max_connections),
        max_pending_requests: count(s.http_max_pending_requests),
        max_requests: count(s.http_max_requests),
        max_retries: count(s.http_max_retries),
        ..Default::default()
    };
    if thresholds != Default::default() {
        c.circuit_breakers = Some(xcluster::CircuitBreakers {
            thresholds: vec![thresholds],
            ..Default::default()
        });
    }
    if ejecting(s) {
        c.outlier_detection = Some(xcluster::OutlierDetection {
            consecutive_5xx: count(s.http_consecutive_errors),
            interval: s
                .http_detection_interval
                .as_ref()
                .map(|d| duration(d.get())),
            base_ejection_time: s.sleep_window.as_ref().map(|d| duration(d.get())),
            max_ejection_percent: count(s.http_max_ejection_percent),
            // Only consecutive errors eject, as the rule says; Envoy's
            // success-rate ejection is on unless turned off.
            enforcing_success_rate: Some(UInt32Value { value: 0 }),
            ..Default::default()
        });
    }
    if let Some(n) = s.http_max_requests_per_connection {
        max_requests_per_connection(c, count(Some(n)));
    }
}

/// Sets the requests a connection carries, in the cluster's HTTP protocol
/// options (kept: HTTP/2 when it has them, else HTTP/1.1 stated).
fn max_requests_per_connection(c: &mut Cluster, n: Option<UInt32Value>) {
    use upstream::http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };
    let mut options = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .and_then(|a| upstream::HttpProtocolOptions::decode(a.value.as_slice()).ok())
        .unwrap_or_else(|| upstream::HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Default::default())),
                },
            )),
            ..Default::default()
        });
    options.common_http_protocol_options = Some(xcore::HttpProtocolOptions {
        max_requests_per_connection: n,
        ..Default::default()
    });
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_owned(), any(&options));
}
