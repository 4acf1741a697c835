//! The standard metrics every sidecar reports, labelled by who called whom:
//! Istio's (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_tcp_*`) with
//! Istio's labels, so its dashboards and alerts work unchanged; or the
//! same under the `mesh_` prefix.
//!
//! Kept in `prometheus-client` families. Cardinality is bounded: past
//! [`MAX_SERIES`] label sets a new one loses its peer's labels, and past
//! twice that its service's too (they read `unknown`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::flags::Flags;
use super::peer::{NOBODY, UNKNOWN, Workload};
use crate::config::service::Service;

/// Label sets kept per family before new ones are collapsed.
pub const MAX_SERIES: usize = 5_000;

/// Istio's buckets for durations, in milliseconds.
const DURATION_BUCKETS: [f64; 13] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Istio's buckets for sizes, in bytes: powers of ten up to 10⁹.
const SIZE_BUCKETS: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// How the metrics are named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Naming {
    /// `mesh_requests_total`, …
    #[default]
    Mesh,
    /// `istio_requests_total`, … (Istio's dashboards and alerts).
    Istio,
}

/// Which side of the call reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The caller's sidecar (outbound).
    Source,
    /// The callee's sidecar (inbound).
    Destination,
}

/// One call's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Call {
    /// Who reports.
    pub reporter: Reporter,
    /// This proxy's workload.
    pub local: Arc<Workload>,
    /// The other side's, as the exchange told (else [`NOBODY`]).
    pub peer: Arc<Workload>,
    /// The service called.
    pub service: Arc<Service>,
    /// `http`, `grpc` or `tcp`.
    pub protocol: &'static str,
    /// The response status (0 for TCP).
    pub code: u16,
    /// The gRPC status, when the call was gRPC and one came back.
    pub grpc: Option<u8>,
    /// Why the proxy answered as it did.
    pub flags: Flags,
    /// This workload's SPIFFE ID, when it has a certificate.
    pub local_principal: Option<Arc<str>>,
    /// The caller's SPIFFE ID, when it called over mutual TLS (inbound).
    pub peer_principal: Option<Arc<str>>,
}

impl EncodeLabelSet for Call {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let (source, destination) = match self.reporter {
            Reporter::Source => (&self.local, &self.peer),
            Reporter::Destination => (&self.peer, &self.local),
        };
        let reporter = match self.reporter {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        };
        let code = self.code.to_string();
        let grpc = self.grpc.map_or_else(|| "-".to_owned(), |g| g.to_string());
        let flags = self.flags.to_string();
        // The receiving side knows how the call came; the caller's side
        // does not know what the server checked (Istio says `unknown`).
        let (security, source_principal, destination_principal) = match self.reporter {
            Reporter::Source => (UNKNOWN, self.local_principal.as_deref(), None),
            Reporter::Destination => match self.peer_principal.as_deref() {
                Some(peer) => ("mutual_tls", Some(peer), self.local_principal.as_deref()),
                None => ("none", None, None),
            },
        };
        let mut labels: Vec<(&str, &str)> = vec![
            ("reporter", reporter),
            ("source_workload", &source.name),
            ("source_workload_namespace", &source.namespace),
            ("source_principal", source_principal.unwrap_or(UNKNOWN)),
            ("source_app", &source.app),
            ("source_version", &source.version),
            ("source_canonical_service", &source.canonical_service),
            ("source_canonical_revision", &source.canonical_revision),
            ("source_cluster", UNKNOWN),
            ("destination_workload", &destination.name),
            ("destination_workload_namespace", &destination.namespace),
            (
                "destination_principal",
                destination_principal.unwrap_or(UNKNOWN),
            ),
            ("destination_app", &destination.app),
            ("destination_version", &destination.version),
            ("destination_service", &self.service.host),
            ("destination_service_name", &self.service.name),
            ("destination_service_namespace", &self.service.namespace),
            (
                "destination_canonical_service",
                &destination.canonical_service,
            ),
            (
                "destination_canonical_revision",
                &destination.canonical_revision,
            ),
            ("destination_cluster", UNKNOWN),
            ("request_protocol", self.protocol),
        ];
        if self.protocol != "tcp" {
            labels.push(("response_code", &code));
            labels.push(("grpc_response_status", &grpc));
        }
        labels.push(("response_flags", &flags));
        labels.push(("connection_security_policy", security));
        labels.as_slice().encode(encoder)
    }
}

