//! State the data path reads: the configuration in force (swapped whole,
//! so a request sees one version from start to end), counters, readiness
//! and the drain signal; and what a connection came in on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Snapshot;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::Naming;
use crate::telemetry::stats::Stats;

/// State every worker shares.
pub struct Shared {
    /// The configuration in force.
    pub config: ArcSwap<Snapshot>,
    /// Counters.
    pub stats: Stats,
    /// Who this proxy is and the standard per-call metrics.
    pub telemetry: Telemetry,
    /// The proxy-wide caps that keep an overload from growing memory.
    pub overload: Overload,
    /// The workload's certificate, when the proxy has a CA to ask.
    pub identity: Arc<std::sync::OnceLock<Arc<crate::identity::Identity>>>,
    /// Whether a first configuration was applied (readiness; a sidecar on
    /// xDS starts empty).
    ready: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new(OverloadLimits::default(), Naming::default())
    }
}

/// Caps on what one proxy holds at once, over all listeners and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadLimits {
    /// Downstream connections open; past it new ones are closed at once.
    pub max_connections: usize,
    /// Downstream requests in flight; past it requests are answered 503.
    pub max_requests: usize,
}

impl Default for OverloadLimits {
    fn default() -> Self {
        OverloadLimits {
            max_connections: 16_384,
            max_requests: 8_192,
        }
    }
}

/// The caps and what they count.
#[derive(Debug, Default)]
pub struct Overload {
    /// The caps.
    pub limits: OverloadLimits,
    requests: AtomicUsize,
}

/// A downstream request counted against the cap until dropped.
pub struct RequestSlot<'a>(&'a Overload);

impl Drop for RequestSlot<'_> {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Overload {
    /// A place for one more request, if the cap leaves one.
    pub fn request(&self) -> Option<RequestSlot<'_>> {
        self.requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limits.max_requests).then_some(n + 1)
            })
            .ok()
            .map(|_| RequestSlot(self))
    }
}

impl Shared {
    /// Empty state under the given caps, metrics named by `naming`.
    pub fn new(limits: OverloadLimits, naming: Naming) -> Self {
        Shared {
            config: ArcSwap::from_pointee(Snapshot::empty()),
            stats: Stats::default(),
            telemetry: Telemetry::new(naming),
            overload: Overload {
                limits,
                requests: AtomicUsize::new(0),
            },
            identity: Arc::default(),
            ready: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
        }
    }
}

impl Shared {
    /// Starts draining: listeners stop accepting, connections finish.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// True once draining started.
    pub fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Becomes `true` when draining starts.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// True once a configuration was applied.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Puts `snapshot` in force; requests in flight keep the old one.
    pub fn swap(&self, snapshot: Snapshot) {
        self.config.store(Arc::new(snapshot));
        self.ready.store(true, Ordering::Release);
        self.stats.config_accepted.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a connection came in on.
#[derive(Debug)]
pub struct Conn {
    /// The listener that handles it (after any original-destination hand-off).
    pub listener: Arc<str>,
    /// The listener's filter chain that handles it.
    pub chain: usize,
    /// Where it was going before the capture rules redirected it.
    pub original_dst: Option<SocketAddr>,
    /// Who connected (for hashing by source address).
    pub peer: Option<SocketAddr>,
    /// The port it came to (the original destination's, else the listener's).
    pub dst_port: u16,
    /// The client's SPIFFE ID, when it came over mutual TLS.
    pub peer_identity: Option<Arc<str>>,
    /// Raised when a request on it carried both Content-Length and
    /// Transfer-Encoding (see [`crate::framing`]).
    pub ambiguous_framing: Arc<AtomicBool>,
}
