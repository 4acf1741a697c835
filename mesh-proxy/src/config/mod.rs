//! The proxy's runtime configuration, built once from xDS resources
//! (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment) into
//! lookup-ready tables, and swapped in whole: a request sees one snapshot
//! from start to end.

pub mod access_log;
pub mod breaker;
pub mod cors;
pub mod fault;
pub mod hash;
pub mod ratelimit;
pub mod rbac;
mod retry;
mod route;
pub mod service;
pub mod support;
pub mod tls;
pub mod trace;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use mesh_proto::envoy::config::bootstrap::v3::Bootstrap;
use mesh_proto::envoy::config::cluster::v3 as xcluster;
use mesh_proto::envoy::config::core::v3 as xcore;
use mesh_proto::envoy::config::endpoint::v3 as xendpoint;
use mesh_proto::envoy::config::listener::v3 as xlistener;
use mesh_proto::envoy::config::route::v3 as xroute;
use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_proto::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
use mesh_proto::envoy::extensions::upstreams::http::v3 as upstream_http;
use mesh_proto::google::protobuf::Any;
use mesh_rules::{FieldError, FieldPath};
use prost::Message;

pub use retry::{Failure, RETRY_ON, RetryPolicy};
pub use route::{
    Forward, HeaderMatch, HeaderOps, Mirror, PathMatch, Redirect, RequestView, Route, RouteAction,
    RouteTable, StringMatch, VirtualHost, WeightedSchedule,
};

/// A configuration that cannot be applied, at its field (proto names,
/// resources by name: `CDS[svcb].load_assignment`).
pub(crate) fn err(path: impl AsRef<str>, message: impl Into<String>) -> FieldError {
    FieldError::new(FieldPath::parse(path.as_ref()), message)
}

/// One immutable configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The version (from xDS, or `static` for a bootstrap file).
    pub version: String,
    /// Listeners to bind, by name.
    pub listeners: HashMap<String, Arc<Listener>>,
    /// The same listeners by address, for the capture ports' hand-off.
    by_address: HashMap<SocketAddr, Arc<Listener>>,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// The xDS resources this snapshot was built from, for `/config_dump`.
    pub resources: Resources,
    /// Whether the resources came from xDS (else from the bootstrap file).
    pub dynamic: bool,
    /// Counters by `stat_prefix` (HTTP connection managers, TCP proxies).
    pub prefix_stats: PrefixStatsByName,
}

/// Counters of one `stat_prefix`, as Envoy keeps `http.<prefix>.*` and
/// `tcp.<prefix>.*`.
#[derive(Debug, Default)]
pub struct PrefixStats {
    /// Downstream connections handled.
    pub downstream_cx_total: AtomicU64,
    /// Downstream requests by response class (index 1..=5: 1xx..5xx; HTTP).
    pub downstream_rq: [AtomicU64; 6],
}

impl PrefixStats {
    /// Counts a finished request.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.downstream_rq[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters of every `stat_prefix` a snapshot uses, HTTP and TCP apart.
#[derive(Debug, Default)]
pub struct PrefixStatsByName {
    /// `http.<prefix>`.
    pub http: std::collections::BTreeMap<String, Arc<PrefixStats>>,
    /// `tcp.<prefix>`.
    pub tcp: std::collections::BTreeMap<String, Arc<PrefixStats>>,
}

/// What building a snapshot reads besides the resource at hand: the
/// clusters and routes built so far, and the snapshot before this one,
/// whose counters (per endpoint, per `stat_prefix`) this one takes over,
/// so a new configuration never resets what `/stats` shows.
struct Build<'a> {
    /// The listener being built receives calls (`traffic_direction: INBOUND`).
    inbound: bool,
    clusters: HashMap<String, Arc<Cluster>>,
    routes: &'a [xroute::RouteConfiguration],
    previous: Option<&'a Snapshot>,
    stats: PrefixStatsByName,
}

impl Build<'_> {
    fn http_stats(&mut self, prefix: &str) -> Arc<PrefixStats> {
        let old = self.previous.map(|p| &p.prefix_stats.http);
        carried(&mut self.stats.http, old, prefix)
    }

    fn tcp_stats(&mut self, prefix: &str) -> Arc<PrefixStats> {
        let old = self.previous.map(|p| &p.prefix_stats.tcp);
        carried(&mut self.stats.tcp, old, prefix)
    }
}

/// `prefix`'s counters in `now`: those of the configuration before, when
/// it had them, else new ones.
fn carried(
    now: &mut std::collections::BTreeMap<String, Arc<PrefixStats>>,
    before: Option<&std::collections::BTreeMap<String, Arc<PrefixStats>>>,
    prefix: &str,
) -> Arc<PrefixStats> {
    let old = before.and_then(|b| b.get(prefix)).cloned();
    now.entry(prefix.to_owned())
        .or_insert_with(|| old.unwrap_or_default())
        .clone()
}

/// The counters of endpoint `address` of cluster `cluster` in `previous`,
/// or new ones.
fn endpoint_counters(
    previous: Option<&Snapshot>,
    cluster: &str,
    address: SocketAddr,
) -> Arc<EndpointCounters> {
    previous
        .and_then(|p| p.clusters.get(cluster))
        .and_then(|c| c.endpoints.iter().find(|e| e.address == address))
        .map(|e| e.counters.clone())
        .unwrap_or_default()
}

/// What a bootstrap file gives: the configuration, and where the admin
/// endpoint listens (if it says).
#[derive(Debug)]
pub struct Bootstrapped {
    /// The configuration.
    pub snapshot: Snapshot,
    /// `admin.address`.
    pub admin: Option<SocketAddr>,
    /// Who the proxy is (`node`), for the standard metrics.
    pub node: Option<mesh_proto::node::NodeMeta>,
}

/// The xDS resources of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Listeners.
    pub listeners: Vec<xlistener::Listener>,
    /// Clusters.
    pub clusters: Vec<xcluster::Cluster>,
    /// Route configurations that listeners name through RDS.
    pub routes: Vec<xroute::RouteConfiguration>,
    /// Endpoints of EDS clusters.
    pub endpoints: Vec<xendpoint::ClusterLoadAssignment>,
}