/// One label set's HTTP series.
struct RequestSeries {
    count: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// One label set's TCP series.
struct TcpSeries {
    sent: Counter,
    received: Counter,
    opened: Counter,
    closed: Counter,
}

type Histograms = Family<Call, Histogram, fn() -> Histogram>;

/// The standard metrics of one proxy.
pub struct StandardMetrics {
    registry: Registry,
    requests: Family<Call, Counter>,
    duration: Histograms,
    request_bytes: Histograms,
    response_bytes: Histograms,
    tcp: [Family<Call, Counter>; 4],
    request_series: RwLock<HashMap<Call, Arc<RequestSeries>>>,
    tcp_series: RwLock<HashMap<Call, Arc<TcpSeries>>>,
}

impl std::fmt::Debug for StandardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StandardMetrics")
    }
}

impl Default for StandardMetrics {
    fn default() -> Self {
        StandardMetrics::new(Naming::default())
    }
}

/// A finished HTTP call's measures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measures {
    /// From the request's arrival to the response's end, in milliseconds.
    pub duration_ms: f64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

/// Gets `key`'s series from `cache`, making them with `make` (the key
/// collapsed when the cache is full).
fn series<T>(
    cache: &RwLock<HashMap<Call, Arc<T>>>,
    key: &Call,
    make: impl FnOnce(&Call) -> T,
) -> Arc<T> {
    if let Some(s) = cache.read().unwrap_or_else(|e| e.into_inner()).get(key) {
        return s.clone();
    }
    let mut map = cache.write().unwrap_or_else(|e| e.into_inner());
    let mut key = key.clone();
    if map.len() >= MAX_SERIES {
        key.peer = NOBODY.clone();
    }
    if map.len() >= 2 * MAX_SERIES {
        key.service = Service::unknown();
    }
    if let Some(s) = map.get(&key) {
        return s.clone();
    }
    let s = Arc::new(make(&key));
    map.insert(key, s.clone());
    s
}

