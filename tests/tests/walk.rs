//! The seed's walk end to end, as root, in network-namespace pods with
//! real capture, pilot, mesh-proxy sidecars and the sample services — and
//! the same walk on loopback, as a user without root gets it. The
//! expectations live with the walk ([`walk::Report::checks`]) so that
//! `meshctl demo` shows the same verdicts.

use std::process::Command;

use mesh_testbed::mesh::{Mesh, Sidecar, Tracer};
use mesh_testbed::walk;

/// Runs the walk in `mesh` and asserts every one of its `checks` held.
fn walk_holds(mesh: &mut Mesh, sidecar: Sidecar, checks: usize) -> walk::Report {
    let report = walk::run(mesh, sidecar, &mut |line| eprintln!("{line}")).unwrap();
    let failed = report.failed();
    assert!(
        failed.is_empty(),
        "the walk failed:\n{}\n{report:#?}",
        failed.join("\n")
    );
    assert_eq!(report.checks().len(), checks);
    report
}

#[test]
fn the_seed_walk() {
    walk_holds(&mut Mesh::new().unwrap(), Sidecar::MeshProxy, 11);
}

/// The same walk with an unmodified Envoy 1.40 in every pod, configured
/// only by pilot over ADS: pilot speaks xDS as Envoy understands it.
#[test]
fn the_seed_walk_with_envoy_sidecars() {
    walk_holds(&mut Mesh::new().unwrap(), Sidecar::Envoy, 10);
}

