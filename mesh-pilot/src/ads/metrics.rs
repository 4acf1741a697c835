//! pilot's own metrics, under Istio's names so its dashboards read them:
//! pushes and rejections per type, connected proxies, and how long a
//! proxy takes to ACK a push (push to applied).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use mesh_proto::types::XdsType;

/// The xDS type a sample is about: `type="cds"` (`eds`, `lds`, `rds`).
type TypeLabel = [(&'static str, &'static str); 1];

fn type_label(kind: XdsType) -> TypeLabel {
    let t = match kind {
        XdsType::Cluster => "cds",
        XdsType::Endpoint => "eds",
        XdsType::Listener => "lds",
        XdsType::Route => "rds",
    };
    [("type", t)]
}

/// pilot's metric families.
pub struct PilotMetrics {
    registry: Registry,
    pushes: Family<TypeLabel, Counter>,
    rejects: Family<TypeLabel, Counter>,
    connected: Gauge,
    convergence: Histogram,
}

impl Default for PilotMetrics {
    fn default() -> Self {
        let pushes = Family::<TypeLabel, Counter>::default();
        let rejects = Family::<TypeLabel, Counter>::default();
        let connected = Gauge::default();
        // Seconds from a push to its ACK: milliseconds matter here.
        let convergence = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let mut registry = Registry::default();
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses proxies refused (NACK), by type",
            rejects.clone(),
        );
        registry.register("pilot_xds", "Proxies connected", connected.clone());
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a push to the proxy's ACK",
            convergence.clone(),
        );
        PilotMetrics {
            registry,
            pushes,
            rejects,
            connected,
            convergence,
        }
    }
}

impl PilotMetrics {
    /// pilot's families, and `more` (another part's) beside them.
    pub fn with(more: impl FnOnce(&mut Registry)) -> Self {
        let mut m = PilotMetrics::default();
        more(&mut m.registry);
        m
    }

    /// A response of `kind` was sent.
    pub fn pushed(&self, kind: XdsType) {
        self.pushes.get_or_create(&type_label(kind)).inc();
    }

    /// A proxy refused a response of `kind`.
    pub fn rejected(&self, kind: XdsType) {
        self.rejects.get_or_create(&type_label(kind)).inc();
    }

    /// A proxy ACKed a push sent `seconds` ago.
    pub fn converged(&self, seconds: f64) {
        self.convergence.observe(seconds);
    }

    /// The families in OpenMetrics text, with `connected` proxies now.
    pub fn render(&self, connected: usize) -> String {
        self.connected.set(connected as i64);
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
