//! Today's Istio kinds in terms of the 0.4 kinds, which the translator
//! reads: a VirtualService becomes one RouteRule per HTTP route and match
//! (earlier routes take precedence), a DestinationRule one
//! DestinationPolicy for the service and one per subset (its policy laid
//! over the service's, field by field), a ServiceEntry one EgressRule per
//! host, an HTTPRoute one RouteRule per parent, rule and match (the most
//! specific match first, as Gateway API orders them). Pure: the same rules
//! always give the same result.
//!
//! `crate::support` refuses what this cannot express, so nothing here
//! drops a field a user wrote.

use std::collections::{BTreeMap, HashMap};

use crate::registry::HostName;
use crate::rules::gateway;
use crate::rules::ingress::GatewayRoute;
use crate::rules::networking::{
    self, DestinationRule, HttpMatch, HttpRoute, ServiceEntry, TrafficPolicy, VirtualService,
};
use crate::rules::{
    CircuitBreaker, CorsPolicy, DestinationPolicy, DestinationWeight, EgressPort, EgressRule,
    HttpFaultInjection, HttpRedirect, HttpRetry, HttpRewrite, HttpTimeout, IstioService,
    LoadBalancer, LoadBalancing, MESH_API_VERSION, MatchCondition, MatchRequest, Metadata,
    RouteRule, Rule, SimpleCircuitBreakerPolicy, SimpleRetryPolicy, SimpleTimeoutPolicy, Spec,
};

/// Where a derived rule came from (an annotation on it).
pub const FROM_ANNOTATION: &str = "mesh.dev/converted-from";

/// A host as today's kinds write it (`svcb`, or
/// `svcb.<namespace>.svc.<domain>`) as a 0.4 service; any other host is a
/// service outside the mesh (`service`).
pub fn service(host: &str, rule_namespace: &str) -> IstioService {
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [name] => IstioService {
            name: Some((*name).to_owned()),
            namespace: Some(rule_namespace.to_owned()),
            ..Default::default()
        },
        [name, namespace, "svc", domain @ ..] if !domain.is_empty() => IstioService {
            name: Some((*name).to_owned()),
            namespace: Some((*namespace).to_owned()),
            domain: Some(domain.join(".")),
            ..Default::default()
        },
        _ => IstioService {
            service: Some(host.to_owned()),
            ..Default::default()
        },
    }
}

/// Whether `host` names a service of the mesh (not one outside it).
pub fn is_mesh_host(host: &str) -> bool {
    service(host, "").service.is_none()
}

/// The subsets DestinationRules define, by service host.
type Subsets<'a> = HashMap<HostName, BTreeMap<&'a str, &'a BTreeMap<String, String>>>;

/// `rules` with every rule of today's kinds replaced by its 0.4 rules.
pub fn expand(rules: &[Rule]) -> Vec<Rule> {
    let mut subsets: Subsets<'_> = HashMap::new();
    for rule in rules {
        if let Spec::DestinationRule(d) = &rule.spec
            && let Some(host) = service(&d.host, rule.metadata.namespace()).host("")
        {
            let entry = subsets.entry(host).or_default();
            for s in &d.subsets {
                entry.insert(s.name.as_str(), &s.labels);
            }
        }
    }
    let mut out = Vec::new();
    for rule in rules {
        match &rule.spec {
            Spec::RouteRule(_)
            | Spec::DestinationPolicy(_)
            | Spec::EgressRule(_)
            | Spec::PeerAuthentication(_)
            | Spec::AuthorizationPolicy(_)
            | Spec::Sidecar(_)
            | Spec::Gateway(_) => {
                out.push(rule.clone());
            }
            Spec::VirtualService(v) => virtual_service(rule, v, &subsets, &mut out),
            Spec::DestinationRule(d) => destination_rule(rule, d, &mut out),
            Spec::ServiceEntry(e) => service_entry(rule, e, &mut out),
            Spec::HttpRoute(r) => http_route(rule, r, &mut out),
        }
    }
    out
}

