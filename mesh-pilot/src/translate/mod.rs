//! Registry + rules → the xDS resources one proxy needs. Pure functions:
//! the same inputs always give the same resources, in a stable order.
//!
//! Naming (as Istio users know it):
//! - clusters `outbound|<port>|<subset>|<host>` (subset empty for the whole
//!   service; a subset is named by its label values, sorted by key and
//!   joined with `-`, e.g. `outbound|80|v0.1|svcb.default.svc.cluster.local`),
//!   and `inbound|<port>||` for the proxy's own workload;
//! - listeners `virtualOutbound` (0.0.0.0:15001) and `virtualInbound`
//!   (0.0.0.0:15006), which hand connections to the virtual listeners
//!   `0.0.0.0_<port>` (outbound HTTP, routed by Host), `<vip>_<port>`
//!   (outbound TCP) and `<pod-ip>_<port>` (inbound).
//! - route configurations (RDS) named after their listener; endpoints
//!   (EDS) named after their cluster.
//!
//! A proxy's resources come in two parts, each translated on its own: the
//! outbound part, the same for every proxy with the same [`OutboundKey`]
//! (so pilot translates it once per key), and the inbound part of its own
//! workload.

mod authz;
mod build;
mod filters;
mod index;
mod policy;
mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use mesh_proto::envoy::config::cluster::v3::Cluster;
use mesh_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use mesh_proto::envoy::config::listener::v3::Listener;
use mesh_proto::envoy::config::route::v3::RouteConfiguration;
use mesh_rules::registry::{
    DEFAULT_DOMAIN, Protocol, Registry, Service, ServicePort, Workload, labels_match,
};
use mesh_rules::rules::ingress::{Gateway, GatewayRoute};
use mesh_rules::rules::sidecar::Sidecar;
use mesh_rules::rules::{EgressRule, IstioService, RouteRule};
use mesh_rules::{Rule, Spec};

pub use build::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, TRACE_CLUSTER};
pub use index::{Index, RuleIndex};
pub use mesh_proto::node::ProxyKind;
pub use tls::MtlsMode;

/// What the outbound capture does with destinations nothing configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboundPolicy {
    /// Refuse them (Istio 0.4's behaviour): only services and egress rules.
    #[default]
    RegistryOnly,
    /// Let them through to where they were going.
    AllowAny,
}

/// Mesh-wide settings of the translation.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// The cluster DNS domain.
    pub domain: String,
    /// Outbound traffic policy.
    pub outbound: OutboundPolicy,
    /// How proxies trace calls.
    pub tracing: TracingConfig,
    /// Whether and how proxies print a line per call to stdout (Istio's
    /// `accessLogFile: /dev/stdout` and `accessLogEncoding`).
    pub access_log: Option<AccessLogEncoding>,
    /// Mutual TLS between sidecars, when the mesh has a CA.
    pub mtls: Option<MtlsConfig>,
}

/// Mutual TLS across the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsConfig {
    /// The trust domain of the workloads' identities.
    pub trust_domain: String,
    /// How workloads take connections unless a policy says otherwise.
    pub mode: MtlsMode,
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogEncoding {
    /// One JSON object per line.
    Json,
    /// Envoy's text format.
    Text,
}

/// How proxies trace calls: the share of traces recorded and where spans
/// go (Istio's `meshConfig` sampling and tracer address).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The percentage (0–100) of traces recorded among those that start
    /// here or arrive without a decision (Istio's default is 1).
    pub sampling: f64,
    /// The collector (`host:port`) and how to reach it; without one,
    /// proxies carry trace context and export nothing (Envoy does not even
    /// add B3 headers).
    pub collector: Option<(String, TraceProtocol)>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            sampling: 1.0,
            collector: None,
        }
    }
}

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceProtocol {
    /// Zipkin v2 JSON over HTTP (`/api/v2/spans`, port 9411 by default).
    Zipkin,
    /// OTLP over gRPC (port 4317 by default).
    OtlpGrpc,
    /// OTLP over HTTP, protobuf (`/v1/traces`, port 4318 by default).
    OtlpHttp,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            domain: DEFAULT_DOMAIN.to_owned(),
            outbound: OutboundPolicy::RegistryOnly,
            tracing: TracingConfig::default(),
            access_log: None,
            mtls: None,
        }
    }
}