/// A listener and what it does with its connections.
#[derive(Debug)]
pub struct Listener {
    /// Name.
    pub name: String,
    /// Where it listens (or, when not bound, which original destination it takes).
    pub address: SocketAddr,
    /// Bind a socket (`false`: a virtual listener reached by hand-off only).
    pub bind: bool,
    /// On `::`, take IPv4 connections too (`ipv4_compat`): one dual-stack
    /// socket, as Envoy binds it.
    pub dual_stack: bool,
    /// Hand connections that were redirected to it to the listener matching
    /// their original destination (the capture ports 15001 and 15006).
    pub use_original_dst: bool,
    /// Its filter chains; one is chosen per connection.
    pub chains: Vec<FilterChain>,
    /// Listener filters that look at a connection's first bytes
    /// (`http_inspector`, `tls_inspector`) before a chain is chosen.
    pub inspect: Option<Inspect>,
}

/// What a listener's inspector filters detect, and for how long they wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspect {
    /// `http_inspector`: HTTP/1.x or HTTP/2 prior knowledge.
    pub http: bool,
    /// `tls_inspector`: a TLS ClientHello.
    pub tls: bool,
    /// How long to wait for the first bytes (`listener_filters_timeout`,
    /// 15 s when unset, as Envoy).
    pub timeout: Duration,
    /// After the timeout: go on undetected (`true`) or close.
    pub continue_on_timeout: bool,
}

/// A filter chain: which connections it takes, and what it runs.
#[derive(Debug)]
pub struct FilterChain {
    /// `filter_chain_match.application_protocols` (empty: any).
    pub application_protocols: Vec<String>,
    /// `filter_chain_match.transport_protocol` (`tls`, `raw_buffer`; none: any).
    pub transport_protocol: Option<String>,
    /// Its network filter.
    pub kind: ListenerKind,
    /// TLS terminated before the filter (`transport_socket`).
    pub tls: Option<Arc<tls::DownstreamTls>>,
    /// Network RBAC filters before it, in order.
    pub rbac: Vec<Arc<rbac::Rbac>>,
}

impl Listener {
    /// The chain for a connection whose first bytes showed `detected`
    /// (`None`: not inspected or timed out) and whose TLS ClientHello
    /// offered `alpn`, as Envoy matches: level by level (transport
    /// protocol, then application protocols), the chains naming the
    /// connection's value exactly are kept if there are any, else the
    /// chains naming none; the first left wins.
    pub fn chain_for(
        &self,
        detected: Option<crate::sniff::Detected>,
        alpn: &[String],
    ) -> Option<usize> {
        use crate::sniff::Detected;
        let (http, tls) = self.inspect.map_or((false, false), |i| (i.http, i.tls));
        let transport = match detected {
            Some(Detected::Tls) if tls => "tls",
            _ => "raw_buffer",
        };
        let offered: Vec<&str> = match detected {
            Some(Detected::Http1) if http => vec!["http/1.1", "http/1.0"],
            Some(Detected::Http2) if http => vec!["h2c"],
            Some(Detected::Tls) if tls => alpn.iter().map(String::as_str).collect(),
            _ => vec![],
        };
        let all: Vec<(usize, &FilterChain)> = self.chains.iter().enumerate().collect();
        let by_transport = most_specific(all, |c| match c.transport_protocol.as_deref() {
            None => Some(false),
            Some(t) => (t == transport).then_some(true),
        });
        let by_protocol = most_specific(by_transport, |c| {
            if c.application_protocols.is_empty() {
                Some(false)
            } else {
                let named = c.application_protocols.iter();
                named
                    .clone()
                    .any(|p| offered.contains(&p.as_str()))
                    .then_some(true)
            }
        });
        by_protocol.first().map(|(i, _)| *i)
    }
}

/// One level of Envoy's filter-chain match: `level` says of a chain
/// whether it names the connection's value (`Some(true)`), names nothing
/// (`Some(false)`), or names something else (`None`, out). The exact ones
/// are kept when there are any, else the ones that name nothing.
fn most_specific(
    chains: Vec<(usize, &FilterChain)>,
    level: impl Fn(&FilterChain) -> Option<bool>,
) -> Vec<(usize, &FilterChain)> {
    let (exact, any): (Vec<_>, Vec<_>) = chains
        .into_iter()
        .filter_map(|(i, c)| level(c).map(|e| (e, (i, c))))
        .partition(|(e, _)| *e);
    let pick = if exact.is_empty() { any } else { exact };
    pick.into_iter().map(|(_, c)| c).collect()
}

/// A listener's network filter.
#[derive(Debug)]
pub enum ListenerKind {
    /// HTTP connection manager with its routes.
    Http(Arc<HttpManager>),
    /// TCP proxy to one cluster, chosen per connection.
    Tcp(TcpProxy),
}

/// HTTP settings of a listener.
#[derive(Debug)]
pub struct HttpManager {
    /// Stats prefix.
    pub stat_prefix: String,
    /// Its counters (`http.<stat_prefix>`).
    pub stats: Arc<PrefixStats>,
    /// Generate `x-request-id` when absent (default true, as Envoy).
    pub generate_request_id: bool,
    /// The listener receives calls (`traffic_direction: INBOUND`): the
    /// standard metrics report as the destination.
    pub inbound: bool,
    /// Trace calls (`tracing` set): each call is a span, a client span on
    /// an outbound listener, a server span on an inbound one.
    pub tracing: Option<trace::TraceConfig>,
    /// Access logs (`access_log`; empty: none).
    pub access_logs: Arc<[access_log::AccessLog]>,
    /// Which HTTP versions downstream clients may speak (`codec_type`).
    pub codec: Codec,
    /// How long a client may take to send a request head
    /// (`request_headers_timeout`; `None`: no limit, set as 0s).
    pub request_headers_timeout: Option<Duration>,
    /// Routes.
    pub routes: RouteTable,
    /// The fault filter's own faults (`http_filters`), for routes without
    /// faults of their own.
    pub fault: Option<Arc<fault::Fault>>,
    /// The local rate limit filter's own bucket, for routes without one of
    /// their own.
    pub rate_limit: Option<Arc<ratelimit::RateLimit>>,
    /// RBAC filters, in order, before routing.
    pub rbac: Vec<Arc<rbac::Rbac>>,
    /// Upgrade types (lowercase) it knows, and whether each is on unless a
    /// route says otherwise (`upgrade_configs`; none: every upgrade is
    /// refused 403, as in Envoy).
    pub upgrades: Vec<(String, bool)>,
}

