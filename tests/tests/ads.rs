//! pilot → proxy over ADS, in pods with real capture. The same test body
//! runs with an unmodified Envoy 1.40 (State-of-the-World) and with
//! mesh-proxy (Delta) as the client pod's sidecar: weighted split, a
//! replace taking effect, a header-match route, REGISTRY_ONLY refusal and
//! an EgressRule opening one external host. The server pods run
//! mesh-proxy sidecars that register their workloads with pilot.

use std::time::{Duration, Instant};

use mesh_testbed::eventually;
use mesh_testbed::mesh::{Mesh, Pod, Sidecar, requests};
use mesh_testbed::netns::VIP_CIDR;

// The walk's registry (svca, svcb) and the seed's rule files.
use mesh_testbed::walk::{REGISTRY, ROUTE_50 as SPLIT_50, ROUTE_100 as ALL_V2, names};

const HEADER_RULE: &str = "apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata:
  name: svcb-testers
spec:
  destination:
    name: svcb
  precedence: 2
  match:
    request:
      headers:
        end-user:
          exact: jason
  route:
  - labels: {version: v0.1}
";

/// `n` sequential requests to svcb on one keep-alive connection; the
/// version that served each.
fn calls(mesh: &Mesh, client: &Pod, n: usize, extra: &[&str]) -> Vec<String> {
    let url = format!("http://svcb/notify?n=[1-{n}]");
    let mut args = extra.to_vec();
    args.push(&url);
    let (code, out) = mesh.curl(client, &args);
    assert_eq!(code, 0, "curl failed: {out}");
    out.lines()
        .filter_map(|l| {
            let v = l
                .strip_prefix("service_b:")?
                .strip_suffix(" is serving the request...")?;
            Some(format!("svcb-{v}"))
        })
        .collect()
}

fn count(bodies: &[String], v: &str) -> usize {
    bodies.iter().filter(|b| *b == v).count()
}