/// `meshctl demo --loopback`, the product a user without root runs, as a
/// process: pods are loopback addresses, sidecars are used explicitly
/// (INTERCEPTION_MODE NONE), same pilot, rules and apps. Nothing is
/// captured, so there is no escape count to check. It finds its binaries
/// next to meshctl and builds nothing.
#[test]
fn meshctl_demo_on_loopback() {
    let out = Command::new(mesh_testbed::binary("meshctl").unwrap())
        .args(["demo", "--loopback"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("10 of 10 checks hold"), "{stdout}");
    assert!(!stdout.contains('✗'), "{stdout}");
    assert!(!stdout.contains("building"), "nothing is built: {stdout}");
}

/// Without its binaries the demo says which is missing and where it
/// looked, and exits non-zero; it does not panic or build anything.
#[test]
fn meshctl_demo_without_binaries_says_what_is_missing() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(mesh_testbed::binary("meshctl").unwrap())
        .args(["demo", "--loopback"])
        .env("MESH_BIN_DIR", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mesh-proxy is missing in") && stderr.contains("MESH_BIN_DIR"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A real Prometheus (Debian's) scrapes the walk's sidecars after the walk
/// and answers PromQL with what the sidecars counted: requests by
/// destination version as both sides reported them, the p99 duration,
/// response sizes — the numbers a user's dashboards show.
#[test]
fn prometheus_reads_the_walks_standard_metrics() {
    let mut mesh = Mesh::new().unwrap();
    let report = walk_holds(&mut mesh, Sidecar::MeshProxy, 11);
    let tcp_pods = tcp_exchange(&mut mesh);
    let targets: Vec<String> = report
        .sidecars
        .iter()
        .map(|(_, ip)| ip.to_string())
        .chain(tcp_pods.iter().map(|p| p.ip.to_string()))
        .map(|ip| format!("{ip}:15090"))
        .collect();
    mesh.start_prometheus(&targets).unwrap();
    // The traffic is over: once every target was scraped, what Prometheus
    // holds is what the sidecars hold now.
    let up = format!("count(up{{job=\"sidecars\"}} == 1) == {}", targets.len());
    mesh_testbed::eventually(
        "every sidecar scraped",
        std::time::Duration::from_secs(30),
        || (!mesh.promql(&up).ok()?.is_empty()).then_some(()),
    );
    let value = |query: &str| values(&mesh, query);
    let pods: std::collections::BTreeMap<&str, &std::net::IpAddr> = report
        .sidecars
        .iter()
        .map(|(n, ip)| (n.as_str(), ip))
        .collect();
    assert!(pods.contains_key("svca-v0.1-1"), "{pods:?}");
    // Requests svca made to svcb, by version: Prometheus' sums equal the
    // sidecars' own counts, on the caller's side and the callee's.
    let mut totals = Vec::new();
    for reporter in ["source", "destination"] {
        let q = format!(
            "sum by (destination_version) (mesh_requests_total{{reporter=\"{reporter}\",source_app=\"svca\",destination_service_name=\"svcb\",response_code=\"200\"}})"
        );
        let got = value(&q);
        let by: std::collections::BTreeMap<String, f64> = got.into_iter().collect();
        // Every version served at least its step-3 half; v0.2 took step 4 too.
        let (v1, v2) = report.split;
        assert!(
            by.get("v0.1").copied().unwrap_or(0.0) >= v1 as f64,
            "{q}: {by:?}"
        );
        assert!(
            by.get("v0.2").copied().unwrap_or(0.0) >= (v2 + 200) as f64,
            "{q}: {by:?}"
        );
        // Steps 2 to 4: the allowed /pay, 1000, 300 and 200 — all 200s.
        let total: f64 = by.values().sum();
        assert!(total > (1000 + 300 + 200) as f64, "{q}: {by:?}");
        totals.push(total);
    }
    assert_eq!(totals[0], totals[1], "both sides count the same calls");
    sizes_hold(&mesh);
    self_metrics_hold(&mesh, targets.len());
    tcp_bytes_hold(&mesh);
    dashboards_hold(&mesh);
    graph_holds(&mut mesh, &report, &targets, &tcp_pods[1]);
}

/// The results of PromQL `query`: each series' first label value (empty
/// without labels) and its value.
fn values(mesh: &Mesh, query: &str) -> Vec<(String, f64)> {
    mesh.promql(query)
        .unwrap()
        .iter()
        .map(|s| {
            let label = s["metric"]
                .as_object()
                .and_then(|m| m.values().next())
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            (label, s["value"][1].as_str().unwrap().parse().unwrap())
        })
        .collect()
}

/// The p99 duration of svca's calls is a real, small number of ms, and
/// sizes agree on both sides of a call.
fn sizes_hold(mesh: &Mesh) {
    let value = |query: &str| values(mesh, query);
    let p99 = value(
        "histogram_quantile(0.99, sum by (le) (mesh_request_duration_milliseconds_bucket{reporter=\"source\",source_app=\"svca\"}))",
    );
    assert!(
        p99.len() == 1 && p99[0].1 > 0.0 && p99[0].1 <= 1000.0,
        "{p99:?}"
    );
    // Response sizes: svcb's answers as svcb's sidecars measured them
    // equal what svca's sidecar measured receiving.
    let sent = value(
        "sum(mesh_response_bytes_sum{reporter=\"destination\",destination_app=\"svcb\",source_app=\"svca\"})",
    );
    let received = value(
        "sum(mesh_response_bytes_sum{reporter=\"source\",source_app=\"svca\",destination_service_name=\"svcb\"})",
    );
    assert!(
        sent[0].1 > 0.0 && sent == received,
        "{sent:?} vs {received:?}"
    );
    // Request sizes: what svca's sidecar sent svcb is what svcb's sidecars
    // received, one observation per call.
    let request_bytes = |reporter: &str, what: &str| {
        let side = match reporter {
            "source" => "source_app=\"svca\",destination_service_name=\"svcb\"",
            _ => "destination_app=\"svcb\",source_app=\"svca\"",
        };
        let q = format!("sum(mesh_{what}{{reporter=\"{reporter}\",{side}}})");
        value(&q)[0].1
    };
    assert_eq!(
        request_bytes("source", "request_bytes_sum"),
        request_bytes("destination", "request_bytes_sum")
    );
    for reporter in ["source", "destination"] {
        assert_eq!(
            request_bytes(reporter, "request_bytes_count"),
            request_bytes(reporter, "requests_total"),
            "{reporter}"
        );
    }
}

/// The TCP service: 1000 bytes to echo, 2000 back, on both sides (the
/// receiving side cannot tell a TCP caller's workload before mTLS).
fn tcp_bytes_hold(mesh: &Mesh) {
    let value = |query: &str| values(mesh, query);
    for (metric, bytes) in [("received", 1000.0), ("sent", 2000.0)] {
        for side in [
            "reporter=\"source\",source_app=\"tcpclient\"",
            "reporter=\"destination\",destination_app=\"echo\"",
        ] {
            let q = format!(
                "sum(mesh_tcp_{metric}_bytes_total{{{side},destination_service_name=\"echo\"}})"
            );
            let got = value(&q);
            let all = mesh
                .promql(&format!("mesh_tcp_{metric}_bytes_total"))
                .unwrap();
            assert_eq!(got, [(String::new(), bytes)], "{q}: {all:#?}");
        }
    }
    let q =
        "sum(mesh_tcp_connections_closed_total{destination_service_name=\"echo\"}) by (reporter)";
    assert_eq!(value(q).len(), 2, "{q}");
}

/// `meshctl graph` draws the walk: from Prometheus and straight from the
/// sidecars alike, the client calls svca once per `/pay`, svca calls svcb's
/// versions at least as often, svcb calls msgd outside the mesh, the TCP
/// client calls echo. `MESH_WRITE_GRAPH=FILE` keeps the SVG (the README's
/// picture comes from there).
fn graph_holds(
    mesh: &mut Mesh,
    report: &walk::Report,
    sidecars: &[String],
    caller: &mesh_testbed::mesh::Pod,
) {
    let g = graph_has_rates(mesh, caller);
    graph_counts_hold(mesh, report, sidecars);
    let mut svg_args = vec!["graph", "-o", "svg"];
    for s in sidecars {
        svg_args.extend(["--sidecar", s.as_str()]);
    }
    let (code, svg) = mesh.meshctl_on_node(&svg_args).unwrap();
    assert_eq!(code, 0, "{svg}");
    assert!(svg.contains("<svg") && svg.contains("svcb-v0.2"), "{svg}");
    if let Some(path) = std::env::var_os("MESH_WRITE_GRAPH") {
        std::fs::write(path, &svg).unwrap();
    }
    graph_is_served(mesh, &g);
}

/// Calls made while Prometheus watches show as rates in the graph; returns
/// the graph (JSON).
fn graph_has_rates(mesh: &Mesh, caller: &mesh_testbed::mesh::Pod) -> serde_json::Value {
    // Traffic while Prometheus watches, for rates: 2 × 25 /pay from
    // another pod with a sidecar (svca's VIP, by Host), the second batch
    // once Prometheus holds the first (a rate needs a rise it saw).
    for seen in [25, 50] {
        let (code, _) = mesh.world.exec(
            &caller.ns,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-H",
                "host: svca",
                "http://10.251.0.10/pay?n=[1-25]",
            ],
        );
        assert_eq!(code, 0);
        mesh_testbed::eventually(
            &format!("Prometheus sees {seen} calls"),
            std::time::Duration::from_secs(20),
            || {
                let q = format!(
                    "sum(mesh_requests_total{{reporter=\"destination\",source_app=\"tcpclient\"}}) >= {seen}"
                );
                (!mesh.promql(&q).ok()?.is_empty()).then_some(())
            },
        );
    }
    let (code, out) = mesh
        .meshctl_on_node(&["graph", "--prometheus", "127.0.0.1:9090", "-o", "json"])
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let g: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rate = |from: &str, to: &str| -> f64 {
        g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["source"].as_str().unwrap().starts_with(from)
                    && e["destination"].as_str().unwrap().starts_with(to)
            })
            .map(|e| e["rps"].as_f64().unwrap_or(0.0))
            .sum()
    };
    for (from, to) in [
        ("tcpclient", "svca"),
        ("svca", "svcb"),
        ("svcb", "10.250.0.2"),
    ] {
        assert!(rate(from, to) > 0.0, "{from} → {to} has no rate: {out}");
    }
    g
}