/// The proxy asking for configuration (from its xDS node).
#[derive(Debug, Clone, Default)]
pub struct ProxyNode {
    /// Namespace of its workload.
    pub namespace: String,
    /// Its workload's IP (for inbound listeners).
    pub ip: Option<IpAddr>,
    /// Its workload's labels (for inbound services and rule sources).
    pub labels: BTreeMap<String, String>,
    /// How traffic reaches the proxy.
    pub interception: Interception,
    /// Which proxy it is.
    pub kind: ProxyKind,
}

/// How a workload's traffic reaches its proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Interception {
    /// The pod's nat rules redirect it (15001 out, 15006 in).
    #[default]
    Capture,
    /// No redirection (Istio's `INTERCEPTION_MODE: NONE`): apps use the
    /// proxy as their HTTP proxy on `<ip>:15001`, callers reach the
    /// workload at `<ip>:<port>` where the proxy listens, and the proxy
    /// forwards inbound calls to the app at `app_ip:<port>`.
    Explicit {
        /// Where the app listens (127.0.0.1 in a pod of its own).
        app_ip: IpAddr,
    },
    /// A gateway (Istio's `router` node): no workload behind it; callers
    /// outside the mesh reach the ports its Gateways open.
    Gateway,
}

/// The resources for one proxy, or one part of them, by xDS type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// LDS: the outbound part's listeners (those traffic enters by first,
    /// then by name), then the inbound part's (by name).
    pub listeners: Vec<Listener>,
    /// RDS, by name.
    pub routes: Vec<RouteConfiguration>,
    /// CDS, by name.
    pub clusters: Vec<Cluster>,
    /// EDS, by cluster name.
    pub endpoints: Vec<ClusterLoadAssignment>,
}

impl Resources {
    /// Both parts together (`self` the outbound part).
    fn merge(mut self, inbound: Resources) -> Resources {
        self.listeners.extend(inbound.listeners);
        self.routes.extend(inbound.routes);
        self.clusters.extend(inbound.clusters);
        self.endpoints.extend(inbound.endpoints);
        self.routes.sort_by(|a, b| a.name.cmp(&b.name));
        self.clusters.sort_by(|a, b| a.name.cmp(&b.name));
        self.endpoints
            .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        self
    }
}

/// Everything translation reads.
pub struct Inputs<'a> {
    /// Services and workloads.
    pub registry: &'a Registry,
    /// Rules.
    pub rules: &'a [Rule],
    /// Mesh settings.
    pub mesh: &'a MeshConfig,
}

/// A protobuf map whose encoding depends only on its content. prost
/// writes a map in its iteration order, and each std `HashMap` seeds its
/// hasher anew; maps built with one hasher from entries in one order
/// iterate alike, so equal resources encode to equal bytes and keep their
/// versions (within this process: the seed is drawn at start).
pub(crate) fn stable_map<V>(
    entries: impl IntoIterator<Item = (String, V)>,
) -> std::collections::HashMap<String, V> {
    static HASHER: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    let mut entries: Vec<(String, V)> = entries.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map =
        std::collections::HashMap::with_capacity_and_hasher(entries.len(), HASHER.clone());
    map.extend(entries);
    map
}

/// A subset's name: its label values sorted by key, joined with `-`.
pub fn subset_name(labels: &BTreeMap<String, String>) -> String {
    labels.values().cloned().collect::<Vec<_>>().join("-")
}

/// `outbound|port|subset|host`.
pub fn outbound_cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// The port's declared protocol; `None` when the proxy must detect it.
fn service_protocol(p: &ServicePort) -> Option<Protocol> {
    p.declared_protocol()
}

/// A route rule that applies to calls from `node` to `service`.
fn applies(
    rule: &RouteRule,
    rule_ns: &str,
    service: &Service,
    node: &ProxyNode,
    inputs: &Inputs<'_>,
) -> bool {
    let host = rule.destination.host(rule_ns);
    if host.as_ref() != Some(&service.host(&inputs.mesh.domain)) {
        return false;
    }
    source_matches(rule, rule_ns, node, inputs.registry)
}