fn follows_pilot(proxy: Sidecar) {
    let mut mesh = Mesh::new().unwrap();
    mesh.write_registry(REGISTRY).unwrap();
    mesh.set_names(&names()).unwrap();
    mesh.start_pilot().unwrap();
    let v1 = mesh
        .pod(
            "svcb-v1",
            &[("app", "svcb"), ("version", "v0.1")],
            Some(Sidecar::MeshProxy),
        )
        .unwrap();
    mesh.sample(&v1, "svcb", &["--version", "v0.1"]).unwrap();
    let v2 = mesh
        .pod(
            "svcb-v2",
            &[("app", "svcb"), ("version", "v0.2")],
            Some(Sidecar::MeshProxy),
        )
        .unwrap();
    mesh.sample(&v2, "svcb", &["--version", "v0.2"]).unwrap();
    let msgd = mesh.pod("msgd", &[], None).unwrap();
    let msgd_log = mesh.msgd(&msgd).unwrap();
    let client = mesh
        .pod(
            "client",
            &[("app", "svca"), ("version", "v0.1")],
            Some(proxy),
        )
        .unwrap();
    mesh.wait_synced(&client, 0).unwrap();

    // Both servers registered themselves: without rules, both get traffic.
    let bodies = calls(&mesh, &client, 100, &[]);
    assert_eq!(bodies.len(), 100, "{bodies:?}");
    assert!(
        count(&bodies, "svcb-v0.1") > 0 && count(&bodies, "svcb-v0.2") > 0,
        "{bodies:?}"
    );

    // 50/50 per request, on one connection.
    let revision = mesh.apply_rules("create", SPLIT_50).unwrap();
    mesh.wait_synced(&client, revision).unwrap();
    // mesh-proxy's split is an exact schedule: 1000 requests are 500/500.
    // Envoy draws at random per request (binomial: a 1000-request sample
    // leaves 470..=530 about 6 % of the time), so it gets 4000 requests
    // and the same ±3 % band, which it then misses about once in 10^4 runs.
    let n = if proxy.is_mesh_proxy() { 1000 } else { 4000 };
    let bodies = calls(&mesh, &client, n, &[]);
    let (a, b) = (count(&bodies, "svcb-v0.1"), count(&bodies, "svcb-v0.2"));
    assert_eq!(a + b, n, "every request answered");
    assert!(
        (n * 47 / 100..=n * 53 / 100).contains(&a),
        "{proxy:?}: split {a}/{b} is not 50/50 within 3 %"
    );
    if proxy.is_mesh_proxy() {
        assert_eq!((a, b), (500, 500), "mesh-proxy's split is exact");
    }

    // Replace: everything to v0.2 within 2 s.
    let started = Instant::now();
    mesh.apply_rules("replace", ALL_V2).unwrap();
    loop {
        let bodies = calls(&mesh, &client, 20, &[]);
        if count(&bodies, "svcb-v0.2") == 20 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{proxy:?}: still {bodies:?} 2 s after the replace"
        );
    }
    let took = started.elapsed();
    let bodies = calls(&mesh, &client, 200, &[]);
    assert_eq!(count(&bodies, "svcb-v0.2"), 200, "{bodies:?}");
    eprintln!("{proxy:?}: replace took effect in {took:?}");

    // A header match wins over the default route.
    let revision = mesh.apply_rules("create", HEADER_RULE).unwrap();
    mesh.wait_synced(&client, revision).unwrap();
    let tester = calls(&mesh, &client, 20, &["-H", "end-user: jason"]);
    assert_eq!(count(&tester, "svcb-v0.1"), 20, "{tester:?}");
    let others = calls(&mesh, &client, 20, &["-H", "end-user: maria"]);
    assert_eq!(count(&others, "svcb-v0.2"), 20, "{others:?}");

    // REGISTRY_ONLY: the external host is refused and never reached.
    let send = format!("http://{}:9997/send?msg=hi", msgd.ip);
    let (_, out) = mesh.curl(&client, &["-o", "/dev/null", "-w", "%{http_code}", &send]);
    assert_ne!(out, "200", "{proxy:?}: the external host was reachable");
    assert!(requests(&msgd_log).is_empty(), "msgd was reached");

    outbound_policy_from_the_settings(&mesh, &client, &send, &msgd_log, proxy);

    // An EgressRule opens it (and only it).
    let egress = format!(
        "apiVersion: config.istio.io/v1alpha2
kind: EgressRule
metadata:
  name: enable-msgd
spec:
  destination:
    service: {}
  ports:
  - port: 9997
    protocol: http
",
        msgd.ip
    );
    let revision = mesh.apply_rules("create", &egress).unwrap();
    mesh.wait_synced(&client, revision).unwrap();
    let before = requests(&msgd_log).len();
    let (code, out) = mesh.curl(&client, &[&send]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Msgd recv msg ok, msg= hi\n"),
        "{proxy:?}"
    );
    let seen = requests(&msgd_log);
    assert_eq!(seen.len(), before + 1);
    // Through the egress rule's HTTP route (passed through, it was bytes).
    assert!(seen[before].contains("x-request-id"), "{}", seen[before]);

    // What pilot and the proxy say about it.
    let meshctl = mesh_testbed::binary("meshctl").unwrap();
    let meshctl = meshctl.to_str().unwrap();
    let (code, status) = mesh
        .world
        .exec(&mesh.world.node, &[meshctl, "proxy-status"]);
    assert_eq!(code, 0, "{status}");
    let row = status
        .lines()
        .find(|l| l.starts_with(&client.node_id))
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(row.matches("SYNCED").count(), 4, "{status}");
    let kind = if proxy.is_mesh_proxy() {
        " mesh-proxy "
    } else {
        " envoy "
    };
    assert!(row.contains(kind), "{status}");
    let (code, routes) = mesh
        .world
        .exec(&client.ns, &[meshctl, "proxy-config", "routes"]);
    assert_eq!(code, 0, "{routes}");
    assert!(
        routes.contains("header")
            && routes.contains("outbound|80|v0.2|svcb.default.svc.cluster.local"),
        "{routes}"
    );
    let (_, endpoints) = mesh
        .world
        .exec(&client.ns, &[meshctl, "proxy-config", "endpoints"]);
    for ip in [v1.ip, v2.ip] {
        assert!(endpoints.contains(&format!("{ip}:8080")), "{endpoints}");
    }

    sidecar_scope(&mesh, &client, &msgd, proxy);
    faults(&mut mesh, &client, proxy);
    circuit_breaker(&mesh, &client, proxy);
    mirror(&mesh, &client, &v2, proxy);
    rate_limit(&mesh, &client, &v2, proxy);

    assert_eq!(
        mesh.world.escaped_packets().unwrap(),
        0,
        "a packet to {VIP_CIDR} escaped capture"
    );
}