impl HttpManager {
    /// Whether an upgrade to `protocol` may go through on a route that
    /// says `by_route` of its types.
    pub fn allows_upgrade(&self, protocol: &str, by_route: &[(String, bool)]) -> bool {
        let protocol = protocol.to_ascii_lowercase();
        let known = self.upgrades.iter().find(|(t, _)| *t == protocol);
        let routed = by_route.iter().find(|(t, _)| *t == protocol);
        match (known, routed) {
            (None, _) => false,
            (Some(_), Some((_, on))) => *on,
            (Some((_, on)), None) => *on,
        }
    }
}

/// `upgrade_configs` as (lowercase type, enabled; unset is on).
fn upgrade_types<'a>(
    configs: impl Iterator<Item = (&'a str, Option<bool>)>,
) -> Vec<(String, bool)> {
    configs
        .map(|(t, on)| (t.to_ascii_lowercase(), on.unwrap_or(true)))
        .collect()
}

/// The downstream HTTP versions of an HTTP listener (Envoy's `codec_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/1.x, or HTTP/2 with prior knowledge, told by the first bytes.
    Auto,
    /// HTTP/1.x only.
    Http1,
    /// HTTP/2 (prior knowledge) only.
    Http2,
}

/// A request head begun but not complete by then has its connection
/// closed (no answer, as Envoy), when `request_headers_timeout` is not set. (Envoy has no limit
/// by default; a sidecar in front of every workload should not let slow
/// clients hold connections open.)
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP proxy settings of a listener.
#[derive(Debug)]
pub struct TcpProxy {
    /// Stats prefix.
    pub stat_prefix: String,
    /// Its counters (`tcp.<stat_prefix>`).
    pub stats: Arc<PrefixStats>,
    /// Clusters, chosen per connection.
    pub clusters: WeightedSchedule,
    /// The listener receives calls (`traffic_direction: INBOUND`).
    pub inbound: bool,
}

/// How endpoints of a cluster are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Each in turn.
    RoundRobin,
    /// The less busy of two random endpoints.
    LeastRequest,
    /// At random.
    Random,
    /// By the request's hash on a ring (at random without one).
    RingHash,
}

/// An upstream endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Address.
    pub address: SocketAddr,
    /// Whether it takes new requests.
    pub healthy: bool,
    /// Its priority (0 first; later ones take load as earlier ones lose
    /// usable endpoints).
    pub priority: u32,
    /// Its counters, shared with the same endpoint of the same cluster in
    /// every other configuration, so they survive configuration changes.
    pub counters: Arc<EndpointCounters>,
}

/// What is counted per endpoint.
#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// Requests in flight (for least-request balancing and `/clusters`).
    pub active: AtomicUsize,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests that failed (connect error, reset, 5xx).
    pub failures: AtomicU64,
    /// Outlier detection's view of it.
    pub health: breaker::EndpointHealth,
}

impl EndpointCounters {
    /// Counts a request (or TCP connection) to the endpoint and marks it
    /// busy until the guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(self)
    }
}

/// An endpoint busy with one request or connection (see [`EndpointCounters::start`]).
pub struct InFlight<'a>(&'a EndpointCounters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::ops::Deref for Endpoint {
    type Target = EndpointCounters;
    fn deref(&self) -> &EndpointCounters {
        &self.counters
    }
}

/// `address` as a URI authority (`1.2.3.4:80`, `[::1]:80`).
pub fn authority(address: SocketAddr) -> http::uri::Authority {
    http::uri::Authority::try_from(address.to_string())
        .expect("a socket address is a valid authority")
}

/// An upstream cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Name.
    pub name: String,
    /// Endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The endpoints that take traffic, in order.
    healthy: Vec<Arc<Endpoint>>,
    /// Balancing policy.
    pub lb: LbPolicy,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Speak HTTP/2 (prior knowledge) to the endpoints.
    pub http2: bool,
    /// Requests per upstream connection (0: no limit).
    pub max_requests_per_connection: u32,
    /// Connect to the connection's original destination (Envoy's
    /// ORIGINAL_DST cluster, the passthrough of ALLOW_ANY); `endpoints`
    /// then holds one placeholder that carries the counters.
    pub original_dst: bool,
    /// Circuit-breaker caps.
    pub limits: breaker::Limits,
    /// What is in flight (shared by workers, carried across configurations).
    pub load: Arc<breaker::Load>,
    /// Consecutive-5xx ejection, when configured.
    pub outlier: Option<breaker::Outlier>,
    /// The service behind it and whether its endpoints are sidecars.
    pub meta: service::ClusterMeta,
    /// TLS to the endpoints (`transport_socket`).
    pub tls: Option<Arc<tls::UpstreamTls>>,
    /// The same for TCP proxying: no ALPN.
    pub tls_opaque: Option<Arc<tls::UpstreamTls>>,
    /// The ring of a `RING_HASH` cluster (over `healthy`).
    ring: hash::Ring,
    /// Priority levels of the endpoints (1: one level).
    priorities: u32,
    next: AtomicUsize,
}

impl Cluster {
    /// Notes how a request to `endpoint` ended, for outlier detection.
    pub fn observe(&self, endpoint: &Endpoint, failed: bool) {
        if let Some(o) = &self.outlier {
            o.observe(&self.load, &self.healthy, endpoint, failed);
        }
    }

