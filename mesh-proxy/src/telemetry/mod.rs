//! What the proxy tells about the traffic it carries: its own counters
//! ([`stats`]), the standard per-call metrics ([`metrics`], labelled by
//! the workloads on both sides, learned through [`peer`]) counted per
//! request by [`tally`] with [`flags`], request ids and trace context
//! ([`trace`]), recorded spans sent to collectors ([`spans`]), and access
//! log lines ([`access_log`]).

pub mod access_log;
pub mod flags;
pub mod metrics;
pub mod peer;
pub mod spans;
pub mod stats;
pub mod tally;
pub mod trace;

use std::sync::Arc;

use arc_swap::ArcSwap;

use metrics::{Naming, StandardMetrics};
use peer::{NOBODY, Workload};

/// The proxy's telemetry: who it is and the standard metrics.
#[derive(Debug)]
pub struct Telemetry {
    local: ArcSwap<(Arc<Workload>, http::HeaderValue)>,
    /// The standard metrics.
    pub metrics: StandardMetrics,
    /// Recorded spans on their way to collectors.
    pub spans: spans::Spans,
    /// This workload's SPIFFE ID, once it has a certificate.
    pub principal: std::sync::OnceLock<Arc<str>>,
}

impl Telemetry {
    /// Telemetry of a proxy whose workload is not known yet.
    pub fn new(naming: Naming) -> Self {
        Telemetry {
            local: ArcSwap::from_pointee((NOBODY.clone(), NOBODY.header_value())),
            metrics: StandardMetrics::new(naming),
            spans: spans::Spans::default(),
            principal: std::sync::OnceLock::new(),
        }
    }

    /// This proxy's workload.
    pub fn local(&self) -> Arc<Workload> {
        self.local.load().0.clone()
    }

    /// This proxy's workload as the exchange header tells it.
    pub fn local_header(&self) -> http::HeaderValue {
        self.local.load().1.clone()
    }

    /// Sets this proxy's workload (at start, and when its labels change).
    pub fn set_local(&self, w: Workload) {
        let header = w.header_value();
        self.local.store(Arc::new((Arc::new(w), header)));
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new(Naming::default())
    }
}