/// Whether `node` is a source the rule's `match.source` admits: in its
/// namespace (the rule's when not given), with its labels, and, when it
/// names a service, a workload that service selects.
fn source_matches(rule: &RouteRule, rule_ns: &str, node: &ProxyNode, registry: &Registry) -> bool {
    let Some(src) = rule.match_.as_ref().and_then(|m| m.source.as_ref()) else {
        return true;
    };
    let namespace = src.namespace.as_deref().unwrap_or(rule_ns);
    let in_service = |name: &str| {
        registry.services.iter().any(|s| {
            s.name == name && s.namespace == namespace && labels_match(&s.selector, &node.labels)
        })
    };
    labels_match(&src.labels, &node.labels)
        && namespace == node.namespace
        && src.name.as_deref().is_none_or(in_service)
}

/// Where an explicit proxy listens: its workload's IP, else loopback.
fn proxy_ip(node: &ProxyNode) -> IpAddr {
    node.ip.unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// The Sidecar that scopes `node`'s outbound configuration, if any.
fn scope<'a>(
    inputs: &Inputs<'a>,
    index: &Index,
    node: &ProxyNode,
) -> Option<(&'a Rule, &'a Sidecar)> {
    let (i, sidecar) =
        index
            .rules
            .sidecars
            .covering(inputs.rules, &node.namespace, &node.labels)?;
    Some((&inputs.rules[i], sidecar))
}

/// The mesh's outbound policy, unless `node`'s Sidecar sets its own.
fn outbound_policy(inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) -> OutboundPolicy {
    match scope(inputs, index, node).and_then(|(_, s)| s.allow_any()) {
        Some(true) => OutboundPolicy::AllowAny,
        Some(false) => OutboundPolicy::RegistryOnly,
        None => inputs.mesh.outbound,
    }
}

fn builder(inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) -> build::Builder {
    let mode = match node.interception {
        Interception::Capture => build::Mode::Capture,
        Interception::Explicit { app_ip } => build::Mode::Explicit {
            bind: proxy_ip(node),
            app: app_ip,
        },
        Interception::Gateway => build::Mode::Gateway,
    };
    build::Builder::new(outbound_policy(inputs, index, node), &node.namespace, mode)
        .with_tracing(&inputs.mesh.tracing)
        .with_access_log(inputs.mesh.access_log)
        .with_locality(mesh_rules::registry::Locality::of(&node.labels))
}

/// Translates for one proxy: [`translate_outbound`] and
/// [`translate_inbound`] together.
pub fn translate(inputs: &Inputs<'_>, node: &ProxyNode) -> Resources {
    let index = Index::of(inputs);
    translate_outbound(inputs, &index, node).merge(translate_inbound(inputs, &index, node))
}

/// What a proxy's outbound configuration depends on besides the inputs:
/// its namespace, which route rules' `match.source` it satisfies and
/// which Sidecar scopes it.
/// Proxies with equal keys get equal outbound resources, so pilot
/// translates once per key, not once per proxy. Rules are named, not
/// numbered, so that a rule written elsewhere changes no proxy's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutboundKey {
    /// The proxy's namespace.
    pub namespace: String,
    /// The route rules with a `match.source` it satisfies (namespace,
    /// name); rules without one apply to every proxy.
    pub sources: Vec<(String, String)>,
    /// For an explicit proxy, where its outbound proxy listener binds.
    pub explicit: Option<IpAddr>,
    /// Which proxy it is (Envoy gets a tracer).
    pub kind: ProxyKind,
    /// Where it runs (the failover order of endpoints depends on it).
    pub locality: mesh_rules::registry::Locality,
    /// The Sidecar that scopes it (namespace, name).
    pub scope: Option<(String, String)>,
    /// For a gateway, the Gateways that configure it (namespace, name).
    pub gateways: Option<Vec<(String, String)>>,
}

