//! The admin endpoint (Envoy's paths): `/ready`, `/config_dump`,
//! `/clusters`, `/stats/prometheus`, `/quitquitquit`.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use tokio::net::TcpListener;

use crate::server::Shared;

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// Per endpoint: (cluster, address, requests, failures, active).
pub fn endpoint_counters(shared: &Shared) -> Vec<(String, String, u64, u64, usize)> {
    let snap = shared.config.load();
    let mut names: Vec<_> = snap.clusters.keys().collect();
    names.sort();
    let mut rows = Vec::new();
    for name in names {
        for e in &snap.clusters[name].endpoints {
            rows.push((
                name.clone(),
                e.address.to_string(),
                e.requests.load(Ordering::Relaxed),
                e.failures.load(Ordering::Relaxed),
                e.active.load(Ordering::Relaxed),
            ));
        }
    }
    rows
}

fn config_dump(shared: &Shared) -> String {
    use mesh_proto::json::to_json;
    let snap = shared.config.load();
    let v = &snap.version;
    let r = &snap.resources;
    // Envoy's admin.v3 *ConfigDump shapes, static or dynamic as the source was.
    let dump = if snap.dynamic {
        serde_json::json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": v,
             "dynamic_listeners": r.listeners.iter().map(|l| serde_json::json!({"name": l.name, "active_state": {"version_info": v, "listener": to_json(l)}})).collect::<Vec<_>>()},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
             "dynamic_route_configs": r.routes.iter().map(|x| serde_json::json!({"version_info": v, "route_config": to_json(x)})).collect::<Vec<_>>()},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": v,
             "dynamic_active_clusters": r.clusters.iter().map(|c| serde_json::json!({"version_info": v, "cluster": to_json(c)})).collect::<Vec<_>>()},
            {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
             "dynamic_endpoint_configs": r.endpoints.iter().map(|e| serde_json::json!({"version_info": v, "endpoint_config": to_json(e)})).collect::<Vec<_>>()},
        ]})
    } else {
        serde_json::json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": v,
             "static_listeners": r.listeners.iter().map(|l| serde_json::json!({"version_info": v, "listener": to_json(l)})).collect::<Vec<_>>()},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": v,
             "static_clusters": r.clusters.iter().map(|c| serde_json::json!({"version_info": v, "cluster": to_json(c)})).collect::<Vec<_>>()},
        ]})
    };
    serde_json::to_string_pretty(&dump).expect("JSON") + "\n"
}

fn clusters_text(shared: &Shared) -> String {
    let snap = shared.config.load();
    let mut out = String::new();
    for (cluster, addr, rq, failed, active) in endpoint_counters(shared) {
        let healthy = snap.clusters[&cluster]
            .endpoints
            .iter()
            .find(|e| e.address.to_string() == addr)
            .is_some_and(|e| e.healthy);
        let _ = writeln!(
            out,
            "{cluster}::{addr}::health_flags::{}",
            if healthy {
                "healthy"
            } else {
                "/failed_eds_health"
            }
        );
        let _ = writeln!(out, "{cluster}::{addr}::rq_total::{rq}");
        let _ = writeln!(out, "{cluster}::{addr}::rq_error::{failed}");
        let _ = writeln!(out, "{cluster}::{addr}::rq_active::{active}");
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

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    scope: Scope,
) -> Result<Response<Full<Bytes>>, Infallible> {
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
        (&Method::GET, "/config_dump") => reply(StatusCode::OK, "application/json", config_dump(&shared)),
        (&Method::GET, "/clusters") => reply(StatusCode::OK, text, clusters_text(&shared)),
        (&Method::GET, "/stats/prometheus") | (&Method::GET, "/stats") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.stats.render(&endpoint_counters(&shared)),
        ),
        (&Method::POST, "/quitquitquit") => {
            shared.shutdown();
            reply(StatusCode::OK, text, "OK\n".into())
        }
        (&Method::POST, "/logging") | (&Method::GET, "/logging") => {
            reply(StatusCode::OK, text, "active loggers:\n  mesh_proxy: info\n".into())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            "admin paths: /ready /config_dump /clusters /stats/prometheus /logging /quitquitquit (POST)\n".into(),
        ),
    })
}

/// Serves the endpoints of `scope` on `listener`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, scope: Scope) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, shared.clone(), scope));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
