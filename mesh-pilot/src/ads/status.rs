//! What `meshctl proxy-status` and `/debug/push_history` show: per
//! connected proxy and type, what was sent, ACKed or NACKed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_proto::types::XdsType;
use serde::Serialize;

use super::cache::lock;

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What pilot knows of one type on one proxy's stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// Version of the last response sent.
    pub sent: String,
    /// Version the proxy last ACKed.
    pub acked: String,
    /// The proxy's reason when it refused the last response.
    pub nacked: Option<String>,
    /// Resources the proxy holds.
    pub resources: usize,
}

impl TypeStatus {
    /// `SYNCED`, `STALE` (sent, not yet ACKed), `NACKED` or `NOT SENT`.
    pub fn state(&self) -> &'static str {
        if self.nacked.is_some() {
            "NACKED"
        } else if self.sent.is_empty() {
            "NOT SENT"
        } else if self.sent == self.acked {
            "SYNCED"
        } else {
            "STALE"
        }
    }
}

/// One connected proxy, as `meshctl proxy-status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    /// The xDS node id.
    pub node: String,
    /// Namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Its workload (Deployment, StatefulSet, …).
    pub workload: String,
    /// Workload IP.
    pub ip: Option<String>,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the proxy is used explicitly (no capture), and where its app listens.
    pub explicit: Option<String>,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// `mesh-proxy` or `envoy`.
    pub proxy: mesh_proto::node::ProxyKind,
    /// The rule store revision of the last inputs this proxy's
    /// configuration was computed from (and sent, when it changed).
    pub rules_revision: u64,
    /// The generation of those inputs.
    pub generation: u64,
    /// When the stream started (ms since the epoch).
    pub connected_ms: u64,
    /// Per type (shown as `CDS`, `EDS`, `LDS`, `RDS`).
    pub types: BTreeMap<XdsType, TypeStatus>,
    /// Each type's state, for people and scripts.
    pub states: BTreeMap<XdsType, &'static str>,
}

/// One push, for `/debug/push_history`.
#[derive(Debug, Clone, Serialize)]
pub struct PushRecord {
    /// When (ms since the epoch).
    pub time_ms: u64,
    /// To which proxy.
    pub node: String,
    /// Which type.
    #[serde(rename = "type")]
    pub type_: XdsType,
    /// Version sent.
    pub version: String,
    /// Resources sent (Delta: changed ones only).
    pub resources: usize,
    /// Resources removed (Delta).
    pub removed: usize,
    /// The world generation it came from.
    pub generation: u64,
}

const HISTORY: usize = 200;

/// Connected proxies and recent pushes.
#[derive(Default)]
pub struct Status {
    pub(super) proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
    history: Mutex<VecDeque<PushRecord>>,
    /// pilot's metrics.
    pub metrics: super::metrics::PilotMetrics,
}

impl Status {
    /// No proxies yet; `metrics` are pilot's.
    pub fn with_metrics(metrics: super::metrics::PilotMetrics) -> Self {
        Status {
            metrics,
            ..Default::default()
        }
    }

    /// Every connected proxy, by node id.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let mut v: Vec<_> = lock(&self.proxies).values().cloned().collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }

    /// Recent pushes, oldest first.
    pub fn history(&self) -> Vec<PushRecord> {
        lock(&self.history).iter().cloned().collect()
    }

    pub(super) fn update(&self, id: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(p) = lock(&self.proxies).get_mut(&id) {
            f(p);
            p.states = p.types.iter().map(|(k, t)| (*k, t.state())).collect();
        }
    }

    /// pilot's metrics in OpenMetrics text (`/metrics`).
    pub fn metrics_text(&self) -> String {
        self.metrics.render(lock(&self.proxies).len())
    }

    pub(super) fn record(&self, r: PushRecord) {
        self.metrics.pushed(r.type_);
        let mut h = lock(&self.history);
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(r);
    }
}
