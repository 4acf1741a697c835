//! The proxy's own counters, kept on the hot path as plain atomics and
//! rendered on demand in text that reads as OpenMetrics (counter
//! families named without `_total`) and as Prometheus' older format.
//! The per-call metrics are [`super::metrics`].

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::PrefixStatsByName;

/// One endpoint's counters, as `/clusters` and Prometheus show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    /// The cluster's name.
    pub cluster: String,
    /// The endpoint's address.
    pub address: String,
    /// Requests (or TCP connections) sent.
    pub requests: u64,
    /// Of those, failed.
    pub failures: u64,
    /// In flight now.
    pub active: usize,
}

/// One cluster's circuit-breaker counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRow {
    /// The cluster's name.
    pub cluster: String,
    /// Requests refused by a cap.
    pub overflows: u64,
    /// Endpoints ejected by outlier detection.
    pub ejections: u64,
}

/// Proxy-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Downstream connections accepted.
    pub downstream_cx_total: AtomicU64,
    /// Downstream connections open.
    pub downstream_cx_active: AtomicU64,
    /// Downstream connections closed at once: the proxy's cap was reached.
    pub downstream_cx_overflow: AtomicU64,
    /// Downstream requests answered 503 at once: the proxy's cap was reached.
    pub downstream_rq_overload: AtomicU64,
    /// Requests answered by a local rate limit (429).
    pub local_rate_limited: AtomicU64,
    /// Downstream requests, by response class (index 1..=5 for 1xx..5xx).
    pub downstream_rq: [AtomicU64; 6],
    /// Upstream requests retried.
    pub upstream_rq_retry: AtomicU64,
    /// Retries not made because the cluster's retry budget was spent.
    pub upstream_rq_retry_overflow: AtomicU64,
    /// Upstream requests that timed out.
    pub upstream_rq_timeout: AtomicU64,
    /// Upstream connect failures and resets.
    pub upstream_cx_fail: AtomicU64,
    /// Downstream TLS handshakes that failed (no client certificate, one
    /// of another root, not TLS at all).
    pub ssl_handshake_error: AtomicU64,
    /// Requests and connections refused by an RBAC filter.
    pub rbac_denied: AtomicU64,
    /// Configurations accepted.
    pub config_accepted: AtomicU64,
    /// Configurations refused.
    pub config_rejected: AtomicU64,
    /// Spans handed to a collector.
    pub spans_exported: AtomicU64,
    /// Spans dropped: a full queue, or a collector unreachable or refusing.
    pub spans_dropped: AtomicU64,
    /// Access log lines dropped: stdout not read fast enough.
    pub access_logs_dropped: AtomicU64,
    /// 1 while the stream to pilot is up.
    pub xds_connected: AtomicU64,
}

impl Stats {
    /// Counts a finished downstream request.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.downstream_rq[class].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Prometheus text format: the proxy's own, those of
    /// each `stat_prefix`, and each endpoint's.
    pub fn render(
        &self,
        endpoints: &[EndpointRow],
        clusters: &[ClusterRow],
        prefixes: &PrefixStatsByName,
    ) -> String {
        let mut s = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(s, "# TYPE mesh_proxy_downstream_cx counter");
        let _ = writeln!(
            s,
            "mesh_proxy_downstream_cx_total {}",
            get(&self.downstream_cx_total)
        );
        let _ = writeln!(s, "# TYPE mesh_proxy_xds_connected gauge");
        let _ = writeln!(s, "mesh_proxy_xds_connected {}", get(&self.xds_connected));
        let _ = writeln!(s, "# TYPE mesh_proxy_upstream_cx counter");
        let _ = writeln!(
            s,
            "mesh_proxy_upstream_cx_total {}",
            get(&crate::upstream::connect::OPENED)
        );
        let _ = writeln!(s, "# TYPE mesh_proxy_upstream_cx_active gauge");
        let _ = writeln!(
            s,
            "mesh_proxy_upstream_cx_active {}",
            get(&crate::upstream::connect::OPEN)
        );
        let _ = writeln!(s, "# TYPE mesh_proxy_downstream_cx_active gauge");
        let _ = writeln!(
            s,
            "mesh_proxy_downstream_cx_active {}",
            get(&self.downstream_cx_active)
        );
        let _ = writeln!(s, "# TYPE mesh_proxy_downstream_rq counter");
        for class in 1..=5 {
            let _ = writeln!(
                s,
                "mesh_proxy_downstream_rq_total{{response_code_class=\"{class}xx\"}} {}",
                get(&self.downstream_rq[class])
            );
        }
        for (name, c) in [
            ("upstream_rq_retry", &self.upstream_rq_retry),
            (
                "upstream_rq_retry_overflow",
                &self.upstream_rq_retry_overflow,
            ),
            ("upstream_rq_timeout", &self.upstream_rq_timeout),
            ("downstream_cx_overflow", &self.downstream_cx_overflow),
            ("downstream_rq_overload", &self.downstream_rq_overload),
            ("local_rate_limited", &self.local_rate_limited),
            ("upstream_cx_fail", &self.upstream_cx_fail),
            ("ssl_handshake_error", &self.ssl_handshake_error),
            ("rbac_denied", &self.rbac_denied),
            ("config_accepted", &self.config_accepted),
            ("config_rejected", &self.config_rejected),
            ("spans_exported", &self.spans_exported),
            ("spans_dropped", &self.spans_dropped),
            ("access_logs_dropped", &self.access_logs_dropped),
        ] {
            let _ = writeln!(s, "# TYPE mesh_proxy_{name} counter");
            let _ = writeln!(s, "mesh_proxy_{name}_total {}", get(c));
        }
        render_prefixes(&mut s, prefixes);
        render_upstreams(&mut s, endpoints, clusters);
        s
    }
}