fn named(rule: &Rule) -> (String, String) {
    (
        rule.metadata.namespace().to_owned(),
        rule.metadata.name.clone(),
    )
}

/// The outbound key of `node`.
pub fn outbound_key(inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) -> OutboundKey {
    let sources = inputs
        .rules
        .iter()
        .filter(|r| match &r.spec {
            Spec::RouteRule(rr) => {
                rr.match_.as_ref().is_some_and(|m| m.source.is_some())
                    && source_matches(rr, r.metadata.namespace(), node, inputs.registry)
            }
            _ => false,
        })
        .map(named)
        .collect();
    OutboundKey {
        namespace: node.namespace.clone(),
        sources,
        explicit: match node.interception {
            Interception::Capture | Interception::Gateway => None,
            Interception::Explicit { .. } => Some(proxy_ip(node)),
        },
        kind: node.kind,
        locality: mesh_rules::registry::Locality::of(&node.labels),
        scope: scope(inputs, index, node).map(|(rule, _)| named(rule)),
        gateways: (node.interception == Interception::Gateway).then(|| {
            selecting_gateways(inputs, node)
                .map(|(rule, _)| named(rule))
                .collect()
        }),
    }
}

/// A digest of what `node`'s outbound part is translated from besides its
/// key: the mesh settings, the rules that may concern any service, and
/// each service it can reach with its endpoints and the rules that
/// concern its host. Between two generations, a key whose digest did not
/// change keeps its resources: an endpoint or rule change is translated
/// again only for the proxies that can reach it.
pub fn outbound_digest(inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) -> u64 {
    digest_of(index, reachable(inputs, index, node).1)
}

/// The same for `node`'s inbound part: the services its own workload is
/// behind.
pub fn inbound_digest(inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) -> u64 {
    digest_of(index, own_services(inputs, index, node))
}

/// The mesh settings, the rules that may concern any service, and each
/// of `services` with its endpoints and the rules that concern its host.
fn digest_of(index: &Index, services: impl IntoIterator<Item = usize>) -> u64 {
    use std::hash::Hasher;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.write_u64(index.mesh);
    h.write_u64(index.rules.global);
    for i in services {
        h.write_u64(index.digest(i));
        for rule in index.rules.concerning(index.host(i)) {
            h.write_u64(rule);
        }
    }
    h.finish()
}

/// The places of the registry's services `node`'s outbound part is made
/// of, in registry order.
pub fn reachable_services(inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) -> Vec<usize> {
    reachable(inputs, index, node).1
}

/// The places of the services `node`'s inbound part is made of (those its
/// own workload is behind), in registry order.
pub fn own_service_places(inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) -> Vec<usize> {
    own_services(inputs, index, node).collect()
}

/// The Sidecar scope of `node` (everything without one) and the places
/// of the registry's services in it, in registry order.
fn reachable<'a>(
    inputs: &Inputs<'a>,
    index: &Index,
    node: &'a ProxyNode,
) -> (Option<mesh_rules::rules::sidecar::Scope<'a>>, Vec<usize>) {
    let scope = scope(inputs, index, node).map(|(rule, s)| s.scope(rule.metadata.namespace()));
    let candidates = match scope.as_ref().and_then(|s| s.exact_hosts()) {
        // A scope of exact names: look those up rather than ask of every service.
        Some(hosts) => index.named(hosts),
        None => index.all().collect(),
    };
    let ids = match &scope {
        Some(s) => candidates
            .into_iter()
            .filter(|&i| s.admits(&inputs.registry.services[i].namespace, index.host(i)))
            .collect(),
        None => candidates,
    };
    (scope, ids)
}

/// The places of the services `node`'s own workload is behind.
fn own_services<'a>(
    inputs: &'a Inputs<'_>,
    index: &'a Index,
    node: &'a ProxyNode,
) -> impl Iterator<Item = usize> + 'a {
    let at = node.ip.map_or(&[][..], |ip| index.at(ip));
    at.iter()
        .copied()
        .filter(|&i| labels_match(&inputs.registry.services[i].selector, &node.labels))
}