/// The mesh's settings file (the `mesh` ConfigMap's document) rules the
/// outbound policy while pilot runs: ALLOW_ANY passes the unknown host
/// through to its original destination, a version that does not parse
/// changes nothing, REGISTRY_ONLY refuses it again.
fn outbound_policy_from_the_settings(
    mesh: &Mesh,
    client: &Pod,
    send: &str,
    msgd_log: &std::path::Path,
    proxy: Sidecar,
) {
    let status = |mesh: &Mesh| {
        let (_, out) = mesh.curl(client, &["-o", "/dev/null", "-w", "%{http_code}", send]);
        out
    };
    let reads = |result: &str| {
        let series = format!("pilot_mesh_settings_reads_total{{result=\"{result}\"}}");
        mesh.pilot_metric(&series).unwrap()
    };
    let refused = status(mesh);
    let accepted = reads("accepted");
    mesh.write_settings("outboundTrafficPolicy:\n  mode: ALLOW_ANY\n")
        .unwrap();
    eventually(
        &format!("{proxy:?}: ALLOW_ANY lets the unknown host through"),
        Duration::from_secs(5),
        || (status(mesh) == "200").then_some(()),
    );
    assert_eq!(reads("accepted"), accepted + 1.0);
    let reached = requests(msgd_log).len();
    assert!(reached >= 1, "msgd was not reached");

    // A typo: refused, counted, and ALLOW_ANY stays in force.
    mesh.write_settings("outboundTrafficPolicy:\n  mode: SOMETIMES\n")
        .unwrap();
    eventually(
        "pilot refuses the bad settings",
        Duration::from_secs(5),
        || (reads("refused") == 1.0).then_some(()),
    );
    assert_eq!(
        status(mesh),
        "200",
        "{proxy:?}: the last good settings hold"
    );

    mesh.write_settings("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n")
        .unwrap();
    eventually(
        &format!("{proxy:?}: REGISTRY_ONLY refuses the unknown host again"),
        Duration::from_secs(5),
        || (status(mesh) != "200").then_some(()),
    );
    let after = requests(msgd_log).len();
    assert_eq!(status(mesh), refused, "{proxy:?}: refused as before");
    assert_eq!(requests(msgd_log).len(), after, "msgd reached once refused");
}

/// A Sidecar scopes the client's proxy: with only the outside host in its
/// list, svcb is refused as an unknown host is, and the outside host still
/// answers; with its whole namespace (`./*`), svcb answers again.
fn sidecar_scope(mesh: &Mesh, client: &Pod, msgd: &Pod, proxy: Sidecar) {
    let scoped = |hosts: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: client-scope\nspec:\n  workloadSelector:\n    labels: {{app: svca}}\n  egress:\n  - hosts: [\"{hosts}\"]\n"
        )
    };
    let send = format!("http://{}:9997/send?msg=scoped", msgd.ip);
    let revision = mesh
        .apply_rules("create", &scoped(&format!("./{}", msgd.ip)))
        .unwrap();
    mesh.wait_synced(client, revision).unwrap();
    let (_, out) = mesh.curl(client, &["-w", "\n%{http_code}", "http://svcb/notify"]);
    assert!(
        !out.contains("service_b") && !out.ends_with("200"),
        "{proxy:?}: svcb answered outside the proxy's scope: {out}"
    );
    let (code, out) = mesh.curl(client, &[&send]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Msgd recv msg ok, msg= scoped\n"),
        "{proxy:?}: the host in scope"
    );
    let revision = mesh.apply_rules("replace", &scoped("./*")).unwrap();
    mesh.wait_synced(client, revision).unwrap();
    let bodies = calls(mesh, client, 20, &[]);
    assert_eq!(
        count(&bodies, "svcb-v0.2"),
        20,
        "{proxy:?}: svcb back in scope: {bodies:?}"
    );
}