/// A rule derived from `from`, named `<from's name>-<suffix>`.
fn derived(from: &Rule, suffix: &str, spec: Spec) -> Rule {
    let mut annotations = BTreeMap::new();
    annotations.insert(FROM_ANNOTATION.to_owned(), from.key().to_string());
    Rule {
        api_version: MESH_API_VERSION.to_owned(),
        metadata: Metadata {
            name: format!("{}-{suffix}", from.metadata.name),
            namespace: from.metadata.namespace.clone(),
            annotations,
            ..Default::default()
        },
        spec,
    }
}

/// The labels of subset `name` of `host`; a subset no DestinationRule
/// defines selects no workload (calls to it fail 503, as in Istio).
fn subset_labels(
    subsets: &Subsets<'_>,
    host: &IstioService,
    name: &str,
) -> BTreeMap<String, String> {
    host.host("")
        .and_then(|h| subsets.get(&h)?.get(name).map(|l| (*l).clone()))
        .unwrap_or_else(|| {
            BTreeMap::from([("mesh.dev/undefined-subset".to_owned(), name.to_owned())])
        })
}

fn virtual_service(rule: &Rule, v: &VirtualService, subsets: &Subsets<'_>, out: &mut Vec<Rule>) {
    let ns = rule.metadata.namespace();
    if v.at_mesh() {
        routes_of(rule, v, "", out, |http, host| {
            route_rule(http, &service(host, ns), subsets, ns)
        });
    }
    let gateways = v.bound_gateways(ns);
    if !gateways.is_empty() {
        routes_of(rule, v, "gateway-", out, |http, host| {
            let mut r = route_rule(http, &service(host, ns), subsets, ns);
            // At a gateway the host is no service: every destination is named.
            r.route = weights(http, None, subsets, ns);
            r.at_gateways = Some(GatewayRoute {
                gateways: gateways.clone(),
                host: host.to_owned(),
            });
            r
        });
    }
}

/// One RouteRule per host, HTTP route and match of `v` (earlier routes
/// take precedence), each made by `base` and named
/// `<name>-<prefix>[<host>-]<route>[-<match>]`.
fn routes_of(
    rule: &Rule,
    v: &VirtualService,
    prefix: &str,
    out: &mut Vec<Rule>,
    base: impl Fn(&HttpRoute, &str) -> RouteRule,
) {
    let n = v.http.len();
    for (h, host) in v.hosts.iter().enumerate() {
        for (i, http) in v.http.iter().enumerate() {
            let base = base(http, host);
            let precedence = Some((n - i) as i64);
            let name = http.name.clone().unwrap_or_else(|| i.to_string());
            let host_part = if v.hosts.len() > 1 {
                format!("{h}-")
            } else {
                String::new()
            };
            let matches: Vec<Option<&HttpMatch>> = if http.matches.is_empty() {
                vec![None]
            } else {
                http.matches.iter().map(Some).collect()
            };
            for (j, m) in matches.iter().enumerate() {
                let mut r = base.clone();
                r.precedence = precedence;
                r.match_ = m.map(match_condition);
                let suffix = if matches.len() > 1 {
                    format!("{prefix}{host_part}{name}-{j}")
                } else {
                    format!("{prefix}{host_part}{name}")
                };
                out.push(derived(rule, &suffix, Spec::RouteRule(Box::new(r))));
            }
        }
    }
}

/// An HTTP route's destinations as 0.4's weighted versions: a subset by
/// its labels, another service as a whole. `destination` is the
/// VirtualService's host at the sidecars (the whole of it alone is 0.4's
/// rule without `route`); at a gateway (`None`) every destination is
/// named, subsets of any service included.
fn weights(
    http: &HttpRoute,
    destination: Option<&IstioService>,
    subsets: &Subsets<'_>,
    ns: &str,
) -> Vec<DestinationWeight> {
    let own = |s: &IstioService| destination.is_some_and(|d| s.host("") == d.host(""));
    if let [only] = http.route.as_slice()
        && only.destination.subset.is_none()
        && own(&service(&only.destination.host, ns))
    {
        return Vec::new();
    }
    let single = http.route.len() == 1;
    http.route
        .iter()
        .map(|r| {
            let to = service(&r.destination.host, ns);
            DestinationWeight {
                labels: r
                    .destination
                    .subset
                    .as_deref()
                    .map(|s| subset_labels(subsets, &to, s))
                    .unwrap_or_default(),
                // Another service (at the sidecars, as a whole: support.rs
                // refuses its subsets there).
                destination: (!own(&to)).then_some(to),
                weight: if single { Some(100) } else { r.weight },
            }
        })
        .collect()
}

