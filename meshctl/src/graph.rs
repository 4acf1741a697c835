//! `meshctl graph`: who calls whom, with request rates and error ratios,
//! from the standard metrics — through Prometheus' HTTP API (rates over a
//! window, and totals), or read straight from the sidecars' own metrics
//! (totals) where there is no Prometheus. Printed as JSON, DOT or SVG (the
//! DOT laid out by `layout-rs`, so the picture is the DOT, drawn).
//!
//! Edges come from the receiving side's reports (`reporter=destination`),
//! which see callers outside the mesh too; calls to destinations without
//! a sidecar (outside services) from the caller's side.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

/// How the graph is printed.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum Format {
    /// Nodes and edges as JSON.
    Json,
    /// Graphviz DOT.
    Dot,
    /// An SVG picture of the DOT.
    Svg,
}

/// Where the numbers come from.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Prometheus' address (`host:port`).
    #[arg(
        long,
        value_name = "HOST:PORT",
        conflicts_with = "sidecar",
        required_unless_present = "sidecar"
    )]
    prometheus: Option<String>,
    /// Read these sidecars' metrics (`host:port` of `/stats/prometheus`,
    /// port 15090) instead of Prometheus; repeat for each.
    #[arg(long, value_name = "HOST:PORT")]
    sidecar: Vec<String>,
    /// The window request rates are taken over (Prometheus only).
    #[arg(long, default_value = "1m")]
    window: String,
    /// The metric names' prefix: `mesh` (default) or `istio`, as the
    /// sidecars were told by `--metrics-naming`.
    #[arg(long, default_value = "mesh")]
    prefix: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Dot)]
    output: Format,
    /// Serve the graph over HTTP instead of printing it, drawn afresh for
    /// each request: `/graph.svg` (also `/`), `/graph.dot`, `/graph.json`,
    /// and `/healthz` (the servicegraph addon runs this).
    #[arg(long, value_name = "HOST:PORT")]
    serve: Option<std::net::SocketAddr>,
}

/// A workload, or a service nothing in the mesh runs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct Node {
    id: String,
    /// `workload` or `service` (outside the mesh, or a caller without a
    /// sidecar: `unknown`).
    kind: &'static str,
    workload: String,
    namespace: String,
    app: String,
    version: String,
}

/// Calls from one node to another.
#[derive(Debug, Clone, Serialize, Default)]
struct Edge {
    source: String,
    destination: String,
    protocol: String,
    /// Calls since the sidecars started.
    requests: f64,
    /// Of those, answered 5xx (HTTP) or non-OK (gRPC).
    errors: f64,
    error_ratio: f64,
    /// Calls per second over the window (Prometheus only).
    #[serde(skip_serializing_if = "Option::is_none")]
    rps: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct Graph {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
}

/// One sample of `<prefix>_requests_total`: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

const BY: &str = "reporter, source_workload, source_workload_namespace, source_app, source_version, destination_workload, destination_workload_namespace, destination_app, destination_version, destination_service, request_protocol, response_code, grpc_response_status";

/// `meshctl graph`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.serve {
        return serve(std::sync::Arc::new(args), addr).await;
    }
    let graph = collect(&args).await?;
    print!("{}", render(&graph, args.output)?);
    Ok(ExitCode::SUCCESS)
}

/// Serves the graph at `addr` until killed.
async fn serve(args: std::sync::Arc<Args>, addr: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("serving the service graph on http://{addr}/graph.svg");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let args = args.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let args = args.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(answer(&args, req.uri().path()).await)
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

async fn answer(
    args: &Args,
    path: &str,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    let reply = |status: u16, kind: &'static str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
            .expect("a valid response")
    };
    let (format, kind) = match path {
        "/healthz" => return reply(200, "text/plain", "ok\n".into()),
        "/" | "/graph.svg" => (Format::Svg, "image/svg+xml"),
        "/graph.dot" => (Format::Dot, "text/vnd.graphviz"),
        "/graph.json" => (Format::Json, "application/json"),
        _ => {
            return reply(
                404,
                "text/plain",
                "/graph.svg, /graph.dot, /graph.json\n".into(),
            );
        }
    };
    match collect(args).await.and_then(|g| render(&g, format)) {
        Ok(body) => reply(200, kind, body),
        Err(e) => reply(502, "text/plain", format!("{e:#}\n")),
    }
}