    /// Where one request or connection goes: an endpoint (for counters) and
    /// the address to connect to.
    ///
    /// A retry passes the endpoint that just failed as `avoid`, so it goes
    /// elsewhere when it can (Envoy's "previous hosts" retry predicate) and
    /// does not shift the round-robin order of other requests.
    ///
    /// `hash` is the request's key on a `RING_HASH` cluster.
    pub fn target(
        &self,
        original_dst: Option<SocketAddr>,
        avoid: Option<&Arc<Endpoint>>,
        hash: Option<u64>,
    ) -> Option<(&Arc<Endpoint>, SocketAddr)> {
        if self.original_dst {
            return Some((self.endpoints.first()?, original_dst?));
        }
        if self.lb == LbPolicy::RingHash
            && let Some(h) = hash
        {
            return self.on_ring(h, avoid).map(|e| (e, e.address));
        }
        self.pick(avoid).map(|e| (e, e.address))
    }

    /// The first endpoint clockwise from `hash` that is usable (not
    /// ejected, unless fewer than half are usable) and not `avoid`.
    fn on_ring(&self, hash: u64, avoid: Option<&Arc<Endpoint>>) -> Option<&Arc<Endpoint>> {
        let h = &self.healthy;
        let now = self.load.now_ms();
        let usable = h.iter().filter(|e| !self.ejected(e, now)).count();
        let panic = usable * 2 < h.len();
        let fine = |e: &Arc<Endpoint>| {
            (panic || !self.ejected(e, now)) && avoid.is_none_or(|a| !Arc::ptr_eq(a, e))
        };
        self.ring
            .from(hash)
            .map(|i| &h[i])
            .find(|e| fine(e))
            .or_else(|| self.ring.from(hash).map(|i| &h[i]).next())
    }

    /// Whether outlier detection holds `e` out at `now`.
    fn ejected(&self, e: &Endpoint, now: u64) -> bool {
        self.outlier.is_some() && e.health.ejected(now)
    }

    /// Picks a healthy endpoint among [`Cluster::candidates`].
    fn pick(&self, avoid: Option<&Arc<Endpoint>>) -> Option<&Arc<Endpoint>> {
        let h = &self.healthy;
        let Some(some) = self.candidates() else {
            let avoid = avoid.and_then(|a| h.iter().position(|e| Arc::ptr_eq(e, a)));
            return self.choose(h.len(), avoid, |k| &h[k]).map(|k| &h[k]);
        };
        let avoid = avoid.and_then(|a| some.iter().position(|&i| Arc::ptr_eq(&h[i], a)));
        self.choose(some.len(), avoid, |k| &h[some[k]])
            .map(|k| &h[some[k]])
    }

    /// The healthy endpoints (by place) that may take a request, or `None`
    /// for all of them: those outlier detection has not ejected, in the
    /// priority drawn as Envoy draws it — each priority takes its usable
    /// share × 1.4 (at most what is left) of the load, normalised when they
    /// fall short. With fewer than half usable, all (panic mode).
    fn candidates(&self) -> Option<Vec<usize>> {
        let h = &self.healthy;
        if self.outlier.is_none() && self.priorities <= 1 {
            return None;
        }
        let now = self.load.now_ms();
        let usable = |i: &usize| !self.ejected(&h[*i], now);
        let count = (0..h.len()).filter(usable).count();
        if count * 2 < h.len() || (count == h.len() && self.priorities <= 1) {
            return None;
        }
        let mut left = 100.0;
        let mut levels = Vec::new();
        for level in 0..self.priorities {
            let members: Vec<usize> = (0..h.len()).filter(|&i| h[i].priority == level).collect();
            if members.is_empty() {
                continue;
            }
            let up: Vec<usize> = members.iter().copied().filter(usable).collect();
            let load = (up.len() as f64 / members.len() as f64 * 140.0).min(left);
            left -= load;
            levels.push((up, load));
        }
        let total: f64 = levels.iter().map(|(_, l)| l).sum();
        let mut draw = fastrand::f64() * total;
        let last = levels.iter().rposition(|(up, _)| !up.is_empty())?;
        for (k, (up, load)) in levels.iter().enumerate() {
            if draw < *load || k == last {
                return Some(up.clone());
            }
            draw -= load;
        }
        None
    }

    /// Chooses one of `n` endpoints (`at` gives the k-th) by the cluster's
    /// policy; `avoid` is the place of one to skip when there are others.
    fn choose<'a>(
        &self,
        n: usize,
        avoid: Option<usize>,
        at: impl Fn(usize) -> &'a Arc<Endpoint>,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        if n > 1
            && let Some(i) = avoid
        {
            return Some(match self.lb {
                LbPolicy::RoundRobin => (i + 1) % n,
                _ => (i + 1 + fastrand::usize(..n - 1)) % n,
            });
        }
        Some(match self.lb {
            LbPolicy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            LbPolicy::Random | LbPolicy::RingHash => fastrand::usize(..n),
            LbPolicy::LeastRequest => {
                let (a, b) = (fastrand::usize(..n), fastrand::usize(..n));
                let busy = |k| at(k).active.load(Ordering::Relaxed);
                if busy(b) < busy(a) { b } else { a }
            }
        })
    }
}

fn duration(d: &Option<mesh_proto::google::protobuf::Duration>) -> Option<Duration> {
    d.as_ref()
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// A listener address's `ipv4_compat`, which only `::` may ask for.
fn ipv4_compat(
    a: &Option<xcore::Address>,
    address: SocketAddr,
    path: &str,
) -> Result<bool, FieldError> {
    use xcore::address::Address as A;
    let compat = match a.as_ref().and_then(|a| a.address.as_ref()) {
        Some(A::SocketAddress(sa)) => sa.ipv4_compat,
        _ => false,
    };
    if compat && address.ip() != std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED) {
        return Err(err(
            format!("{path}.socket_address.ipv4_compat"),
            "ipv4_compat needs the address `::`",
        ));
    }
    Ok(compat)
}