/// The graph's counts, from Prometheus and from the sidecars alike.
fn graph_counts_hold(mesh: &Mesh, report: &walk::Report, sidecars: &[String]) {
    let mut from_sidecars = vec!["graph", "-o", "json"];
    for s in sidecars {
        from_sidecars.extend(["--sidecar", s.as_str()]);
    }
    for args in [
        vec!["graph", "--prometheus", "127.0.0.1:9090", "-o", "json"],
        from_sidecars,
    ] {
        let (code, out) = mesh.meshctl_on_node(&args).unwrap();
        assert_eq!(code, 0, "{args:?}: {out}");
        let g: serde_json::Value = serde_json::from_str(&out).unwrap();
        let app = |id: &serde_json::Value| {
            g["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == *id)
                .map(|n| {
                    (
                        n["app"].as_str().unwrap().to_owned(),
                        n["kind"].as_str().unwrap().to_owned(),
                    )
                })
                .unwrap()
        };
        let mut calls = std::collections::BTreeMap::<(String, String), f64>::new();
        for e in g["edges"].as_array().unwrap() {
            let (from, _) = app(&e["source"]);
            let (to, kind) = app(&e["destination"]);
            let to = if kind == "service" {
                e["destination"].as_str().unwrap().to_owned()
            } else {
                to
            };
            *calls.entry((from, to)).or_default() += e["requests"].as_f64().unwrap();
        }
        let get = |a: &str, b: &str| calls.get(&(a.to_owned(), b.to_owned())).copied();
        assert_eq!(
            get("client", "svca"),
            Some(report.pays as f64),
            "{args:?}: {calls:?}"
        );
        assert_eq!(get("tcpclient", "svca"), Some(50.0), "{args:?}: {calls:?}");
        let pays = report.pays as f64 + 50.0;
        assert!(get("svca", "svcb").unwrap_or(0.0) >= pays, "{calls:?}");
        let outside: f64 = calls
            .iter()
            .filter(|((from, _), _)| from == "svcb")
            .map(|(_, n)| n)
            .sum();
        assert!(outside >= 1550.0, "{calls:?}");
        let tcp = get("tcpclient", "echo.default.svc.cluster.local");
        assert_eq!(tcp, Some(1.0), "one TCP connection: {calls:?}");
    }
}

/// `meshctl graph --serve` (the servicegraph addon) answers what the
/// command prints: the same nodes, as JSON, SVG and DOT.
fn graph_is_served(mesh: &mut Mesh, printed: &serde_json::Value) {
    let meshctl = mesh_testbed::binary("meshctl").unwrap();
    let node = mesh.world.node.clone();
    let serve = [
        meshctl.to_str().unwrap(),
        "graph",
        "--serve",
        "127.0.0.1:8088",
        "--prometheus",
        "127.0.0.1:9090",
    ];
    mesh.world
        .spawn(&node, None, &serve, std::process::Stdio::null())
        .unwrap();
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:8088{path}");
        mesh.world.exec(&node, &["curl", "-sf", &url])
    };
    mesh_testbed::eventually(
        "the served graph",
        std::time::Duration::from_secs(10),
        || (get("/healthz") == (0, "ok\n".into())).then_some(()),
    );
    let (code, json) = get("/graph.json");
    assert_eq!(code, 0, "{json}");
    let served: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(served["nodes"], printed["nodes"]);
    let (_, svg) = get("/graph.svg");
    assert!(svg.contains("<svg") && svg.contains("svca-v0.1-1"), "{svg}");
    let (_, dot) = get("/graph.dot");
    assert!(dot.starts_with("digraph mesh {"), "{dot}");
}