/// The graph, from Prometheus or the sidecars.
async fn collect(args: &Args) -> anyhow::Result<Graph> {
    // Requests (HTTP, gRPC), and TCP connections as the calls of TCP.
    let metrics = [
        format!("{}_requests_total", args.prefix),
        format!("{}_tcp_connections_opened_total", args.prefix),
    ];
    let (mut totals, mut rates) = (Vec::new(), Vec::new());
    match &args.prometheus {
        Some(p) => {
            for metric in &metrics {
                totals.extend(promql(p, &format!("sum by ({BY}) ({metric})")).await?);
                let window = &args.window;
                let rate = format!("sum by ({BY}) (rate({metric}[{window}]))");
                rates.extend(promql(p, &rate).await?);
            }
        }
        None => {
            for s in &args.sidecar {
                let text = get_text(s, "/stats/prometheus").await?;
                for metric in &metrics {
                    totals.extend(parse_samples(&text, metric));
                }
            }
        }
    }
    let rates = args.prometheus.is_some().then_some(rates);
    Ok(build(&totals, rates.as_deref()))
}

async fn promql(addr: &str, query: &str) -> anyhow::Result<Vec<Sample>> {
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let answer: Value =
        serde_json::from_str(&get_text(addr, &format!("/api/v1/query?query={q}")).await?)
            .with_context(|| format!("Prometheus at {addr} did not answer JSON"))?;
    anyhow::ensure!(
        answer["status"] == "success",
        "Prometheus refused {query}: {answer}"
    );
    let result = answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(result
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let value = s["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            (labels, value)
        })
        .collect())
}

async fn get_text(addr: &str, path: &str) -> anyhow::Result<String> {
    let body = crate::inspect::get(addr, path).await?;
    String::from_utf8(body.to_vec()).with_context(|| format!("{addr}{path} is not text"))
}

/// The samples of `metric` in Prometheus (or OpenMetrics) text.
fn parse_samples(text: &str, metric: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(metric)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((parse_labels(labels), value.trim().parse().ok()?))
        })
        .collect()
}

/// `a="x",b="y\"z"` → labels.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').to_owned(), value);
        rest = &after[end..];
    }
    out
}

fn node(labels: &BTreeMap<String, String>, side: &str) -> Node {
    let get = |k: &str| {
        labels
            .get(&format!("{side}_{k}"))
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    };
    let workload = get("workload");
    let namespace = get("workload_namespace");
    if workload == "unknown" && side == "destination" {
        let service = get("service");
        return Node {
            id: service.clone(),
            kind: "service",
            workload: service,
            namespace,
            app: get("app"),
            version: get("version"),
        };
    }
    Node {
        id: if workload == "unknown" {
            "unknown".into()
        } else {
            format!("{workload}.{namespace}")
        },
        kind: if workload == "unknown" {
            "unknown"
        } else {
            "workload"
        },
        workload,
        namespace,
        app: get("app"),
        version: get("version"),
    }
}

fn failed(labels: &BTreeMap<String, String>) -> bool {
    let code = labels.get("response_code").map_or("", String::as_str);
    let grpc = labels
        .get("grpc_response_status")
        .map_or("-", String::as_str);
    let is_grpc = labels.get("request_protocol").is_some_and(|p| p == "grpc");
    code.starts_with('5') || (is_grpc && grpc != "0" && grpc != "-")
}

/// The samples a graph uses: the destination's reports, and the source's
/// for destinations without a sidecar.
fn wanted(labels: &BTreeMap<String, String>) -> bool {
    let reporter = labels.get("reporter").map_or("", String::as_str);
    let unknown_dest = labels
        .get("destination_workload")
        .is_none_or(|w| w == "unknown");
    reporter == "destination" || (reporter == "source" && unknown_dest)
}