/// The resources every proxy with `node`'s [`OutboundKey`] shares: capture
/// listeners (or the explicit proxy listener), outbound listeners, routes
/// and clusters, egress.
pub fn translate_outbound(inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) -> Resources {
    debug_assert!(index.fits(inputs.registry), "an index of other inputs");
    let mut b = builder(inputs, index, node);
    outbound(&mut b, inputs, index, node);
    b.finish_outbound()
}

/// The resources of `node`'s own workload only: inbound listeners
/// `<ip>_<port>`, their routes, and their clusters `inbound|<port>||`.
pub fn translate_inbound(inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) -> Resources {
    debug_assert!(index.fits(inputs.registry), "an index of other inputs");
    let mut b = builder(inputs, index, node);
    // A gateway has no workload behind it (even when a Service selects it).
    if node.interception != Interception::Gateway {
        inbound(&mut b, inputs, index, node);
    }
    b.finish_inbound()
}

fn outbound(b: &mut build::Builder, inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) {
    let route_rules: Vec<(&RouteRule, &str)> = inputs
        .rules
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::RouteRule(rr) if rr.at_gateways.is_none() => {
                Some((&**rr, r.metadata.namespace()))
            }
            _ => None,
        })
        .collect();
    // What the proxy's Sidecar lets it call (everything without one).
    let (scope, reachable) = reachable(inputs, index, node);
    let in_scope =
        |namespace: &str, host: &str| scope.as_ref().is_none_or(|s| s.admits(namespace, host));
    for i in reachable {
        let (service, host, endpoints) = index.service(inputs.registry, i);
        let endpoints: Vec<&Workload> = endpoints.iter().collect();
        for port in &service.ports {
            let mut rules: Vec<(&RouteRule, &str)> = route_rules
                .iter()
                .filter(|(r, ns)| applies(r, ns, service, node, inputs))
                .copied()
                .collect();
            // Highest precedence first; ties keep their stable order.
            rules.sort_by_key(|(r, _)| std::cmp::Reverse(r.precedence.unwrap_or(0)));
            b.service_port(
                service,
                port,
                service_protocol(port),
                host,
                &endpoints,
                &rules,
            );
            // Callers use TLS unless every endpoint takes plaintext only.
            if let Some(mtls) = &inputs.mesh.mtls
                && (endpoints.is_empty()
                    || endpoints.iter().any(|w| {
                        let target = port.target_port();
                        let mode = tls::peer_mode(
                            inputs.rules,
                            &w.namespace,
                            &w.labels,
                            target,
                            mtls.mode,
                        );
                        mode != MtlsMode::Disable
                    }))
            {
                let peers: BTreeSet<String> = endpoints
                    .iter()
                    .map(|w| w.identity(&mtls.trust_domain).uri())
                    .collect();
                let peers: Vec<String> = peers.into_iter().collect();
                let alpn: &[&str] = match service_protocol(port) {
                    Some(p) if build::upstream_http2(Some(p)) => &["h2"],
                    Some(p) if !p.is_http() => &[],
                    _ => &["http/1.1"],
                };
                b.secure_service(port.port, host, &peers, alpn, secret_source(node));
            }
        }
    }
    for rule in inputs.rules {
        if let Spec::EgressRule(e) = &rule.spec
            && e.destination
                .service
                .as_deref()
                .is_some_and(|host| in_scope(rule.metadata.namespace(), host))
        {
            egress(b, e);
        }
    }
    if node.interception == Interception::Gateway {
        gateway(b, inputs, index, node);
    }
    destination_policies(b, inputs);
}

/// The Gateways that configure a gateway `node` (their selector matches
/// its labels, in any namespace, as Istio's do by default).
fn selecting_gateways<'a>(
    inputs: &Inputs<'a>,
    node: &'a ProxyNode,
) -> impl Iterator<Item = (&'a Rule, &'a Gateway)> + 'a {
    inputs.rules.iter().filter_map(|r| match &r.spec {
        Spec::Gateway(g) if g.selects(&node.labels) => Some((r, &**g)),
        _ => None,
    })
}