/// `httpFault` through pilot: the caller's sidecar answers a share of the
/// calls 503 itself, and delays calls by the rule's fixed delay.
fn faults(mesh: &mut Mesh, client: &Pod, proxy: Sidecar) {
    // One rule, svcb-faults, whose body changes: faults, then CORS.
    let rule = |body: &str| {
        format!(
            "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata:\n  name: svcb-faults\nspec:\n  destination:\n    name: svcb\n  precedence: 5\n{body}"
        )
    };
    let revision = mesh
        .apply_rules(
            "create",
            &rule("  httpFault:\n    abort: {percent: 30, httpStatus: 503}\n"),
        )
        .unwrap();
    mesh.wait_synced(client, revision).unwrap();
    // mesh-proxy's share is exact; Envoy draws at random (4000 calls, ±3 points).
    let n = if proxy.is_mesh_proxy() { 1000 } else { 4000 };
    let url = format!("http://svcb/notify?n=[1-{n}]");
    let (code, codes) = mesh.curl(client, &["-o", "/dev/null", "-w", "%{http_code}\n", &url]);
    assert_eq!(code, 0, "curl failed: {codes}");
    let aborted = codes.lines().filter(|c| *c == "503").count();
    assert_eq!(
        aborted + codes.lines().filter(|c| *c == "200").count(),
        n,
        "{codes}"
    );
    if proxy.is_mesh_proxy() {
        assert_eq!(aborted, 300, "mesh-proxy's share is exact");
    }
    assert!(
        (n * 27 / 100..=n * 33 / 100).contains(&aborted),
        "{proxy:?}: {aborted} of {n} aborted, not 30 %"
    );
    let revision = mesh
        .apply_rules(
            "replace",
            &rule("  httpFault:\n    delay: {percent: 100, fixedDelay: 300ms}\n"),
        )
        .unwrap();
    mesh.wait_synced(client, revision).unwrap();
    let (_, took) = mesh.curl(
        client,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            "http://svcb/notify",
        ],
    );
    let took: f64 = took.trim().parse().unwrap();
    // Measured by curl, whose clock may start a hair after the proxy's.
    assert!(
        (0.28..1.0).contains(&took),
        "{proxy:?}: the call took {took} s"
    );

    // CORS (the same rule, now with a policy instead of faults): the
    // caller's sidecar answers a preflight from the allowed origin.
    let cors = rule(
        "  corsPolicy:\n    allowOrigin: [https://shop.example]\n    allowMethods: [GET, POST]\n    maxAge: 1h\n",
    );
    let revision = mesh.apply_rules("replace", &cors).unwrap();
    mesh.wait_synced(client, revision).unwrap();
    let preflight = [
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "OPTIONS",
        "-H",
        "origin: https://shop.example",
        "-H",
        "access-control-request-method: POST",
        "http://svcb/notify",
    ];
    let (_, head) = mesh.curl(client, &preflight);
    let head = head.to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200")
            && head.contains("access-control-allow-origin: https://shop.example")
            && head.contains("access-control-allow-methods: get,post")
            && head.contains("access-control-max-age: 3600"),
        "{proxy:?}: {head}"
    );
}