fn build(totals: &[Sample], rates: Option<&[Sample]>) -> Graph {
    let mut nodes = BTreeMap::new();
    let mut edges: BTreeMap<(String, String, String), Edge> = BTreeMap::new();
    let mut add = |labels: &BTreeMap<String, String>, value: f64, rate: bool| {
        if !wanted(labels) {
            return;
        }
        let (s, d) = (node(labels, "source"), node(labels, "destination"));
        let protocol = labels.get("request_protocol").cloned().unwrap_or_default();
        let e = edges
            .entry((s.id.clone(), d.id.clone(), protocol.clone()))
            .or_insert_with(|| Edge {
                source: s.id.clone(),
                destination: d.id.clone(),
                protocol,
                ..Edge::default()
            });
        if rate {
            *e.rps.get_or_insert(0.0) += value;
        } else {
            e.requests += value;
            if failed(labels) {
                e.errors += value;
            }
        }
        nodes.insert(s.id.clone(), s);
        nodes.insert(d.id.clone(), d);
    };
    for (labels, value) in totals {
        add(labels, *value, false);
    }
    for (labels, value) in rates.unwrap_or_default() {
        add(labels, *value, true);
    }
    let edges = edges
        .into_values()
        .map(|mut e| {
            e.error_ratio = if e.requests > 0.0 {
                e.errors / e.requests
            } else {
                0.0
            };
            e
        })
        .collect();
    Graph {
        nodes: nodes.into_values().collect(),
        edges,
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn dot(g: &Graph) -> String {
    let mut s = String::from("digraph mesh {\n  rankdir=LR;\n  node [shape=box];\n");
    for n in &g.nodes {
        let label = match n.kind {
            "workload" => n.workload.clone(),
            _ => n.id.clone(),
        };
        s.push_str(&format!("  {} [label={}];\n", quote(&n.id), quote(&label)));
    }
    for e in &g.edges {
        let mut label = format!("{} {:.0}", e.protocol, e.requests);
        if let Some(rps) = e.rps {
            label.push_str(&format!(" {rps:.1}/s"));
        }
        label.push_str(&format!(" {:.1}% err", e.error_ratio * 100.0));
        s.push_str(&format!(
            "  {} -> {} [label={}];\n",
            quote(&e.source),
            quote(&e.destination),
            quote(&label)
        ));
    }
    s.push_str("}\n");
    s
}

fn svg(dot: &str) -> anyhow::Result<String> {
    use layout::backends::svg::SVGWriter;
    use layout::gv::{DotParser, GraphBuilder};
    let mut parser = DotParser::new(dot);
    let ast = parser
        .process()
        .map_err(|e| anyhow::anyhow!("the graph's DOT does not parse: {e}"))?;
    let mut builder = GraphBuilder::new();
    builder.visit_graph(&ast);
    let mut visual = builder.get();
    let mut writer = SVGWriter::new();
    visual.do_it(false, false, false, &mut writer);
    Ok(writer.finalize())
}

fn render(g: &Graph, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(g)? + "\n",
        Format::Dot => dot(g),
        Format::Svg => svg(&dot(g))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE mesh_requests counter
mesh_requests_total{reporter="destination",source_workload="svca-v0-1",source_workload_namespace="default",source_app="svca",source_version="v0.1",destination_workload="svcb-v0-1",destination_workload_namespace="default",destination_app="svcb",destination_version="v0.1",destination_service="svcb.default.svc.cluster.local",request_protocol="http",response_code="200"} 40
mesh_requests_total{reporter="destination",source_workload="svca-v0-1",source_workload_namespace="default",source_app="svca",source_version="v0.1",destination_workload="svcb-v0-1",destination_workload_namespace="default",destination_app="svcb",destination_version="v0.1",destination_service="svcb.default.svc.cluster.local",request_protocol="http",response_code="503"} 10
mesh_requests_total{reporter="source",source_workload="svca-v0-1",source_workload_namespace="default",source_app="svca",source_version="v0.1",destination_workload="svcb-v0-1",destination_workload_namespace="default",destination_app="svcb",destination_version="v0.1",destination_service="svcb.default.svc.cluster.local",request_protocol="http",response_code="200"} 40
mesh_requests_total{reporter="source",source_workload="svcb-v0-1",source_workload_namespace="default",source_app="svcb",source_version="v0.1",destination_workload="unknown",destination_workload_namespace="unknown",destination_app="unknown",destination_version="unknown",destination_service="msgd.example",request_protocol="http",response_code="200"} 7
"#;

    #[test]
    fn edges_come_from_the_receiving_side_and_calls_leaving_the_mesh() {
        let g = build(&parse_samples(TEXT, "mesh_requests_total"), None);
        let edges: Vec<(&str, &str, f64, f64)> = g
            .edges
            .iter()
            .map(|e| {
                (
                    e.source.as_str(),
                    e.destination.as_str(),
                    e.requests,
                    e.error_ratio,
                )
            })
            .collect();
        assert_eq!(
            edges,
            [
                ("svca-v0-1.default", "svcb-v0-1.default", 50.0, 0.2),
                ("svcb-v0-1.default", "msgd.example", 7.0, 0.0)
            ]
        );
        assert_eq!(g.nodes.len(), 3);
        let dot = dot(&g);
        assert!(
            dot.contains(
                "\"svca-v0-1.default\" -> \"svcb-v0-1.default\" [label=\"http 50 20.0% err\"]"
            ),
            "{dot}"
        );
        let svg = svg(&dot).unwrap();
        assert!(svg.starts_with("<svg") || svg.contains("<svg"), "{svg}");
        assert!(
            svg.contains("msgd.example") && svg.contains("svcb-v0-1"),
            "{svg}"
        );
    }

    #[test]
    fn label_values_unescape() {
        let l = parse_labels(r#"a="x",b="y\"z",c="",d="1\\2""#);
        assert_eq!(l["a"], "x");
        assert_eq!(l["b"], "y\"z");
        assert_eq!(l["c"], "");
        assert_eq!(l["d"], "1\\2");
    }
}

/// Where the mesh's observability pages are.
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Prometheus (`host:port`).
    #[arg(long, env = "MESH_PROMETHEUS", default_value = "127.0.0.1:9090")]
    prometheus: String,
    /// Grafana (`host:port`).
    #[arg(long, env = "MESH_GRAFANA", default_value = "127.0.0.1:3000")]
    grafana: String,
    /// The tracing backend's UI (Jaeger or Zipkin, `host:port`).
    #[arg(long, env = "MESH_TRACING_UI", default_value = "127.0.0.1:16686")]
    tracing: String,
    /// pilot's debug address.
    #[arg(long, env = "MESH_PILOT_DEBUG", default_value = "127.0.0.1:15014")]
    pilot: String,
}

/// `meshctl dashboard`: the URLs, one per line; nothing is opened or
/// contacted. In a cluster, `kubectl -n mesh-system port-forward` to each
/// addon's Service makes the defaults right.
pub fn dashboard(a: &DashboardArgs) -> anyhow::Result<ExitCode> {
    let rows = [
        ("prometheus", format!("http://{}/graph", a.prometheus)),
        (
            "grafana (mesh)",
            format!("http://{}/d/mesh-overview", a.grafana),
        ),
        (
            "grafana (service)",
            format!("http://{}/d/mesh-service", a.grafana),
        ),
        (
            "grafana (workload)",
            format!("http://{}/d/mesh-workload", a.grafana),
        ),
        ("tracing", format!("http://{}/search", a.tracing)),
        ("pilot metrics", format!("http://{}/metrics", a.pilot)),
        ("pilot proxies", format!("http://{}/debug/syncz", a.pilot)),
        (
            "service graph",
            format!("meshctl graph --prometheus {} -o svg", a.prometheus),
        ),
    ];
    for (name, url) in rows {
        println!("{name:<20} {url}");
    }
    Ok(ExitCode::SUCCESS)
}