pub(crate) fn socket_address(
    a: &Option<xcore::Address>,
    path: &str,
) -> Result<SocketAddr, FieldError> {
    use xcore::address::Address as A;
    use xcore::socket_address::PortSpecifier;
    let Some(A::SocketAddress(sa)) = a.as_ref().and_then(|a| a.address.as_ref()) else {
        return Err(err(path, "a socket_address is required"));
    };
    let ip: std::net::IpAddr = sa.address.parse().map_err(|_| {
        err(
            format!("{path}.socket_address.address"),
            format!("`{}` is not an IP address", sa.address),
        )
    })?;
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
        _ => {
            return Err(err(
                format!("{path}.socket_address.port_value"),
                "a port_value 0..=65535 is required",
            ));
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// Refuses a resource as xDS carries it (its type, encoded bytes) when it
/// sets a field mesh-proxy does not apply; the error names the resource
/// (`LDS[name]`) and the field, so the NACK says exactly what was not
/// understood.
pub fn check_resource(
    pool: &prost_reflect::DescriptorPool,
    kind: mesh_proto::types::XdsType,
    name: &str,
    bytes: &[u8],
) -> Result<(), FieldError> {
    let full = kind.message_name();
    let Some(desc) = pool.get_message_by_name(full) else {
        return Err(err(
            format!("{kind}[{name}]"),
            format!("type {full} is not supported"),
        ));
    };
    let msg = prost_reflect::DynamicMessage::decode(desc, bytes)
        .map_err(|e| err(format!("{kind}[{name}]"), format!("cannot decode: {e}")))?;
    support::check(&msg).map_err(|mut problems| {
        problems
            .swap_remove(0)
            .under(&FieldPath::root().key(kind.to_string()).name(name))
    })
}

fn unpack<M: Message + Default + prost::Name>(any: &Any, path: &str) -> Result<M, FieldError> {
    M::decode(any.value.as_slice())
        .map_err(|e| err(path, format!("cannot decode {}: {e}", M::full_name())))
}

fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

impl Snapshot {
    /// The first place that needs the workload's certificate (a TLS
    /// cluster or filter chain), if any.
    pub fn needs_identity(&self) -> Option<String> {
        let cluster = self.clusters.values().find(|c| c.tls.is_some());
        if let Some(c) = cluster {
            return Some(format!("cluster {}", c.name));
        }
        self.listeners
            .values()
            .find(|l| l.chains.iter().any(|c| c.tls.is_some()))
            .map(|l| format!("listener {}", l.name))
    }

    /// The HTTP settings of chain `chain` of listener `name`, if that is an
    /// HTTP chain.
    pub fn http_manager(&self, name: &str, chain: usize) -> Option<&HttpManager> {
        match &self.listeners.get(name)?.chains.get(chain)?.kind {
            ListenerKind::Http(m) => Some(m),
            ListenerKind::Tcp(_) => None,
        }
    }

    /// No listeners, no clusters: what a sidecar has before its first xDS response.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: String::new(),
            listeners: HashMap::new(),
            by_address: HashMap::new(),
            clusters: HashMap::new(),
            resources: Resources::default(),
            dynamic: true,
            prefix_stats: PrefixStatsByName::default(),
        }
    }

    /// Builds a snapshot from xDS resources. Each resource is expected to
    /// have passed [`check_resource`] when it arrived.
    pub fn from_xds(
        version: &str,
        resources: Resources,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, FieldError> {
        let mut snap = Snapshot::build(version, resources, "", previous)?;
        snap.dynamic = true;
        Ok(snap)
    }

    /// The listener that takes connections originally meant for `dst`:
    /// the one with exactly that address, else the one on `0.0.0.0`/`::`
    /// with that port.
    pub fn listener_for(&self, dst: SocketAddr) -> Option<&Arc<Listener>> {
        self.by_address.get(&dst).or_else(|| {
            let any = match dst {
                SocketAddr::V4(_) => std::net::IpAddr::from([0u8; 4]),
                SocketAddr::V6(_) => std::net::IpAddr::from([0u16; 8]),
            };
            self.by_address.get(&SocketAddr::new(any, dst.port()))
        })
    }

    /// Builds a snapshot from a bootstrap's static resources, refusing
    /// anything mesh-proxy does not apply. Returns the admin address too.
    pub fn from_bootstrap(
        b: &Bootstrap,
        previous: Option<&Snapshot>,
    ) -> Result<Bootstrapped, FieldError> {
        if let Err(mut problems) = support::check(&mesh_proto::json::to_dynamic(
            mesh_proto::descriptors::Schema::Proxy,
            b,
        )) {
            return Err(problems.swap_remove(0));
        }
        let admin = match b.admin.as_ref().and_then(|a| a.address.as_ref()) {
            Some(_) => Some(socket_address(
                &b.admin.as_ref().and_then(|a| a.address.clone()),
                "admin.address",
            )?),
            None => None,
        };
        let res = b.static_resources.clone().unwrap_or_default();
        let snap = Snapshot::build(
            "static",
            Resources {
                listeners: res.listeners,
                clusters: res.clusters,
                ..Resources::default()
            },
            "static_resources.",
            previous,
        )?;
        Ok(Bootstrapped {
            snapshot: snap,
            admin,
            node: b.node.as_ref().map(mesh_proto::node::NodeMeta::from_node),
        })
    }

    /// Builds a snapshot from resources; `prefix` is prepended to error paths.
    ///
    /// Routes and endpoints that listeners and clusters name but that have
    /// not arrived yet are empty (404, 503) until they do, as in Envoy.
    pub fn build(
        version: &str,
        resources: Resources,
        prefix: &str,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, FieldError> {
        let assignments: HashMap<&str, (usize, &xendpoint::ClusterLoadAssignment)> = resources
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, a)| (a.cluster_name.as_str(), (i, a)))
            .collect();
        let mut clusters = HashMap::new();
        for (i, c) in resources.clusters.iter().enumerate() {
            let path = format!("{prefix}clusters[{i}]");
            let cluster = build_cluster(c, &path, &assignments, previous)?;
            if clusters.insert(c.name.clone(), Arc::new(cluster)).is_some() {
                return Err(err(
                    format!("{path}.name"),
                    format!("cluster `{}` is defined twice", c.name),
                ));
            }
        }
        let mut listeners = HashMap::new();
        let mut by_address = HashMap::new();
        let mut b = Build {
            inbound: false,
            clusters,
            routes: &resources.routes,
            previous,
            stats: PrefixStatsByName::default(),
        };
        for (i, l) in resources.listeners.iter().enumerate() {
            let path = format!("{prefix}listeners[{i}]");
            let built = Arc::new(build_listener(l, &path, &mut b)?);
            // Port 0 asks the kernel for any port: no two can clash.
            if built.address.port() != 0
                && let Some(other) = by_address.insert(built.address, built.clone())
            {
                return Err(err(
                    format!("{path}.address"),
                    format!(
                        "listener `{}` has the address {} of listener `{}`",
                        l.name, built.address, other.name
                    ),
                ));
            }
            if listeners.insert(l.name.clone(), built).is_some() {
                return Err(err(
                    format!("{path}.name"),
                    format!("listener `{}` is defined twice", l.name),
                ));
            }
        }
        let Build {
            clusters, stats, ..
        } = b;
        Ok(Snapshot {
            version: version.to_owned(),
            listeners,
            by_address,
            clusters,
            resources,
            dynamic: false,
            prefix_stats: stats,
        })
    }
}