/// DestinationPolicy `circuitBreaker` through pilot: the caller's sidecar
/// shows svcb's thresholds in its admin `/clusters`, as Envoy prints them
/// (what they do is proved beside Envoy in mesh-proxy's `breaker` tests).
fn circuit_breaker(mesh: &Mesh, client: &Pod, proxy: Sidecar) {
    let policy = "apiVersion: config.istio.io/v1alpha2\nkind: DestinationPolicy\nmetadata:\n  name: svcb-breaker\nspec:\n  destination:\n    name: svcb\n  circuitBreaker:\n    simpleCb:\n      maxConnections: 7\n      httpMaxRequests: 9\n      httpConsecutiveErrors: 3\n";
    let revision = mesh.apply_rules("create", policy).unwrap();
    mesh.wait_synced(client, revision).unwrap();
    for version in ["v0.1", "v0.2"] {
        let cluster = format!("outbound|80|{version}|svcb.default.svc.cluster.local");
        for (stat, want) in [
            ("max_connections", "7"),
            ("max_requests", "9"),
            ("max_retries", "3"),
        ] {
            // Envoy prints its high-priority thresholds after the default ones.
            let got = mesh.endpoint_stats(client, &cluster, stat);
            assert_eq!(
                got.first().map(String::as_str),
                Some(want),
                "{proxy:?}: {cluster} {stat}"
            );
        }
    }
}

/// RouteRule `mirror` through pilot: every call goes to v0.1 and a copy of
/// it to v0.2, counted by v0.2's own sidecar.
fn mirror(mesh: &Mesh, client: &Pod, v2: &Pod, proxy: Sidecar) {
    let rule = "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata:\n  name: svcb-mirror\nspec:\n  destination:\n    name: svcb\n  precedence: 9\n  route:\n  - labels: {version: v0.1}\n  mirror:\n    name: svcb\n    labels: {version: v0.2}\n";
    let received = || -> u64 {
        let rows = mesh.endpoint_stats(v2, "inbound|8080||", "rq_total");
        rows.iter().map(|n| n.parse::<u64>().unwrap()).sum()
    };
    let revision = mesh.apply_rules("create", rule).unwrap();
    mesh.wait_synced(client, revision).unwrap();
    let before = received();
    let bodies = calls(mesh, client, 20, &[]);
    assert_eq!(count(&bodies, "svcb-v0.1"), 20, "{proxy:?}: {bodies:?}");
    // The copies travel on their own: wait for them, then count exactly.
    mesh_testbed::eventually(
        "the mirrored copies at v0.2",
        Duration::from_secs(10),
        || (received() >= before + 20).then_some(()),
    );
    assert_eq!(received(), before + 20, "{proxy:?}: copies at v0.2");
}

/// `rateLimit` through pilot: a RouteRule's on the caller's sidecar lets 5
/// calls to v0.2 through, a DestinationPolicy's on v0.2's own sidecar 3 of
/// those; every other call is answered 429 with `retry-after`.
fn rate_limit(mesh: &Mesh, client: &Pod, v2: &Pod, proxy: Sidecar) {
    let rules = "apiVersion: config.mesh.dev/v1alpha1\nkind: RouteRule\nmetadata:\n  name: svcb-limit\nspec:\n  destination:\n    name: svcb\n  precedence: 10\n  route:\n  - labels: {version: v0.2}\n  rateLimit:\n    requests: 5\n    per: 60s\n---\napiVersion: config.mesh.dev/v1alpha1\nkind: DestinationPolicy\nmetadata:\n  name: svcb-v2-limit\nspec:\n  destination:\n    name: svcb\n    labels: {version: v0.2}\n  rateLimit:\n    requests: 3\n    per: 60s\n";
    let revision = mesh.apply_rules("create", rules).unwrap();
    mesh.wait_synced(client, revision).unwrap();
    mesh.wait_synced(v2, revision).unwrap();
    let url = "http://svcb/notify?n=[1-20]";
    let format = "%{http_code} %header{retry-after}\n";
    let (code, out) = mesh.curl(client, &["-o", "/dev/null", "-w", format, url]);
    assert_eq!(code, 0, "{out}");
    let answers: Vec<&str> = out.lines().collect();
    let passed = answers.iter().filter(|a| a.trim() == "200").count();
    let limited = answers.iter().filter(|a| **a == "429 60").count();
    assert_eq!((passed, limited), (3, 17), "{proxy:?}: {answers:?}");
}

#[test]
fn envoy_follows_pilot() {
    follows_pilot(Sidecar::Envoy);
}

#[test]
fn mesh_proxy_follows_pilot() {
    follows_pilot(Sidecar::MeshProxy);
}

