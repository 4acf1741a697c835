//! Istio 0.4's kinds written as today's (`meshctl convert`): the
//! RouteRules of a destination become one VirtualService (its HTTP routes
//! in precedence order), its DestinationPolicies and the versions routes
//! name one DestinationRule (subsets), each EgressRule a ServiceEntry.
//! What today's kinds cannot say is listed, never dropped quietly; the
//! way back is [`crate::convert::expand`].

use std::collections::BTreeMap;

use crate::path::FieldPath;
use crate::registry::HostName;
use crate::rules::networking::{
    self, ConnectionPool, ConsistentHashLb, DestinationRule, HttpMatch, HttpRoute, HttpSettings,
    LoadBalancerSettings, OutlierDetection, Percent, RouteDestination, ServiceEntry, Subset,
    TcpSettings, TrafficPolicy, VirtualService,
};
use crate::rules::{
    DestinationPolicy, EgressRule, IstioService, LoadBalancer, Metadata, RouteRule, Rule, Spec,
};

/// Something a rule says that today's kinds cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The rule (`route-rule/default/name`).
    pub rule: String,
    /// The field.
    pub path: FieldPath,
    /// What is lost.
    pub what: String,
}

/// Today's API version the conversion writes.
pub const TODAY: &str = "networking.istio.io/v1";

/// The 0.4 rules of `rules` as today's kinds (others pass unchanged), and
/// what could not be said.
pub fn upgrade(rules: &[Rule]) -> (Vec<Rule>, Vec<Loss>) {
    let mut u = Upgrade::default();
    for rule in rules {
        match &rule.spec {
            Spec::RouteRule(r) => u.route_rule(rule, r),
            Spec::DestinationPolicy(p) => u.policy(rule, p),
            Spec::EgressRule(e) => u.egress(rule, e),
            _ => u.passed.push(rule.clone()),
        }
    }
    u.finish()
}

/// A destination's rules gathered as they are read.
#[derive(Default)]
struct Destination {
    namespace: String,
    name: String,
    routes: Vec<(i64, HttpRoute)>,
    subsets: BTreeMap<String, BTreeMap<String, String>>,
    whole: Option<TrafficPolicy>,
    by_subset: BTreeMap<String, TrafficPolicy>,
}

#[derive(Default)]
struct Upgrade {
    destinations: BTreeMap<HostName, Destination>,
    entries: Vec<Rule>,
    passed: Vec<Rule>,
    losses: Vec<Loss>,
}

/// A subset's name from its labels: their values, as a DNS label.
fn subset_name(labels: &BTreeMap<String, String>) -> String {
    let raw: Vec<String> = labels.values().cloned().collect();
    let name: String = raw
        .join("-")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() { "all".into() } else { name }
}

/// A 0.4 service as today's host: its short name in its rule's namespace,
/// else its FQDN.
fn host(s: &IstioService, rule_namespace: &str) -> String {
    match (&s.service, &s.name) {
        (Some(h), _) => h.clone(),
        (None, Some(n))
            if s.namespace.as_deref().is_none_or(|ns| ns == rule_namespace)
                && s.domain.is_none() =>
        {
            n.clone()
        }
        _ => s
            .host(rule_namespace)
            .map(|h| h.to_string())
            .unwrap_or_default(),
    }
}

impl Upgrade {
    fn lose(&mut self, rule: &Rule, path: FieldPath, what: &str) {
        self.losses.push(Loss {
            rule: rule.key().to_string(),
            path,
            what: what.to_owned(),
        });
    }

    fn destination(&mut self, rule: &Rule, s: &IstioService) -> Option<&mut Destination> {
        let ns = rule.metadata.namespace();
        let key = s.host(ns)?;
        let d = self.destinations.entry(key).or_default();
        d.namespace = s.namespace.clone().unwrap_or_else(|| ns.to_owned());
        d.name = s.name.clone().unwrap_or_default();
        Some(d)
    }

