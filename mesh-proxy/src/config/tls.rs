//! TLS transport sockets: what a cluster's `UpstreamTlsContext` and a
//! filter chain's `DownstreamTlsContext` ask for.
//!
//! The certificates are Istio's SDS names, served by the proxy itself (as
//! Istio's agent serves them to Envoy): `default` is the workload's own
//! certificate, whose key never leaves the proxy, and `ROOTCA` the mesh's
//! roots. Any other secret is refused.

use std::hash::{Hash, Hasher};

use mesh_proto::envoy::config::core::v3 as xcore;
use mesh_proto::envoy::extensions::transport_sockets::tls::v3 as xtls;
use mesh_proto::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use mesh_rules::FieldError;

use super::{err, type_name, unpack};

/// The transport socket name Envoy gives TLS.
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
/// The SDS name of the workload's own certificate.
pub const OWN_CERTIFICATE: &str = "default";
/// The SDS name of the mesh's roots.
pub const ROOTS: &str = "ROOTCA";

/// A cluster's TLS: whom to trust and what to offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// SNI sent (none: no SNI).
    pub sni: Option<String>,
    /// ALPN offered.
    pub alpn: Vec<String>,
    /// URI SANs the server may present (secure naming); empty: any
    /// certificate of the mesh's roots.
    pub expected: Vec<String>,
    /// Present the workload's own certificate (mutual TLS).
    pub client_certificate: bool,
    /// A hash of the above, never 0: stable across configurations, it keys
    /// the connection pools (a push keeps pooled connections) and the
    /// client configurations.
    pub pool_key: u64,
}

impl UpstreamTls {
    /// The same without ALPN, for opaque TCP: the server then takes the
    /// bytes as they come rather than as HTTP.
    pub fn opaque(&self) -> UpstreamTls {
        UpstreamTls {
            alpn: Vec::new(),
            ..self.clone()
        }
        .keyed()
    }

    fn keyed(mut self) -> UpstreamTls {
        let mut h = std::hash::DefaultHasher::new();
        (
            &self.sni,
            &self.alpn,
            &self.expected,
            self.client_certificate,
        )
            .hash(&mut h);
        self.pool_key = h.finish() | 1;
        self
    }
}

/// A filter chain's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamTls {
    /// ALPN accepted, in order of preference.
    pub alpn: Vec<String>,
    /// Clients must present a certificate of the mesh's roots.
    pub require_client_certificate: bool,
}

/// The TLS a transport socket asks for (`None`: plaintext).
fn tls_context<M: prost::Message + Default + prost::Name>(
    socket: &Option<xcore::TransportSocket>,
    path: &str,
) -> Result<Option<M>, FieldError> {
    let Some(socket) = socket else {
        return Ok(None);
    };
    let path = format!("{path}.transport_socket");
    if socket.name != TLS_SOCKET && !socket.name.is_empty() {
        return Err(err(
            format!("{path}.name"),
            format!(
                "transport socket {} is not supported (only {TLS_SOCKET})",
                socket.name
            ),
        ));
    }
    let Some(xcore::transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Err(err(path, "a typed_config is required"));
    };
    if type_name(any) != M::full_name() {
        return Err(err(
            format!("{path}.typed_config"),
            format!("expected {}, got {}", M::full_name(), type_name(any)),
        ));
    }
    unpack(any, &format!("{path}.typed_config")).map(Some)
}

/// A cluster's `transport_socket`.
pub fn upstream(
    socket: &Option<xcore::TransportSocket>,
    path: &str,
) -> Result<Option<UpstreamTls>, FieldError> {
    let Some(ctx) = tls_context::<xtls::UpstreamTlsContext>(socket, path)? else {
        return Ok(None);
    };
    let path = format!("{path}.transport_socket.typed_config.common_tls_context");
    let common = ctx.common_tls_context.unwrap_or_default();
    let (client_certificate, expected) = common_parts(&common, &path)?;
    Ok(Some(
        UpstreamTls {
            sni: (!ctx.sni.is_empty()).then_some(ctx.sni),
            alpn: common.alpn_protocols,
            expected,
            client_certificate,
            pool_key: 0,
        }
        .keyed(),
    ))
}

