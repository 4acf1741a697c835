//! Span export: each recorded call becomes an OpenTelemetry span
//! (`SpanData`), queued per collector and sent in batches by a task of its
//! own — OTLP through `opentelemetry-otlp` (gRPC or HTTP), Zipkin v2 JSON
//! written here (the `opentelemetry-zipkin` exporter leaves out the
//! service name Zipkin and Jaeger group spans by).
//!
//! The data path never waits for a collector: a full queue drops the span
//! and counts it, so memory stays bounded while a collector is down.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, hyper::HyperClient};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::trace::SpanIds;
use crate::config::trace::{Collector, Protocol};
use crate::state::Shared;

/// Spans waiting per collector; past this a new span is dropped.
const QUEUE: usize = 2048;
/// Spans per export.
const BATCH: usize = 512;
/// How long a batch waits to fill before it goes.
const LINGER: Duration = Duration::from_millis(500);

/// A recorded call's span, from the request's arrival until its response
/// ends.
#[derive(Debug)]
pub struct SpanStart {
    /// Its ids.
    pub ids: SpanIds,
    /// Where it goes.
    pub collector: Arc<Collector>,
    /// A server span (a call the workload receives), else a client span.
    pub server: bool,
    /// When the request arrived.
    pub started: SystemTime,
    /// Its name (`GET svcb:80`).
    pub name: String,
    /// What the request said (method, URL, protocol, …).
    pub attributes: Vec<KeyValue>,
}

/// How the call ended, added to its span.
#[derive(Debug)]
pub struct SpanEnd<'a> {
    /// The response status.
    pub code: u16,
    /// Envoy-style response flags (`-` for none).
    pub flags: String,
    /// The service the call went to (its host), as the metrics'
    /// `destination_service`.
    pub service: &'a str,
}

/// The proxy's span queues, one per collector (what becomes of spans is
/// counted in the proxy's stats: `spans_exported`, `spans_dropped`).
#[derive(Debug, Default)]
pub struct Spans {
    queues: Mutex<HashMap<Arc<Collector>, mpsc::Sender<SpanData>>>,
}

impl Spans {
    /// Finishes `span` now and queues it for its collector.
    pub fn record(&self, shared: &Arc<Shared>, span: SpanStart, end: SpanEnd<'_>) {
        let data = span_data(
            span.ids,
            span.server,
            span.started,
            span.name,
            span.attributes,
            end,
        );
        let tx = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            queues
                .entry(span.collector.clone())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(export_loop(rx, Arc::downgrade(shared), span.collector));
                    tx
                })
                .clone()
        };
        if tx.try_send(data).is_err() {
            shared.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn span_data(
    ids: SpanIds,
    server: bool,
    started: SystemTime,
    name: String,
    mut attributes: Vec<KeyValue>,
    end: SpanEnd<'_>,
) -> SpanData {
    attributes.push(KeyValue::new(
        "http.response.status_code",
        i64::from(end.code),
    ));
    attributes.push(KeyValue::new("response_flags", end.flags));
    attributes.push(KeyValue::new("destination_service", end.service.to_owned()));
    // Client spans fail on 4xx and 5xx, server spans on 5xx only
    // (OpenTelemetry's HTTP conventions).
    let failed = end.code >= 500 || (!server && end.code >= 400);
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(ids.trace.to_be_bytes()),
            SpanId::from_bytes(ids.span.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: ids
            .parent
            .map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
        parent_span_is_remote: ids.parent.is_some(),
        span_kind: if server {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        name: Cow::Owned(name),
        start_time: started,
        end_time: SystemTime::now(),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if failed {
            Status::error(end.code.to_string())
        } else {
            Status::Unset
        },
        instrumentation_scope: InstrumentationScope::builder("mesh-proxy").build(),
    }
}

/// Sends a collector's spans in batches until the proxy goes away.
async fn export_loop(
    mut rx: mpsc::Receiver<SpanData>,
    shared: Weak<Shared>,
    collector: Arc<Collector>,
) {
    let mut exporter: Option<Exporter> = None;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            let more = tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room));
            if !matches!(more.await, Ok(n) if n > 0) {
                break;
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let n = batch.len() as u64;
        let stats = &shared.stats;
        match send(
            &shared,
            &collector,
            &mut exporter,
            std::mem::take(&mut batch),
        )
        .await
        {
            Ok(()) => stats.spans_exported.fetch_add(n, Ordering::Relaxed),
            Err(e) => {
                warn!(cluster = %collector.cluster, spans = n, "span export failed: {e}");
                stats.spans_dropped.fetch_add(n, Ordering::Relaxed)
            }
        };
    }
}

/// A collector's client, for one address and service name.
struct Exporter {
    address: SocketAddr,
    service: String,
    kind: ExporterKind,
}

enum ExporterKind {
    Otlp(opentelemetry_otlp::SpanExporter),
    Zipkin(HyperClient, http::Uri),
}