/// The values a Grafana variable's `label_values(selector, label)` takes,
/// given the variables chosen before it.
fn variable_values(mesh: &Mesh, query: &str, chosen: &[(String, String)]) -> Vec<String> {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variables are label_values(…): {query}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    let selector = substitute(selector.trim(), chosen);
    let label = label.trim();
    let got = mesh
        .promql(&format!("group by ({label}) ({selector})"))
        .unwrap();
    got.iter()
        .filter_map(|s| s["metric"][label].as_str().map(str::to_owned))
        .collect()
}

fn substitute(expr: &str, chosen: &[(String, String)]) -> String {
    let mut e = expr.replace("$__rate_interval", "1m");
    for (name, value) in chosen {
        e = e.replace(&format!("${name}"), value);
    }
    e
}

/// Every choice of the dashboard's variables (each from Prometheus).
fn choices(mesh: &Mesh, vars: &[(String, String)]) -> Vec<Vec<(String, String)>> {
    let mut all = vec![Vec::new()];
    for (name, query) in vars {
        let mut next = Vec::new();
        for chosen in &all {
            for v in variable_values(mesh, query, chosen) {
                let mut c: Vec<(String, String)> = chosen.clone();
                c.push((name.clone(), v));
                next.push(c);
            }
        }
        assert!(!next.is_empty(), "variable {name} ({query}) has no value");
        all = next;
    }
    all
}

