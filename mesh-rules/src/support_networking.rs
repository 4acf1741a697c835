//! What of today's Istio kinds the mesh does not act on yet (see
//! [`crate::support`]): every such field is refused by name.

use crate::convert::{is_mesh_host, load_balancer, service};
use crate::error::FieldError;
use crate::path::FieldPath;
use crate::rules::networking::{
    DestinationRule, HttpMatch, HttpRoute, ServiceEntry, TrafficPolicy, VirtualService,
};

use crate::support::{refuse, refuse_set};

pub(crate) fn virtual_service(out: &mut Vec<FieldError>, root: &FieldPath, v: &VirtualService) {
    refuse_set(
        out,
        root,
        &[
            ("tls", v.tls.is_some(), "TLS routes"),
            ("tcp", v.tcp.is_some(), "TCP routes"),
            ("exportTo", v.export_to.is_some(), "visibility (exportTo)"),
        ],
    );
    // At a gateway, hosts are the names callers outside the mesh use.
    let at_mesh = v.at_mesh();
    for (i, h) in v.hosts.iter().enumerate() {
        if at_mesh && !is_mesh_host(h) {
            let what = "routing a host outside the mesh (name a service: `svcb` or `svcb.<namespace>.svc.cluster.local`)";
            refuse(out, root.key("hosts").index(i), what);
        }
    }
    let hosts: Vec<_> = v.hosts.iter().map(|h| service(h, "").host("")).collect();
    let at_gateways = !v.bound_gateways("").is_empty();
    for (i, http) in v.http.iter().enumerate() {
        let at = root.key("http").index(i);
        http_route(out, &at, http, at_mesh.then_some(&hosts[..]));
        if at_gateways {
            for (j, m) in http.matches.iter().enumerate() {
                if !m.source_labels.is_empty() {
                    let what = "matching the caller's labels at a gateway (bind the VirtualService to `mesh` alone)";
                    refuse(out, at.key("match").index(j).key("sourceLabels"), what);
                }
            }
        }
    }
}

/// `hosts`: the VirtualService's, when it routes the sidecars' calls
/// (there a subset belongs to its one host; a gateway routes to any
/// service's subsets).
fn http_route(
    out: &mut Vec<FieldError>,
    at: &FieldPath,
    h: &HttpRoute,
    hosts: Option<&[Option<crate::registry::HostName>]>,
) {
    refuse_set(
        out,
        at,
        &[
            (
                "mirrorPercentage",
                h.mirror_percentage.is_some(),
                "mirroring a share of requests (every request is mirrored)",
            ),
            ("mirrors", h.mirrors.is_some(), "several mirrors"),
            ("delegate", h.delegate.is_some(), "delegation"),
            (
                "directResponse",
                h.direct_response.is_some(),
                "direct responses",
            ),
        ],
    );
    let own = |host: &str| {
        let h = service(host, "").host("");
        hosts.is_none_or(|hosts| hosts.len() == 1 && hosts[0] == h)
    };
    for (j, r) in h.route.iter().enumerate() {
        let d = at.key("route").index(j);
        if !own(&r.destination.host) && r.destination.subset.is_some() {
            let what = "routing to a subset of another service than the VirtualService's one host (route to the whole service)";
            refuse(out, d.key("destination").key("subset"), what);
        }
        refuse_set(
            out,
            &d,
            &[(
                "headers",
                r.headers.is_some(),
                "header changes per destination",
            )],
        );
        let port = r.destination.port.is_some();
        refuse_set(
            out,
            &d.key("destination"),
            &[("port", port, "choosing a port")],
        );
    }
    if let Some(m) = &h.mirror
        && !own(&m.host)
        && m.subset.is_some()
    {
        let what = "mirroring to a subset of another service (mirror to the whole service)";
        refuse(out, at.key("mirror").key("subset"), what);
    }
    for (j, m) in h.matches.iter().enumerate() {
        http_match(out, &at.key("match").index(j), m);
    }
    actions(out, at, h);
}

