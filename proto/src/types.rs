//! Which xDS messages the mesh speaks: the four resource types pilot
//! serves and proxies apply ([`XdsType`]), and the typed configs (`"@type"`
//! in an `Any`) mesh-proxy applies ([`TYPED_CONFIGS`]). The descriptor
//! trimmer keeps exactly these (and what they import).

/// An xDS resource type of the aggregated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XdsType {
    /// Clusters (CDS).
    Cluster,
    /// Cluster load assignments: endpoints (EDS).
    Endpoint,
    /// Listeners (LDS).
    Listener,
    /// Route configurations (RDS).
    Route,
}

impl XdsType {
    /// The four types in the order a proxy should apply them (clusters
    /// before the endpoints that fill them, listeners before the routes
    /// they name), the order Envoy's documentation asks a management server
    /// to push in. It is also the types' sort order.
    pub const PUSH_ORDER: [XdsType; 4] = [
        XdsType::Cluster,
        XdsType::Endpoint,
        XdsType::Listener,
        XdsType::Route,
    ];

    /// The type URL on the wire.
    pub const fn type_url(self) -> &'static str {
        match self {
            XdsType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            XdsType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            XdsType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            XdsType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The message's full name (the type URL without its prefix).
    pub fn message_name(self) -> &'static str {
        let url = self.type_url();
        &url[url.find('/').map_or(0, |i| i + 1)..]
    }

    /// The type a type URL names, if it is one of the four.
    pub fn from_type_url(url: &str) -> Option<XdsType> {
        XdsType::PUSH_ORDER
            .into_iter()
            .find(|t| t.type_url() == url)
    }

    /// `CDS`, `EDS`, `LDS` or `RDS`, as status pages and logs name them.
    pub const fn short(self) -> &'static str {
        match self {
            XdsType::Cluster => "CDS",
            XdsType::Endpoint => "EDS",
            XdsType::Listener => "LDS",
            XdsType::Route => "RDS",
        }
    }
}

impl std::fmt::Display for XdsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short())
    }
}

/// Serialized by its short name, so a map keyed by type reads
/// `{"CDS": …, "EDS": …}`.
impl serde::Serialize for XdsType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.short())
    }
}

/// A short name for a type URL in messages: `CDS` for one of the four,
/// else the message's last name part.
pub fn short_type(type_url: &str) -> &str {
    match XdsType::from_type_url(type_url) {
        Some(t) => t.short(),
        None => type_url.rsplit('.').next().unwrap_or(type_url),
    }
}

/// Typed configs (`"@type"`) mesh-proxy applies; any other is refused with
/// its path.
pub const TYPED_CONFIGS: &[&str] = &[
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.config.trace.v3.ZipkinConfig",
    "envoy.config.trace.v3.OpenTelemetryConfig",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.filters.http.rbac.v3.RBAC",
    "envoy.extensions.filters.network.rbac.v3.RBAC",
];