/// Whether the cluster is ORIGINAL_DST, and whether EDS fills it.
fn discovery(c: &xcluster::Cluster, path: &str) -> Result<(bool, bool), FieldError> {
    use xcluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    Ok(match c.cluster_discovery_type {
        None => (false, false),
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Static as i32 => (false, false),
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::OriginalDst as i32 => {
            (true, false)
        }
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32 => (false, true),
        _ => {
            return Err(err(
                format!("{path}.type"),
                "use STATIC, EDS or ORIGINAL_DST",
            ));
        }
    })
}

/// The cluster's balancing (CLUSTER_PROVIDED only for ORIGINAL_DST).
fn lb_policy(
    c: &xcluster::Cluster,
    path: &str,
    original_dst: bool,
) -> Result<LbPolicy, FieldError> {
    use xcluster::cluster::LbPolicy as X;
    Ok(match X::try_from(c.lb_policy) {
        Ok(X::RoundRobin) => LbPolicy::RoundRobin,
        Ok(X::LeastRequest) => LbPolicy::LeastRequest,
        Ok(X::Random) => LbPolicy::Random,
        Ok(X::RingHash) => LbPolicy::RingHash,
        Ok(X::ClusterProvided) if original_dst => LbPolicy::RoundRobin,
        _ => {
            return Err(err(
                format!("{path}.lb_policy"),
                "use ROUND_ROBIN, LEAST_REQUEST, RANDOM or RING_HASH (CLUSTER_PROVIDED with ORIGINAL_DST)",
            ));
        }
    })
}

fn build_cluster(
    c: &xcluster::Cluster,
    path: &str,
    assignments: &HashMap<&str, (usize, &xendpoint::ClusterLoadAssignment)>,
    previous: Option<&Snapshot>,
) -> Result<Cluster, FieldError> {
    if c.name.is_empty() {
        return Err(err(format!("{path}.name"), "a cluster needs a name"));
    }
    let (original_dst, eds) = discovery(c, path)?;
    if (eds || original_dst) && c.load_assignment.is_some() {
        let why = if eds {
            "an EDS cluster takes its endpoints from EDS"
        } else {
            "an ORIGINAL_DST cluster has no endpoints"
        };
        return Err(err(format!("{path}.load_assignment"), why));
    }
    let lb = lb_policy(c, path, original_dst)?;
    let (http2, max_requests_per_connection) = protocol_options(c, path)?;
    let assignment = assignment_of(c, path, eds, assignments);
    let counters = |address| endpoint_counters(previous, &c.name, address);
    let mut endpoints = match assignment {
        Some((la, lpath)) => cluster_endpoints(la, &lpath, counters)?,
        None => Vec::new(),
    };
    if original_dst {
        let address = SocketAddr::from(([0, 0, 0, 0], 0));
        endpoints.push(Arc::new(Endpoint {
            address,
            healthy: true,
            priority: 0,
            counters: counters(address),
        }));
    }
    let healthy: Vec<Arc<Endpoint>> = endpoints.iter().filter(|e| e.healthy).cloned().collect();
    let priorities = endpoints.iter().map(|e| e.priority + 1).max().unwrap_or(1);
    if lb == LbPolicy::RingHash && priorities > 1 {
        return Err(err(
            format!("{path}.lb_policy"),
            "RING_HASH over several endpoint priorities is not supported",
        ));
    }
    let upstream_tls = tls::upstream(&c.transport_socket, path)?;
    let ring = if lb == LbPolicy::RingHash {
        hash::Ring::build(&healthy.iter().map(|e| e.address).collect::<Vec<_>>())
    } else {
        hash::Ring::default()
    };
    Ok(Cluster {
        name: c.name.clone(),
        healthy,
        ring,
        priorities,
        endpoints,
        lb,
        connect_timeout: duration(&c.connect_timeout).unwrap_or(Duration::from_secs(5)),
        http2,
        max_requests_per_connection,
        original_dst,
        limits: breaker::limits(c, path)?,
        load: previous
            .and_then(|p| p.clusters.get(&c.name))
            .map(|p| p.load.clone())
            .unwrap_or_default(),
        outlier: breaker::Outlier::from_xds(&c.outlier_detection, path)?,
        meta: service::ClusterMeta::of(c, path)?,
        tls_opaque: upstream_tls.as_ref().map(|t| Arc::new(t.opaque())),
        tls: upstream_tls.map(Arc::new),
        next: AtomicUsize::new(0),
    })
}

/// The cluster's load assignment and its path: from EDS (by service name,
/// else the cluster's name) or its own.
fn assignment_of<'a>(
    c: &'a xcluster::Cluster,
    path: &str,
    eds: bool,
    assignments: &HashMap<&str, (usize, &'a xendpoint::ClusterLoadAssignment)>,
) -> Option<(&'a xendpoint::ClusterLoadAssignment, String)> {
    if !eds {
        let la = c.load_assignment.as_ref()?;
        return Some((la, format!("{path}.load_assignment")));
    }
    let service = c
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(&c.name);
    assignments
        .get(service)
        .map(|(k, a)| (*a, format!("endpoints[{k}]")))
}

