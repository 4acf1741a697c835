//! `meshctl proxy-status` (pilot's view of every connected proxy) and
//! `meshctl proxy-config` (a proxy's own view, from its admin
//! `/config_dump`; works for mesh-proxy and Envoy alike).

use std::process::ExitCode;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::Value;

use crate::output::table;

/// What `proxy-config` shows.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum Section {
    /// Listeners (LDS).
    Listeners,
    /// Route configurations (RDS).
    Routes,
    /// Clusters (CDS).
    Clusters,
    /// Endpoints (EDS and static).
    Endpoints,
    /// The workload's certificate and the roots it trusts (`/certs`).
    Secret,
}

/// The body of `GET http://{addr}{path}` (2xx only).
pub async fn get(addr: &str, path: &str) -> anyhow::Result<Bytes> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let url: hyper::Uri = format!("http://{addr}{path}")
        .parse()
        .with_context(|| format!("`{addr}` is not host:port"))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(url))
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not answer within 10 s"))?
        .with_context(|| format!("cannot reach {addr}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "{addr}{path} answered {status}: {}",
        String::from_utf8_lossy(&body).trim()
    );
    Ok(body)
}

async fn get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    let body = get(addr, path).await?;
    serde_json::from_slice(&body).with_context(|| format!("{addr}{path} did not answer JSON"))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `meshctl proxy-status`: every proxy connected to pilot, per type