/// A gateway's routes: for each HTTP server of each Gateway that
/// configures it, the routes of the VirtualServices bound to that Gateway
/// for the hosts the server serves, highest precedence first.
fn gateway(b: &mut build::Builder, inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) {
    let mut rules: Vec<(&RouteRule, &str, &GatewayRoute)> = inputs
        .rules
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::RouteRule(rr) => Some((&**rr, r.metadata.namespace(), rr.at_gateways.as_ref()?)),
            _ => None,
        })
        .collect();
    rules.sort_by_key(|(r, ..)| std::cmp::Reverse(r.precedence.unwrap_or(0)));
    for (rule, g) in selecting_gateways(inputs, node) {
        let named = named(rule);
        for server in &g.servers {
            if !server.port.protocol().is_some_and(|p| p.is_http()) {
                continue;
            }
            let Ok(port) = u16::try_from(server.port.number) else {
                continue;
            };
            for &(r, ns, at) in &rules {
                if !at.gateways.contains(&named)
                    || !server.serves(rule.metadata.namespace(), ns, &at.host)
                {
                    continue;
                }
                // Every cluster is made before the route names it.
                let wanted = r
                    .route
                    .iter()
                    .map(|d| (d.destination.as_ref(), &d.labels))
                    .chain(r.mirror.iter().map(|m| (Some(m), &m.labels)));
                let clusters: Vec<_> = wanted
                    .map(|(to, labels)| {
                        let name = gateway_target(b, inputs, index, to, labels, ns, port);
                        (to, labels, name)
                    })
                    .collect();
                let target = |to: Option<&IstioService>, labels: &BTreeMap<String, String>| {
                    clusters
                        .iter()
                        .find(|(t, l, _)| *t == to && *l == labels)
                        .map_or_else(|| BLACKHOLE_CLUSTER.to_owned(), |(.., name)| name.clone())
                };
                b.gateway_route((port, &server.port.name), &at.host, r, &target);
            }
        }
    }
}

/// The cluster a gateway sends to for the version `labels` of service
/// `to` (named in namespace `ns`), made on the way: the service's only
/// port, else its port numbered as the gateway's `port`, else its first.
/// A service the registry does not know gets an empty cluster (its calls
/// fail 503, as calls to a service without endpoints).
fn gateway_target(
    b: &mut build::Builder,
    inputs: &Inputs<'_>,
    index: &Index,
    to: Option<&IstioService>,
    labels: &BTreeMap<String, String>,
    ns: &str,
    port: u16,
) -> String {
    let Some(host) = to.and_then(|s| s.host(ns)) else {
        return BLACKHOLE_CLUSTER.to_owned();
    };
    let found = index
        .named(std::iter::once(host.as_str()))
        .into_iter()
        .next();
    let Some(i) = found else {
        let name = outbound_cluster_name(port, &subset_name(labels), host.as_str());
        b.unknown_cluster(&name);
        return name;
    };
    let (service, host, endpoints) = index.service(inputs.registry, i);
    let endpoints: Vec<&Workload> = endpoints.iter().collect();
    let Some(p) = (match service.ports.as_slice() {
        [only] => Some(only),
        ports => ports.iter().find(|p| p.port == port).or(ports.first()),
    }) else {
        return BLACKHOLE_CLUSTER.to_owned();
    };
    b.version_cluster(p, service_protocol(p), host, &endpoints, labels)
}

/// DestinationPolicies: the settings of their destination's outbound
/// clusters (those of its version when the policy names labels).
fn destination_policies(b: &mut build::Builder, inputs: &Inputs<'_>) {
    for rule in inputs.rules {
        let Spec::DestinationPolicy(p) = &rule.spec else {
            continue;
        };
        let Some(host) = p.destination.host(rule.metadata.namespace()) else {
            continue;
        };
        let known = inputs
            .registry
            .services
            .iter()
            .any(|s| s.host(&inputs.mesh.domain) == host);
        if known {
            let subset =
                (!p.destination.labels.is_empty()).then(|| subset_name(&p.destination.labels));
            let mut governed = std::collections::BTreeSet::new();
            for c in b.outbound_clusters(&host.to_string(), subset.as_deref()) {
                policy::apply(c, p);
                governed.insert(c.name.clone());
            }
            // Affinity: the routes to those clusters say what to hash.
            if let Some(h) = policy::hash_policy(p) {
                b.hash_routes(&governed, h);
            }
            // With ejection, endpoints fail over by locality: this zone
            // first, then this region, then the rest.
            else if policy::ejects(p) {
                b.locality_failover(&governed);
            }
        }
    }
}

