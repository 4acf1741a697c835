//! What differs between the two ADS flavours, State of the World (Envoy's
//! default) and Delta (mesh-proxy); [`super::Discovery`] drives both.

use std::collections::BTreeSet;

use mesh_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use super::stream::{Held, Push, Sub};

/// What differs between the two ADS flavours; [`Discovery::drive`] does
/// the rest for both.
pub(super) trait Flavor: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: prost::Message + Send + 'static;
    /// `sotw` or `delta`.
    const NAME: &'static str;
    /// SotW sends every wanted resource in each response; Delta only changes.
    const SOTW: bool;
    fn node(r: &Self::Request) -> Option<&mesh_proto::envoy::config::core::v3::Node>;
    fn type_url(r: &Self::Request) -> &str;
    fn nonce(r: &Self::Request) -> &str;
    fn error(r: &Self::Request) -> Option<&str>;
    /// Applies the request's subscription; returns (changed, force a
    /// response even when nothing differs).
    fn subscribe(sub: &mut Sub, r: &Self::Request) -> (bool, bool);
    fn response(p: Push) -> Self::Response;
}

pub(super) struct Sotw;

impl Flavor for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";
    const SOTW: bool = true;
    fn node(r: &DiscoveryRequest) -> Option<&mesh_proto::envoy::config::core::v3::Node> {
        r.node.as_ref()
    }
    fn type_url(r: &DiscoveryRequest) -> &str {
        &r.type_url
    }
    fn nonce(r: &DiscoveryRequest) -> &str {
        &r.response_nonce
    }
    fn error(r: &DiscoveryRequest) -> Option<&str> {
        r.error_detail.as_ref().map(|e| e.message.as_str())
    }
    fn subscribe(sub: &mut Sub, r: &DiscoveryRequest) -> (bool, bool) {
        // The request names the whole subscription (none: wildcard).
        let names: BTreeSet<String> = r.resource_names.iter().cloned().collect();
        let wildcard = names.is_empty() || names.contains("*");
        let changed = !sub.requested || sub.wildcard != wildcard || sub.names != names;
        sub.requested = true;
        sub.wildcard = wildcard;
        sub.names = names;
        (changed, true)
    }
    fn response(p: Push) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: p.version,
            resources: p.all,
            type_url: p.kind.type_url().to_owned(),
            nonce: p.nonce,
            ..Default::default()
        }
    }
}

pub(super) struct Delta;

impl Flavor for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";
    const SOTW: bool = false;
    fn node(r: &DeltaDiscoveryRequest) -> Option<&mesh_proto::envoy::config::core::v3::Node> {
        r.node.as_ref()
    }
    fn type_url(r: &DeltaDiscoveryRequest) -> &str {
        &r.type_url
    }
    fn nonce(r: &DeltaDiscoveryRequest) -> &str {
        &r.response_nonce
    }
    fn error(r: &DeltaDiscoveryRequest) -> Option<&str> {
        r.error_detail.as_ref().map(|e| e.message.as_str())
    }
    fn subscribe(sub: &mut Sub, r: &DeltaDiscoveryRequest) -> (bool, bool) {
        // Requests change the subscription; the first may say what the
        // proxy already holds (a reconnect).
        let first = !sub.requested;
        let mut changed = first;
        if first {
            sub.requested = true;
            sub.wildcard = r.resource_names_subscribe.is_empty()
                || r.resource_names_subscribe.iter().any(|n| n == "*");
            sub.has = Held::Listed(r.initial_resource_versions.clone().into_iter().collect());
        }
        for n in &r.resource_names_subscribe {
            if n != "*" && sub.names.insert(n.clone()) {
                changed = true;
            }
        }
        for n in &r.resource_names_unsubscribe {
            if n == "*" {
                sub.wildcard = false;
            }
            sub.names.remove(n);
            sub.has.listed().remove(n);
        }
        (changed, first)
    }
    fn response(p: Push) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: p.version,
            resources: p.changed,
            removed_resources: p.removed,
            type_url: p.kind.type_url().to_owned(),
            nonce: p.nonce,
            ..Default::default()
        }
    }
}