/// One HTTP route's actions as a RouteRule for `destination` (no match).
fn route_rule(
    http: &HttpRoute,
    destination: &IstioService,
    subsets: &Subsets<'_>,
    ns: &str,
) -> RouteRule {
    RouteRule {
        destination: destination.clone(),
        precedence: None,
        match_: None,
        route: weights(http, Some(destination), subsets, ns),
        redirect: http.redirect.as_ref().map(|r| HttpRedirect {
            uri: r.uri.clone(),
            authority: r.authority.clone(),
        }),
        rewrite: http.rewrite.as_ref().map(|r| HttpRewrite {
            uri: r.uri.clone(),
            authority: r.authority.clone(),
        }),
        // Today's kinds take WebSocket upgrades on every route.
        websocket_upgrade: true,
        http_req_timeout: http.timeout.clone().map(|timeout| HttpTimeout {
            simple_timeout: SimpleTimeoutPolicy {
                timeout,
                override_header_name: None,
            },
        }),
        http_req_retries: http.retries.as_ref().map(|r| HttpRetry {
            simple_retry: SimpleRetryPolicy {
                attempts: r.attempts,
                per_try_timeout: r.per_try_timeout.clone(),
                override_header_name: None,
            },
        }),
        http_fault: http.fault.as_ref().map(fault),
        l4_fault: None,
        mirror: http.mirror.as_ref().map(|m| {
            let mut s = service(&m.host, ns);
            if let Some(name) = &m.subset {
                s.labels = subset_labels(subsets, &s, name);
            }
            s
        }),
        cors_policy: http.cors_policy.as_ref().map(cors),
        at_gateways: None,
        append_headers: http
            .headers
            .as_ref()
            .and_then(|h| h.request.as_ref())
            .map(|r| r.add.clone())
            .unwrap_or_default(),
        rate_limit: None,
    }
}

fn match_condition(m: &HttpMatch) -> MatchCondition {
    let mut headers = m.headers.clone();
    if let Some(uri) = &m.uri {
        headers.insert("uri".into(), uri.clone());
    }
    if let Some(method) = &m.method {
        headers.insert(":method".into(), method.clone());
    }
    MatchCondition {
        source: (!m.source_labels.is_empty()).then(|| IstioService {
            labels: m.source_labels.clone(),
            ..Default::default()
        }),
        tcp: None,
        udp: None,
        request: (!headers.is_empty()).then_some(MatchRequest { headers }),
    }
}

fn fault(f: &networking::Fault) -> HttpFaultInjection {
    HttpFaultInjection {
        delay: f.delay.as_ref().map(|d| crate::rules::Delay {
            percent: d
                .percentage
                .map(|p| p.value)
                .or(d.percent.map(|p| p as f64)),
            fixed_delay: d.fixed_delay.clone(),
            ..Default::default()
        }),
        abort: f.abort.as_ref().map(|a| crate::rules::Abort {
            percent: a.percentage.map(|p| p.value),
            http_status: a.http_status,
            ..Default::default()
        }),
    }
}

fn cors(c: &networking::CorsPolicy) -> CorsPolicy {
    // `regex: ".*"` is any origin, `*` in 0.4 (support.rs refuses other
    // prefixes and regexes).
    let origins = c.allow_origins.iter().filter_map(|o| {
        o.exact
            .clone()
            .or_else(|| (o.regex.as_deref() == Some(".*")).then(|| "*".to_owned()))
    });
    CorsPolicy {
        allow_origin: c.allow_origin.iter().cloned().chain(origins).collect(),
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: c.max_age.clone(),
        allow_credentials: c.allow_credentials,
    }
}