fn http_match(out: &mut Vec<FieldError>, at: &FieldPath, m: &HttpMatch) {
    refuse_set(
        out,
        at,
        &[
            ("name", m.name.is_some(), "named matches"),
            ("scheme", m.scheme.is_some(), "matching the scheme"),
            ("authority", m.authority.is_some(), "matching the authority"),
            ("port", m.port.is_some(), "matching the port"),
            (
                "queryParams",
                m.query_params.is_some(),
                "matching query parameters",
            ),
            (
                "ignoreUriCase",
                m.ignore_uri_case.is_some(),
                "case-insensitive paths",
            ),
            (
                "withoutHeaders",
                m.without_headers.is_some(),
                "matching absent headers",
            ),
            (
                "sourceNamespace",
                m.source_namespace.is_some(),
                "matching the caller's namespace",
            ),
            ("gateways", m.gateways.is_some(), "matching gateways"),
        ],
    );
}

/// The actions of a route that the 0.4 model holds only in part.
fn actions(out: &mut Vec<FieldError>, at: &FieldPath, h: &HttpRoute) {
    if let Some(r) = &h.redirect {
        let p = at.key("redirect");
        refuse_set(
            out,
            &p,
            &[
                (
                    "scheme",
                    r.scheme.is_some(),
                    "redirecting to another scheme",
                ),
                ("port", r.port.is_some(), "redirecting to another port"),
                ("derivePort", r.derive_port.is_some(), "deriving the port"),
                (
                    "redirectCode",
                    r.redirect_code.is_some_and(|c| c != 301),
                    "redirect codes other than 301",
                ),
            ],
        );
    }
    if let Some(r) = &h.rewrite {
        let set = r.uri_regex_rewrite.is_some();
        refuse_set(
            out,
            &at.key("rewrite"),
            &[("uriRegexRewrite", set, "regex rewrites")],
        );
    }
    if let Some(r) = &h.retries {
        let p = at.key("retries");
        refuse_set(
            out,
            &p,
            &[
                (
                    "retryOn",
                    r.retry_on.is_some(),
                    "retry conditions (5xx, connect failures and resets are retried)",
                ),
                (
                    "retryRemoteLocalities",
                    r.retry_remote_localities.is_some(),
                    "retries by locality",
                ),
            ],
        );
    }
    effects(out, at, h);
}

/// The fault, CORS and header parts of a route's actions.
fn effects(out: &mut Vec<FieldError>, at: &FieldPath, h: &HttpRoute) {
    if let Some(f) = &h.fault {
        let p = at.key("fault");
        if let Some(d) = &f.delay {
            let set = d.exponential_delay.is_some();
            refuse_set(
                out,
                &p.key("delay"),
                &[("exponentialDelay", set, "exponential delays")],
            );
        }
        if let Some(a) = &f.abort {
            refuse_set(
                out,
                &p.key("abort"),
                &[
                    (
                        "grpcStatus",
                        a.grpc_status.is_some(),
                        "aborts with a gRPC status",
                    ),
                    (
                        "http2Error",
                        a.http2_error.is_some(),
                        "aborts with an HTTP/2 error",
                    ),
                ],
            );
        }
    }
    if let Some(c) = &h.cors_policy {
        let p = at.key("corsPolicy");
        for (i, o) in c.allow_origins.iter().enumerate() {
            if o.exact.is_none() && o.regex.as_deref() != Some(".*") {
                let what =
                    "origins by prefix or pattern (give exact origins, or `regex: \".*\"` for any)";
                refuse(out, p.key("allowOrigins").index(i), what);
            }
        }
        let set = c.unmatched_preflights.is_some();
        refuse_set(
            out,
            &p,
            &[("unmatchedPreflights", set, "unmatched preflights")],
        );
    }
    if let Some(hd) = &h.headers {
        let p = at.key("headers");
        refuse_set(
            out,
            &p,
            &[("response", hd.response.is_some(), "response header changes")],
        );
        if let Some(r) = &hd.request {
            refuse_set(
                out,
                &p.key("request"),
                &[
                    (
                        "set",
                        r.set.is_some(),
                        "replacing request headers (`add` appends)",
                    ),
                    ("remove", r.remove.is_some(), "removing request headers"),
                ],
            );
        }
    }
}

