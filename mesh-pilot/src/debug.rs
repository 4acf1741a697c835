//! Pilot's debug endpoints (15014, as istiod's): `/ready`,
//! `/debug/syncz` (connected proxies and their sync state, what
//! `meshctl proxy-status` shows), `/debug/registryz` (the services and
//! workloads of every registry, with their health, as translation reads
//! them), `/debug/configz` (the rules in force, from the store or the
//! cluster), `/debug/push_history`, and
//! `/debug/config_dump?proxy=NODE_ID` (the current translation for a
//! connected proxy, as it would be sent); `/debug/analyze` (what `meshctl
//! analyze` shows: rules that select nothing pilot knows, stored fields it
//! does not act on); `/debug/logging` lists the log
//! levels (GET) and changes them (POST `?level=debug` or
//! `?mesh_pilot::ads=trace`), as the proxy's admin `/logging` does.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use mesh_proto::descriptors::Schema;
use mesh_proto::json::to_json;
use tokio::net::TcpListener;

use crate::ads::Discovery;
use crate::translate::{Inputs, translate};

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(v).expect("JSON") + "\n";
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn config_dump(d: &Discovery, node_id: &str) -> Response<Full<Bytes>> {
    let Some(p) = d.status().proxies().into_iter().find(|p| p.node == node_id) else {
        let known: Vec<String> = d.status().proxies().into_iter().map(|p| p.node).collect();
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": format!("no connected proxy `{node_id}`"), "connected": known}),
        );
    };
    let world = d.world();
    let node = crate::ads::proxy_node(&mesh_proto::node::NodeMeta {
        id: p.node.clone(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        workload: p.workload.clone(),
        ip: p.ip.as_deref().and_then(|i| i.parse().ok()),
        labels: p.labels.clone(),
        service_account: String::new(),
        explicit: p.explicit.is_some(),
        app_ip: p.explicit.as_deref().and_then(|i| i.parse().ok()),
        kind: p.proxy,
    });
    let inputs = Inputs {
        registry: &world.registry,
        rules: &world.rules,
        mesh: &world.mesh,
    };
    let r = translate(&inputs, &node);
    json(
        StatusCode::OK,
        &serde_json::json!({
            "node": p.node,
            "generation": world.generation,
            "rules_revision": world.rules_revision,
            "listeners": r.listeners.iter().map(|m| to_json(Schema::Xds, m)).collect::<Vec<_>>(),
            "routes": r.routes.iter().map(|m| to_json(Schema::Xds, m)).collect::<Vec<_>>(),
            "clusters": r.clusters.iter().map(|m| to_json(Schema::Xds, m)).collect::<Vec<_>>(),
            "endpoints": r.endpoints.iter().map(|m| to_json(Schema::Xds, m)).collect::<Vec<_>>(),
        }),
    )
}

/// What the debug endpoints read and change.
pub struct Debug {
    /// The ADS server's state.
    pub discovery: Discovery,
    /// Log levels; `None` when the process has no logger of its own.
    pub logging: Option<mesh_runtime::log::Logging>,
}

fn logging(debug: &Debug, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(logging) = &debug.logging else {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "no logger in this process"}),
        );
    };
    let levels = |l: &mesh_runtime::log::Levels| serde_json::json!({"levels": l.directives()});
    match (req.method(), req.uri().query().filter(|q| !q.is_empty())) {
        (&http::Method::POST, Some(q)) => match logging.apply_query(q) {
            Ok(l) => json(StatusCode::OK, &levels(&l)),
            Err(e) => json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": e.to_string()}),
            ),
        },
        (&http::Method::GET, Some(_)) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "changing log levels needs POST"}),
        ),
        _ => json(StatusCode::OK, &levels(&logging.current())),
    }
}

async fn handle(
    debug: Arc<Debug>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let d = &debug.discovery;
    let query = req.uri().query().unwrap_or("");
    Ok(match req.uri().path() {
        "/debug/logging" => logging(&debug, &req),
        "/debug/analyze" => {
            let w = d.world();
            let mut findings = crate::analyze::analyze(&w.registry, &w.rules, &w.mesh.domain);
            findings.extend(crate::analyze::security(&w));
            json(StatusCode::OK, &findings)
        }
        "/ready" => json(StatusCode::OK, &"ready"),
        "/metrics" => Response::builder()
            .header(
                http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(d.status().metrics_text())))
            .expect("a valid response"),
        "/debug/syncz" => json(StatusCode::OK, &d.status().proxies()),
        "/debug/registryz" => json(StatusCode::OK, &d.world().registry),
        "/debug/configz" => {
            let w = d.world();
            let rules: Vec<serde_json::Value> = w.rules.iter().map(|r| r.to_value()).collect();
            json(StatusCode::OK, &rules)
        }
        "/debug/push_history" => json(StatusCode::OK, &d.status().history()),
        "/debug/config_dump" => {
            let proxy = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("proxy="))
                .map(|v| v.replace("%7E", "~").replace("%7e", "~"));
            match proxy {
                Some(p) => config_dump(d, &p),
                None => json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "give ?proxy=NODE_ID (see /debug/syncz)"}),
                ),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"paths": ["/ready", "/debug/syncz", "/debug/registryz", "/debug/configz", "/debug/push_history", "/debug/config_dump?proxy=NODE_ID", "/debug/analyze", "/debug/logging", "/metrics"]}),
        ),
    })
}

/// Serves the debug endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, d: Arc<Debug>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let d = d.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(d.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