/// Every PromQL expression of the dashboards in install/kubernetes/addons
/// evaluates without error against the walk's Prometheus and returns
/// series, for some choice of the dashboard's variables.
fn dashboards_hold(mesh: &Mesh) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../install/kubernetes/addons/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    let mut checked = 0;
    for file in files {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let vars: Vec<(String, String)> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == "query")
            .map(|v| {
                let q = v["query"]["query"].as_str().unwrap().to_owned();
                (v["name"].as_str().unwrap().to_owned(), q)
            })
            .collect();
        let choices = choices(mesh, &vars);
        for panel in d["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                mesh_testbed::eventually(
                    &format!("{}: {expr} returns series", file.display()),
                    std::time::Duration::from_secs(20),
                    || {
                        choices
                            .iter()
                            .any(|c| !mesh.promql(&substitute(expr, c)).unwrap().is_empty())
                            .then_some(())
                    },
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "{checked} expressions");
}

/// Echoes twice what it read, once the client is done sending.
const TCP_ECHO: &str = "import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000))
s.listen()
while True:
    c, _ = s.accept()
    d = b''
    while True:
        b = c.recv(65536)
        if not b:
            break
        d += b
    c.sendall(d * 2)
    c.close()
";

/// Sends 1000 bytes to the echo service, half-closes, prints what came back.
const TCP_CLIENT: &str = "import socket
c = socket.create_connection(('10.251.0.12', 9000), timeout=5)
c.sendall(b'x' * 1000)
c.shutdown(socket.SHUT_WR)
d = b''
while True:
    b = c.recv(65536)
    if not b:
        break
    d += b
print(len(d))
";

/// An opaque TCP service (`echo`, port 9000, name `tcp`) and a client,
/// both with sidecars: one connection carrying 1000 bytes up and 2000
/// down. Returns the two pods.
fn tcp_exchange(mesh: &mut Mesh) -> Vec<mesh_testbed::mesh::Pod> {
    let echo_service = "- name: echo\n  namespace: default\n  vip: 10.251.0.12\n  ports:\n  - {name: tcp, port: 9000, targetPort: 9000}\n  selector: {app: echo}\n";
    mesh.write_registry(&format!("{}{echo_service}", walk::REGISTRY))
        .unwrap();
    let echo = mesh
        .pod("echo", &[("app", "echo")], Some(Sidecar::MeshProxy))
        .unwrap();
    mesh.world
        .spawn(
            &echo.ns,
            None,
            &["python3", "-c", TCP_ECHO],
            std::process::Stdio::null(),
        )
        .unwrap();
    let client = mesh
        .pod(
            "tcpclient",
            &[("app", "tcpclient")],
            Some(Sidecar::MeshProxy),
        )
        .unwrap();
    let cluster = "outbound|9000||echo.default.svc.cluster.local";
    mesh.wait_endpoints(&client, cluster, 1).unwrap();
    // The echo server listens once its port answers from its own pod.
    mesh_testbed::eventually(
        "the echo server",
        std::time::Duration::from_secs(10),
        || {
            let probe = "import socket; socket.create_connection(('127.0.0.1', 9000), timeout=1)";
            (mesh.world.exec(&echo.ns, &["python3", "-c", probe]).0 == 0).then_some(())
        },
    );
    let (code, out) = mesh.world.exec(&client.ns, &["python3", "-c", TCP_CLIENT]);
    assert_eq!((code, out.trim()), (0, "2000"), "{out}");
    vec![echo, client]
}