/// `over`'s parts where it sets them, else `base`'s.
fn merged(base: Option<&TrafficPolicy>, over: Option<&TrafficPolicy>) -> TrafficPolicy {
    let base = base.cloned().unwrap_or_default();
    let Some(over) = over else { return base };
    TrafficPolicy {
        load_balancer: over.load_balancer.clone().or(base.load_balancer),
        connection_pool: over.connection_pool.clone().or(base.connection_pool),
        outlier_detection: over.outlier_detection.clone().or(base.outlier_detection),
        ..base
    }
}

/// The DestinationPolicy parts of a traffic policy.
fn policy(destination: IstioService, t: &TrafficPolicy) -> DestinationPolicy {
    let load_balancing = t
        .load_balancer
        .as_ref()
        .and_then(|l| l.simple.as_deref())
        .and_then(load_balancer)
        .map(|name| LoadBalancing { name });
    let pool = t.connection_pool.as_ref();
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let o = t.outlier_detection.as_ref();
    let cb = SimpleCircuitBreakerPolicy {
        max_connections: tcp.and_then(|t| t.max_connections),
        http_max_pending_requests: http.and_then(|h| h.http1_max_pending_requests),
        http_max_requests: http.and_then(|h| h.http2_max_requests),
        http_max_requests_per_connection: http.and_then(|h| h.max_requests_per_connection),
        http_max_retries: http.and_then(|h| h.max_retries),
        http_consecutive_errors: o.and_then(|o| o.consecutive_5xx_errors.or(o.consecutive_errors)),
        http_detection_interval: o.and_then(|o| o.interval.clone()),
        sleep_window: o.and_then(|o| o.base_ejection_time.clone()),
        http_max_ejection_percent: o.and_then(|o| o.max_ejection_percent),
    };
    DestinationPolicy {
        destination,
        source: None,
        load_balancing,
        circuit_breaker: (cb != SimpleCircuitBreakerPolicy::default())
            .then_some(CircuitBreaker { simple_cb: cb }),
        rate_limit: None,
        consistent_hash: t
            .load_balancer
            .as_ref()
            .and_then(|l| l.consistent_hash.as_ref())
            .map(|h| crate::rules::ConsistentHash {
                http_header_name: h.http_header_name.clone(),
                use_source_ip: h.use_source_ip,
                http_cookie: h.http_cookie.clone(),
            }),
    }
}

/// Today's `simple` balancer names as 0.4's.
pub fn load_balancer(simple: &str) -> Option<LoadBalancer> {
    match simple {
        "ROUND_ROBIN" | "UNSPECIFIED" => Some(LoadBalancer::RoundRobin),
        "LEAST_REQUEST" | "LEAST_CONN" => Some(LoadBalancer::LeastConn),
        "RANDOM" => Some(LoadBalancer::Random),
        _ => None,
    }
}

fn destination_rule(rule: &Rule, d: &DestinationRule, out: &mut Vec<Rule>) {
    let host = service(&d.host, rule.metadata.namespace());
    let whole = policy(host.clone(), &merged(d.traffic_policy.as_ref(), None));
    let acts = |p: &DestinationPolicy| {
        p.load_balancing.is_some() || p.circuit_breaker.is_some() || p.consistent_hash.is_some()
    };
    if acts(&whole) {
        out.push(derived(
            rule,
            "all",
            Spec::DestinationPolicy(Box::new(whole)),
        ));
    }
    for s in &d.subsets {
        let t = merged(d.traffic_policy.as_ref(), s.traffic_policy.as_ref());
        let mut destination = host.clone();
        destination.labels = s.labels.clone();
        let p = policy(destination, &t);
        if acts(&p) {
            out.push(derived(rule, &s.name, Spec::DestinationPolicy(Box::new(p))));
        }
    }
}

