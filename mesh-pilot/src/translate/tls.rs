//! Mutual TLS between sidecars, in Envoy's terms: clusters to mesh
//! services get an `UpstreamTlsContext` that presents the workload's
//! certificate and accepts only the service's identities (secure naming);
//! inbound listeners get TLS filter chains (`DownstreamTlsContext`,
//! client certificate required) beside the plaintext ones (PERMISSIVE) or
//! instead of them (STRICT). Certificates are SDS `default` and `ROOTCA`,
//! the names Istio's agent serves; mesh-proxy serves them itself.

use mesh_proto::envoy::config::core::v3 as xcore;
use mesh_proto::envoy::config::listener::v3::{self as xlistener, Listener};
use mesh_proto::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use mesh_proto::envoy::extensions::transport_sockets::tls::v3 as xtls;
use mesh_proto::envoy::r#type::matcher::v3 as xmatch;
use mesh_proto::google::protobuf::BoolValue;

use super::build::{PROTOCOL_DETECTION_TIMEOUT, ads_source, any, duration};

/// How a workload's inbound side takes connections (Istio's
/// PeerAuthentication modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MtlsMode {
    /// Mutual TLS or plaintext.
    #[default]
    Permissive,
    /// Mutual TLS only.
    Strict,
    /// Plaintext only; callers do not use TLS.
    Disable,
}

/// The mode of a workload (namespace `ns`, `labels`) on `port`, from the
/// PeerAuthentication policies: the workload's port-level mode, its own,
/// its namespace's, the mesh's (root namespace), then `default`; a policy
/// that leaves the mode unset defers to the next.
pub fn peer_mode(
    rules: &[mesh_rules::Rule],
    ns: &str,
    labels: &std::collections::BTreeMap<String, String>,
    port: u16,
    default: MtlsMode,
) -> MtlsMode {
    use mesh_rules::Spec;
    use mesh_rules::rules::security::{MtlsMode as Rule, PeerAuthentication, ROOT_NAMESPACE};
    let policies: Vec<(&str, &PeerAuthentication)> = rules
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::PeerAuthentication(p) => Some((r.metadata.namespace(), &**p)),
            _ => None,
        })
        .collect();
    let workload = policies.iter().filter(|(pns, p)| {
        *pns == ns
            && p.selector
                .as_ref()
                .is_some_and(|s| mesh_rules::registry::labels_match(&s.match_labels, labels))
    });
    let namespace = policies
        .iter()
        .filter(|(pns, p)| *pns == ns && p.selector.is_none());
    let mesh = policies
        .iter()
        .filter(|(pns, p)| *pns == ROOT_NAMESPACE && p.selector.is_none());
    let mut levels: Vec<Rule> = Vec::new();
    for (_, p) in workload.clone() {
        if let Some(m) = p.port_level_mtls.get(&u32::from(port)) {
            levels.push(m.mode);
        }
    }
    for (_, p) in workload.chain(namespace).chain(mesh) {
        levels.push(p.mtls.as_ref().map_or(Rule::Unset, |m| m.mode));
    }
    match levels.into_iter().find(|m| *m != Rule::Unset) {
        Some(Rule::Strict) => MtlsMode::Strict,
        Some(Rule::Permissive) => MtlsMode::Permissive,
        Some(Rule::Disable) => MtlsMode::Disable,
        Some(Rule::Unset) | None => default,
    }
}

/// The ALPN an HTTP client or server offers inside mutual TLS.
pub const HTTP_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// Where a proxy gets its secrets: mesh-proxy serves its own (named over
/// ADS, never sent); Envoy asks the SDS agent in its pod (`mesh-proxy
/// sds`) through its bootstrap's `sds-grpc` cluster, as Istio's Envoy asks
/// its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// The proxy itself (mesh-proxy).
    Own,
    /// The pod's SDS agent (Envoy).
    Agent,
}

/// The cluster of an Envoy bootstrap that reaches the pod's SDS agent.
pub const SDS_CLUSTER: &str = "sds-grpc";

