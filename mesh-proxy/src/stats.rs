//! Counters kept on the hot path as plain atomics and rendered for
//! Prometheus on demand. (Per-workload telemetry arrives with the
//! observability work; these are the proxy's own basics.)

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Proxy-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Downstream connections accepted.
    pub downstream_cx_total: AtomicU64,
    /// Downstream connections open.
    pub downstream_cx_active: AtomicU64,
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
    /// Configurations accepted.
    pub config_accepted: AtomicU64,
    /// Configurations refused.
    pub config_rejected: AtomicU64,
}

impl Stats {
    /// Counts a finished downstream request.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.downstream_rq[class].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Prometheus text format.
    pub fn render(&self, clusters: &[(String, String, u64, u64, usize)]) -> String {
        let mut s = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(s, "# TYPE mesh_proxy_downstream_cx_total counter");
        let _ = writeln!(
            s,
            "mesh_proxy_downstream_cx_total {}",
            get(&self.downstream_cx_total)
        );
        let _ = writeln!(s, "# TYPE mesh_proxy_downstream_cx_active gauge");
        let _ = writeln!(
            s,
            "mesh_proxy_downstream_cx_active {}",
            get(&self.downstream_cx_active)
        );
        let _ = writeln!(s, "# TYPE mesh_proxy_downstream_rq_total counter");
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
            ("upstream_cx_fail", &self.upstream_cx_fail),
            ("config_accepted", &self.config_accepted),
            ("config_rejected", &self.config_rejected),
        ] {
            let _ = writeln!(s, "# TYPE mesh_proxy_{name}_total counter");
            let _ = writeln!(s, "mesh_proxy_{name}_total {}", get(c));
        }
        let _ = writeln!(s, "# TYPE mesh_proxy_upstream_rq_total counter");
        for (cluster, endpoint, rq, _, _) in clusters {
            let _ = writeln!(
                s,
                "mesh_proxy_upstream_rq_total{{cluster=\"{cluster}\",endpoint=\"{endpoint}\"}} {rq}"
            );
        }
        let _ = writeln!(s, "# TYPE mesh_proxy_upstream_rq_failed_total counter");
        for (cluster, endpoint, _, failed, _) in clusters {
            let _ = writeln!(
                s,
                "mesh_proxy_upstream_rq_failed_total{{cluster=\"{cluster}\",endpoint=\"{endpoint}\"}} {failed}"
            );
        }
        let _ = writeln!(s, "# TYPE mesh_proxy_upstream_rq_active gauge");
        for (cluster, endpoint, _, _, active) in clusters {
            let _ = writeln!(
                s,
                "mesh_proxy_upstream_rq_active{{cluster=\"{cluster}\",endpoint=\"{endpoint}\"}} {active}"
            );
        }
        s
    }
}