fn service_entry(rule: &Rule, e: &ServiceEntry, out: &mut Vec<Rule>) {
    for (i, host) in e.hosts.iter().enumerate() {
        let egress = EgressRule {
            destination: IstioService {
                service: Some(host.clone()),
                ..Default::default()
            },
            ports: e
                .ports
                .iter()
                .map(|p| EgressPort {
                    port: p.number,
                    protocol: p.protocol.to_ascii_lowercase(),
                })
                .collect(),
            use_egress_proxy: false,
            endpoints: e.endpoints.iter().map(|w| w.address.clone()).collect(),
        };
        out.push(derived(
            rule,
            &i.to_string(),
            Spec::EgressRule(Box::new(egress)),
        ));
    }
}

/// A Service named by an HTTPRoute (parent or backend) as a 0.4 service,
/// in the route's namespace unless it names one.
fn named_service(name: &str, namespace: Option<&str>, rule_namespace: &str) -> IstioService {
    IstioService {
        name: Some(name.to_owned()),
        namespace: Some(namespace.unwrap_or(rule_namespace).to_owned()),
        ..Default::default()
    }
}

/// An HTTPRoute parent (a Service) as a 0.4 service.
pub fn parent_service(p: &gateway::ParentRef, rule_namespace: &str) -> IstioService {
    named_service(&p.name, p.namespace.as_deref(), rule_namespace)
}

fn backend_service(b: &gateway::BackendRef, rule_namespace: &str) -> IstioService {
    named_service(&b.name, b.namespace.as_deref(), rule_namespace)
}

/// Gateway API's precedence among matches, as a rule precedence: an exact
/// path first, then a pattern, then the longest prefix; then a method; then
/// the most headers. (Ties keep the rules' order.)
fn specificity(m: Option<&gateway::HttpRouteMatch>) -> i64 {
    let Some(m) = m else { return 1_000_100 };
    let (kind, len) = match &m.path {
        None => (1, 1),
        Some(p) => {
            let len = p.value.as_deref().unwrap_or("/").len().min(9_999) as i64;
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => (3, len),
                "RegularExpression" => (2, len),
                _ => (1, len),
            }
        }
    };
    kind * 1_000_000
        + len * 100
        + i64::from(m.method.is_some()) * 10
        + (m.headers.len() as i64).min(9)
}

/// A Gateway API match as a 0.4 condition. A path prefix matches whole
/// path elements (`/a` takes `/a` and `/a/b`, not `/ab`): a pattern.
fn gamma_match(m: &gateway::HttpRouteMatch) -> Option<MatchCondition> {
    let mut headers: BTreeMap<String, crate::rules::StringMatch> = BTreeMap::new();
    if let Some(p) = &m.path {
        let value = p.value.clone().unwrap_or_else(|| "/".into());
        let uri = match p.kind.as_deref().unwrap_or("PathPrefix") {
            "Exact" => Some(crate::rules::StringMatch {
                exact: Some(value),
                ..Default::default()
            }),
            "RegularExpression" => Some(crate::rules::StringMatch {
                regex: Some(value),
                ..Default::default()
            }),
            _ => {
                let trimmed = value.trim_end_matches('/');
                (!trimmed.is_empty()).then(|| crate::rules::StringMatch {
                    regex: Some(format!("{}(/.*)?", regex::escape(trimmed))),
                    ..Default::default()
                })
            }
        };
        if let Some(uri) = uri {
            headers.insert("uri".into(), uri);
        }
    }
    for h in &m.headers {
        let value = match h.kind.as_deref() {
            Some("RegularExpression") => crate::rules::StringMatch {
                regex: Some(h.value.clone()),
                ..Default::default()
            },
            _ => crate::rules::StringMatch {
                exact: Some(h.value.clone()),
                ..Default::default()
            },
        };
        headers.insert(h.name.to_ascii_lowercase(), value);
    }
    if let Some(method) = &m.method {
        headers.insert(
            ":method".into(),
            crate::rules::StringMatch {
                exact: Some(method.clone()),
                ..Default::default()
            },
        );
    }
    (!headers.is_empty()).then_some(MatchCondition {
        request: Some(MatchRequest { headers }),
        ..Default::default()
    })
}