/// pilot's metrics (Istio's names) and the sidecars' own, as Prometheus
/// read them after the walk: every sidecar connected to pilot and on a
/// configuration, pilot counting them, its pushes, no rejections, and how
/// long ACKs took.
fn self_metrics_hold(mesh: &Mesh, sidecars: usize) {
    let one = |query: &str| -> f64 {
        let got = mesh.promql(query).unwrap();
        assert_eq!(got.len(), 1, "{query}: {got:?}");
        got[0]["value"][1].as_str().unwrap().parse().unwrap()
    };
    mesh_testbed::eventually("pilot scraped", std::time::Duration::from_secs(30), || {
        (!mesh.promql("up{job=\"pilot\"} == 1").ok()?.is_empty()).then_some(())
    });
    assert_eq!(one("pilot_xds"), sidecars as f64, "connected proxies");
    assert_eq!(one("sum(mesh_proxy_xds_connected)"), sidecars as f64);
    assert_eq!(one("count(mesh_proxy_config_info)"), sidecars as f64);
    // Each sidecar got at least its four types, and more as rules changed.
    let pushes = one("sum(pilot_xds_pushes_total)");
    assert!(pushes >= (4 * sidecars) as f64, "{pushes}");
    assert_eq!(one("sum(pilot_total_xds_rejects_total) or vector(0)"), 0.0);
    assert_eq!(one("sum(mesh_proxy_config_rejected_total)"), 0.0);
    let acked = one("sum(pilot_proxy_convergence_time_count)");
    assert!(
        acked >= (4 * sidecars) as f64 && acked <= pushes,
        "{acked} of {pushes}"
    );
    let p99 = one("histogram_quantile(0.99, sum by (le) (pilot_proxy_convergence_time_bucket))");
    assert!(p99 > 0.0 && p99 <= 10.0, "{p99}");
    assert!(one("sum(mesh_proxy_upstream_cx_total)") > 0.0);
}

/// One span as Jaeger's query API shows it.
#[derive(Debug)]
struct Span {
    id: String,
    parent: Option<String>,
    service: String,
    kind: String,
    url: String,
}