/// Fields mesh-proxy applies, as `message.field` (proto names); any other
/// that is set is refused with its path. mesh-proxy's descriptor pool
/// (`descriptors::Schema::Proxy`) holds the types these fields reach, and
/// names every other field with a stand-in type.
pub const PROXY_FIELDS: &[&str] = &[
    "envoy.config.bootstrap.v3.Bootstrap.admin",
    "envoy.config.bootstrap.v3.Bootstrap.static_resources",
    "envoy.config.bootstrap.v3.Bootstrap.node",
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources.listeners",
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources.clusters",
    "envoy.config.bootstrap.v3.Admin.address",
    "envoy.config.core.v3.Node.id",
    "envoy.config.core.v3.Node.cluster",
    "envoy.config.core.v3.Node.metadata",
    "envoy.config.core.v3.Address.socket_address",
    "envoy.config.core.v3.SocketAddress.address",
    "envoy.config.core.v3.SocketAddress.port_value",
    "envoy.config.core.v3.SocketAddress.ipv4_compat",
    "envoy.config.listener.v3.Listener.name",
    "envoy.config.listener.v3.Listener.address",
    "envoy.config.listener.v3.Listener.filter_chains",
    "envoy.config.listener.v3.Listener.traffic_direction",
    "envoy.config.listener.v3.Listener.use_original_dst",
    "envoy.config.listener.v3.Listener.bind_to_port",
    "envoy.config.listener.v3.Listener.listener_filters",
    "envoy.config.listener.v3.Listener.listener_filters_timeout",
    "envoy.config.listener.v3.Listener.continue_on_listener_filters_timeout",
    "envoy.config.listener.v3.ListenerFilter.name",
    "envoy.config.listener.v3.ListenerFilter.typed_config",
    "envoy.config.listener.v3.FilterChain.filters",
    "envoy.config.listener.v3.FilterChain.name",
    "envoy.config.listener.v3.FilterChain.filter_chain_match",
    "envoy.config.listener.v3.FilterChainMatch.application_protocols",
    "envoy.config.listener.v3.FilterChainMatch.transport_protocol",
    "envoy.config.listener.v3.Filter.name",
    "envoy.config.listener.v3.Filter.typed_config",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.stat_prefix",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.codec_type",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.route_config",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.http_filters",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.rds",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.tracing",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.access_log",
    "envoy.config.accesslog.v3.AccessLog.name",
    "envoy.config.accesslog.v3.AccessLog.typed_config",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog.log_format",
    "envoy.config.core.v3.SubstitutionFormatString.json_format",
    "envoy.config.core.v3.SubstitutionFormatString.text_format_source",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing.random_sampling",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing.provider",
    "envoy.config.trace.v3.Tracing.Http.name",
    "envoy.config.trace.v3.Tracing.Http.typed_config",
    "envoy.config.trace.v3.ZipkinConfig.collector_cluster",
    "envoy.config.trace.v3.ZipkinConfig.collector_endpoint",
    "envoy.config.trace.v3.ZipkinConfig.collector_endpoint_version",
    "envoy.config.trace.v3.ZipkinConfig.shared_span_context",
    "envoy.config.trace.v3.ZipkinConfig.trace_id_128bit",
    "envoy.config.trace.v3.OpenTelemetryConfig.grpc_service",
    "envoy.config.trace.v3.OpenTelemetryConfig.http_service",
    "envoy.config.trace.v3.OpenTelemetryConfig.service_name",
    "envoy.config.core.v3.GrpcService.envoy_grpc",
    "envoy.config.core.v3.GrpcService.timeout",
    "envoy.config.core.v3.GrpcService.EnvoyGrpc.cluster_name",
    "envoy.config.core.v3.HttpService.http_uri",
    "envoy.config.core.v3.HttpUri.uri",
    "envoy.config.core.v3.HttpUri.cluster",
    "envoy.config.core.v3.HttpUri.timeout",
    "envoy.extensions.filters.network.http_connection_manager.v3.Rds.config_source",
    "envoy.extensions.filters.network.http_connection_manager.v3.Rds.route_config_name",
    "envoy.config.core.v3.ConfigSource.ads",
    "envoy.config.cluster.v3.Cluster.transport_socket",
    "envoy.extensions.filters.http.rbac.v3.RBAC.rules",
    "envoy.extensions.filters.network.rbac.v3.RBAC.rules",
    "envoy.extensions.filters.network.rbac.v3.RBAC.stat_prefix",
    "envoy.config.rbac.v3.RBAC.action",
    "envoy.config.rbac.v3.RBAC.policies",
    "envoy.config.rbac.v3.Policy.permissions",
    "envoy.config.rbac.v3.Policy.principals",
    "envoy.config.rbac.v3.Permission.and_rules",
    "envoy.config.rbac.v3.Permission.or_rules",
    "envoy.config.rbac.v3.Permission.any",
    "envoy.config.rbac.v3.Permission.header",
    "envoy.config.rbac.v3.Permission.url_path",
    "envoy.config.rbac.v3.Permission.destination_port",
    "envoy.config.rbac.v3.Permission.not_rule",
    "envoy.config.rbac.v3.Permission.Set.rules",
    "envoy.config.rbac.v3.Principal.and_ids",
    "envoy.config.rbac.v3.Principal.or_ids",
    "envoy.config.rbac.v3.Principal.any",
    "envoy.config.rbac.v3.Principal.authenticated",
    "envoy.config.rbac.v3.Principal.header",
    "envoy.config.rbac.v3.Principal.not_id",
    "envoy.config.rbac.v3.Principal.Set.ids",
    "envoy.config.rbac.v3.Principal.Authenticated.principal_name",
    "envoy.type.matcher.v3.PathMatcher.path",
    "envoy.type.matcher.v3.StringMatcher.ignore_case",
    "envoy.config.listener.v3.FilterChain.transport_socket",
    "envoy.config.core.v3.TransportSocket.name",
    "envoy.config.core.v3.TransportSocket.typed_config",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext.common_tls_context",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext.sni",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext.common_tls_context",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext.require_client_certificate",
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.tls_certificate_sds_secret_configs",
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.validation_context_sds_secret_config",
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.combined_validation_context",
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.alpn_protocols",
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext.default_validation_context",
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext.validation_context_sds_secret_config",
    "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext.match_typed_subject_alt_names",
    "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher.san_type",
    "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher.matcher",
    "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig.name",
    "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig.sds_config",
    "envoy.config.core.v3.ConfigSource.resource_api_version",
    "envoy.config.cluster.v3.Cluster.eds_cluster_config",
    "envoy.config.cluster.v3.Cluster.EdsClusterConfig.eds_config",
    "envoy.config.cluster.v3.Cluster.EdsClusterConfig.service_name",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.generate_request_id",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.request_headers_timeout",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter.name",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter.typed_config",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.stat_prefix",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.cluster",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.weighted_clusters",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.clusters",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight.name",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight.weight",
    "envoy.config.route.v3.RouteConfiguration.name",
    "envoy.config.route.v3.RouteConfiguration.virtual_hosts",
    "envoy.config.route.v3.VirtualHost.name",
    "envoy.config.route.v3.VirtualHost.domains",
    "envoy.config.route.v3.VirtualHost.routes",
    "envoy.config.route.v3.Route.name",
    "envoy.config.route.v3.Route.match",
    "envoy.config.route.v3.Route.route",
    "envoy.config.route.v3.Route.direct_response",
    "envoy.config.route.v3.Route.redirect",
    "envoy.config.route.v3.Route.typed_per_filter_config",
    "envoy.extensions.filters.http.fault.v3.HTTPFault.delay",
    "envoy.extensions.filters.http.fault.v3.HTTPFault.abort",
    "envoy.extensions.filters.http.fault.v3.FaultAbort.http_status",
    "envoy.extensions.filters.http.fault.v3.FaultAbort.percentage",
    "envoy.extensions.filters.common.fault.v3.FaultDelay.fixed_delay",
    "envoy.extensions.filters.common.fault.v3.FaultDelay.percentage",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy.allow_origin_string_match",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy.allow_methods",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy.allow_headers",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy.expose_headers",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy.max_age",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy.allow_credentials",
    "envoy.config.route.v3.RouteAction.request_mirror_policies",
    "envoy.config.route.v3.RouteAction.hash_policy",
    "envoy.config.route.v3.RouteAction.upgrade_configs",
    "envoy.config.route.v3.RouteAction.UpgradeConfig.upgrade_type",
    "envoy.config.route.v3.RouteAction.UpgradeConfig.enabled",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.upgrade_configs",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig.upgrade_type",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig.enabled",
    "envoy.config.route.v3.RouteAction.HashPolicy.header",
    "envoy.config.route.v3.RouteAction.HashPolicy.Header.header_name",
    "envoy.config.route.v3.RouteAction.HashPolicy.connection_properties",
    "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties.source_ip",
    "envoy.config.route.v3.RouteAction.HashPolicy.terminal",
    "envoy.config.route.v3.RouteAction.HashPolicy.cookie",
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie.name",
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie.ttl",
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie.path",
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy.cluster",
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy.runtime_fraction",
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy.disable_shadow_host_suffix_append",
    "envoy.config.core.v3.RuntimeFractionalPercent.default_value",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit.stat_prefix",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit.status",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit.token_bucket",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit.filter_enabled",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit.filter_enforced",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit.response_headers_to_add",
    "envoy.type.v3.TokenBucket.max_tokens",
    "envoy.type.v3.TokenBucket.tokens_per_fill",
    "envoy.type.v3.TokenBucket.fill_interval",
    "envoy.type.v3.HttpStatus.code",
    "envoy.type.v3.FractionalPercent.numerator",
    "envoy.type.v3.FractionalPercent.denominator",
    "envoy.config.route.v3.RedirectAction.host_redirect",
    "envoy.config.route.v3.RedirectAction.path_redirect",
    "envoy.config.route.v3.RedirectAction.response_code",
    "envoy.config.route.v3.Route.request_headers_to_add",
    "envoy.config.route.v3.Route.request_headers_to_remove",
    "envoy.config.route.v3.Route.response_headers_to_add",
    "envoy.config.route.v3.Route.response_headers_to_remove",
    "envoy.config.route.v3.RouteMatch.prefix",
    "envoy.config.route.v3.RouteMatch.path",
    "envoy.config.route.v3.RouteMatch.safe_regex",
    "envoy.config.route.v3.RouteMatch.headers",
    "envoy.config.route.v3.HeaderMatcher.name",
    "envoy.config.route.v3.HeaderMatcher.string_match",
    "envoy.config.route.v3.HeaderMatcher.present_match",
    "envoy.config.route.v3.HeaderMatcher.invert_match",
    "envoy.type.matcher.v3.StringMatcher.exact",
    "envoy.type.matcher.v3.StringMatcher.prefix",
    "envoy.type.matcher.v3.StringMatcher.suffix",
    "envoy.type.matcher.v3.StringMatcher.contains",
    "envoy.type.matcher.v3.StringMatcher.safe_regex",
    "envoy.type.matcher.v3.RegexMatcher.regex",
    "envoy.type.matcher.v3.RegexMatcher.google_re2",
    "envoy.config.route.v3.RouteAction.cluster",
    "envoy.config.route.v3.RouteAction.weighted_clusters",
    "envoy.config.route.v3.RouteAction.timeout",
    "envoy.config.route.v3.RouteAction.prefix_rewrite",
    "envoy.config.route.v3.RouteAction.host_rewrite_literal",
    "envoy.config.route.v3.RouteAction.retry_policy",
    "envoy.config.route.v3.RetryPolicy.retry_on",
    "envoy.config.route.v3.RetryPolicy.num_retries",
    "envoy.config.route.v3.RetryPolicy.per_try_timeout",
    "envoy.config.route.v3.RetryPolicy.retriable_status_codes",
    "envoy.config.route.v3.RetryPolicy.retriable_headers",
    "envoy.config.route.v3.RetryPolicy.retry_back_off",
    "envoy.config.route.v3.RetryPolicy.RetryBackOff.base_interval",
    "envoy.config.route.v3.RetryPolicy.RetryBackOff.max_interval",
    "envoy.config.route.v3.WeightedCluster.clusters",
    "envoy.config.route.v3.WeightedCluster.ClusterWeight.name",
    "envoy.config.route.v3.WeightedCluster.ClusterWeight.weight",
    "envoy.config.route.v3.DirectResponseAction.status",
    "envoy.config.route.v3.DirectResponseAction.body",
    "envoy.config.core.v3.DataSource.inline_string",
    "envoy.config.core.v3.HeaderValueOption.header",
    "envoy.config.core.v3.HeaderValueOption.append_action",
    "envoy.config.core.v3.HeaderValue.key",
    "envoy.config.core.v3.HeaderValue.value",
    "envoy.config.cluster.v3.Cluster.name",
    "envoy.config.cluster.v3.Cluster.type",
    "envoy.config.cluster.v3.Cluster.connect_timeout",
    "envoy.config.cluster.v3.Cluster.lb_policy",
    "envoy.config.cluster.v3.Cluster.load_assignment",
    "envoy.config.cluster.v3.Cluster.typed_extension_protocol_options",
    "envoy.config.cluster.v3.Cluster.circuit_breakers",
    "envoy.config.cluster.v3.CircuitBreakers.thresholds",
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.priority",
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.retry_budget",
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.max_connections",
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.max_pending_requests",
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.max_requests",
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.max_retries",
    "envoy.config.cluster.v3.Cluster.outlier_detection",
    "envoy.config.cluster.v3.Cluster.metadata",
    "envoy.config.core.v3.Metadata.filter_metadata",
    "envoy.config.cluster.v3.OutlierDetection.consecutive_5xx",
    "envoy.config.cluster.v3.OutlierDetection.interval",
    "envoy.config.cluster.v3.OutlierDetection.base_ejection_time",
    "envoy.config.cluster.v3.OutlierDetection.max_ejection_time",
    "envoy.config.cluster.v3.OutlierDetection.max_ejection_percent",
    "envoy.config.cluster.v3.OutlierDetection.enforcing_consecutive_5xx",
    "envoy.config.cluster.v3.OutlierDetection.enforcing_success_rate",
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget.budget_percent",
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget.min_retry_concurrency",
    "envoy.type.v3.Percent.value",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.explicit_http_config",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.common_http_protocol_options",
    "envoy.config.core.v3.HttpProtocolOptions.max_requests_per_connection",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig.http_protocol_options",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig.http2_protocol_options",
    "envoy.config.endpoint.v3.ClusterLoadAssignment.cluster_name",
    "envoy.config.endpoint.v3.ClusterLoadAssignment.endpoints",
    "envoy.config.endpoint.v3.LocalityLbEndpoints.lb_endpoints",
    "envoy.config.endpoint.v3.LocalityLbEndpoints.priority",
    "envoy.config.endpoint.v3.LocalityLbEndpoints.locality",
    "envoy.config.core.v3.Locality.region",
    "envoy.config.core.v3.Locality.zone",
    "envoy.config.endpoint.v3.LbEndpoint.endpoint",
    "envoy.config.endpoint.v3.LbEndpoint.health_status",
    "envoy.config.endpoint.v3.Endpoint.address",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_in_push_order() {
        for t in XdsType::PUSH_ORDER {
            assert_eq!(XdsType::from_type_url(t.type_url()), Some(t));
        }
        let mut sorted = XdsType::PUSH_ORDER;
        sorted.sort();
        assert_eq!(sorted, XdsType::PUSH_ORDER);
        assert_eq!(
            XdsType::Route.message_name(),
            "envoy.config.route.v3.RouteConfiguration"
        );
        assert_eq!(short_type("type.googleapis.com/x.y.Secret"), "Secret");
        assert_eq!(
            serde_json::to_string(&std::collections::BTreeMap::from([(XdsType::Cluster, 1)]))
                .unwrap(),
            r#"{"CDS":1}"#
        );
    }
}