/// Relative weights as percentages summing to 100 (largest remainders
/// round up; ties go to the earlier).
fn percentages(weights: &[i64]) -> Vec<i64> {
    let total: i64 = weights.iter().sum();
    if total <= 0 {
        return weights.iter().map(|_| 0).collect();
    }
    let mut out: Vec<i64> = weights.iter().map(|w| w * 100 / total).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(weights[i] * 100 % total));
    let short = 100 - out.iter().sum::<i64>();
    for &i in order.iter().take(short as usize) {
        out[i] += 1;
    }
    out
}

/// One HTTPRoute rule's actions as a RouteRule for `destination`.
fn gamma_rule(g: &gateway::HttpRouteRule, destination: &IstioService, ns: &str) -> RouteRule {
    let weights: Vec<i64> = g
        .backend_refs
        .iter()
        .map(|b| b.weight.unwrap_or(1))
        .collect();
    let own = |s: &IstioService| s.host("") == destination.host("");
    let mut r = RouteRule {
        destination: destination.clone(),
        precedence: None,
        match_: None,
        route: g
            .backend_refs
            .iter()
            .zip(percentages(&weights))
            .map(|(b, weight)| {
                let to = backend_service(b, ns);
                DestinationWeight {
                    destination: (!own(&to)).then_some(to),
                    labels: BTreeMap::new(),
                    weight: Some(weight),
                }
            })
            .collect(),
        redirect: None,
        rewrite: None,
        // Today's kinds take WebSocket upgrades on every route.
        websocket_upgrade: true,
        http_req_timeout: g
            .timeouts
            .as_ref()
            .and_then(|t| t.request.clone())
            .map(|timeout| HttpTimeout {
                simple_timeout: SimpleTimeoutPolicy {
                    timeout,
                    override_header_name: None,
                },
            }),
        http_req_retries: None,
        http_fault: None,
        l4_fault: None,
        mirror: None,
        cors_policy: None,
        append_headers: BTreeMap::new(),
        rate_limit: None,
        at_gateways: None,
    };
    for f in &g.filters {
        if let Some(h) = &f.request_header_modifier {
            r.append_headers.extend(
                h.add
                    .iter()
                    .map(|nv| (nv.name.to_ascii_lowercase(), nv.value.clone())),
            );
        }
        if let Some(to) = &f.request_redirect {
            r.redirect = Some(HttpRedirect {
                uri: to.path.as_ref().and_then(|p| p.replace_full_path.clone()),
                authority: to.hostname.clone(),
            });
        }
        if let Some(rw) = &f.url_rewrite {
            r.rewrite = Some(HttpRewrite {
                uri: rw
                    .path
                    .as_ref()
                    .and_then(|p| p.replace_prefix_match.clone()),
                authority: rw.hostname.clone(),
            });
        }
        if let Some(m) = &f.request_mirror {
            let to = backend_service(&m.backend_ref, ns);
            r.mirror = Some(if own(&to) { destination.clone() } else { to });
        }
    }
    r
}

fn http_route(rule: &Rule, route: &gateway::HttpRoute, out: &mut Vec<Rule>) {
    let ns = rule.metadata.namespace();
    for (p, parent) in route.parent_refs.iter().enumerate() {
        let destination = parent_service(parent, ns);
        let parent_part = if route.parent_refs.len() > 1 {
            format!("{p}-")
        } else {
            String::new()
        };
        for (i, g) in route.rules.iter().enumerate() {
            let base = gamma_rule(g, &destination, ns);
            let name = g.name.clone().unwrap_or_else(|| i.to_string());
            let matches: Vec<Option<&gateway::HttpRouteMatch>> = if g.matches.is_empty() {
                vec![None]
            } else {
                g.matches.iter().map(Some).collect()
            };
            for (j, m) in matches.iter().enumerate() {
                let mut r = base.clone();
                r.precedence = Some(specificity(*m));
                r.match_ = m.and_then(gamma_match);
                let suffix = if matches.len() > 1 {
                    format!("{parent_part}{name}-{j}")
                } else {
                    format!("{parent_part}{name}")
                };
                out.push(derived(rule, &suffix, Spec::RouteRule(Box::new(r))));
            }
        }
    }
}
