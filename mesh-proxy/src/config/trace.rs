//! An HTTP connection manager's `tracing`: how many traces to record and
//! where spans go — Envoy's Zipkin tracer (`ZipkinConfig`, v2 JSON) or its
//! OpenTelemetry tracer (`OpenTelemetryConfig`, OTLP over gRPC or HTTP),
//! each sending to a cluster of the configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::envoy::config::trace::v3 as xtrace;
use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_rules::FieldError;

use super::{Cluster, duration, err, type_name, unpack};
use crate::telemetry::trace::Sampling;

/// How a connection manager traces its calls.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// Which traces are recorded, and how new trace ids look.
    pub sampling: Sampling,
    /// Where recorded spans go (none: context is kept, nothing exported).
    pub collector: Option<Arc<Collector>>,
}

/// A span collector: a cluster and the protocol it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Collector {
    /// The cluster whose endpoints take the spans.
    pub cluster: String,
    /// The wire format.
    pub protocol: Protocol,
    /// The name spans carry as their service (default: the workload's
    /// `<app>.<namespace>`, as Istio names it).
    pub service_name: Option<String>,
    /// How long one export may take.
    pub timeout: Duration,
}

/// How spans are sent to a [`Collector`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Zipkin v2 JSON, POSTed to `path`.
    ZipkinJson {
        /// The collector's path (`/api/v2/spans`).
        path: String,
    },
    /// OTLP over gRPC (`TraceService/Export`).
    OtlpGrpc,
    /// OTLP over HTTP (protobuf), POSTed to `path`.
    OtlpHttp {
        /// The collector's path (`/v1/traces`).
        path: String,
    },
}

const ZIPKIN: &str = "envoy.config.trace.v3.ZipkinConfig";
const OTEL: &str = "envoy.config.trace.v3.OpenTelemetryConfig";
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

impl TraceConfig {
    /// Reads `tracing` (at `path`); the collector must be one of `clusters`.
    pub fn build(
        t: &hcm::http_connection_manager::Tracing,
        path: &str,
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Result<TraceConfig, FieldError> {
        let percent = t.random_sampling.as_ref().map_or(100.0, |p| p.value);
        if !(0.0..=100.0).contains(&percent) {
            return Err(err(
                format!("{path}.random_sampling.value"),
                format!("{percent} is not a percentage (0 to 100)"),
            ));
        }
        let mut sampling = Sampling {
            rate: percent / 100.0,
            wide_ids: false,
        };
        let Some(provider) = &t.provider else {
            return Ok(TraceConfig {
                sampling,
                collector: None,
            });
        };
        let tpath = format!("{path}.provider.typed_config");
        let Some(xtrace::tracing::http::ConfigType::TypedConfig(any)) = &provider.config_type
        else {
            return Err(err(tpath, "a tracer needs its typed_config"));
        };
        let collector = match type_name(any) {
            ZIPKIN => {
                let z: xtrace::ZipkinConfig = unpack(any, &tpath)?;
                sampling.wide_ids = z.trace_id_128bit;
                zipkin(&z, &tpath)?
            }
            OTEL => opentelemetry(&unpack(any, &tpath)?, &tpath)?,
            other => {
                return Err(err(
                    tpath,
                    format!(
                        "tracer {other} is not supported (ZipkinConfig and OpenTelemetryConfig are)"
                    ),
                ));
            }
        };
        if !clusters.contains_key(&collector.cluster) {
            return Err(err(
                tpath,
                format!(
                    "the span collector's cluster `{}` is not defined",
                    collector.cluster
                ),
            ));
        }
        Ok(TraceConfig {
            sampling,
            collector: Some(Arc::new(collector)),
        })
    }
}

fn zipkin(z: &xtrace::ZipkinConfig, path: &str) -> Result<Collector, FieldError> {
    use xtrace::zipkin_config::CollectorEndpointVersion;
    if z.collector_endpoint_version != CollectorEndpointVersion::HttpJson as i32 {
        return Err(err(
            format!("{path}.collector_endpoint_version"),
            "only HTTP_JSON (Zipkin v2 JSON) is supported",
        ));
    }
    if z.shared_span_context.map(|b| b.value) != Some(false) {
        return Err(err(
            format!("{path}.shared_span_context"),
            "shared span contexts are not supported: mesh-proxy records a server span of its own \
             for each call it receives; set shared_span_context: false",
        ));
    }
    if z.collector_cluster.is_empty() || !z.collector_endpoint.starts_with('/') {
        return Err(err(
            path,
            "collector_cluster and collector_endpoint (a path, e.g. /api/v2/spans) are required",
        ));
    }
    Ok(Collector {
        cluster: z.collector_cluster.clone(),
        protocol: Protocol::ZipkinJson {
            path: z.collector_endpoint.clone(),
        },
        service_name: None,
        timeout: EXPORT_TIMEOUT,
    })
}

fn opentelemetry(o: &xtrace::OpenTelemetryConfig, path: &str) -> Result<Collector, FieldError> {
    use mesh_proto::envoy::config::core::v3::grpc_service::TargetSpecifier;
    let service_name = (!o.service_name.is_empty()).then(|| o.service_name.clone());
    match (&o.grpc_service, &o.http_service) {
        (Some(g), None) => {
            let Some(TargetSpecifier::EnvoyGrpc(e)) = &g.target_specifier else {
                return Err(err(
                    format!("{path}.grpc_service"),
                    "only envoy_grpc (a cluster) is supported",
                ));
            };
            Ok(Collector {
                cluster: e.cluster_name.clone(),
                protocol: Protocol::OtlpGrpc,
                service_name,
                timeout: duration(&g.timeout).unwrap_or(EXPORT_TIMEOUT),
            })
        }
        (None, Some(h)) => {
            let upath = format!("{path}.http_service.http_uri");
            let Some(uri) = &h.http_uri else {
                return Err(err(upath, "http_uri is required"));
            };
            let Some(cluster) = &uri.http_upstream_type else {
                return Err(err(format!("{upath}.cluster"), "a cluster is required"));
            };
            let mesh_proto::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(cluster) =
                cluster;
            let target: http::Uri = uri
                .uri
                .parse()
                .map_err(|e| err(format!("{upath}.uri"), format!("not a URI: {e}")))?;
            Ok(Collector {
                cluster: cluster.clone(),
                protocol: Protocol::OtlpHttp {
                    path: target.path().to_owned(),
                },
                service_name,
                timeout: duration(&uri.timeout).unwrap_or(EXPORT_TIMEOUT),
            })
        }
        _ => Err(err(
            path,
            "exactly one of grpc_service and http_service is required",
        )),
    }
}