    /// Names the subset `labels` selects (adding it).
    fn subset(d: &mut Destination, labels: &BTreeMap<String, String>) -> Option<String> {
        if labels.is_empty() {
            return None;
        }
        if let Some((name, _)) = d.subsets.iter().find(|(_, l)| *l == labels) {
            return Some(name.clone());
        }
        let base = subset_name(labels);
        let mut name = base.clone();
        let mut n = 2;
        while d.subsets.contains_key(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        d.subsets.insert(name.clone(), labels.clone());
        Some(name)
    }

    fn route_rule(&mut self, rule: &Rule, r: &RouteRule) {
        let spec = FieldPath::root().key("spec");
        let ns = rule.metadata.namespace().to_owned();
        for (field, set, what) in [
            ("l4Fault", r.l4_fault.is_some(), "TCP faults"),
            (
                "websocketUpgrade",
                !r.websocket_upgrade,
                "refusing WebSocket upgrades on this route (0.4's default; today's kinds take them on every route)",
            ),
            (
                "rateLimit",
                r.rate_limit.is_some(),
                "rate limits (the mesh's own field; keep it as a RouteRule)",
            ),
        ] {
            if set {
                self.lose(rule, spec.key(field), what);
            }
        }
        let source = r.match_.as_ref().and_then(|m| m.source.as_ref());
        if source.is_some_and(|s| s.name.is_some() || s.namespace.is_some()) {
            let what = "a source by service name (sourceLabels says the labels only)";
            self.lose(rule, spec.key("match").key("source"), what);
        }
        let dest_host = host(&r.destination, &ns);
        let Some(d) = self.destination(rule, &r.destination) else {
            return;
        };
        let mut http = HttpRoute {
            name: Some(rule.metadata.name.clone()),
            ..Default::default()
        };
        http.route = r
            .route
            .iter()
            .map(|w| {
                let (to, subset) = match &w.destination {
                    Some(other) => (host(other, &ns), None),
                    None => (dest_host.clone(), Upgrade::subset(d, &w.labels)),
                };
                RouteDestination {
                    destination: networking::Destination {
                        host: to,
                        subset,
                        port: None,
                    },
                    weight: (r.route.len() > 1).then_some(w.weight.unwrap_or(100)),
                    headers: None,
                }
            })
            .collect();
        if http.route.is_empty() && r.redirect.is_none() {
            http.route = vec![RouteDestination {
                destination: networking::Destination {
                    host: dest_host.clone(),
                    subset: None,
                    port: None,
                },
                ..Default::default()
            }];
        }
        http.matches = r.match_.as_ref().and_then(http_match).into_iter().collect();
        actions(&mut http, r, d, &dest_host, &ns);
        d.routes.push((r.precedence.unwrap_or(0), http));
    }

    fn policy(&mut self, rule: &Rule, p: &DestinationPolicy) {
        let spec = FieldPath::root().key("spec");
        if p.source.is_some() {
            self.lose(rule, spec.key("source"), "policies for one source");
        }
        if p.rate_limit.is_some() {
            let what = "rate limits (the mesh's own field; keep it as a DestinationPolicy)";
            self.lose(rule, spec.key("rateLimit"), what);
        }
        let t = traffic_policy(p);
        let Some(d) = self.destination(rule, &p.destination) else {
            return;
        };
        match Upgrade::subset(d, &p.destination.labels) {
            None => d.whole = Some(t),
            Some(name) => {
                d.by_subset.insert(name, t);
            }
        }
    }

    fn egress(&mut self, rule: &Rule, e: &EgressRule) {
        let Some(h) = &e.destination.service else {
            return;
        };
        let entry = ServiceEntry {
            hosts: vec![h.clone()],
            ports: e
                .ports
                .iter()
                .map(|p| networking::ServicePort {
                    number: p.port,
                    protocol: p.protocol.to_ascii_uppercase(),
                    name: Some(format!("{}-{}", p.protocol.to_ascii_lowercase(), p.port)),
                    target_port: None,
                })
                .collect(),
            location: Some("MESH_EXTERNAL".into()),
            resolution: Some(
                if e.endpoints.is_empty() {
                    "NONE"
                } else {
                    "STATIC"
                }
                .into(),
            ),
            addresses: None,
            endpoints: e
                .endpoints
                .iter()
                .map(|address| networking::WorkloadEntry {
                    address: address.clone(),
                    ports: None,
                    labels: None,
                    network: None,
                    locality: None,
                    weight: None,
                    service_account: None,
                })
                .collect(),
            workload_selector: None,
            export_to: None,
            subject_alt_names: None,
        };
        if h.parse::<std::net::IpAddr>().is_ok() || h.contains('/') {
            let what = "an address as a host: the mesh reads it, Istio wants a name in `hosts` and the address under `addresses`";
            self.lose(
                rule,
                FieldPath::root()
                    .key("spec")
                    .key("destination")
                    .key("service"),
                what,
            );
        }
        self.entries.push(Rule {
            api_version: TODAY.into(),
            metadata: Metadata {
                name: rule.metadata.name.clone(),
                namespace: rule.metadata.namespace.clone(),
                ..Default::default()
            },
            spec: Spec::ServiceEntry(Box::new(entry)),
        });
    }

    fn finish(self) -> (Vec<Rule>, Vec<Loss>) {
        let mut out = Vec::new();
        for (h, mut d) in self.destinations {
            let metadata = Metadata {
                name: if d.name.is_empty() {
                    h.to_string()
                } else {
                    d.name.clone()
                },
                namespace: Some(d.namespace.clone()),
                ..Default::default()
            };
            if !d.routes.is_empty() {
                // Highest precedence first; ties keep their order.
                d.routes.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
                let vs = VirtualService {
                    hosts: vec![d.name.clone()],
                    gateways: vec![],
                    http: d.routes.into_iter().map(|(_, r)| r).collect(),
                    tls: None,
                    tcp: None,
                    export_to: None,
                };
                out.push(Rule {
                    api_version: TODAY.into(),
                    metadata: metadata.clone(),
                    spec: Spec::VirtualService(Box::new(vs)),
                });
            }
            if !d.subsets.is_empty() || d.whole.is_some() {
                let dr = DestinationRule {
                    host: d.name.clone(),
                    traffic_policy: d.whole,
                    subsets: d
                        .subsets
                        .into_iter()
                        .map(|(name, labels)| Subset {
                            traffic_policy: d.by_subset.get(&name).cloned(),
                            name,
                            labels,
                        })
                        .collect(),
                    export_to: None,
                    workload_selector: None,
                };
                out.push(Rule {
                    api_version: TODAY.into(),
                    metadata,
                    spec: Spec::DestinationRule(Box::new(dr)),
                });
            }
        }
        out.extend(self.entries);
        out.extend(self.passed);
        (out, self.losses)
    }
}

/// A 0.4 match as today's (its source's labels only).
fn http_match(m: &crate::rules::MatchCondition) -> Option<HttpMatch> {
    let mut hm = HttpMatch {
        source_labels: m
            .source
            .as_ref()
            .map(|s| s.labels.clone())
            .unwrap_or_default(),
        ..Default::default()
    };
    let request = m.request.iter().flat_map(|q| q.headers.clone());
    for (name, value) in request {
        match name.as_str() {
            "uri" => hm.uri = Some(value),
            ":method" => hm.method = Some(value),
            _ => {
                hm.headers.insert(name, value);
            }
        }
    }
    (hm != HttpMatch::default()).then_some(hm)
}

/// A rule's actions on an HTTP route of today's kinds.
fn actions(http: &mut HttpRoute, r: &RouteRule, d: &mut Destination, dest_host: &str, ns: &str) {
    http.redirect = r.redirect.as_ref().map(|to| networking::Redirect {
        uri: to.uri.clone(),
        authority: to.authority.clone(),
        ..Default::default()
    });
    http.rewrite = r.rewrite.as_ref().map(|rw| networking::Rewrite {
        uri: rw.uri.clone(),
        authority: rw.authority.clone(),
        uri_regex_rewrite: None,
    });
    http.timeout = r
        .http_req_timeout
        .as_ref()
        .map(|t| t.simple_timeout.timeout.clone());
    http.retries = r.http_req_retries.as_ref().map(|t| networking::Retries {
        attempts: t.simple_retry.attempts,
        per_try_timeout: t.simple_retry.per_try_timeout.clone(),
        ..Default::default()
    });
    http.fault = r.http_fault.as_ref().map(|f| networking::Fault {
        delay: f.delay.as_ref().map(|x| networking::FaultDelay {
            fixed_delay: x.fixed_delay.clone(),
            percentage: x.percent.map(|value| Percent { value }),
            ..Default::default()
        }),
        abort: f.abort.as_ref().map(|x| networking::FaultAbort {
            http_status: x.http_status,
            percentage: x.percent.map(|value| Percent { value }),
            ..Default::default()
        }),
    });
    http.mirror = r.mirror.as_ref().map(|m| {
        let to = host(m, ns);
        let own = m.host(ns) == r.destination.host(ns);
        networking::Destination {
            host: if own { dest_host.to_owned() } else { to },
            subset: if own {
                Upgrade::subset(d, &m.labels)
            } else {
                None
            },
            port: None,
        }
    });
    http.cors_policy = r.cors_policy.as_ref().map(|c| networking::CorsPolicy {
        allow_origins: c
            .allow_origin
            .iter()
            .map(|o| crate::rules::StringMatch {
                exact: (o != "*").then(|| o.clone()),
                regex: (o == "*").then(|| ".*".to_owned()),
                ..Default::default()
            })
            .collect(),
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: c.max_age.clone(),
        allow_credentials: c.allow_credentials,
        ..Default::default()
    });
    if !r.append_headers.is_empty() {
        http.headers = Some(networking::Headers {
            request: Some(networking::HeaderOperations {
                add: r.append_headers.clone(),
                ..Default::default()
            }),
            response: None,
        });
    }
}

/// A DestinationPolicy's balancing and breaker as a traffic policy.
fn traffic_policy(p: &DestinationPolicy) -> TrafficPolicy {
    let cb = p.circuit_breaker.as_ref().map(|c| &c.simple_cb);
    let tcp = cb.and_then(|s| s.max_connections).map(|n| TcpSettings {
        max_connections: Some(n),
        ..Default::default()
    });
    let http = cb.map(|s| HttpSettings {
        http1_max_pending_requests: s.http_max_pending_requests,
        http2_max_requests: s.http_max_requests,
        max_requests_per_connection: s.http_max_requests_per_connection,
        max_retries: s.http_max_retries,
        ..Default::default()
    });
    let http = http.filter(|h| *h != HttpSettings::default());
    let outlier = cb.map(|s| OutlierDetection {
        consecutive_5xx_errors: s.http_consecutive_errors,
        interval: s.http_detection_interval.clone(),
        base_ejection_time: s.sleep_window.clone(),
        max_ejection_percent: s.http_max_ejection_percent,
        ..Default::default()
    });
    let outlier = outlier.filter(|o| *o != OutlierDetection::default());
    let load_balancer = match (&p.load_balancing, &p.consistent_hash) {
        (_, Some(h)) => Some(LoadBalancerSettings {
            consistent_hash: Some(ConsistentHashLb {
                http_header_name: h.http_header_name.clone(),
                use_source_ip: h.use_source_ip,
                http_cookie: h.http_cookie.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        (Some(lb), None) => Some(LoadBalancerSettings {
            simple: Some(
                match lb.name {
                    LoadBalancer::RoundRobin => "ROUND_ROBIN",
                    LoadBalancer::LeastConn => "LEAST_REQUEST",
                    LoadBalancer::Random => "RANDOM",
                }
                .into(),
            ),
            ..Default::default()
        }),
        (None, None) => None,
    };
    TrafficPolicy {
        load_balancer,
        connection_pool: (tcp.is_some() || http.is_some()).then_some(ConnectionPool { tcp, http }),
        outlier_detection: outlier,
        ..Default::default()
    }
}
