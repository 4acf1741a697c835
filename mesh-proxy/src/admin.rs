//! The admin endpoint (Envoy's paths): `/ready`, `/config_dump`,
//! `/clusters`, `/stats/prometheus`, `/logging`, `/quitquitquit`; and the
//! pod-facing metrics (15090) and health (15021) ports. It reads the
//! data path's state and never sits on the data path.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use tokio::net::TcpListener;

use crate::state::Shared;
use crate::telemetry::stats::{ClusterRow, EndpointRow};

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// Every endpoint's counters, clusters in name order.
pub fn endpoint_rows(shared: &Shared) -> Vec<EndpointRow> {
    let snap = shared.config.load();
    let mut names: Vec<_> = snap.clusters.keys().collect();
    names.sort();
    let mut rows = Vec::new();
    for name in names {
        for e in &snap.clusters[name].endpoints {
            rows.push(EndpointRow {
                cluster: name.clone(),
                address: e.address.to_string(),
                requests: e.requests.load(Ordering::Relaxed),
                failures: e.failures.load(Ordering::Relaxed),
                active: e.active.load(Ordering::Relaxed),
            });
        }
    }
    rows
}

/// Every cluster's circuit-breaker counters, in name order.
fn cluster_rows(shared: &Shared) -> Vec<ClusterRow> {
    let snap = shared.config.load();
    let mut rows: Vec<_> = snap
        .clusters
        .iter()
        .map(|(name, c)| ClusterRow {
            cluster: name.clone(),
            overflows: c.load.overflows.load(Ordering::Relaxed),
            ejections: c.load.ejections.load(Ordering::Relaxed),
        })
        .collect();
    rows.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    rows
}

/// Every metric in OpenMetrics text: the proxy's own counters, then the
/// standard per-call metrics.
fn metrics_text(shared: &Shared) -> String {
    let mut text = shared.stats.render(
        &endpoint_rows(shared),
        &cluster_rows(shared),
        &shared.config.load().prefix_stats,
    );
    // The configuration in force, as an info metric (its version).
    let version = shared.config.load().version.replace(['"', '\\', '\n'], "_");
    text.push_str("# TYPE mesh_proxy_config info\n");
    text.push_str(&format!(
        "mesh_proxy_config_info{{version=\"{version}\"}} 1\n"
    ));
    shared.telemetry.metrics.render(&mut text);
    text.push_str("# EOF\n");
    text
}

/// The workload's certificate and the roots it trusts (never the key), in
/// the shape of Envoy's `/certs`, so one reader serves both proxies.
fn certs(shared: &Shared) -> String {
    let Some(identity) = shared.identity.get() else {
        return "{\"certificates\":[]}".into();
    };
    let s = identity.summary();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let details = |pems: &[String], name: &str| -> Vec<serde_json::Value> {
        pems.iter()
            .filter_map(|pem| {
                let der = crate::identity::verify::der_of(pem).ok()?;
                let f = crate::identity::verify::facts(&der).ok()?;
                let sans: Vec<serde_json::Value> = f
                    .uri
                    .iter()
                    .map(|u| serde_json::json!({"uri": u}))
                    .collect();
                Some(serde_json::json!({
                    "path": name,
                    "serial_number": f.serial,
                    "subject_alt_names": sans,
                    "days_until_expiration": ((f.expires_at - now).max(0) / 86_400).to_string(),
                    "valid_from": f.not_before,
                    "expiration_time": f.not_after,
                }))
            })
            .collect()
    };
    let dump = serde_json::json!({"certificates": [{
        "ca_cert": details(&s.roots, "ROOTCA"),
        "cert_chain": details(&s.chain, "default"),
    }]});
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}