/// The spans of every trace in `answer` (`/api/traces`), by trace id.
fn spans_by_trace(answer: &serde_json::Value) -> Vec<(String, Vec<Span>)> {
    let tag = |s: &serde_json::Value, key: &str| {
        s["tags"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["key"] == key))
            .and_then(|t| t["value"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let traces = answer["data"].as_array().cloned().unwrap_or_default();
    traces
        .iter()
        .map(|t| {
            let spans = t["spans"].as_array().cloned().unwrap_or_default();
            let spans = spans
                .iter()
                .map(|s| Span {
                    id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                    parent: s["references"]
                        .as_array()
                        .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                        .and_then(|r| r["spanID"].as_str())
                        .map(str::to_owned),
                    service:
                        t["processes"][s["processID"].as_str().unwrap_or_default()]["serviceName"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    kind: tag(s, "span.kind"),
                    url: tag(s, "url.path") + &tag(s, "url.full"),
                })
                .collect();
            (t["traceID"].as_str().unwrap_or_default().to_owned(), spans)
        })
        .collect()
}

/// The chain of one `/pay`: svca receives it (server span), calls svcb
/// (client span, its child), svcb receives that call (server span, child
/// of svca's client span) and calls msgd outside the mesh (client span,
/// child of svcb's server span) — whether it has that last span, or what
/// is missing.
fn pay_chain(spans: &[Span]) -> Result<bool, String> {
    let find = |service: &str, kind: &str, parent: Option<&str>, url: &str| {
        spans
            .iter()
            .find(|s| {
                s.service.starts_with(service)
                    && s.kind == kind
                    && parent.is_none_or(|p| s.parent.as_deref() == Some(p))
                    && s.url.contains(url)
            })
            .map(|s| s.id.as_str())
            .ok_or(format!(
                "no {kind} span of {service} for {url} under {parent:?}"
            ))
    };
    let svca_in = find("svca.", "server", None, "/pay")?;
    let svca_out = find("svca.", "client", Some(svca_in), "svcb")?;
    let svcb_in = find("svcb.", "server", Some(svca_out), "/")?;
    Ok(find("svcb.", "client", Some(svcb_in), "/send").is_ok())
}

/// A real Jaeger receives the walk's spans from the mesh-proxy sidecars,
/// through `tracer`: one trace per `/pay` the client made, each with
/// svca-in → svca-out → svcb-in → svcb-out (egress to msgd), parent ids
/// matching across the sidecars.
fn jaeger_sees_one_trace_per_pay(tracer: Tracer) {
    let mut mesh = Mesh::new().unwrap();
    mesh.tracer = tracer;
    mesh.start_jaeger().unwrap();
    let report = walk_holds(&mut mesh, Sidecar::MeshProxy, 11);
    let services = mesh.jaeger("/api/services").unwrap();
    let service = services["data"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .filter_map(|s| s.as_str())
                .find(|s| s.starts_with("svca."))
        })
        .unwrap_or_else(|| panic!("no svca service in Jaeger: {services}"))
        .to_owned();
    // Spans leave each sidecar in its own batches: wait until every /pay's
    // chain is whole, then judge what arrived (a missing span fails below
    // with the trace printed).
    let query = format!("/api/traces?service={service}&limit=100000&lookback=1h");
    let mut traces = Vec::new();
    let whole = mesh_local::poll(
        "every /pay's chain of spans in Jaeger",
        std::time::Duration::from_secs(30),
        || {
            traces = spans_by_trace(&mesh.jaeger(&query).ok()?);
            let complete = traces
                .iter()
                .filter(|(_, spans)| pay_chain(spans).is_ok())
                .count();
            (complete >= report.pays).then_some(())
        },
    );
    if let Err(e) = whole {
        eprintln!("{e}");
    }
    let pays: Vec<&(String, Vec<Span>)> = traces
        .iter()
        .filter(|(_, spans)| spans.iter().any(|s| s.kind == "server" && s.url == "/pay"))
        .collect();
    assert_eq!(pays.len(), report.pays, "one trace per /pay");
    let mut without_egress = Vec::new();
    for (id, spans) in pays {
        match pay_chain(spans) {
            Ok(true) => {}
            Ok(false) => without_egress.push(spans),
            Err(missing) => panic!("trace {id}: {missing}: {spans:#?}"),
        }
    }
    // Step 1's call to msgd, before the egress rule, is cut at the TCP
    // level (no HTTP listener knows the outside host): no HTTP span.
    assert_eq!(without_egress.len(), 1, "{without_egress:#?}");
}

#[test]
fn jaeger_receives_the_walks_traces_by_zipkin() {
    jaeger_sees_one_trace_per_pay(Tracer::Zipkin);
}

#[test]
fn jaeger_receives_the_walks_traces_by_otlp_grpc() {
    jaeger_sees_one_trace_per_pay(Tracer::OtlpGrpc);
}

#[test]
fn jaeger_receives_the_walks_traces_by_otlp_http() {
    jaeger_sees_one_trace_per_pay(Tracer::OtlpHttp);
}