/// Where `node` gets its certificate: mesh-proxy has its own, Envoy asks
/// the SDS agent in its pod.
fn secret_source(node: &ProxyNode) -> tls::SecretSource {
    match node.kind {
        ProxyKind::MeshProxy => tls::SecretSource::Own,
        ProxyKind::Envoy => tls::SecretSource::Agent,
    }
}

fn inbound(b: &mut build::Builder, inputs: &Inputs<'_>, index: &Index, node: &ProxyNode) {
    let Some(ip) = node.ip else { return };
    // The services this proxy's own workload is behind.
    for i in own_services(inputs, index, node) {
        let (service, host, _) = index.service(inputs.registry, i);
        let limit = inbound_rate_limit(inputs, service, node);
        let authz = inbound_authz(inputs, node);
        for port in &service.ports {
            let target = port.target_port();
            let mode = inputs.mesh.mtls.as_ref().map_or(MtlsMode::Disable, |m| {
                tls::peer_mode(inputs.rules, &node.namespace, &node.labels, target, m.mode)
            });
            let tls = (mode, secret_source(node));
            b.inbound(ip, target, service_protocol(port), limit, tls, &authz);
            b.mark_inbound_service(port.target_port(), host);
        }
    }
}

/// The AuthorizationPolicies that cover `node`'s workload: mesh-wide ones
/// (root namespace, no selector), its namespace's, and those selecting it.
fn inbound_authz(inputs: &Inputs<'_>, node: &ProxyNode) -> authz::InboundAuthz {
    use mesh_rules::rules::security::ROOT_NAMESPACE;
    let mut a = authz::InboundAuthz::default();
    for rule in inputs.rules {
        let Spec::AuthorizationPolicy(p) = &rule.spec else {
            continue;
        };
        let ns = rule.metadata.namespace();
        let covers = match &p.selector {
            None => ns == ROOT_NAMESPACE || ns == node.namespace,
            Some(s) => ns == node.namespace && labels_match(&s.match_labels, &node.labels),
        };
        if covers {
            a.add(ns, &rule.metadata.name, p);
        }
    }
    a
}

/// The rate limit a DestinationPolicy puts on `service`'s calls to this
/// workload: the policy for its version (by labels) before one for the
/// whole service.
fn inbound_rate_limit<'a>(
    inputs: &Inputs<'a>,
    service: &Service,
    node: &ProxyNode,
) -> Option<&'a mesh_rules::rules::RateLimit> {
    let host = service.host(&inputs.mesh.domain);
    let mut policies: Vec<_> = inputs
        .rules
        .iter()
        .filter_map(|rule| match &rule.spec {
            Spec::DestinationPolicy(p) => Some((rule, p)),
            _ => None,
        })
        .filter(|(rule, p)| {
            p.destination.host(rule.metadata.namespace()).as_ref() == Some(&host)
                && labels_match(&p.destination.labels, &node.labels)
        })
        .filter_map(|(_, p)| Some((p.destination.labels.len(), p.rate_limit.as_ref()?)))
        .collect();
    policies.sort_by_key(|(specific, _)| std::cmp::Reverse(*specific));
    policies.first().map(|(_, l)| *l)
}

fn egress(b: &mut build::Builder, e: &EgressRule) {
    let Some(host) = e.destination.service.as_deref() else {
        return;
    };
    for port in &e.ports {
        let Ok(number) = u16::try_from(port.port) else {
            continue;
        };
        match port.protocol() {
            Some(p) if p.is_http() => b.egress_http(host, number, &e.endpoints),
            Some(_) => b.egress_tcp(host, number),
            None => {}
        }
    }
}
