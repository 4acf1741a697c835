//! Assembling the xDS resources of one proxy.

use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh_proto::envoy::config::accesslog::v3 as xaccesslog;
use mesh_proto::envoy::config::cluster::v3::{self as xcluster, Cluster};
use mesh_proto::envoy::config::core::v3 as xcore;
use mesh_proto::envoy::config::endpoint::v3 as xendpoint;
use mesh_proto::envoy::config::listener::v3::{self as xlistener, Listener};
use mesh_proto::envoy::config::route::v3 as xroute;
use mesh_proto::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_proto::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use mesh_proto::envoy::r#type::matcher::v3 as xmatch;
use mesh_proto::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use mesh_rules::registry::{Locality, Protocol, Service, ServicePort, Workload, labels_match};
use mesh_rules::rules::{IstioService, RouteRule, StringMatch};
use prost::{Message, Name};

use super::{
    AccessLogEncoding, OutboundPolicy, Resources, TraceProtocol, TracingConfig,
    outbound_cluster_name, subset_name,
};

/// The key of a cluster's upstream HTTP protocol options.
pub(super) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The upgrade type of WebSocket, as Envoy names it.
const WEBSOCKET: &str = "websocket";

/// Where refused connections go (a cluster without endpoints).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Where ALLOW_ANY lets unknown destinations through.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";

pub(super) fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn socket(ip: &str, port: u16) -> xcore::Address {
    xcore::Address {
        address: Some(xcore::address::Address::SocketAddress(
            xcore::SocketAddress {
                address: ip.to_owned(),
                port_specifier: Some(xcore::socket_address::PortSpecifier::PortValue(u32::from(
                    port,
                ))),
                ..Default::default()
            },
        )),
    }
}

pub(super) fn duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Where proxies get RDS and EDS: the same aggregated stream.
pub(super) fn ads_source() -> xcore::ConfigSource {
    xcore::ConfigSource {
        config_source_specifier: Some(xcore::config_source::ConfigSourceSpecifier::Ads(
            xcore::AggregatedConfigSource {},
        )),
        resource_api_version: xcore::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// A cluster whose endpoints come over EDS (see [`load_assignment`]), so an
/// endpoint change is one ClusterLoadAssignment and does not drain the
/// cluster's connection pools.
fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(xcluster::cluster::ClusterDiscoveryType::Type(
            xcluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(xcluster::cluster::EdsClusterConfig {
            eds_config: Some(ads_source()),
            service_name: String::new(),
        }),
        connect_timeout: Some(duration(std::time::Duration::from_secs(1))),
        ..Default::default()
    }
}

/// A mesh service's cluster metadata: the service as Istio labels it
/// (`filter_metadata.istio.services`), which the standard metrics read and
/// which tells mesh-proxy the endpoints are sidecars that take part in
/// the workload exchange (clusters of outside hosts carry none, so they
/// never get the header).
fn mesh_service_metadata(host: &str) -> xcore::Metadata {
    use mesh_proto::google::protobuf::{ListValue, Struct, Value, value::Kind};
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let structure = |fields: Vec<(&str, Value)>| Struct {
        fields: super::stable_map(fields.into_iter().map(|(k, v)| (k.to_owned(), v))),
    };
    let mut labels = host.split('.');
    let name = labels.next().unwrap_or(host);
    let namespace = labels.next().unwrap_or("default");
    let service = structure(vec![
        ("host", string(host)),
        ("name", string(name)),
        ("namespace", string(namespace)),
    ]);
    let services = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![Value {
                kind: Some(Kind::StructValue(service)),
            }],
        })),
    };
    xcore::Metadata {
        filter_metadata: super::stable_map([(
            "istio".to_owned(),
            structure(vec![("services", services)]),
        )]),
        ..Default::default()
    }
}