impl StandardMetrics {
    /// Empty metrics named by `naming`.
    pub fn new(naming: Naming) -> Self {
        let mut registry = Registry::with_prefix(match naming {
            Naming::Mesh => "mesh",
            Naming::Istio => "istio",
        });
        let requests = Family::<Call, Counter>::default();
        let histograms = |buckets: fn() -> Histogram| Histograms::new_with_constructor(buckets);
        let duration = histograms(|| Histogram::new(DURATION_BUCKETS));
        let request_bytes = histograms(|| Histogram::new(SIZE_BUCKETS));
        let response_bytes = histograms(|| Histogram::new(SIZE_BUCKETS));
        let tcp: [Family<Call, Counter>; 4] = Default::default();
        registry.register("requests", "Requests", requests.clone());
        registry.register(
            "request_duration_milliseconds",
            "Request duration",
            duration.clone(),
        );
        registry.register("request_bytes", "Request body size", request_bytes.clone());
        registry.register(
            "response_bytes",
            "Response body size",
            response_bytes.clone(),
        );
        for (name, help, family) in [
            ("tcp_sent_bytes", "Bytes sent to the caller", &tcp[0]),
            (
                "tcp_received_bytes",
                "Bytes received from the caller",
                &tcp[1],
            ),
            ("tcp_connections_opened", "TCP connections opened", &tcp[2]),
            ("tcp_connections_closed", "TCP connections closed", &tcp[3]),
        ] {
            registry.register(name, help, family.clone());
        }
        StandardMetrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp,
            request_series: Default::default(),
            tcp_series: Default::default(),
        }
    }

    /// Counts a finished HTTP call.
    pub fn request(&self, call: &Call, m: Measures) {
        let s = series(&self.request_series, call, |key| RequestSeries {
            count: self.requests.get_or_create_owned(key),
            duration: self.duration.get_or_create_owned(key),
            request_bytes: self.request_bytes.get_or_create_owned(key),
            response_bytes: self.response_bytes.get_or_create_owned(key),
        });
        s.count.inc();
        s.duration.observe(m.duration_ms);
        s.request_bytes.observe(m.request_bytes as f64);
        s.response_bytes.observe(m.response_bytes as f64);
    }

    /// Counts a TCP connection opened (`call.protocol` is `tcp`).
    pub fn tcp_opened(&self, call: &Call) {
        self.tcp_of(call).opened.inc();
    }

    /// Counts a TCP connection closed after `sent` bytes to the
    /// downstream side and `received` from it.
    pub fn tcp_closed(&self, call: &Call, sent: u64, received: u64) {
        let s = self.tcp_of(call);
        s.sent.inc_by(sent);
        s.received.inc_by(received);
        s.closed.inc();
    }

    fn tcp_of(&self, call: &Call) -> Arc<TcpSeries> {
        series(&self.tcp_series, call, |key| TcpSeries {
            sent: self.tcp[0].get_or_create_owned(key),
            received: self.tcp[1].get_or_create_owned(key),
            opened: self.tcp[2].get_or_create_owned(key),
            closed: self.tcp[3].get_or_create_owned(key),
        })
    }

    /// Appends the metrics in OpenMetrics text (without `# EOF`).
    pub fn render(&self, out: &mut String) {
        let _ = prometheus_client::encoding::text::encode_registry(out, &self.registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(peer: &str) -> Call {
        let labels = [("app".to_owned(), "svca".to_owned())].into();
        Call {
            reporter: Reporter::Source,
            local: Arc::new(Workload::local("svca", "default", &labels)),
            peer: Arc::new(Workload::local(peer, "default", &Default::default())),
            service: Arc::new(Service {
                host: "svcb.default.svc.cluster.local".into(),
                name: "svcb".into(),
                namespace: "default".into(),
            }),
            protocol: "http",
            code: 200,
            grpc: None,
            flags: Flags::NONE,
            local_principal: None,
            peer_principal: None,
        }
    }

    #[test]
    fn istio_names_and_labels() {
        let m = StandardMetrics::new(Naming::Istio);
        let measures = Measures {
            duration_ms: 3.0,
            request_bytes: 10,
            response_bytes: 2000,
        };
        m.request(&call("svcb-v1"), measures);
        m.request(&call("svcb-v1"), measures);
        let mut out = String::new();
        m.render(&mut out);
        let line = out
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        assert!(line.ends_with("} 2"), "{line}");
        for label in [
            "reporter=\"source\"",
            "source_workload=\"svca\"",
            "source_app=\"svca\"",
            "destination_workload=\"svcb-v1\"",
            "destination_service=\"svcb.default.svc.cluster.local\"",
            "destination_service_name=\"svcb\"",
            "response_code=\"200\"",
            "grpc_response_status=\"-\"",
            "response_flags=\"-\"",
        ] {
            assert!(line.contains(label), "{label} in {line}");
        }
        assert!(out.contains("istio_request_duration_milliseconds_bucket{"));
        assert!(
            out.lines()
                .any(|l| l.starts_with("istio_response_bytes_sum{") && l.ends_with(" 4000.0")),
            "{out}"
        );
    }

    #[test]
    fn label_sets_are_bounded() {
        let m = StandardMetrics::new(Naming::Mesh);
        for i in 0..MAX_SERIES + 10 {
            m.request(&call(&format!("w{i}")), Measures::default());
        }
        let map = m.request_series.read().unwrap();
        assert_eq!(map.len(), MAX_SERIES + 1, "the rest share one set");
        assert!(map.keys().any(|k| k.peer.name == UNKNOWN));
    }
}