pub(crate) fn destination_rule(out: &mut Vec<FieldError>, root: &FieldPath, d: &DestinationRule) {
    refuse_set(
        out,
        root,
        &[
            ("exportTo", d.export_to.is_some(), "visibility (exportTo)"),
            (
                "workloadSelector",
                d.workload_selector.is_some(),
                "rules for some callers",
            ),
        ],
    );
    if !is_mesh_host(&d.host) {
        refuse(out, root.key("host"), "policies for hosts outside the mesh");
    }
    if let Some(t) = &d.traffic_policy {
        traffic_policy(out, &root.key("trafficPolicy"), t);
    }
    for (i, s) in d.subsets.iter().enumerate() {
        if let Some(t) = &s.traffic_policy {
            traffic_policy(out, &root.key("subsets").index(i).key("trafficPolicy"), t);
        }
    }
}

fn traffic_policy(out: &mut Vec<FieldError>, at: &FieldPath, t: &TrafficPolicy) {
    refuse_set(
        out,
        at,
        &[
            (
                "tls",
                t.tls.is_some(),
                "TLS to the destination (mTLS comes with the CA)",
            ),
            (
                "portLevelSettings",
                t.port_level_settings.is_some(),
                "policies per port",
            ),
            ("tunnel", t.tunnel.is_some(), "tunnels"),
            (
                "proxyProtocol",
                t.proxy_protocol.is_some(),
                "the PROXY protocol",
            ),
        ],
    );
    if let Some(lb) = &t.load_balancer {
        let p = at.key("loadBalancer");
        refuse_set(
            out,
            &p,
            &[
                (
                    "consistentHash",
                    lb.consistent_hash.is_some() && lb.simple.is_some(),
                    "a balancer and affinity at once (they are alternatives)",
                ),
                (
                    "localityLbSetting",
                    lb.locality_lb_setting.is_some(),
                    "locality balancing",
                ),
                (
                    "warmupDurationSecs",
                    lb.warmup_duration_secs.is_some(),
                    "slow start",
                ),
            ],
        );
        if let Some(h) = &lb.consistent_hash {
            refuse_set(
                out,
                &p.key("consistentHash"),
                &[
                    (
                        "httpQueryParameterName",
                        h.http_query_parameter_name.is_some(),
                        "affinity by query parameter",
                    ),
                    ("ringHash", h.ring_hash.is_some(), "ring settings"),
                    ("maglev", h.maglev.is_some(), "Maglev"),
                    (
                        "minimumRingSize",
                        h.minimum_ring_size.is_some(),
                        "ring sizes",
                    ),
                ],
            );
        }
        if let Some(simple) = &lb.simple
            && load_balancer(simple).is_none()
        {
            let what = "this balancer (ROUND_ROBIN, LEAST_REQUEST, RANDOM are)";
            refuse(out, p.key("simple"), what);
        }
    }
    limits(out, at, t);
}