fn config_dump(shared: &Shared) -> String {
    use mesh_proto::descriptors::Schema::Proxy;
    use mesh_proto::json::to_json;
    let snap = shared.config.load();
    let v = &snap.version;
    let r = &snap.resources;
    // Envoy's admin.v3 *ConfigDump shapes, static or dynamic as the source was.
    let dump = if snap.dynamic {
        serde_json::json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": v,
             "dynamic_listeners": r.listeners.iter().map(|l| serde_json::json!({"name": l.name, "active_state": {"version_info": v, "listener": to_json(Proxy, l)}})).collect::<Vec<_>>()},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
             "dynamic_route_configs": r.routes.iter().map(|x| serde_json::json!({"version_info": v, "route_config": to_json(Proxy, x)})).collect::<Vec<_>>()},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": v,
             "dynamic_active_clusters": r.clusters.iter().map(|c| serde_json::json!({"version_info": v, "cluster": to_json(Proxy, c)})).collect::<Vec<_>>()},
            {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
             "dynamic_endpoint_configs": r.endpoints.iter().map(|e| serde_json::json!({"version_info": v, "endpoint_config": to_json(Proxy, e)})).collect::<Vec<_>>()},
        ]})
    } else {
        serde_json::json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": v,
             "static_listeners": r.listeners.iter().map(|l| serde_json::json!({"version_info": v, "listener": to_json(Proxy, l)})).collect::<Vec<_>>()},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": v,
             "static_clusters": r.clusters.iter().map(|c| serde_json::json!({"version_info": v, "cluster": to_json(Proxy, c)})).collect::<Vec<_>>()},
        ]})
    };
    serde_json::to_string_pretty(&dump).expect("JSON") + "\n"
}

/// Envoy's `/clusters` text: each cluster's circuit-breaker thresholds,
/// then each endpoint's counters and health (`/failed_outlier_check` while
/// outlier detection holds it out).
fn clusters_text(shared: &Shared) -> String {
    use crate::config::breaker::RetryLimit;
    let snap = shared.config.load();
    let mut names: Vec<_> = snap.clusters.keys().collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let c = &snap.clusters[name];
        let l = &c.limits;
        let retries = match l.retries {
            RetryLimit::Max(n) => n.to_string(),
            RetryLimit::Budget(_) => "budget".to_owned(),
        };
        for (field, value) in [
            ("max_connections", l.max_connections.to_string()),
            ("max_pending_requests", l.max_pending.to_string()),
            ("max_requests", l.max_requests.to_string()),
            ("max_retries", retries),
        ] {
            let _ = writeln!(out, "{name}::default_priority::{field}::{value}");
        }
        let now = c.load.now_ms();
        for e in &c.endpoints {
            let addr = e.address;
            let flags = if !e.healthy {
                "/failed_eds_health"
            } else if e.health.ejected(now) {
                "/failed_outlier_check"
            } else {
                "healthy"
            };
            let _ = writeln!(out, "{name}::{addr}::health_flags::{flags}");
            let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}::{addr}::rq_total::{}", get(&e.requests));
            let _ = writeln!(out, "{name}::{addr}::rq_error::{}", get(&e.failures));
            let active = e.active.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}::{addr}::rq_active::{active}");
        }
    }
    out
}

/// Which endpoints a port serves: the loopback admin port serves all; the
/// pod-facing metrics (15090) and health (15021) ports serve one each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (admin, 127.0.0.1:15000).
    Admin,
    /// `/stats/prometheus` only (15090).
    Metrics,
    /// `/healthz/ready` only (15021).
    Health,
}

/// What the admin endpoints read and change.
pub struct Admin {
    /// The data path's state.
    pub shared: Arc<Shared>,
    /// Log levels (`/logging`); `None` when the process has no logger of
    /// its own (e.g. a proxy embedded in a test).
    pub logging: Option<Arc<mesh_runtime::log::Logging>>,
}