/// A filter chain's `transport_socket`.
pub fn downstream(
    socket: &Option<xcore::TransportSocket>,
    path: &str,
) -> Result<Option<DownstreamTls>, FieldError> {
    let Some(ctx) = tls_context::<xtls::DownstreamTlsContext>(socket, path)? else {
        return Ok(None);
    };
    let cpath = format!("{path}.transport_socket.typed_config.common_tls_context");
    let common = ctx.common_tls_context.unwrap_or_default();
    let (own, expected) = common_parts(&common, &cpath)?;
    if !own {
        return Err(err(
            format!("{cpath}.tls_certificate_sds_secret_configs"),
            format!("a server needs a certificate: name SDS secret `{OWN_CERTIFICATE}`"),
        ));
    }
    if !expected.is_empty() {
        return Err(err(
            format!("{cpath}.combined_validation_context.default_validation_context"),
            "matching client SANs is not supported yet (authorization policies name principals)",
        ));
    }
    let require = ctx.require_client_certificate.is_some_and(|b| b.value);
    Ok(Some(DownstreamTls {
        alpn: common.alpn_protocols,
        require_client_certificate: require,
    }))
}

/// Whether the context presents the workload's certificate, and the SANs
/// it expects of the peer.
fn common_parts(
    common: &xtls::CommonTlsContext,
    path: &str,
) -> Result<(bool, Vec<String>), FieldError> {
    use xtls::common_tls_context::ValidationContextType as V;
    let own = match common.tls_certificate_sds_secret_configs.as_slice() {
        [] => false,
        [one] => {
            secret(
                one,
                OWN_CERTIFICATE,
                &format!("{path}.tls_certificate_sds_secret_configs[0]"),
            )?;
            true
        }
        _ => {
            return Err(err(
                format!("{path}.tls_certificate_sds_secret_configs"),
                "one certificate (`default`) is supported",
            ));
        }
    };
    let expected = match &common.validation_context_type {
        None => {
            return Err(err(
                path,
                format!("a validation context is required: the mesh's roots (SDS `{ROOTS}`)"),
            ));
        }
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            secret(
                s,
                ROOTS,
                &format!("{path}.validation_context_sds_secret_config"),
            )?;
            Vec::new()
        }
        Some(V::CombinedValidationContext(c)) => {
            let cpath = format!("{path}.combined_validation_context");
            let Some(s) = &c.validation_context_sds_secret_config else {
                return Err(err(
                    format!("{cpath}.validation_context_sds_secret_config"),
                    format!("name SDS secret `{ROOTS}`"),
                ));
            };
            secret(
                s,
                ROOTS,
                &format!("{cpath}.validation_context_sds_secret_config"),
            )?;
            let default = c.default_validation_context.clone().unwrap_or_default();
            expected_sans(&default, &format!("{cpath}.default_validation_context"))?
        }
        Some(_) => {
            return Err(err(
                path,
                format!("only SDS validation contexts (`{ROOTS}`) are supported"),
            ));
        }
    };
    Ok((own, expected))
}

/// An SDS secret mesh-proxy serves itself: `want`, over ADS.
fn secret(s: &xtls::SdsSecretConfig, want: &str, path: &str) -> Result<(), FieldError> {
    if s.name != want {
        return Err(err(
            format!("{path}.name"),
            format!(
                "secret `{}` is not one mesh-proxy has: `{OWN_CERTIFICATE}` (its own certificate) or `{ROOTS}` (the mesh's roots)",
                s.name
            ),
        ));
    }
    Ok(())
}

/// `match_typed_subject_alt_names`: exact URI SANs.
fn expected_sans(
    v: &xtls::CertificateValidationContext,
    path: &str,
) -> Result<Vec<String>, FieldError> {
    use xtls::subject_alt_name_matcher::SanType;
    v.match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mpath = format!("{path}.match_typed_subject_alt_names[{i}]");
            if m.san_type != SanType::Uri as i32 {
                return Err(err(
                    format!("{mpath}.san_type"),
                    "only URI SANs are supported",
                ));
            }
            match m.matcher.as_ref().and_then(|s| s.match_pattern.as_ref()) {
                Some(MatchPattern::Exact(uri)) if !uri.is_empty() => Ok(uri.clone()),
                _ => Err(err(format!("{mpath}.matcher"), "an exact URI is required")),
            }
        })
        .collect()
}