/// The connection-pool and outlier-detection parts of a traffic policy.
fn limits(out: &mut Vec<FieldError>, at: &FieldPath, t: &TrafficPolicy) {
    let pool = t.connection_pool.as_ref();
    if let Some(tcp) = pool.and_then(|p| p.tcp.as_ref()) {
        refuse_set(
            out,
            &at.key("connectionPool").key("tcp"),
            &[
                (
                    "connectTimeout",
                    tcp.connect_timeout.is_some(),
                    "connect timeouts",
                ),
                (
                    "tcpKeepalive",
                    tcp.tcp_keepalive.is_some(),
                    "TCP keep-alive",
                ),
                (
                    "maxConnectionDuration",
                    tcp.max_connection_duration.is_some(),
                    "connection lifetimes",
                ),
                ("idleTimeout", tcp.idle_timeout.is_some(), "idle timeouts"),
            ],
        );
    }
    if let Some(http) = pool.and_then(|p| p.http.as_ref()) {
        refuse_set(
            out,
            &at.key("connectionPool").key("http"),
            &[
                ("idleTimeout", http.idle_timeout.is_some(), "idle timeouts"),
                (
                    "h2UpgradePolicy",
                    http.h2_upgrade_policy.is_some(),
                    "HTTP/2 upgrades",
                ),
                (
                    "useClientProtocol",
                    http.use_client_protocol.is_some(),
                    "the client's protocol upstream",
                ),
                (
                    "maxConcurrentStreams",
                    http.max_concurrent_streams.is_some(),
                    "stream limits",
                ),
            ],
        );
    }
    if let Some(o) = &t.outlier_detection {
        refuse_set(
            out,
            &at.key("outlierDetection"),
            &[
                (
                    "consecutiveGatewayErrors",
                    o.consecutive_gateway_errors.is_some(),
                    "gateway-error ejection",
                ),
                (
                    "consecutiveLocalOriginFailures",
                    o.consecutive_local_origin_failures.is_some(),
                    "local-origin ejection",
                ),
                (
                    "splitExternalLocalOriginErrors",
                    o.split_external_local_origin_errors.is_some(),
                    "split local-origin errors",
                ),
                (
                    "minHealthPercent",
                    o.min_health_percent.is_some(),
                    "a minimum healthy share",
                ),
            ],
        );
    }
}

/// `resolution: STATIC` and its endpoints (addresses only).
fn static_endpoints(out: &mut Vec<FieldError>, root: &FieldPath, e: &ServiceEntry) {
    let is_static = e.resolution.as_deref() == Some("STATIC");
    if is_static && e.endpoints.is_empty() {
        refuse(out, root.key("resolution"), "STATIC without endpoints");
    }
    if !is_static && !e.endpoints.is_empty() {
        refuse(
            out,
            root.key("endpoints"),
            "endpoints without `resolution: STATIC`",
        );
    }
    for (i, w) in e.endpoints.iter().enumerate() {
        let at = root.key("endpoints").index(i);
        refuse_set(
            out,
            &at,
            &[
                ("ports", w.ports.is_some(), "ports per endpoint"),
                ("labels", w.labels.is_some(), "endpoint labels"),
                ("network", w.network.is_some(), "networks"),
                ("locality", w.locality.is_some(), "endpoint localities"),
                ("weight", w.weight.is_some(), "endpoint weights"),
                (
                    "serviceAccount",
                    w.service_account.is_some(),
                    "endpoint identities",
                ),
            ],
        );
    }
}