async fn send(
    shared: &Shared,
    collector: &Collector,
    exporter: &mut Option<Exporter>,
    batch: Vec<SpanData>,
) -> Result<(), String> {
    let address = shared
        .config
        .load()
        .clusters
        .get(&collector.cluster)
        .and_then(|c| c.target(None, None, None).map(|(_, a)| a))
        .ok_or_else(|| format!("cluster `{}` has no endpoint", collector.cluster))?;
    let service = collector.service_name.clone().unwrap_or_else(|| {
        let w = shared.telemetry.local();
        format!("{}.{}", w.canonical_service, w.namespace)
    });
    if exporter
        .as_ref()
        .is_none_or(|e| e.address != address || e.service != service)
    {
        debug!(%address, %service, "span exporter for {}", collector.cluster);
        *exporter = Some(Exporter::new(collector, address, service)?);
    }
    let e = exporter.as_ref().expect("just set");
    match &e.kind {
        ExporterKind::Otlp(x) => x.export(batch).await.map_err(|e| e.to_string()),
        ExporterKind::Zipkin(client, uri) => {
            let body = zipkin_json(&batch, &e.service);
            let req = http::Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Bytes::from(body))
                .map_err(|e| e.to_string())?;
            let resp = client.send_bytes(req).await.map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("collector answered {}", resp.status()))
            }
        }
    }
}

impl Exporter {
    fn new(c: &Collector, address: SocketAddr, service: String) -> Result<Exporter, String> {
        let kind = match &c.protocol {
            Protocol::ZipkinJson { path } => {
                let uri = format!("http://{address}{path}")
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                ExporterKind::Zipkin(HyperClient::with_default_connector(c.timeout, None), uri)
            }
            Protocol::OtlpGrpc => ExporterKind::Otlp(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(format!("http://{address}"))
                    .with_timeout(c.timeout)
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
            Protocol::OtlpHttp { path } => ExporterKind::Otlp(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(HyperClient::with_default_connector(c.timeout, None))
                    .with_endpoint(format!("http://{address}{path}"))
                    .with_timeout(c.timeout)
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
        };
        let mut e = Exporter {
            address,
            service,
            kind,
        };
        if let ExporterKind::Otlp(x) = &mut e.kind {
            x.set_resource(
                &Resource::builder_empty()
                    .with_service_name(e.service.clone())
                    .build(),
            );
        }
        Ok(e)
    }
}

/// Spans in Zipkin's v2 JSON model (`ListOfSpans`).
fn zipkin_json(batch: &[SpanData], service: &str) -> Vec<u8> {
    let micros = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    };
    let spans: Vec<serde_json::Value> = batch
        .iter()
        .map(|s| {
            let mut tags: serde_json::Map<String, serde_json::Value> = s
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string().into()))
                .collect();
            if let Status::Error { description } = &s.status {
                tags.insert("error".into(), description.to_string().into());
            }
            let mut span = serde_json::json!({
                "traceId": s.span_context.trace_id().to_string(),
                "id": s.span_context.span_id().to_string(),
                "name": s.name,
                "kind": if s.span_kind == SpanKind::Server { "SERVER" } else { "CLIENT" },
                "timestamp": micros(s.start_time),
                "duration": micros(s.end_time).saturating_sub(micros(s.start_time)).max(1),
                "localEndpoint": { "serviceName": service },
                "tags": tags,
            });
            if s.parent_span_id != SpanId::INVALID {
                span["parentId"] = s.parent_span_id.to_string().into();
            }
            span
        })
        .collect();
    serde_json::to_vec(&spans).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipkin_json_names_the_service_and_the_parent() {
        let ids = SpanIds {
            trace: 0x0af7651916cd43dd8448eb211c80319c,
            span: 0xb7ad6b7169203331,
            parent: Some(0x00f067aa0ba902b7),
            sampled: true,
        };
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let attributes = vec![KeyValue::new("http.request.method", "GET")];
        let end = SpanEnd {
            code: 503,
            flags: "UF".into(),
            service: "svcb.default.svc.cluster.local",
        };
        let s = span_data(ids, true, started, "GET svcb".into(), attributes, end);
        let json: serde_json::Value =
            serde_json::from_slice(&zipkin_json(&[s], "svcb.default")).unwrap();
        let span = &json[0];
        assert_eq!(span["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span["id"], "b7ad6b7169203331");
        assert_eq!(span["parentId"], "00f067aa0ba902b7");
        assert_eq!(span["kind"], "SERVER");
        assert_eq!(span["localEndpoint"]["serviceName"], "svcb.default");
        assert_eq!(span["timestamp"], 1_700_000_000_000_000u64);
        assert_eq!(span["tags"]["http.request.method"], "GET");
        assert_eq!(span["tags"]["http.response.status_code"], "503");
        assert_eq!(span["tags"]["response_flags"], "UF");
        assert_eq!(span["tags"]["error"], "503");
    }
}