/// The same with mesh-proxy on State-of-the-World ADS.
#[test]
fn mesh_proxy_follows_pilot_over_sotw() {
    follows_pilot(Sidecar::MeshProxySotw);
}

/// The same with Envoy on pilot's incremental (Delta) ADS.
#[test]
fn envoy_follows_pilot_over_delta() {
    follows_pilot(Sidecar::EnvoyDelta);
}

/// A header regex too big for Envoy's RE2 limit (program size 100): pilot
/// sends it, Envoy refuses it (NACK), `proxy-status` shows the refusal
/// with Envoy's own reason while Envoy serves on with what it had, and the
/// next good rule clears it.
#[test]
fn an_envoy_nack_shows_in_proxy_status_until_a_good_push() {
    let mut mesh = Mesh::new().unwrap();
    mesh.write_registry(REGISTRY).unwrap();
    mesh.set_names(&names()).unwrap();
    mesh.start_pilot().unwrap();
    let v1 = mesh
        .pod(
            "svcb-v1",
            &[("app", "svcb"), ("version", "v0.1")],
            Some(Sidecar::MeshProxy),
        )
        .unwrap();
    mesh.sample(&v1, "svcb", &["--version", "v0.1"]).unwrap();
    let client = mesh
        .pod("client", &[("app", "svca")], Some(Sidecar::Envoy))
        .unwrap();
    mesh.wait_synced(&client, 0).unwrap();
    let big = HEADER_RULE.replace(
        "exact: jason",
        "regex: \"(alice|bob|carol|dave|erin|frank|grace|heidi|ivan|judy){1,20}\"",
    );
    mesh.apply_rules("create", &big).unwrap();
    let reason = mesh_testbed::eventually(
        "Envoy's NACK in proxy-status",
        Duration::from_secs(10),
        || {
            let syncz = mesh.pilot_debug("/debug/syncz").unwrap();
            let p = syncz
                .as_array()?
                .iter()
                .find(|p| p["node"] == client.node_id.as_str())?
                .clone();
            (p["states"]["RDS"] == "NACKED").then(|| {
                p["types"]["RDS"]["nacked"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
        },
    );
    assert!(
        reason.contains("program size"),
        "Envoy's own reason: {reason}"
    );
    let (_, status) = mesh
        .meshctl_on_node(&["proxy-status", "--pilot", &mesh.debug_address()])
        .unwrap();
    assert!(
        status.contains(&format!("NACK {} RDS:", client.node_id)),
        "{status}"
    );
    // Envoy serves on with the configuration it had.
    let bodies = calls(&mesh, &client, 10, &[]);
    assert_eq!(count(&bodies, "svcb-v0.1"), 10, "{bodies:?}");
    // A good rule in its place is accepted and clears the NACK.
    let revision = mesh.apply_rules("replace", HEADER_RULE).unwrap();
    mesh.wait_synced(&client, revision).unwrap();
    let tester = calls(&mesh, &client, 5, &["-H", "end-user: jason"]);
    assert_eq!(count(&tester, "svcb-v0.1"), 5, "{tester:?}");
}

/// Starts `n` requests to svcb at `rate` per second in `pod`, in the
/// background; the handle yields each request's status code.
fn steady_load(mesh: &Mesh, pod: &Pod, n: usize, rate: usize) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", &pod.ns, "curl", "-s", "--max-time", "30"])
        .args([
            "--rate",
            &format!("{rate}/s"),
            "-w",
            "status=%{http_code}\n",
        ])
        .arg(format!("http://svcb/notify?n=[1-{n}]"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("curl in {}: {e} ({})", pod.ns, mesh.dir.path().display()))
}

fn load_result(load: std::process::Child) -> (usize, Vec<String>) {
    let out = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Bodies end with a newline, so each status is on a line of its own.
    let ok = lines.iter().filter(|l| l.ends_with("status=200")).count();
    let failed: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("status=") && !l.ends_with("status=200"))
        .cloned()
        .collect();
    (ok, failed)
}

#[test]
fn pilot_restart_while_traffic_flows() {
    let mut mesh = Mesh::new().unwrap();
    mesh.write_registry(REGISTRY).unwrap();
    mesh.set_names(&names()).unwrap();
    mesh.start_pilot().unwrap();
    for (name, version) in [("svcb-v1", "v0.1"), ("svcb-v2", "v0.2")] {
        let pod = mesh
            .pod(
                name,
                &[("app", "svcb"), ("version", version)],
                Some(Sidecar::MeshProxy),
            )
            .unwrap();
        mesh.sample(&pod, "svcb", &["--version", version]).unwrap();
    }
    let clients = [
        mesh.pod("mp-client", &[("app", "svca")], Some(Sidecar::MeshProxy))
            .unwrap(),
        mesh.pod("envoy-client", &[("app", "svca")], Some(Sidecar::Envoy))
            .unwrap(),
    ];
    let revision = mesh.apply_rules("create", SPLIT_50).unwrap();
    for c in &clients {
        mesh.wait_synced(c, revision).unwrap();
    }

    let loads: Vec<_> = clients
        .iter()
        .map(|c| steady_load(&mesh, c, 300, 50))
        .collect();
    mesh.kill_pilot();
    // The proxies notice (their streams break) and keep serving meanwhile.
    let before = calls(&mesh, &clients[0], 10, &[]);
    assert_eq!(before.len(), 10, "{before:?}");
    mesh.start_pilot().unwrap();
    for c in &clients {
        mesh.wait_synced(c, revision).unwrap();
    }
    // Resynced for real: a change after the restart reaches both.
    let revision = mesh.apply_rules("replace", ALL_V2).unwrap();
    for c in &clients {
        mesh.wait_synced(c, revision).unwrap();
        let bodies = calls(&mesh, c, 20, &[]);
        assert_eq!(
            count(&bodies, "svcb-v0.2"),
            20,
            "{:?}: {bodies:?}",
            c.sidecar
        );
    }
    for (c, load) in clients.iter().zip(loads) {
        let (ok, failed) = load_result(load);
        assert_eq!(
            ok, 300,
            "{:?}: failed requests across the restart: {failed:?}",
            c.sidecar
        );
    }
}

#[test]
fn invalid_rules_are_refused_at_write_time_and_never_pushed() {
    let mut mesh = Mesh::new().unwrap();
    mesh.write_registry(REGISTRY).unwrap();
    mesh.start_pilot().unwrap();
    let client = mesh
        .pod("client", &[("app", "svca")], Some(Sidecar::MeshProxy))
        .unwrap();
    mesh.wait_synced(&client, 0).unwrap();
    let pushes = mesh
        .pilot_debug("/debug/push_history")
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    let bad = SPLIT_50.replace("weight: 50\n", "weight: 60\n");
    let path = mesh.dir.path().join("bad.yaml");
    std::fs::write(&path, bad).unwrap();
    let (code, out) = mesh
        .meshctl(&["create", "-f", path.to_str().unwrap()])
        .unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("weight"), "the error names the problem: {out}");
    // A field the mesh would store and not act on is refused by name.
    let l4 = SPLIT_50.replace(
        "  route:\n",
        "  l4Fault:\n    terminate: {percent: 1}\n  route:\n",
    );
    std::fs::write(&path, l4).unwrap();
    let (code, out) = mesh
        .meshctl(&["create", "-f", path.to_str().unwrap()])
        .unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("spec.l4Fault: not supported yet: TCP fault injection"),
        "{out}"
    );
    // A valid write afterwards is the first change pilot sees.
    let revision = mesh.apply_rules("create", SPLIT_50).unwrap();
    assert_eq!(revision, 1, "the refused writes did not take a revision");
    mesh.wait_synced(&client, revision).unwrap();
    let history = mesh.pilot_debug("/debug/push_history").unwrap();
    assert!(history.as_array().unwrap().len() > pushes);
    // No svcb workload is up: analyze says the split's versions get nothing.
    let (code, out) = mesh
        .meshctl_on_node(&["analyze", "--pilot", &mesh.debug_address()])
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("route-rule/default/route-rules-svcb: spec.route[0].labels: no workload of svcb.default has version=v0.1"),
        "{out}"
    );
}