/// A load assignment's endpoints; `counters` gives each its counters.
fn cluster_endpoints(
    la: &xendpoint::ClusterLoadAssignment,
    lpath: &str,
    counters: impl Fn(SocketAddr) -> Arc<EndpointCounters>,
) -> Result<Vec<Arc<Endpoint>>, FieldError> {
    use mesh_proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let mut endpoints = Vec::new();
    for (i, group) in la.endpoints.iter().enumerate() {
        for (j, lb_ep) in group.lb_endpoints.iter().enumerate() {
            let epath = format!("{lpath}.endpoints[{i}].lb_endpoints[{j}]");
            let Some(HostIdentifier::Endpoint(ep)) = &lb_ep.host_identifier else {
                return Err(err(&epath, "an endpoint with an address is required"));
            };
            let address = socket_address(&ep.address, &format!("{epath}.endpoint.address"))?;
            // HealthStatus: UNKNOWN(0), HEALTHY(1), DEGRADED(5) take traffic; others do not.
            let healthy = matches!(lb_ep.health_status, 0 | 1 | 5);
            endpoints.push(Arc::new(Endpoint {
                address,
                healthy,
                priority: group.priority,
                counters: counters(address),
            }));
        }
    }
    Ok(endpoints)
}

/// What the cluster's protocol options ask for: HTTP/2 upstream, and how
/// many requests a connection carries (0: no limit).
fn protocol_options(c: &xcluster::Cluster, path: &str) -> Result<(bool, u32), FieldError> {
    use upstream_http::http_protocol_options::UpstreamProtocolOptions;
    use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
    let mut http2 = false;
    let mut max_requests = 0;
    for (key, any) in &c.typed_extension_protocol_options {
        let p = format!("{path}.typed_extension_protocol_options.{key}");
        let opts: upstream_http::HttpProtocolOptions = unpack(any, &p)?;
        if let Some(n) = opts
            .common_http_protocol_options
            .as_ref()
            .and_then(|o| o.max_requests_per_connection)
        {
            max_requests = n.value;
        }
        if let Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) = opts.upstream_protocol_options
        {
            http2 = matches!(
                e.protocol_config,
                Some(ProtocolConfig::Http2ProtocolOptions(_))
            );
        }
    }
    Ok((http2, max_requests))
}

fn build_listener(
    l: &xlistener::Listener,
    path: &str,
    b: &mut Build<'_>,
) -> Result<Listener, FieldError> {
    let address = socket_address(&l.address, &format!("{path}.address"))?;
    let dual_stack = ipv4_compat(&l.address, address, &format!("{path}.address"))?;
    if l.filter_chains.is_empty() {
        return Err(err(
            format!("{path}.filter_chains"),
            "at least one filter chain is required",
        ));
    }
    b.inbound = l.traffic_direction == xcore::TrafficDirection::Inbound as i32;
    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, chain)| build_chain(chain, &format!("{path}.filter_chains[{i}]"), b))
        .collect::<Result<Vec<_>, _>>()?;
    let mut inspect: Option<Inspect> = None;
    for (i, f) in l.listener_filters.iter().enumerate() {
        let fpath = format!("{path}.listener_filters[{i}]");
        use xlistener::listener_filter::ConfigType;
        let t = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => type_name(any).to_owned(),
            _ => {
                return Err(err(
                    format!("{fpath}.typed_config"),
                    "a typed_config is required",
                ));
            }
        };
        let i = inspect.get_or_insert(Inspect {
            http: false,
            tls: false,
            timeout: duration(&l.listener_filters_timeout).unwrap_or(Duration::from_secs(15)),
            continue_on_timeout: l.continue_on_listener_filters_timeout,
        });
        match t.as_str() {
            "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" => i.http = true,
            "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" => i.tls = true,
            other => {
                return Err(err(
                    format!("{fpath}.typed_config"),
                    format!(
                        "listener filter {other} is not supported (http_inspector and tls_inspector are)"
                    ),
                ));
            }
        }
    }
    let unmatched = chains
        .iter()
        .filter(|c| c.application_protocols.is_empty() && c.transport_protocol.is_none())
        .count();
    if unmatched > 1 {
        return Err(err(
            format!("{path}.filter_chains"),
            "more than one filter chain matches every connection (give each a distinct filter_chain_match)",
        ));
    }
    Ok(Listener {
        name: l.name.clone(),
        address,
        dual_stack,
        bind: l.bind_to_port.as_ref().is_none_or(|b| b.value),
        use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
        chains,
        inspect,
    })
}

fn build_chain(
    chain: &xlistener::FilterChain,
    path: &str,
    b: &mut Build<'_>,
) -> Result<FilterChain, FieldError> {
    use xlistener::filter::ConfigType;
    let Some((filter, before)) = chain.filters.split_last() else {
        return Err(err(
            format!("{path}.filters"),
            "a network filter (HTTP connection manager or TCP proxy) is required",
        ));
    };
    let mut network_rbac = Vec::new();
    for (i, f) in before.iter().enumerate() {
        let fpath = format!("{path}.filters[{i}].typed_config");
        match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if type_name(any) == rbac::NETWORK_TYPE => {
                let r: mesh_proto::envoy::extensions::filters::network::rbac::v3::Rbac =
                    unpack(any, &fpath)?;
                let rules = r.rules.unwrap_or_default();
                network_rbac.push(Arc::new(rbac::build(&rules, &format!("{fpath}.rules"))?));
            }
            _ => {
                return Err(err(
                    fpath,
                    "only RBAC filters may come before the last network filter",
                ));
            }
        }
    }
    let fpath = format!("{path}.filters[{}].typed_config", before.len());
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
        return Err(err(fpath, "a typed_config is required"));
    };
    let kind = match type_name(any) {
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
            let m: hcm::HttpConnectionManager = unpack(any, &fpath)?;
            ListenerKind::Http(Arc::new(build_http(&m, &fpath, b)?))
        }
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => {
            let t: tcp_proxy::TcpProxy = unpack(any, &fpath)?;
            use tcp_proxy::tcp_proxy::ClusterSpecifier;
            let entries = match &t.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
                Some(ClusterSpecifier::WeightedClusters(w)) => w
                    .clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.weight))
                    .collect(),
                None => return Err(err(format!("{fpath}.cluster"), "a cluster is required")),
            };
            ListenerKind::Tcp(TcpProxy {
                inbound: b.inbound,
                stats: b.tcp_stats(&t.stat_prefix),
                stat_prefix: t.stat_prefix,
                clusters: WeightedSchedule::new(
                    &entries,
                    &b.clusters,
                    &format!("{fpath}.weighted_clusters"),
                )?,
            })
        }
        other => {
            return Err(err(
                fpath,
                format!("network filter {other} is not supported"),
            ));
        }
    };
    let m = chain.filter_chain_match.clone().unwrap_or_default();
    let transport_protocol = (!m.transport_protocol.is_empty()).then_some(m.transport_protocol);
    if let Some(t) = &transport_protocol
        && t != "tls"
        && t != "raw_buffer"
    {
        return Err(err(
            format!("{path}.filter_chain_match.transport_protocol"),
            format!("{t:?} is not a transport protocol (tls, raw_buffer)"),
        ));
    }
    Ok(FilterChain {
        application_protocols: m.application_protocols,
        transport_protocol,
        kind,
        tls: tls::downstream(&chain.transport_socket, path)?.map(Arc::new),
        rbac: network_rbac,
    })
}