/// SYNCED / STALE / NACKED, with the reasons of NACKs.
pub async fn proxy_status(pilot: &str) -> anyhow::Result<ExitCode> {
    let proxies = get_json(pilot, "/debug/syncz").await?;
    let list = proxies.as_array().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    let mut nacks = Vec::new();
    for p in &list {
        let state = |t: &str| s(&p["states"][t]);
        rows.push(vec![
            s(&p["node"]),
            s(&p["proxy"]),
            s(&p["protocol"]),
            s(&p["rules_revision"]),
            state("CDS"),
            state("LDS"),
            state("EDS"),
            state("RDS"),
        ]);
        if let Some(types) = p["types"].as_object() {
            for (t, v) in types {
                if let Some(reason) = v["nacked"].as_str() {
                    nacks.push(format!("{} {t}: {reason}", s(&p["node"])));
                }
            }
        }
    }
    if list.is_empty() {
        println!("no proxies are connected to pilot at {pilot}");
        return Ok(ExitCode::SUCCESS);
    }
    table(
        &[
            "NAME", "PROXY", "XDS", "REVISION", "CDS", "LDS", "EDS", "RDS",
        ],
        rows,
    );
    for n in &nacks {
        println!("NACK {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `meshctl analyze`: rules that cannot do what they say with the services
/// and workloads pilot knows, and stored fields pilot does not act on.
/// Exits 1 when anything is found, so scripts and CI can gate on it.
pub async fn analyze(pilot: &str) -> anyhow::Result<ExitCode> {
    let findings = get_json(pilot, "/debug/analyze").await?;
    let list = findings.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no problems found in the rules pilot at {pilot} serves");
        return Ok(ExitCode::SUCCESS);
    }
    for f in &list {
        println!("{}: {}: {}", s(&f["rule"]), s(&f["path"]), s(&f["message"]));
    }
    Ok(ExitCode::FAILURE)
}

/// The resources of one kind in an admin.v3 config dump (static and dynamic).
fn resources(dump: &Value, section: Section) -> Vec<Value> {
    let mut out = Vec::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        let ty = c["@type"].as_str().unwrap_or_default();
        let items = |key: &str, inner: &str| -> Vec<Value> {
            c[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let v = if inner.contains('.') {
                        let (a, b) = inner.split_once('.').unwrap();
                        &e[a][b]
                    } else {
                        &e[inner]
                    };
                    v.clone()
                })
                .filter(|v| !v.is_null())
                .collect()
        };
        match (section, ty.rsplit('.').next().unwrap_or_default()) {
            (Section::Listeners, "ListenersConfigDump") => {
                out.extend(items("static_listeners", "listener"));
                out.extend(items("dynamic_listeners", "active_state.listener"));
            }
            (Section::Routes, "RoutesConfigDump") => {
                out.extend(items("static_route_configs", "route_config"));
                out.extend(items("dynamic_route_configs", "route_config"));
            }
            (Section::Clusters, "ClustersConfigDump") => {
                out.extend(items("static_clusters", "cluster"));
                out.extend(items("dynamic_active_clusters", "cluster"));
            }
            (Section::Endpoints, "EndpointsConfigDump") => {
                out.extend(items("static_endpoint_configs", "endpoint_config"));
                out.extend(items("dynamic_endpoint_configs", "endpoint_config"));
            }
            (Section::Endpoints, "ClustersConfigDump") => {
                // Static clusters carry their endpoints inline.
                for c in items("static_clusters", "cluster")
                    .into_iter()
                    .chain(items("dynamic_active_clusters", "cluster"))
                {
                    if c["load_assignment"].is_object() {
                        let mut la = c["load_assignment"].clone();
                        la["cluster_name"] = c["name"].clone();
                        out.push(la);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// One row per listener: name, address, whether it binds, and each filter
/// chain's network filter (with the protocols a detected chain takes).
fn listener_rows(items: &[Value]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|l| {
            // Each chain's network filter; a chain chosen by the
            // detected protocol shows the protocols it takes.
            let filter = l["filter_chains"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let name = c["filters"][0]["typed_config"]["@type"]
                        .as_str()
                        .and_then(|t| t.rsplit('.').next())
                        .unwrap_or_default();
                    let protocols: Vec<&str> = c["filter_chain_match"]["application_protocols"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.as_str())
                        .collect();
                    if protocols.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{name} [{}]", protocols.join(","))
                    }
                })
                .collect::<Vec<_>>()
                .join(" | ");
            let bind = if l["bind_to_port"] == false {
                "no"
            } else {
                "yes"
            };
            vec![s(&l["name"]), address(&l["address"]), bind.into(), filter]
        })
        .collect()
}

fn address(a: &Value) -> String {
    let sa = &a["socket_address"];
    format!("{}:{}", s(&sa["address"]), s(&sa["port_value"]))
}

/// One row per route: its configuration, first domain, match and target.
fn route_rows(items: &[Value]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for rc in items {
        for vh in rc["virtual_hosts"].as_array().into_iter().flatten() {
            let domains: Vec<String> = vh["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            for r in vh["routes"].as_array().into_iter().flatten() {
                let m = &r["match"];
                let matched = ["prefix", "path"]
                    .iter()
                    .find_map(|k| m[k].as_str().map(|v| format!("{k} {v}")))
                    .unwrap_or_else(|| "regex".into());
                let headers = if m["headers"].is_array() {
                    " +headers"
                } else {
                    ""
                };
                rows.push(vec![
                    s(&rc["name"]),
                    domains.first().cloned().unwrap_or_default()
                        + if domains.len() > 1 { " …" } else { "" },
                    format!("{matched}{headers}"),
                    route_target(r),
                ]);
            }
        }
    }
    rows
}

/// Where a route sends requests: a cluster, weighted clusters, or a
/// direct response.
fn route_target(r: &Value) -> String {
    if let Some(c) = r["route"]["cluster"].as_str() {
        c.to_owned()
    } else if let Some(w) = r["route"]["weighted_clusters"]["clusters"].as_array() {
        w.iter()
            .map(|c| format!("{} {}", s(&c["name"]), s(&c["weight"])))
            .collect::<Vec<_>>()
            .join(", ")
    } else if r["direct_response"].is_object() {
        format!("direct {}", s(&r["direct_response"]["status"]))
    } else {
        String::new()
    }
}

/// One row per endpoint: address, health, cluster.
fn endpoint_rows(items: &[Value]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for la in items {
        for group in la["endpoints"].as_array().into_iter().flatten() {
            for e in group["lb_endpoints"].as_array().into_iter().flatten() {
                rows.push(vec![
                    address(&e["endpoint"]["address"]),
                    e["health_status"].as_str().unwrap_or("HEALTHY").to_owned(),
                    s(&la["cluster_name"]),
                ]);
            }
        }
    }
    rows
}

/// `meshctl proxy-config secret`: the certificates from the admin's
/// `/certs` (mesh-proxy and Envoy alike); never a key, the proxies do not
/// show one.
async fn secrets(admin: &str, json: bool) -> anyhow::Result<ExitCode> {
    let certs = get_json(admin, "/certs").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&certs)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    for set in certs["certificates"].as_array().into_iter().flatten() {
        for (key, kind) in [("cert_chain", "Cert Chain"), ("ca_cert", "CA")] {
            for c in set[key].as_array().into_iter().flatten() {
                let sans: Vec<String> = c["subject_alt_names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_object()?.values().next().map(s))
                    .collect();
                rows.push(vec![
                    s(&c["path"]),
                    kind.to_owned(),
                    sans.join(","),
                    s(&c["serial_number"]),
                    s(&c["valid_from"]),
                    s(&c["expiration_time"]),
                ]);
            }
        }
    }
    table(
        &[
            "RESOURCE NAME",
            "TYPE",
            "IDENTITY",
            "SERIAL NUMBER",
            "NOT BEFORE",
            "NOT AFTER",
        ],
        rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// `meshctl proxy-config SECTION ADMIN_ADDRESS [-o json]`.
pub async fn proxy_config(section: Section, admin: &str, json: bool) -> anyhow::Result<ExitCode> {
    if section == Section::Secret {
        return secrets(admin, json).await;
    }
    let dump = get_json(admin, "/config_dump?include_eds").await?;
    let items = resources(&dump, section);
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    match section {
        Section::Listeners => table(
            &["NAME", "ADDRESS", "BIND", "FILTER"],
            listener_rows(&items),
        ),
        Section::Routes => table(&["NAME", "DOMAINS", "MATCH", "TO"], route_rows(&items)),
        Section::Clusters => table(
            &["NAME", "TYPE", "LB"],
            items
                .iter()
                .map(|c| {
                    vec![
                        s(&c["name"]),
                        c["type"].as_str().unwrap_or("STATIC").to_owned(),
                        c["lb_policy"].as_str().unwrap_or("ROUND_ROBIN").to_owned(),
                    ]
                })
                .collect(),
        ),
        Section::Endpoints => table(&["ENDPOINT", "STATUS", "CLUSTER"], endpoint_rows(&items)),
        Section::Secret => unreachable!("answered above"),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_rows_show_every_filter_chain() {
        // pilot's translation for a port of undeclared protocol (a golden
        // file Envoy also validates).
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../mesh-pilot/tests/golden/svcb-undeclared-port.json"
        );
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let listeners = golden["static_resources"]["listeners"].as_array().unwrap();
        let rows = listener_rows(listeners);
        let row = |name: &str| rows.iter().find(|r| r[0] == name).unwrap().clone();
        assert_eq!(
            row("10.251.0.11_80"),
            [
                "10.251.0.11_80",
                "10.251.0.11:80",
                "no",
                "HttpConnectionManager [http/1.0,http/1.1,h2c] | TcpProxy"
            ]
        );
        assert_eq!(row("virtualOutbound")[2..], ["yes", "TcpProxy"]);
    }
}
