//! Which xDS messages the mesh speaks: the four resource types pilot
//! serves and proxies apply ([`XdsType`]), and the typed configs (`"@type"`
//! in an `Any`) mesh-proxy applies ([`TYPED_CONFIGS`]). The descriptor
//! trimmer keeps exactly these (and what they import).

/// An xDS resource type of the aggregated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XdsType {
    /// Clusters (CDS).
    Cluster,
    /// Cluster load assignments: endpoints (EDS).
    Endpoint,
    /// Listeners (LDS).
    Listener,
    /// Route configurations (RDS).
    Route,
}

impl XdsType {
    /// The four types in the order a proxy should apply them (clusters
    /// before the endpoints that fill them, listeners before the routes
    /// they name), the order Envoy's documentation asks a management server
    /// to push in. It is also the types' sort order.
    pub const PUSH_ORDER: [XdsType; 4] = [
        XdsType::Cluster,
        XdsType::Endpoint,
        XdsType::Listener,
        XdsType::Route,
    ];

    /// The type URL on the wire.
    pub const fn type_url(self) -> &'static str {
        match self {
            XdsType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            XdsType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            XdsType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            XdsType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The message's full name (the type URL without its prefix).
    pub fn message_name(self) -> &'static str {
        let url = self.type_url();
        &url[url.find('/').map_or(0, |i| i + 1)..]
    }

    /// The type a type URL names, if it is one of the four.
    pub fn from_type_url(url: &str) -> Option<XdsType> {
        XdsType::PUSH_ORDER
            .into_iter()
            .find(|t| t.type_url() == url)
    }

    /// `CDS`, `EDS`, `LDS` or `RDS`, as status pages and logs name them.
    pub const fn short(self) -> &'static str {
        match self {
            XdsType::Cluster => "CDS",
            XdsType::Endpoint => "EDS",
            XdsType::Listener => "LDS",
            XdsType::Route => "RDS",
        }
    }
}

impl std::fmt::Display for XdsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short())
    }
}

/// Serialized by its short name, so a map keyed by type reads
/// `{"CDS": …, "EDS": …}`.
impl serde::Serialize for XdsType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.short())
    }
}

/// A short name for a type URL in messages: `CDS` for one of the four,
/// else the message's last name part.
pub fn short_type(type_url: &str) -> &str {
    match XdsType::from_type_url(type_url) {
        Some(t) => t.short(),
        None => type_url.rsplit('.').next().unwrap_or(type_url),
    }
}

/// Typed configs (`"@type"`) mesh-proxy applies; any other is refused with
/// its path.
pub const TYPED_CONFIGS: &[&str] = &[
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_in_push_order() {
        for t in XdsType::PUSH_ORDER {
            assert_eq!(XdsType::from_type_url(t.type_url()), Some(t));
        }
        let mut sorted = XdsType::PUSH_ORDER;
        sorted.sort();
        assert_eq!(sorted, XdsType::PUSH_ORDER);
        assert_eq!(
            XdsType::Route.message_name(),
            "envoy.config.route.v3.RouteConfiguration"
        );
        assert_eq!(short_type("type.googleapis.com/x.y.Secret"), "Secret");
        assert_eq!(
            serde_json::to_string(&std::collections::BTreeMap::from([(XdsType::Cluster, 1)]))
                .unwrap(),
            r#"{"CDS":1}"#
        );
    }
}