fn sds(name: &str, source: SecretSource) -> xtls::SdsSecretConfig {
    let config = match source {
        SecretSource::Own => ads_source(),
        SecretSource::Agent => xcore::ConfigSource {
            config_source_specifier: Some(
                xcore::config_source::ConfigSourceSpecifier::ApiConfigSource(
                    xcore::ApiConfigSource {
                        api_type: xcore::api_config_source::ApiType::Grpc as i32,
                        transport_api_version: xcore::ApiVersion::V3 as i32,
                        grpc_services: vec![xcore::GrpcService {
                            target_specifier: Some(
                                xcore::grpc_service::TargetSpecifier::EnvoyGrpc(
                                    xcore::grpc_service::EnvoyGrpc {
                                        cluster_name: SDS_CLUSTER.into(),
                                        ..Default::default()
                                    },
                                ),
                            ),
                            ..Default::default()
                        }],
                        set_node_on_first_message_only: true,
                        ..Default::default()
                    },
                ),
            ),
            resource_api_version: xcore::ApiVersion::V3 as i32,
            ..Default::default()
        },
    };
    xtls::SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(config),
    }
}

fn common(alpn: &[&str], peers: &[String], source: SecretSource) -> xtls::CommonTlsContext {
    use xtls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
    use xtls::subject_alt_name_matcher::SanType;
    let sans = peers
        .iter()
        .map(|uri| xtls::SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(xmatch::StringMatcher {
                match_pattern: Some(xmatch::string_matcher::MatchPattern::Exact(uri.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    xtls::CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds("default", source)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(xtls::CertificateValidationContext {
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds("ROOTCA", source)),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    }
}

/// A cluster's TLS to sidecars that are one of `peers` (SPIFFE URIs).
pub fn upstream_socket(
    peers: &[String],
    alpn: &[&str],
    source: SecretSource,
) -> xcore::TransportSocket {
    let ctx = xtls::UpstreamTlsContext {
        common_tls_context: Some(common(alpn, peers, source)),
        ..Default::default()
    };
    xcore::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(xcore::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

fn downstream_socket(alpn: &[&str], source: SecretSource) -> xcore::TransportSocket {
    let ctx = xtls::DownstreamTlsContext {
        common_tls_context: Some(common(alpn, &[], source)),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    xcore::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(xcore::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// Whether a chain runs an HTTP connection manager.
fn is_http(chain: &xlistener::FilterChain) -> bool {
    chain
        .filters
        .iter()
        .any(|f| f.name == "envoy.filters.network.http_connection_manager")
}

/// Makes an inbound listener take mutual TLS: each chain gets a TLS twin
/// (HTTP chains by TLS ALPN `h2`/`http/1.1`, others for any ALPN); the
/// plaintext chains stay (PERMISSIVE) or go (STRICT). A TLS inspector
/// tells the two apart, waiting at most the protocol detection timeout
/// for a client that speaks first.
pub fn secure_inbound(l: &mut Listener, mode: MtlsMode, source: SecretSource) {
    if mode == MtlsMode::Disable {
        return;
    }
    let mut chains = Vec::new();
    for plain in &l.filter_chains {
        let http = is_http(plain);
        let mut tls = plain.clone();
        let m = tls.filter_chain_match.get_or_insert_with(Default::default);
        m.transport_protocol = "tls".into();
        // Plaintext chains match HTTP by the inspector's names; inside TLS
        // the client's ALPN tells.
        m.application_protocols = if http && !m.application_protocols.is_empty() {
            HTTP_ALPN.iter().map(|a| (*a).to_owned()).collect()
        } else {
            Vec::new()
        };
        let alpn: &[&str] = if http { &HTTP_ALPN } else { &[] };
        tls.transport_socket = Some(downstream_socket(alpn, source));
        chains.push(tls);
    }
    if mode == MtlsMode::Permissive {
        for mut plain in l.filter_chains.drain(..) {
            plain
                .filter_chain_match
                .get_or_insert_with(Default::default)
                .transport_protocol = "raw_buffer".into();
            chains.push(plain);
        }
    }
    l.filter_chains = chains;
    l.listener_filters.insert(
        0,
        xlistener::ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(xlistener::listener_filter::ConfigType::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        },
    );
    l.listener_filters_timeout = Some(duration(PROTOCOL_DETECTION_TIMEOUT));
    l.continue_on_listener_filters_timeout = true;
}