async fn handle(
    req: Request<Incoming>,
    admin: Arc<Admin>,
    scope: Scope,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let shared = &admin.shared;
    let text = "text/plain; charset=utf-8";
    let path = req.uri().path();
    let allowed = match scope {
        Scope::Admin => true,
        Scope::Metrics => path == "/stats/prometheus",
        Scope::Health => path == "/healthz/ready",
    };
    if !allowed {
        return Ok(reply(StatusCode::NOT_FOUND, text, "not found\n".into()));
    }
    Ok(match (req.method(), path) {
        (_, "/ready") | (_, "/healthz/ready") => {
            if shared.draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, text, "DRAINING\n".into())
            } else if !shared.ready() {
                reply(StatusCode::SERVICE_UNAVAILABLE, text, "PRE_INITIALIZING\n".into())
            } else {
                reply(StatusCode::OK, text, "LIVE\n".into())
            }
        }
        (&Method::GET, "/config_dump") => reply(StatusCode::OK, "application/json", config_dump(shared)),
        (&Method::GET, "/clusters") => reply(StatusCode::OK, text, clusters_text(shared)),
        (&Method::GET, "/certs") => reply(StatusCode::OK, "application/json", certs(shared)),
        (&Method::GET, "/stats/prometheus") | (&Method::GET, "/stats") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics_text(shared),
        ),
        (&Method::POST, "/quitquitquit") => {
            shared.shutdown();
            reply(StatusCode::OK, text, "OK\n".into())
        }
        (method, "/logging") => logging(&admin, method, req.uri().query(), text),
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            "admin paths: /ready /config_dump /clusters /certs /stats/prometheus /logging /quitquitquit (POST)\n".into(),
        ),
    })
}

/// `GET /logging` lists the levels; `POST /logging?level=debug` sets
/// every logger, `POST /logging?mesh_proxy::http=trace` one (Envoy's
/// admin changes levels only on POST).
fn logging(
    admin: &Admin,
    method: &Method,
    query: Option<&str>,
    text: &'static str,
) -> Response<Full<Bytes>> {
    let Some(logging) = &admin.logging else {
        return reply(
            StatusCode::NOT_FOUND,
            text,
            "no logger in this process\n".into(),
        );
    };
    match (method, query.filter(|q| !q.is_empty())) {
        (&Method::POST, Some(q)) => match logging.apply_query(q) {
            Ok(_) => reply(
                StatusCode::OK,
                text,
                format!("active loggers:\n{}", logging.list()),
            ),
            Err(e) => reply(StatusCode::BAD_REQUEST, text, format!("{e}\n")),
        },
        (&Method::GET, Some(_)) => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            "changing log levels needs POST\n".into(),
        ),
        _ => reply(
            StatusCode::OK,
            text,
            format!("active loggers:\n{}", logging.list()),
        ),
    }
}

/// One bound admin-style port and what it serves.
pub struct Endpoint {
    /// The bound socket.
    pub listener: std::net::TcpListener,
    /// What it serves.
    pub scope: Scope,
}

/// Binds `addr` for `scope`; `what` names it in the error.
pub fn bind(addr: std::net::SocketAddr, scope: Scope) -> anyhow::Result<Endpoint> {
    use anyhow::Context;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("{scope:?} endpoint: cannot bind {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(Endpoint { listener, scope })
}

/// Serves `endpoints` on a thread of their own until the proxy drains.
pub fn spawn(
    endpoints: Vec<Endpoint>,
    admin: Admin,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let admin = Arc::new(admin);
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("admin runtime");
            rt.block_on(async move {
                for e in endpoints {
                    let l = TcpListener::from_std(e.listener).expect("admin listener");
                    tokio::spawn(serve(l, admin.clone(), e.scope));
                }
                let mut stop = admin.shared.shutdown_signal();
                let _ = stop.wait_for(|s| *s).await;
            });
        })
}

/// Serves the endpoints of `scope` on `listener`.
async fn serve(listener: TcpListener, admin: Arc<Admin>, scope: Scope) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, admin.clone(), scope));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
