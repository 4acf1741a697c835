//! The same configuration, shaped for ADS: routes and endpoints become
//! their own resources (RDS, EDS), so a route rule change pushes one
//! RouteConfiguration and an endpoint change one ClusterLoadAssignment,
//! and neither drains a cluster's connection pools.

use mesh_proto::envoy::config::cluster::v3 as xcluster;
use mesh_proto::envoy::config::core::v3 as xcore;
use mesh_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use mesh_proto::envoy::config::listener::v3::{Listener, filter::ConfigType};
use mesh_proto::envoy::config::route::v3::RouteConfiguration;
use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use prost::{Message, Name};

use super::Resources;

/// One proxy's resources by xDS type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdsResources {
    /// LDS.
    pub listeners: Vec<Listener>,
    /// RDS.
    pub routes: Vec<RouteConfiguration>,
    /// CDS.
    pub clusters: Vec<xcluster::Cluster>,
    /// EDS.
    pub endpoints: Vec<ClusterLoadAssignment>,
}

fn ads_source() -> xcore::ConfigSource {
    xcore::ConfigSource {
        config_source_specifier: Some(xcore::config_source::ConfigSourceSpecifier::Ads(
            xcore::AggregatedConfigSource {},
        )),
        resource_api_version: xcore::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// Moves inline route configurations to RDS and static endpoints to EDS.
/// ORIGINAL_DST clusters and TCP listeners stay as they are.
pub fn for_ads(r: Resources) -> AdsResources {
    let mut out = AdsResources::default();
    for mut l in r.listeners {
        for chain in &mut l.filter_chains {
            for f in &mut chain.filters {
                let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
                    continue;
                };
                if any.type_url != hcm::HttpConnectionManager::type_url() {
                    continue;
                }
                let Ok(mut m) = hcm::HttpConnectionManager::decode(any.value.as_slice()) else {
                    continue;
                };
                use hcm::http_connection_manager::RouteSpecifier;
                if let Some(RouteSpecifier::RouteConfig(rc)) = m.route_specifier.take() {
                    m.route_specifier = Some(RouteSpecifier::Rds(hcm::Rds {
                        config_source: Some(ads_source()),
                        route_config_name: rc.name.clone(),
                    }));
                    out.routes.push(rc);
                    any.value = m.encode_to_vec();
                }
            }
        }
        out.listeners.push(l);
    }
    for mut c in r.clusters {
        if let Some(la) = c.load_assignment.take() {
            use xcluster::cluster::{ClusterDiscoveryType, DiscoveryType};
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            c.eds_cluster_config = Some(xcluster::cluster::EdsClusterConfig {
                eds_config: Some(ads_source()),
                service_name: String::new(),
            });
            out.endpoints.push(ClusterLoadAssignment {
                cluster_name: c.name.clone(),
                ..la
            });
        }
        out.clusters.push(c);
    }
    out.routes.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