fn load_assignment(name: &str, endpoints: &[(String, u16)]) -> xendpoint::ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .map(|(ip, port)| xendpoint::LbEndpoint {
            host_identifier: Some(xendpoint::lb_endpoint::HostIdentifier::Endpoint(
                xendpoint::Endpoint {
                    address: Some(socket(ip, *port)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
        .collect();
    xendpoint::ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![xendpoint::LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// True when the port's upstream speaks HTTP/2 (gRPC needs it end to
/// end: trailers carry its status).
pub(super) fn upstream_http2(protocol: Option<Protocol>) -> bool {
    matches!(protocol, Some(Protocol::Http2 | Protocol::Grpc))
}

/// Makes `c` talk HTTP/2 (prior knowledge) to its endpoints.
fn with_http2(mut c: Cluster) -> Cluster {
    use mesh_proto::envoy::extensions::upstreams::http::v3::{
        self as upstream, http_protocol_options,
    };
    let options = upstream::HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Default::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.into(), any(&options));
    c
}

fn original_dst_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(xcluster::cluster::ClusterDiscoveryType::Type(
            xcluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: xcluster::cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(std::time::Duration::from_secs(1))),
        ..Default::default()
    }
}

fn filter(name: &str, config: Any) -> xlistener::Filter {
    xlistener::Filter {
        name: name.to_owned(),
        config_type: Some(xlistener::filter::ConfigType::TypedConfig(config)),
    }
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> xlistener::Filter {
    filter(
        "envoy.filters.network.tcp_proxy",
        any(&tcp::TcpProxy {
            stat_prefix: stat_prefix.to_owned(),
            cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
                cluster.to_owned(),
            )),
            ..Default::default()
        }),
    )
}

/// The cluster proxies report spans to.
pub const TRACE_CLUSTER: &str = "tracing";

/// Every connection manager's `tracing`: sampled at the mesh's rate, with
/// Envoy's Zipkin or OpenTelemetry tracer when there is a collector. Each
/// call is a span of its own on either side (no shared span context), so a
/// trace reads caller → callee → the callee's calls.
fn tracing(t: &TracingConfig) -> hcm::http_connection_manager::Tracing {
    use mesh_proto::envoy::config::trace::v3::{self as xtrace, zipkin_config};
    use xcore::{grpc_service, http_uri};
    let provider = t.collector.as_ref().map(|(address, protocol)| {
        let (name, config) = match protocol {
            TraceProtocol::Zipkin => (
                "envoy.tracers.zipkin",
                any(&xtrace::ZipkinConfig {
                    collector_cluster: TRACE_CLUSTER.into(),
                    collector_endpoint: "/api/v2/spans".into(),
                    collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson
                        as i32,
                    shared_span_context: Some(BoolValue { value: false }),
                    trace_id_128bit: true,
                    ..Default::default()
                }),
            ),
            TraceProtocol::OtlpGrpc => (
                "envoy.tracers.opentelemetry",
                any(&xtrace::OpenTelemetryConfig {
                    grpc_service: Some(xcore::GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: TRACE_CLUSTER.into(),
                                ..Default::default()
                            },
                        )),
                        timeout: Some(duration(std::time::Duration::from_secs(5))),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            ),
            TraceProtocol::OtlpHttp => (
                "envoy.tracers.opentelemetry",
                any(&xtrace::OpenTelemetryConfig {
                    http_service: Some(xcore::HttpService {
                        http_uri: Some(xcore::HttpUri {
                            uri: format!("http://{address}/v1/traces"),
                            http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(
                                TRACE_CLUSTER.into(),
                            )),
                            timeout: Some(duration(std::time::Duration::from_secs(5))),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            ),
        };
        xtrace::tracing::Http {
            name: name.into(),
            config_type: Some(xtrace::tracing::http::ConfigType::TypedConfig(config)),
        }
    });
    hcm::http_connection_manager::Tracing {
        random_sampling: Some(mesh_proto::envoy::r#type::v3::Percent { value: t.sampling }),
        provider,
        ..Default::default()
    }
}

/// The collector at `host:port` (an address, or a name resolved by DNS);
/// HTTP/2 for OTLP over gRPC.
fn trace_cluster(collector: &str, protocol: TraceProtocol) -> Cluster {
    let default_port = match protocol {
        TraceProtocol::Zipkin => 9411,
        TraceProtocol::OtlpGrpc => 4317,
        TraceProtocol::OtlpHttp => 4318,
    };
    let (host, port) = match collector.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or(default_port)),
        None => (collector, default_port),
    };
    let kind = if host.parse::<IpAddr>().is_ok() {
        xcluster::cluster::DiscoveryType::Static
    } else {
        xcluster::cluster::DiscoveryType::StrictDns
    };
    let c = Cluster {
        name: TRACE_CLUSTER.into(),
        cluster_discovery_type: Some(xcluster::cluster::ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(duration(std::time::Duration::from_secs(1))),
        load_assignment: Some(load_assignment(TRACE_CLUSTER, &[(host.to_owned(), port)])),
        ..Default::default()
    };
    if protocol == TraceProtocol::OtlpGrpc {
        with_http2(c)
    } else {
        c
    }
}

/// The fields of an access log line, as Istio names them in its JSON
/// encoding, and the operators that fill them.
const ACCESS_LOG_FIELDS: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("trace_id", "%TRACE_ID%"),
];

/// Every connection manager's `access_log`: Envoy's stdout logger, JSON
/// with [`ACCESS_LOG_FIELDS`] or a text line of the same operators.
fn access_log(encoding: AccessLogEncoding) -> xaccesslog::AccessLog {
    use mesh_proto::envoy::config::core::v3::{
        DataSource, SubstitutionFormatString, data_source, substitution_format_string,
    };
    use mesh_proto::envoy::extensions::access_loggers::stream::v3::{
        StdoutAccessLog, stdout_access_log,
    };
    use mesh_proto::google::protobuf::{Struct, Value, value};
    let format = match encoding {
        AccessLogEncoding::Json => substitution_format_string::Format::JsonFormat(Struct {
            fields: super::stable_map(ACCESS_LOG_FIELDS.iter().map(|(k, op)| {
                let v = Value {
                    kind: Some(value::Kind::StringValue((*op).to_owned())),
                };
                ((*k).to_owned(), v)
            })),
        }),
        AccessLogEncoding::Text => {
            let ops: Vec<&str> = ACCESS_LOG_FIELDS.iter().map(|(_, op)| *op).collect();
            substitution_format_string::Format::TextFormatSource(DataSource {
                specifier: Some(data_source::Specifier::InlineString(format!(
                    "{}\n",
                    ops.join(" ")
                ))),
                ..Default::default()
            })
        }
    };
    let stdout = StdoutAccessLog {
        access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(format),
                ..Default::default()
            },
        )),
    };
    xaccesslog::AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        config_type: Some(xaccesslog::access_log::ConfigType::TypedConfig(any(
            &stdout,
        ))),
        ..Default::default()
    }
}

/// An HTTP connection manager whose routes are the RDS resource `name`,
/// tracing as `tracing` says, with the HTTP filters its routes configure
/// (`filters`: their names) before the router.
fn http_manager(
    name: &str,
    tracing: &hcm::http_connection_manager::Tracing,
    access_log: &[xaccesslog::AccessLog],
    filters: &[&str],
) -> xlistener::Filter {
    let http_filters = super::filters::chain(filters);
    filter(
        "envoy.filters.network.http_connection_manager",
        any(&hcm::HttpConnectionManager {
            upgrade_configs: vec![hcm::http_connection_manager::UpgradeConfig {
                upgrade_type: WEBSOCKET.into(),
                ..Default::default()
            }],
            stat_prefix: name.to_owned(),
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
                hcm::Rds {
                    config_source: Some(ads_source()),
                    route_config_name: name.to_owned(),
                },
            )),
            http_filters,
            tracing: Some(tracing.clone()),
            access_log: access_log.to_vec(),
            ..Default::default()
        }),
    )
}

/// Marks listeners inbound or outbound: a proxy traces a call it receives
/// (inbound) in its caller's span, and starts a child span for a call it
/// makes (outbound), as Envoy does by `traffic_direction`.
fn set_direction<'a>(
    listeners: impl IntoIterator<Item = &'a mut Listener>,
    direction: xcore::TrafficDirection,
) {
    for l in listeners {
        l.traffic_direction = direction as i32;
    }
}

fn listener(
    name: &str,
    ip: &str,
    port: u16,
    bind: bool,
    original_dst: bool,
    f: xlistener::Filter,
) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(socket(ip, port)),
        filter_chains: vec![xlistener::FilterChain {
            filters: vec![f],
            ..Default::default()
        }],
        bind_to_port: (!bind).then_some(BoolValue { value: false }),
        use_original_dst: original_dst.then_some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// How long a listener waits for the first bytes of a connection on a port
/// whose protocol is not declared before treating it as TCP (server-first
/// protocols send nothing until the server speaks).
pub const PROTOCOL_DETECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// A listener for a port whose protocol is not declared: `http_inspector`
/// looks at the first bytes; HTTP/1.x and HTTP/2 prior knowledge get the
/// HTTP chain, anything else (or silence past the timeout) the TCP chain.
fn sniffing_listener(
    name: &str,
    ip: &str,
    port: u16,
    bind: bool,
    http: xlistener::Filter,
    tcp: xlistener::Filter,
) -> Listener {
    let mut l = listener(name, ip, port, bind, false, tcp);
    l.filter_chains.insert(
        0,
        xlistener::FilterChain {
            filter_chain_match: Some(xlistener::FilterChainMatch {
                application_protocols: vec!["http/1.0".into(), "http/1.1".into(), "h2c".into()],
                ..Default::default()
            }),
            filters: vec![http],
            ..Default::default()
        },
    );
    l.listener_filters = vec![xlistener::ListenerFilter {
        name: "envoy.filters.listener.http_inspector".into(),
        config_type: Some(xlistener::listener_filter::ConfigType::TypedConfig(any(
            &HttpInspector::default(),
        ))),
        ..Default::default()
    }];
    l.listener_filters_timeout = Some(duration(PROTOCOL_DETECTION_TIMEOUT));
    l.continue_on_listener_filters_timeout = true;
    l
}

fn string_match(m: &StringMatch) -> Option<xmatch::StringMatcher> {
    use xmatch::string_matcher::MatchPattern as P;
    let pattern = if let Some(e) = &m.exact {
        P::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        P::Prefix(p.clone())
    } else {
        P::SafeRegex(xmatch::RegexMatcher {
            regex: m.regex.clone()?,
            ..Default::default()
        })
    };
    Some(xmatch::StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

fn route_match(rule: &RouteRule) -> xroute::RouteMatch {
    use xroute::route_match::PathSpecifier;
    let headers = rule
        .match_
        .as_ref()
        .and_then(|m| m.request.as_ref())
        .map(|r| r.headers.clone())
        .unwrap_or_default();
    let mut path = PathSpecifier::Prefix("/".into());
    let mut matchers = Vec::new();
    for (name, m) in &headers {
        if name == "uri" {
            if let Some(e) = &m.exact {
                path = PathSpecifier::Path(e.clone());
            } else if let Some(p) = &m.prefix {
                path = PathSpecifier::Prefix(p.clone());
            } else if let Some(r) = &m.regex {
                path = PathSpecifier::SafeRegex(xmatch::RegexMatcher {
                    regex: r.clone(),
                    ..Default::default()
                });
            }
            continue;
        }
        matchers.push(xroute::HeaderMatcher {
            name: name.clone(),
            header_match_specifier: string_match(m)
                .map(xroute::header_matcher::HeaderMatchSpecifier::StringMatch),
            ..Default::default()
        });
    }
    xroute::RouteMatch {
        path_specifier: Some(path),
        headers: matchers,
        ..Default::default()
    }
}

/// The forwarding part of a rule's route: timeout, retries, rewrite.
fn forward_action(
    rule: &RouteRule,
    specifier: xroute::route_action::ClusterSpecifier,
) -> xroute::RouteAction {
    let mut action = xroute::RouteAction {
        cluster_specifier: Some(specifier),
        ..Default::default()
    };
    // Istio 0.4: a rule's route takes WebSocket upgrades only when it says
    // `websocketUpgrade: true` (routes no rule makes take them).
    if !rule.websocket_upgrade {
        action.upgrade_configs = vec![xroute::route_action::UpgradeConfig {
            upgrade_type: WEBSOCKET.into(),
            enabled: Some(BoolValue { value: false }),
            ..Default::default()
        }];
    }
    if let Some(t) = &rule.http_req_timeout {
        action.timeout = Some(duration(t.simple_timeout.timeout.get()));
    }
    if let Some(r) = &rule.http_req_retries {
        action.retry_policy = Some(xroute::RetryPolicy {
            retry_on: "5xx,connect-failure,reset".into(),
            num_retries: Some(UInt32Value {
                value: r.simple_retry.attempts.clamp(0, 100) as u32,
            }),
            per_try_timeout: r
                .simple_retry
                .per_try_timeout
                .as_ref()
                .map(|d| duration(d.get())),
            ..Default::default()
        });
    }
    if let Some(rw) = &rule.rewrite {
        if let Some(uri) = &rw.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(a) = &rw.authority {
            action.host_rewrite_specifier =
                Some(xroute::route_action::HostRewriteSpecifier::HostRewriteLiteral(a.clone()));
        }
    }
    action
}

/// The routes of one RouteRule for a service port.
/// The cluster for a version (`labels`) of `host`, or for the whole of
/// another service `other` (a rule in namespace `ns` names it; its port
/// with the same number).
fn target_cluster(
    other: Option<&IstioService>,
    labels: &BTreeMap<String, String>,
    ns: &str,
    port: u16,
    host: &str,
) -> String {
    match other.and_then(|o| o.host(ns)) {
        Some(h) if h.as_str() != host => outbound_cluster_name(port, "", h.as_str()),
        _ => outbound_cluster_name(port, &subset_name(labels), host),
    }
}

/// Names the cluster of a route's destination: another service (if any)
/// and a version's labels.
type Target<'a> = &'a dyn Fn(Option<&IstioService>, &BTreeMap<String, String>) -> String;

fn rule_route(rule: &RouteRule, default_cluster: &str, target: Target<'_>) -> xroute::Route {
    use xroute::route_action::ClusterSpecifier;
    let specifier = match rule.route.as_slice() {
        [] => ClusterSpecifier::Cluster(default_cluster.to_owned()),
        routes => ClusterSpecifier::WeightedClusters(xroute::WeightedCluster {
            clusters: routes
                .iter()
                .map(|r| xroute::weighted_cluster::ClusterWeight {
                    name: target(r.destination.as_ref(), &r.labels),
                    weight: Some(UInt32Value {
                        value: r.weight.unwrap_or(100).clamp(0, 100) as u32,
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let mut action = forward_action(rule, specifier);
    // Copies go to a version of the destination (its cluster added by
    // `service_clusters`) or to the whole of another service.
    if let Some(m) = &rule.mirror {
        action.request_mirror_policies = vec![xroute::route_action::RequestMirrorPolicy {
            cluster: target(Some(m), &m.labels),
            ..Default::default()
        }];
    }
    // A redirect answers the request itself (301, as Istio's).
    let action = match &rule.redirect {
        Some(to) => xroute::route::Action::Redirect(xroute::RedirectAction {
            host_redirect: to.authority.clone().unwrap_or_default(),
            path_rewrite_specifier: to
                .uri
                .clone()
                .map(xroute::redirect_action::PathRewriteSpecifier::PathRedirect),
            ..Default::default()
        }),
        None => xroute::route::Action::Route(action),
    };
    xroute::Route {
        r#match: Some(route_match(rule)),
        action: Some(action),
        typed_per_filter_config: super::filters::of_rule(rule),
        request_headers_to_add: rule
            .append_headers
            .iter()
            .map(|(k, v)| xcore::HeaderValueOption {
                header: Some(xcore::HeaderValue {
                    key: k.clone(),
                    value: v.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn default_route(cluster: &str) -> xroute::Route {
    xroute::Route {
        r#match: Some(xroute::RouteMatch {
            path_specifier: Some(xroute::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(xroute::route::Action::Route(xroute::RouteAction {
            cluster_specifier: Some(xroute::route_action::ClusterSpecifier::Cluster(
                cluster.to_owned(),
            )),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Answers 502 with `text` (hosts no service or egress rule names).
fn refuse_route(text: &str) -> xroute::Route {
    xroute::Route {
        r#match: Some(xroute::RouteMatch {
            path_specifier: Some(xroute::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(xroute::route::Action::DirectResponse(
            xroute::DirectResponseAction {
                status: 502,
                body: Some(xcore::DataSource {
                    specifier: Some(xcore::data_source::Specifier::InlineString(text.into())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// How traffic reaches the proxy being translated for.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Redirected by the pod's nat rules.
    Capture,
    /// Explicit: an HTTP proxy listener on `bind:15001`, inbound listeners
    /// bound on `bind`, the app on `app`.
    Explicit { bind: IpAddr, app: IpAddr },
    /// A gateway: listeners bound on its Gateways' ports, routing by host.
    Gateway,
}

/// The explicit proxy's outbound listener port (the capture port's number).
pub const EXPLICIT_PROXY_PORT: u16 = 15001;

/// Collects one part (outbound or inbound) of a proxy's resources while
/// translation walks the inputs; routes and endpoints are their own (RDS,
/// EDS) resources from the start.
pub struct Builder {
    outbound: OutboundPolicy,
    /// Every connection manager's `tracing`.
    tracing: hcm::http_connection_manager::Tracing,
    /// The collector spans go to, if any.
    trace_cluster: Option<Cluster>,
    /// Every connection manager's `access_log`.
    access_log: Vec<xaccesslog::AccessLog>,
    mode: Mode,
    namespace: String,
    http_ports: BTreeMap<u16, Vec<xroute::VirtualHost>>,
    /// A gateway's ports: the port's name, and routes by host in order.
    gateway_ports: BTreeMap<u16, (String, BTreeMap<String, Vec<xroute::Route>>)>,
    listeners: BTreeMap<String, Listener>,
    routes: BTreeMap<String, xroute::RouteConfiguration>,
    clusters: BTreeMap<String, Cluster>,
    endpoints: BTreeMap<String, xendpoint::ClusterLoadAssignment>,
    /// Where the proxy runs.
    locality: Locality,
    /// Where each endpoint (by address) runs.
    localities: BTreeMap<String, Locality>,
}

impl Builder {
    pub fn new(outbound: OutboundPolicy, namespace: &str, mode: Mode) -> Self {
        Builder {
            outbound,
            tracing: tracing(&TracingConfig::default()),
            trace_cluster: None,
            access_log: Vec::new(),
            mode,
            namespace: namespace.to_owned(),
            http_ports: BTreeMap::new(),
            gateway_ports: BTreeMap::new(),
            listeners: BTreeMap::new(),
            routes: BTreeMap::new(),
            clusters: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            locality: Locality::default(),
            localities: BTreeMap::new(),
        }
    }

    /// The proxy runs in `locality` (the failover order of endpoints).
    pub fn with_locality(mut self, locality: Locality) -> Self {
        self.locality = locality;
        self
    }

    /// Splits the endpoints of `clusters` by locality into priorities:
    /// the proxy's zone first, then its region, then the rest (Envoy sends
    /// to the next priority as the ones before lose healthy endpoints).
    /// Nothing changes when the proxy's or the endpoints' localities are
    /// unknown.
    pub fn locality_failover(&mut self, clusters: &std::collections::BTreeSet<String>) {
        use xendpoint::lb_endpoint::HostIdentifier;
        if !self.locality.is_known() {
            return;
        }
        for name in clusters {
            let Some(la) = self.endpoints.get_mut(name) else {
                continue;
            };
            let all: Vec<xendpoint::LbEndpoint> = la
                .endpoints
                .drain(..)
                .flat_map(|g| g.lb_endpoints)
                .collect();
            let mut groups: BTreeMap<(u32, Locality), Vec<xendpoint::LbEndpoint>> = BTreeMap::new();
            for e in all {
                let ip = match &e.host_identifier {
                    Some(HostIdentifier::Endpoint(ep)) => {
                        ep.address.as_ref().and_then(|a| match &a.address {
                            Some(xcore::address::Address::SocketAddress(sa)) => {
                                Some(sa.address.clone())
                            }
                            _ => None,
                        })
                    }
                    _ => None,
                };
                let at = ip
                    .and_then(|ip| self.localities.get(&ip))
                    .cloned()
                    .unwrap_or_default();
                groups
                    .entry((self.locality.distance(&at), at))
                    .or_default()
                    .push(e);
            }
            // Priorities are contiguous from 0 over the distances present.
            let mut ranks: Vec<u32> = groups.keys().map(|(d, _)| *d).collect();
            ranks.dedup();
            la.endpoints = groups
                .into_iter()
                .map(
                    |((distance, at), lb_endpoints)| xendpoint::LocalityLbEndpoints {
                        locality: at.is_known().then(|| xcore::Locality {
                            region: at.region.clone().unwrap_or_default(),
                            zone: at.zone.clone().unwrap_or_default(),
                            ..Default::default()
                        }),
                        lb_endpoints,
                        priority: ranks.iter().position(|r| *r == distance).unwrap_or(0) as u32,
                        ..Default::default()
                    },
                )
                .collect();
        }
    }

    /// HTTP connection managers log each call to stdout, encoded so.
    pub fn with_access_log(mut self, encoding: Option<AccessLogEncoding>) -> Self {
        self.access_log = encoding.map(access_log).into_iter().collect();
        self
    }

    /// HTTP connection managers trace as `t` says; the outbound part
    /// holds the collector's cluster.
    pub fn with_tracing(mut self, t: &TracingConfig) -> Self {
        self.tracing = tracing(t);
        self.trace_cluster = t
            .collector
            .as_ref()
            .map(|(address, protocol)| trace_cluster(address, *protocol));
        self
    }

    /// `host`'s outbound clusters (of version `subset` only, when given).
    pub fn outbound_clusters<'a>(
        &'a mut self,
        host: &str,
        subset: Option<&'a str>,
    ) -> impl Iterator<Item = &'a mut Cluster> {
        let suffix = format!("|{host}");
        self.clusters.iter_mut().filter_map(move |(name, c)| {
            // `outbound|<port>|<subset>|<host>`
            let rest = name.strip_prefix("outbound|")?.strip_suffix(&suffix)?;
            let version = rest.split_once('|').map_or("", |(_, v)| v);
            subset.is_none_or(|s| s == version).then_some(c)
        })
    }

    /// Adds `policy` to every route that sends to one of `clusters` (once).
    pub fn hash_routes(
        &mut self,
        clusters: &std::collections::BTreeSet<String>,
        policy: xroute::route_action::HashPolicy,
    ) {
        use xroute::route_action::ClusterSpecifier;
        let sends = |a: &xroute::RouteAction| match &a.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => clusters.contains(c),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                w.clusters.iter().any(|c| clusters.contains(&c.name))
            }
            _ => false,
        };
        // Port listeners' hosts, still being gathered, and route
        // configurations already made (a VIP's sniffing listener); a
        // gateway's routes.
        let gathered = self.http_ports.values_mut().flatten();
        let made = self
            .routes
            .values_mut()
            .flat_map(|rc| rc.virtual_hosts.iter_mut());
        let at_gateway = self
            .gateway_ports
            .values_mut()
            .flat_map(|(_, hosts)| hosts.values_mut())
            .flatten();
        let routes = gathered
            .chain(made)
            .flat_map(|vh| vh.routes.iter_mut())
            .chain(at_gateway);
        for r in routes {
            if let Some(xroute::route::Action::Route(a)) = &mut r.action
                && sends(a)
                && !a.hash_policy.contains(&policy)
            {
                a.hash_policy.push(policy.clone());
            }
        }
    }

    /// Mutual TLS on the outbound clusters of `host`'s `port` (every
    /// version's), to sidecars that are one of `peers`.
    pub fn secure_service(
        &mut self,
        port: u16,
        host: &str,
        peers: &[String],
        alpn: &[&str],
        source: super::tls::SecretSource,
    ) {
        let (prefix, suffix) = (format!("outbound|{port}|"), format!("|{host}"));
        let socket = super::tls::upstream_socket(peers, alpn, source);
        for (name, c) in self.clusters.iter_mut() {
            if name.starts_with(&prefix) && name.ends_with(&suffix) {
                c.transport_socket = Some(socket.clone());
            }
        }
    }

    /// Names the service whose calls the inbound cluster of `port` takes
    /// (the metrics' `destination_service` on the receiving side).
    pub fn mark_inbound_service(&mut self, port: u16, host: &str) {
        self.mark_mesh_service(&format!("inbound|{port}||"), host);
    }

    /// Marks cluster `name` as reaching mesh service `host`.
    fn mark_mesh_service(&mut self, name: &str, host: &str) {
        if let Some(c) = self.clusters.get_mut(name) {
            c.metadata = Some(mesh_service_metadata(host));
        }
    }

    /// A cluster with its endpoints (EDS); HTTP/2 to them when `http2`.
    fn endpoints_cluster(&mut self, name: &str, endpoints: &[(String, u16)], http2: bool) {
        let c = eds_cluster(name);
        let c = if http2 { with_http2(c) } else { c };
        self.clusters.insert(name.to_owned(), c);
        self.endpoints
            .insert(name.to_owned(), load_assignment(name, endpoints));
    }

    /// An HTTP connection manager for `name` with its routes (RDS `name`).
    fn http(&mut self, name: &str, virtual_hosts: Vec<xroute::VirtualHost>) -> xlistener::Filter {
        let uses = |filter: &str| {
            virtual_hosts
                .iter()
                .flat_map(|vh| &vh.routes)
                .any(|r| r.typed_per_filter_config.contains_key(filter))
        };
        let used: Vec<&str> = super::filters::ROUTE_FILTERS
            .iter()
            .copied()
            .filter(|f| uses(f))
            .collect();
        self.routes.insert(
            name.to_owned(),
            xroute::RouteConfiguration {
                name: name.to_owned(),
                virtual_hosts,
                ..Default::default()
            },
        );
        http_manager(name, &self.tracing, &self.access_log, &used)
    }

    /// The names a client may call `service` by on `port`.
    fn domains(&self, service: &Service, port: u16, host: &str) -> Vec<String> {
        let mut names = Vec::new();
        if service.namespace == self.namespace {
            names.push(service.name.clone());
        }
        names.push(format!("{}.{}", service.name, service.namespace));
        names.push(format!("{}.{}.svc", service.name, service.namespace));
        names.push(host.to_owned());
        if let Some(vip) = service.vip {
            names.push(vip.to_string());
        }
        names
            .iter()
            .flat_map(|n| [n.clone(), format!("{n}:{port}")])
            .collect()
    }

    /// Outbound resources for one port of a service; `protocol` is `None`
    /// when the port declares none (the proxy detects it).
    pub fn service_port(
        &mut self,
        service: &Service,
        port: &ServicePort,
        protocol: Option<Protocol>,
        host: &str,
        endpoints: &[&Workload],
        rules: &[(&RouteRule, &str)],
    ) {
        let default_cluster = outbound_cluster_name(port.port, "", host);
        self.service_clusters(port, protocol, host, endpoints, rules);
        let mut routes: Vec<_> = rules
            .iter()
            .map(|&(rule, ns)| {
                let target = |other: Option<&IstioService>, labels: &BTreeMap<String, String>| {
                    target_cluster(other, labels, ns, port.port, host)
                };
                rule_route(rule, &default_cluster, &target)
            })
            .collect();
        routes.push(default_route(&default_cluster));
        let vhost_name = format!("{host}:{}", port.port);
        match (protocol, service.vip, self.mode) {
            (None, Some(vip), Mode::Capture) => {
                // Undeclared, reached through its VIP: the connection's
                // first bytes choose HTTP routing or a TCP proxy.
                let name = format!("{vip}_{}", port.port);
                let vhost = xroute::VirtualHost {
                    name: vhost_name,
                    // The VIP already names the service.
                    domains: vec!["*".into()],
                    routes,
                    ..Default::default()
                };
                let http = self.http(&name, vec![vhost]);
                let tcp = tcp_proxy(&default_cluster, &default_cluster);
                let l = sniffing_listener(&name, &vip.to_string(), port.port, false, http, tcp);
                self.listeners.insert(name, l);
            }
            // Undeclared without a VIP to tell it apart, or behind an
            // explicit proxy (which speaks HTTP only): HTTP, as Istio 0.4.
            (None, ..) | (Some(Protocol::Http | Protocol::Http2 | Protocol::Grpc), ..) => {
                let domains = self.domains(service, port.port, host);
                self.http_ports
                    .entry(port.port)
                    .or_default()
                    .push(xroute::VirtualHost {
                        name: vhost_name,
                        domains,
                        routes,
                        ..Default::default()
                    });
            }
            // (An explicit proxy has no way to see opaque TCP to a VIP.)
            (Some(Protocol::Tcp | Protocol::Https), Some(vip), Mode::Capture) => {
                let name = format!("{vip}_{}", port.port);
                let tcp = tcp_proxy(&default_cluster, &default_cluster);
                let l = listener(&name, &vip.to_string(), port.port, false, false, tcp);
                self.listeners.insert(name, l);
            }
            (Some(Protocol::Tcp | Protocol::Https), ..) => {}
        }
    }

    /// The service port's clusters: the whole service, and one per subset
    /// a rule routes or mirrors to.
    fn service_clusters(
        &mut self,
        port: &ServicePort,
        protocol: Option<Protocol>,
        host: &str,
        endpoints: &[&Workload],
        rules: &[(&RouteRule, &str)],
    ) {
        let target = port.target_port();
        let http2 = upstream_http2(protocol);
        for w in endpoints {
            let at = Locality::of(&w.labels);
            if at.is_known() {
                self.localities.insert(w.address.to_string(), at);
            }
        }
        let addrs = |ws: &mut dyn Iterator<Item = &&Workload>| {
            ws.map(|w| (w.address.to_string(), target))
                .collect::<Vec<_>>()
        };
        let default_cluster = outbound_cluster_name(port.port, "", host);
        self.endpoints_cluster(&default_cluster, &addrs(&mut endpoints.iter()), http2);
        self.mark_mesh_service(&default_cluster, host);
        for (rule, _) in rules {
            // (A route or mirror to another service has no labels: the
            // version named "" is this service's whole cluster.)
            let versions = rule.route.iter().map(|r| &r.labels);
            for labels in versions.chain(rule.mirror.iter().map(|m| &m.labels)) {
                self.version_cluster(port, protocol, host, endpoints, labels);
            }
        }
    }

    /// The cluster of the version of `host` with `labels` on `port` (its
    /// name).
    pub fn version_cluster(
        &mut self,
        port: &ServicePort,
        protocol: Option<Protocol>,
        host: &str,
        endpoints: &[&Workload],
        labels: &BTreeMap<String, String>,
    ) -> String {
        let target = port.target_port();
        let name = outbound_cluster_name(port.port, &subset_name(labels), host);
        let subset: Vec<(String, u16)> = endpoints
            .iter()
            .filter(|w| labels_match(labels, &w.labels))
            .map(|w| (w.address.to_string(), target))
            .collect();
        self.endpoints_cluster(&name, &subset, upstream_http2(protocol));
        self.mark_mesh_service(&name, host);
        name
    }

    /// A route of a gateway: calls for `host` on the gateway's `port`
    /// (named `port_name`) that `rule` matches go where `target` says.
    pub fn gateway_route(
        &mut self,
        (port, port_name): (u16, &str),
        host: &str,
        rule: &RouteRule,
        target: Target<'_>,
    ) {
        let route = rule_route(rule, BLACKHOLE_CLUSTER, target);
        let (_, hosts) = self
            .gateway_ports
            .entry(port)
            .or_insert_with(|| (port_name.to_owned(), BTreeMap::new()));
        hosts
            .entry(host.to_ascii_lowercase())
            .or_default()
            .push(route);
    }

    /// An empty cluster named `name` (a destination nothing knows: calls
    /// to it fail as calls to a service without endpoints).
    pub fn unknown_cluster(&mut self, name: &str) {
        if !self.clusters.contains_key(name) {
            self.endpoints_cluster(name, &[], false);
        }
    }

    /// Inbound resources for this proxy's own workload on `port`
    /// (`protocol` `None`: undeclared, detected per connection).
    /// `limit`: a rate limit on the calls it receives (DestinationPolicy
    /// `rateLimit`), for HTTP.
    pub fn inbound(
        &mut self,
        ip: IpAddr,
        port: u16,
        protocol: Option<Protocol>,
        limit: Option<&mesh_rules::rules::RateLimit>,
        mtls: (super::tls::MtlsMode, super::tls::SecretSource),
        authz: &super::authz::InboundAuthz,
    ) {
        let cluster = format!("inbound|{port}||");
        let (app, bind) = match self.mode {
            Mode::Capture | Mode::Gateway => ("127.0.0.1".to_owned(), false),
            Mode::Explicit { app, .. } => (app.to_string(), true),
        };
        self.endpoints_cluster(&cluster, &[(app, port)], upstream_http2(protocol));
        let name = format!("{ip}_{port}");
        let tcp = || tcp_proxy(&cluster, &cluster);
        let mut route = default_route(&cluster);
        route.typed_per_filter_config = super::filters::inbound(limit);
        let vhost = xroute::VirtualHost {
            name: "inbound".into(),
            domains: vec!["*".into()],
            routes: vec![route],
            ..Default::default()
        };
        let ip = ip.to_string();
        let l = match protocol {
            Some(p) if p.is_http() => {
                let http = self.http(&name, vec![vhost]);
                listener(&name, &ip, port, bind, false, http)
            }
            Some(_) => listener(&name, &ip, port, bind, false, tcp()),
            None => {
                let http = self.http(&name, vec![vhost]);
                sniffing_listener(&name, &ip, port, bind, http, tcp())
            }
        };
        let mut l = l;
        super::authz::secure_inbound(&mut l, authz);
        super::tls::secure_inbound(&mut l, mtls.0, mtls.1);
        self.listeners.insert(name, l);
    }

    /// An external HTTP host opened by an egress rule: the request goes to
    /// where the app connected (resolved by the app), if its Host matches.
    /// With `endpoints`, calls go there whatever the caller resolved.
    pub fn egress_http(&mut self, host: &str, port: u16, endpoints: &[String]) {
        let cluster = outbound_cluster_name(port, "", host);
        match (self.mode, host.parse::<IpAddr>()) {
            _ if !endpoints.is_empty() => {
                let eps: Vec<(String, u16)> = endpoints.iter().map(|e| (e.clone(), port)).collect();
                self.endpoints_cluster(&cluster, &eps, false)
            }
            (Mode::Capture, _) => {
                self.clusters
                    .insert(cluster.clone(), original_dst_cluster(&cluster));
            }
            // An explicit proxy has no original destination: the rule's
            // address is the destination.
            (Mode::Explicit { .. }, Ok(ip)) => {
                self.endpoints_cluster(&cluster, &[(ip.to_string(), port)], false)
            }
            (Mode::Explicit { .. }, Err(_)) => return, // DNS names need a DNS cluster: not yet.
            // A gateway routes to services by its Gateways' hosts.
            (Mode::Gateway, _) => return,
        }
        self.http_ports
            .entry(port)
            .or_default()
            .push(xroute::VirtualHost {
                name: format!("{host}:{port}"),
                domains: vec![host.to_owned(), format!("{host}:{port}")],
                routes: vec![default_route(&cluster)],
                ..Default::default()
            });
    }

    /// An external TCP destination (an IP) opened by an egress rule.
    pub fn egress_tcp(&mut self, host: &str, port: u16) {
        if host.parse::<IpAddr>().is_err() || !matches!(self.mode, Mode::Capture) {
            return; // DNS names and CIDRs for TCP need filter-chain matching: not yet.
        }
        let cluster = outbound_cluster_name(port, "", host);
        self.clusters
            .insert(cluster.clone(), original_dst_cluster(&cluster));
        let name = format!("{host}_{port}");
        let tcp = tcp_proxy(&cluster, &cluster);
        self.listeners
            .insert(name.clone(), listener(&name, host, port, false, false, tcp));
    }

    /// The inbound part, in a stable order.
    pub fn finish_inbound(mut self) -> Resources {
        set_direction(
            self.listeners.values_mut(),
            xcore::TrafficDirection::Inbound,
        );
        self.resources(Vec::new())
    }

    /// The outbound part, in a stable order: the listeners traffic enters
    /// by (capture listeners, or the explicit proxy listener) first, with
    /// the HTTP listeners of the outbound ports and the shared clusters.
    pub fn finish_outbound(mut self) -> Resources {
        if let Some(c) = self.trace_cluster.clone() {
            self.clusters.insert(c.name.clone(), c);
        }
        match self.mode {
            Mode::Capture => self.finish_capture(),
            Mode::Explicit { bind, .. } => self.finish_explicit(bind),
            Mode::Gateway => self.finish_gateway(),
        }
    }

    fn resources(self, entry: Vec<Listener>) -> Resources {
        Resources {
            listeners: entry
                .into_iter()
                .chain(self.listeners.into_values())
                .collect(),
            routes: self.routes.into_values().collect(),
            clusters: self.clusters.into_values().collect(),
            endpoints: self.endpoints.into_values().collect(),
        }
    }

    /// One HTTP proxy listener on `bind:15001` with every HTTP host of
    /// every port (a host on port 80 also by its bare name, as a client
    /// writes `http://svcb/`).
    fn finish_explicit(mut self, bind: IpAddr) -> Resources {
        let mut vhosts = Vec::new();
        for (port, hosts) in std::mem::take(&mut self.http_ports) {
            for mut vh in hosts {
                let suffix = format!(":{port}");
                vh.domains.retain(|d| d.ends_with(&suffix) || port == 80);
                vhosts.push(vh);
            }
        }
        vhosts.push(xroute::VirtualHost {
            name: "refuse".into(),
            domains: vec!["*".into()],
            routes: vec![refuse_route(
                "mesh: this host is outside the mesh and no egress rule allows it\n",
            )],
            ..Default::default()
        });
        let name = format!("{bind}_{EXPLICIT_PROXY_PORT}");
        let http = self.http(&name, vhosts);
        let entry = listener(
            &name,
            &bind.to_string(),
            EXPLICIT_PROXY_PORT,
            true,
            false,
            http,
        );
        let mut entry = vec![entry];
        set_direction(&mut entry, xcore::TrafficDirection::Outbound);
        set_direction(
            self.listeners.values_mut(),
            xcore::TrafficDirection::Outbound,
        );
        self.resources(entry)
    }

    /// One listener per Gateway port, bound on every address, routing by
    /// host (`http.<port>`, as Istio names a gateway's routes); hosts no
    /// VirtualService binds answer 404, as Envoy's do. The sidecar parts
    /// (outbound listeners and their routes) are dropped: a gateway only
    /// needs the clusters.
    fn finish_gateway(mut self) -> Resources {
        self.http_ports.clear();
        self.listeners.clear();
        self.routes.clear();
        self.endpoints_cluster(BLACKHOLE_CLUSTER, &[], false);
        for (port, (port_name, hosts)) in std::mem::take(&mut self.gateway_ports) {
            let vhosts = hosts
                .into_iter()
                .map(|(host, routes)| xroute::VirtualHost {
                    name: format!("{host}:{port}"),
                    domains: if host == "*" {
                        vec![host]
                    } else {
                        vec![format!("{host}:{port}"), host]
                    },
                    routes,
                    ..Default::default()
                })
                .collect();
            let name = format!("http.{port}");
            let http = self.http(&name, vhosts);
            let mut l = listener(
                &format!("0.0.0.0_{port}"),
                "0.0.0.0",
                port,
                true,
                false,
                http,
            );
            l.filter_chains[0].name = port_name;
            self.listeners.insert(l.name.clone(), l);
        }
        set_direction(
            self.listeners.values_mut(),
            xcore::TrafficDirection::Outbound,
        );
        self.resources(Vec::new())
    }

    fn finish_capture(mut self) -> Resources {
        let fallthrough = match self.outbound {
            OutboundPolicy::RegistryOnly => BLACKHOLE_CLUSTER,
            OutboundPolicy::AllowAny => PASSTHROUGH_CLUSTER,
        };
        for (port, mut vhosts) in std::mem::take(&mut self.http_ports) {
            // Hosts nobody configured on this port: refused or passed through.
            let catch_all = match self.outbound {
                OutboundPolicy::RegistryOnly => refuse_route(
                    "mesh: this host is outside the mesh and no egress rule allows it (outbound traffic policy REGISTRY_ONLY)\n",
                ),
                OutboundPolicy::AllowAny => default_route(PASSTHROUGH_CLUSTER),
            };
            vhosts.push(xroute::VirtualHost {
                name: "allow_any_or_refuse".into(),
                domains: vec!["*".into()],
                routes: vec![catch_all],
                ..Default::default()
            });
            let name = format!("0.0.0.0_{port}");
            let http = self.http(&name, vhosts);
            let l = listener(&name, "0.0.0.0", port, false, false, http);
            self.listeners.insert(name, l);
        }
        let entry = vec![
            listener(
                "virtualOutbound",
                "0.0.0.0",
                15001,
                true,
                true,
                tcp_proxy(fallthrough, fallthrough),
            ),
            listener(
                "virtualInbound",
                "0.0.0.0",
                15006,
                true,
                true,
                tcp_proxy(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER),
            ),
        ];
        self.endpoints_cluster(BLACKHOLE_CLUSTER, &[], false);
        self.clusters.insert(
            PASSTHROUGH_CLUSTER.into(),
            original_dst_cluster(PASSTHROUGH_CLUSTER),
        );
        let mut entry = entry;
        set_direction(&mut entry[..1], xcore::TrafficDirection::Outbound);
        set_direction(&mut entry[1..], xcore::TrafficDirection::Inbound);
        set_direction(
            self.listeners.values_mut(),
            xcore::TrafficDirection::Outbound,
        );
        self.resources(entry)
    }
}