/// The HTTP filters: the router, and the fault filter whose own faults
/// (if any) are the default of routes without theirs.
/// What the HTTP filters (`http_filters`) configure for every route: the
/// fault filter's faults and the local rate limit filter's bucket.
#[derive(Default)]
struct ManagerFilters {
    fault: Option<Arc<fault::Fault>>,
    rate_limit: Option<Arc<ratelimit::RateLimit>>,
    rbac: Vec<Arc<rbac::Rbac>>,
}

fn http_filters(m: &hcm::HttpConnectionManager, path: &str) -> Result<ManagerFilters, FieldError> {
    let mut out = ManagerFilters::default();
    for (i, f) in m.http_filters.iter().enumerate() {
        use hcm::http_filter::ConfigType;
        let fpath = format!("{path}.http_filters[{i}]");
        let tpath = format!("{fpath}.typed_config");
        match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if type_name(any) == fault::TYPE => {
                let built = fault::build(&unpack(any, &tpath)?, &tpath)?;
                // An empty filter config only enables per-route faults.
                if built.delay.is_some() || built.abort.is_some() {
                    out.fault = Some(Arc::new(built));
                }
            }
            Some(ConfigType::TypedConfig(any)) if type_name(any) == rbac::HTTP_TYPE => {
                let r: mesh_proto::envoy::extensions::filters::http::rbac::v3::Rbac =
                    unpack(any, &tpath)?;
                let rules = r.rules.unwrap_or_default();
                out.rbac
                    .push(Arc::new(rbac::build(&rules, &format!("{tpath}.rules"))?));
            }
            Some(ConfigType::TypedConfig(any)) if type_name(any) == ratelimit::TYPE => {
                // Without a bucket it only enables per-route limits.
                out.rate_limit = ratelimit::build(&unpack(any, &tpath)?, &tpath)?.map(Arc::new);
            }
            Some(ConfigType::TypedConfig(any))
                if type_name(any) == "envoy.extensions.filters.http.router.v3.Router"
                    || type_name(any) == cors::FILTER_TYPE => {}
            None if f.name == "envoy.filters.http.router" => {}
            _ => {
                return Err(err(
                    fpath,
                    format!(
                        "HTTP filter {} is not supported (the router, fault, CORS, local rate limit and RBAC filters are)",
                        f.name
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn build_http(
    m: &hcm::HttpConnectionManager,
    path: &str,
    b: &mut Build<'_>,
) -> Result<HttpManager, FieldError> {
    let routes = b.routes;
    use hcm::http_connection_manager::RouteSpecifier;
    let pending = xroute::RouteConfiguration::default();
    let (rc, rc_path) = match &m.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => (rc, format!("{path}.route_config")),
        Some(RouteSpecifier::Rds(rds)) => {
            match routes.iter().position(|r| r.name == rds.route_config_name) {
                Some(k) => (&routes[k], format!("routes[{k}]")),
                None => (&pending, format!("{path}.rds")),
            }
        }
        _ => {
            return Err(err(
                format!("{path}.route_config"),
                "an inline route_config or rds is required",
            ));
        }
    };
    let ManagerFilters {
        fault,
        rate_limit,
        rbac,
    } = http_filters(m, path)?;
    use hcm::http_connection_manager::CodecType;
    let codec = match CodecType::try_from(m.codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        _ => {
            return Err(err(
                format!("{path}.codec_type"),
                "only AUTO, HTTP1 and HTTP2 are supported",
            ));
        }
    };
    Ok(HttpManager {
        stats: b.http_stats(&m.stat_prefix),
        stat_prefix: m.stat_prefix.clone(),
        generate_request_id: m.generate_request_id.as_ref().is_none_or(|b| b.value),
        inbound: b.inbound,
        access_logs: access_log::AccessLog::build_all(
            &m.access_log,
            &format!("{path}.access_log"),
        )?
        .into(),
        tracing: match &m.tracing {
            None => None,
            Some(t) => Some(trace::TraceConfig::build(
                t,
                &format!("{path}.tracing"),
                &b.clusters,
            )?),
        },
        codec,
        request_headers_timeout: match duration(&m.request_headers_timeout) {
            None => Some(DEFAULT_REQUEST_HEADERS_TIMEOUT),
            Some(Duration::ZERO) => None,
            Some(t) => Some(t),
        },
        fault,
        rate_limit,
        rbac,
        upgrades: upgrade_types(
            m.upgrade_configs
                .iter()
                .map(|u| (u.upgrade_type.as_str(), u.enabled.map(|b| b.value))),
        ),
        routes: RouteTable::build(rc, &rc_path, &b.clusters)?,
    })
}