pub(crate) fn service_entry(out: &mut Vec<FieldError>, root: &FieldPath, e: &ServiceEntry) {
    refuse_set(
        out,
        root,
        &[
            (
                "addresses",
                e.addresses.is_some(),
                "addresses (the caller resolves the host)",
            ),
            (
                "workloadSelector",
                e.workload_selector.is_some(),
                "workloads as entries",
            ),
            ("exportTo", e.export_to.is_some(), "visibility (exportTo)"),
            (
                "subjectAltNames",
                e.subject_alt_names.is_some(),
                "TLS names",
            ),
            (
                "location",
                e.location.as_deref().is_some_and(|l| l != "MESH_EXTERNAL"),
                "entries inside the mesh (MESH_EXTERNAL is)",
            ),
            (
                "resolution",
                e.resolution
                    .as_deref()
                    .is_some_and(|r| !["NONE", "DNS", "STATIC"].contains(&r)),
                "this resolution (NONE and DNS: the caller resolves the host; STATIC: the endpoints)",
            ),
        ],
    );
    static_endpoints(out, root, e);
    for (i, p) in e.ports.iter().enumerate() {
        let at = root.key("ports").index(i);
        refuse_set(
            out,
            &at,
            &[("targetPort", p.target_port.is_some(), "target ports")],
        );
    }
    // Each host becomes an egress rule; what one cannot do is refused at
    // the same place (`spec.ports[i].protocol` in both kinds).
    let as_rule = crate::Rule {
        api_version: String::new(),
        metadata: Default::default(),
        spec: crate::Spec::ServiceEntry(Box::new(e.clone())),
    };
    for rule in crate::convert::expand(&[as_rule]) {
        for p in crate::support::unsupported(&rule.spec) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
}

/// Gateway API filter types the mesh applies.
const FILTERS: [&str; 4] = [
    "RequestHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
];

/// Whether a reference names a core Service (`group` `""`/`core`, `kind`
/// `Service`; `defaulted` is the kind when absent).
fn is_service(group: Option<&str>, kind: Option<&str>, defaulted: &str) -> bool {
    matches!(group, None | Some("") | Some("core")) && kind.unwrap_or(defaulted) == "Service"
}

pub(crate) fn http_route_gamma(
    out: &mut Vec<FieldError>,
    root: &FieldPath,
    r: &crate::rules::gateway::HttpRoute,
) {
    let hostnames = r.hostnames.is_some();
    refuse_set(
        out,
        root,
        &[("hostnames", hostnames, "host names (a gateway's)")],
    );
    for (i, p) in r.parent_refs.iter().enumerate() {
        let at = root.key("parentRefs").index(i);
        // A parent's kind defaults to Gateway.
        if !is_service(p.group.as_deref(), p.kind.as_deref(), "Gateway") {
            let what =
                "routes at a Gateway (a parent with `kind: Service` routes the mesh's calls to it)";
            refuse(out, at.key("kind"), what);
        }
        refuse_set(
            out,
            &at,
            &[
                (
                    "port",
                    p.port.is_some(),
                    "one port of the parent (every port is routed)",
                ),
                (
                    "sectionName",
                    p.section_name.is_some(),
                    "a gateway listener",
                ),
            ],
        );
    }
    for (i, g) in r.rules.iter().enumerate() {
        gamma_rule(out, &root.key("rules").index(i), g);
    }
}

fn gamma_rule(out: &mut Vec<FieldError>, at: &FieldPath, g: &crate::rules::gateway::HttpRouteRule) {
    refuse_set(
        out,
        at,
        &[
            ("retry", g.retry.is_some(), "retries"),
            (
                "sessionPersistence",
                g.session_persistence.is_some(),
                "session persistence",
            ),
        ],
    );
    if let Some(t) = &g.timeouts {
        let set = t.backend_request.is_some();
        refuse_set(
            out,
            &at.key("timeouts"),
            &[("backendRequest", set, "timeouts per try")],
        );
    }
    for (j, m) in g.matches.iter().enumerate() {
        let mp = at.key("matches").index(j);
        refuse_set(
            out,
            &mp,
            &[(
                "queryParams",
                m.query_params.is_some(),
                "matching query parameters",
            )],
        );
        let path_kind = m.path.as_ref().and_then(|p| p.kind.as_deref());
        if path_kind.is_some_and(|k| !["PathPrefix", "Exact", "RegularExpression"].contains(&k)) {
            refuse(
                out,
                mp.key("path").key("type"),
                "this path match (PathPrefix, Exact, RegularExpression are)",
            );
        }
        for (k, h) in m.headers.iter().enumerate() {
            if h.kind
                .as_deref()
                .is_some_and(|t| t != "Exact" && t != "RegularExpression")
            {
                refuse(
                    out,
                    mp.key("headers").index(k).key("type"),
                    "this header match (Exact, RegularExpression are)",
                );
            }
        }
    }
    let ports: Vec<Option<i64>> = g.backend_refs.iter().map(|b| b.port).collect();
    for (j, b) in g.backend_refs.iter().enumerate() {
        let bp = at.key("backendRefs").index(j);
        backend(out, &bp, b);
        if j > 0 && ports[j] != ports[0] {
            let what = "backends on different ports (the mesh calls a backend on the port the call came to)";
            refuse(out, bp.key("port"), what);
        }
    }
    for (j, f) in g.filters.iter().enumerate() {
        gamma_filter(out, &at.key("filters").index(j), f);
    }
}

fn backend(out: &mut Vec<FieldError>, at: &FieldPath, b: &crate::rules::gateway::BackendRef) {
    if !is_service(b.group.as_deref(), b.kind.as_deref(), "Service") {
        refuse(out, at.key("kind"), "backends other than Services");
    }
    refuse_set(
        out,
        at,
        &[("filters", b.filters.is_some(), "filters per backend")],
    );
}

fn gamma_filter(
    out: &mut Vec<FieldError>,
    at: &FieldPath,
    f: &crate::rules::gateway::HttpRouteFilter,
) {
    if !FILTERS.contains(&f.kind.as_str()) {
        let what =
            "this filter (RequestHeaderModifier, RequestRedirect, URLRewrite, RequestMirror are)";
        refuse(out, at.key("type"), what);
    }
    refuse_set(
        out,
        at,
        &[
            (
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
                "response header changes",
            ),
            ("extensionRef", f.extension_ref.is_some(), "extensions"),
            (
                "cors",
                f.cors.is_some(),
                "CORS in HTTPRoute (a VirtualService's corsPolicy acts)",
            ),
        ],
    );
    if let Some(h) = &f.request_header_modifier {
        refuse_set(
            out,
            &at.key("requestHeaderModifier"),
            &[
                (
                    "set",
                    h.set.is_some(),
                    "replacing request headers (`add` appends)",
                ),
                ("remove", h.remove.is_some(), "removing request headers"),
            ],
        );
    }
    gamma_filter_settings(out, at, f);
}

/// The settings of a filter that the mesh applies in part.
fn gamma_filter_settings(
    out: &mut Vec<FieldError>,
    at: &FieldPath,
    f: &crate::rules::gateway::HttpRouteFilter,
) {
    if let Some(r) = &f.request_redirect {
        let rp = at.key("requestRedirect");
        refuse_set(
            out,
            &rp,
            &[
                (
                    "scheme",
                    r.scheme.is_some(),
                    "redirecting to another scheme",
                ),
                ("port", r.port.is_some(), "redirecting to another port"),
            ],
        );
        if r.status_code != Some(301) {
            let what =
                "redirects other than 301 (Gateway API's default is 302: write `statusCode: 301`)";
            refuse(out, rp.key("statusCode"), what);
        }
        if r.path.as_ref().is_some_and(|p| p.kind != "ReplaceFullPath") {
            refuse(
                out,
                rp.key("path").key("type"),
                "redirects that keep part of the path (ReplaceFullPath is)",
            );
        }
    }
    if let Some(rw) = &f.url_rewrite
        && rw
            .path
            .as_ref()
            .is_some_and(|p| p.kind != "ReplacePrefixMatch")
    {
        refuse(
            out,
            at.key("urlRewrite").key("path").key("type"),
            "rewriting the whole path (ReplacePrefixMatch is)",
        );
    }
    if let Some(m) = &f.request_mirror {
        let mp = at.key("requestMirror");
        refuse_set(
            out,
            &mp,
            &[
                (
                    "percent",
                    m.percent.is_some(),
                    "mirroring a share of requests (every request is mirrored)",
                ),
                (
                    "fraction",
                    m.fraction.is_some(),
                    "mirroring a share of requests (every request is mirrored)",
                ),
            ],
        );
        backend(out, &mp.key("backendRef"), &m.backend_ref);
    }
}