/// Per endpoint: `mesh_proxy_upstream_rq_{total,failed_total,active}`;
/// per cluster: circuit-breaker overflows and ejections.
fn render_upstreams(s: &mut String, endpoints: &[EndpointRow], clusters: &[ClusterRow]) {
    let _ = writeln!(s, "# TYPE mesh_proxy_upstream_rq counter");
    for e in endpoints {
        let _ = writeln!(
            s,
            "mesh_proxy_upstream_rq_total{{cluster=\"{}\",endpoint=\"{}\"}} {}",
            e.cluster, e.address, e.requests
        );
    }
    let _ = writeln!(s, "# TYPE mesh_proxy_upstream_rq_failed counter");
    for e in endpoints {
        let _ = writeln!(
            s,
            "mesh_proxy_upstream_rq_failed_total{{cluster=\"{}\",endpoint=\"{}\"}} {}",
            e.cluster, e.address, e.failures
        );
    }
    let mut per_cluster = |name: &str, value: fn(&ClusterRow) -> u64| {
        let family = name.trim_end_matches("_total");
        let _ = writeln!(s, "# TYPE mesh_proxy_{family} counter");
        for c in clusters {
            let _ = writeln!(
                s,
                "mesh_proxy_{name}{{cluster=\"{}\"}} {}",
                c.cluster,
                value(c)
            );
        }
    };
    per_cluster("upstream_rq_pending_overflow_total", |c| c.overflows);
    per_cluster("outlier_detection_ejections_enforced_total", |c| {
        c.ejections
    });
    let _ = writeln!(s, "# TYPE mesh_proxy_upstream_rq_active gauge");
    for e in endpoints {
        let _ = writeln!(
            s,
            "mesh_proxy_upstream_rq_active{{cluster=\"{}\",endpoint=\"{}\"}} {}",
            e.cluster, e.address, e.active
        );
    }
}

/// `mesh_proxy_http_downstream_{cx,rq}_total{stat_prefix=…}` and
/// `mesh_proxy_tcp_downstream_cx_total{stat_prefix=…}`: Envoy's
/// `http.<prefix>.*` and `tcp.<prefix>.*`.
fn render_prefixes(s: &mut String, prefixes: &PrefixStatsByName) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(s, "# TYPE mesh_proxy_http_downstream_cx counter");
    for (prefix, st) in &prefixes.http {
        let _ = writeln!(
            s,
            "mesh_proxy_http_downstream_cx_total{{stat_prefix=\"{prefix}\"}} {}",
            get(&st.downstream_cx_total)
        );
    }
    let _ = writeln!(s, "# TYPE mesh_proxy_http_downstream_rq counter");
    for (prefix, st) in &prefixes.http {
        for class in 1..=5 {
            let _ = writeln!(
                s,
                "mesh_proxy_http_downstream_rq_total{{stat_prefix=\"{prefix}\",response_code_class=\"{class}xx\"}} {}",
                get(&st.downstream_rq[class])
            );
        }
    }
    let _ = writeln!(s, "# TYPE mesh_proxy_tcp_downstream_cx counter");
    for (prefix, st) in &prefixes.tcp {
        let _ = writeln!(
            s,
            "mesh_proxy_tcp_downstream_cx_total{{stat_prefix=\"{prefix}\"}} {}",
            get(&st.downstream_cx_total)
        );
    }
}
