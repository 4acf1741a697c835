//! The HTTP filters a rule configures per route (`typed_per_filter_config`)
//! and the chain of an HTTP connection manager: CORS (answers preflights,
//! so first), local rate limit, faults, then the router, the order
//! mesh-proxy applies them in.

use mesh_proto::envoy::config::core::v3 as xcore;
use mesh_proto::envoy::extensions::filters::http::router::v3::Router;
use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_proto::envoy::r#type::matcher::v3 as xmatch;
use mesh_proto::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use mesh_proto::google::protobuf::{Any, BoolValue};
use mesh_rules::rules::{RateLimit, RouteRule};

use super::build::{any, duration};

/// The fault filter's name, which routes use in `typed_per_filter_config`.
const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// The CORS filter's name, likewise.
const CORS_FILTER: &str = "envoy.filters.http.cors";
/// The local rate limit filter's name, likewise.
const RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";

/// The filters routes configure, in chain order.
pub const ROUTE_FILTERS: [&str; 3] = [CORS_FILTER, RATE_LIMIT_FILTER, FAULT_FILTER];

/// A route's filter configs for what `rule` asks.
pub fn of_rule(rule: &RouteRule) -> std::collections::HashMap<String, Any> {
    let configs = [
        (CORS_FILTER, rule.cors_policy.as_ref().map(cors)),
        (RATE_LIMIT_FILTER, rule.rate_limit.as_ref().map(rate_limit)),
        (FAULT_FILTER, rule.http_fault.as_ref().map(fault)),
    ];
    super::stable_map(
        configs
            .into_iter()
            .filter_map(|(name, config)| Some((name.to_owned(), config?))),
    )
}

/// A route's filter configs for a destination's own inbound route.
pub fn inbound(limit: Option<&RateLimit>) -> std::collections::HashMap<String, Any> {
    super::stable_map(limit.map(|l| (RATE_LIMIT_FILTER.to_owned(), rate_limit(l))))
}

/// The HTTP filters of a connection manager whose routes configure
/// `used`, in chain order, then the router. Each enabled filter's own
/// config does nothing: routes carry the settings.
pub fn chain(used: &[&str]) -> Vec<hcm::HttpFilter> {
    use mesh_proto::envoy::extensions::filters::http::cors::v3::Cors;
    use mesh_proto::envoy::extensions::filters::http::fault::v3::HttpFault;
    use mesh_proto::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    let filter = |name: &str, config: Any| hcm::HttpFilter {
        name: name.to_owned(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    let mut out: Vec<hcm::HttpFilter> = ROUTE_FILTERS
        .iter()
        .filter(|f| used.contains(f))
        .map(|&f| match f {
            CORS_FILTER => filter(f, any(&Cors::default())),
            RATE_LIMIT_FILTER => filter(
                f,
                any(&LocalRateLimit {
                    stat_prefix: STAT_PREFIX.into(),
                    ..Default::default()
                }),
            ),
            _ => filter(f, any(&HttpFault::default())),
        })
        .collect();
    out.push(filter("envoy.filters.http.router", any(&Router::default())));
    out
}

/// Envoy's usual stat prefix of the local rate limit filter.
const STAT_PREFIX: &str = "http_local_rate_limiter";

/// A rate limit as Envoy's local rate limit for one route: its token
/// bucket enabled and enforced for every request, `retry-after` (whole
/// seconds of the period, at least 1) on the 429.
fn rate_limit(r: &RateLimit) -> Any {
    use mesh_proto::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use mesh_proto::envoy::r#type::v3::TokenBucket;
    use mesh_proto::google::protobuf::UInt32Value;
    let every = || {
        Some(xcore::RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: DenominatorType::Hundred as i32,
            }),
            ..Default::default()
        })
    };
    let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    let retry_after = r.period().as_secs_f64().ceil().max(1.0) as u64;
    any(&LocalRateLimit {
        stat_prefix: STAT_PREFIX.into(),
        token_bucket: Some(TokenBucket {
            max_tokens: count(r.bucket()),
            tokens_per_fill: Some(UInt32Value {
                value: count(r.requests),
            }),
            fill_interval: Some(duration(r.period())),
        }),
        filter_enabled: every(),
        filter_enforced: every(),
        response_headers_to_add: vec![xcore::HeaderValueOption {
            header: Some(xcore::HeaderValue {
                key: "retry-after".into(),
                value: retry_after.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// A rule's `corsPolicy` as Envoy's CORS policy for its route (`*` as an
/// origin: any).
fn cors(p: &mesh_rules::rules::CorsPolicy) -> Any {
    use mesh_proto::envoy::extensions::filters::http::cors::v3::CorsPolicy;
    let origin = |o: &String| xmatch::StringMatcher {
        match_pattern: Some(if o == "*" {
            xmatch::string_matcher::MatchPattern::SafeRegex(xmatch::RegexMatcher {
                regex: ".*".into(),
                ..Default::default()
            })
        } else {
            xmatch::string_matcher::MatchPattern::Exact(o.clone())
        }),
        ..Default::default()
    };
    any(&CorsPolicy {
        allow_origin_string_match: p.allow_origin.iter().map(origin).collect(),
        allow_methods: p.allow_methods.join(","),
        allow_headers: p.allow_headers.join(","),
        expose_headers: p.expose_headers.join(","),
        max_age: p
            .max_age
            .as_ref()
            .map(|d| d.get().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: p.allow_credentials.map(|value| BoolValue { value }),
        ..Default::default()
    })
}

/// A rule's `httpFault` as Envoy's fault filter config for its route.
fn fault(f: &mesh_rules::rules::HttpFaultInjection) -> Any {
    use mesh_proto::envoy::extensions::filters::common::fault::v3 as common;
    use mesh_proto::envoy::extensions::filters::http::fault::v3 as fault;
    // Percent (0-100, fractions allowed; unset: every request) in millionths.
    let share = |percent: Option<f64>| FractionalPercent {
        numerator: (percent.unwrap_or(100.0).clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    };
    any(&fault::HttpFault {
        delay: f.delay.as_ref().map(|d| common::FaultDelay {
            percentage: Some(share(d.percent)),
            fault_delay_secifier: d
                .fixed_delay
                .as_ref()
                .map(|t| common::fault_delay::FaultDelaySecifier::FixedDelay(duration(t.get()))),
        }),
        abort: f.abort.as_ref().map(|a| fault::FaultAbort {
            percentage: Some(share(a.percent)),
            error_type: a
                .http_status
                .map(|s| fault::fault_abort::ErrorType::HttpStatus(s.clamp(200, 599) as u32)),
            ..Default::default()
        }),
        ..Default::default()
    })
}
