//! pilot → proxy over ADS, in pods with real capture. The same test body
//! runs with an unmodified Envoy 1.40 (State-of-the-World) and with
//! mesh-proxy (Delta) as the client pod's sidecar: weighted split, a
//! replace taking effect, a header-match route, REGISTRY_ONLY refusal and
//! an EgressRule opening one external host. The server pods run
//! mesh-proxy sidecars that register their workloads with pilot.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mesh_testbed::mesh::{Mesh, Pod, Sidecar, requests};
use mesh_testbed::netns::VIP_CIDR;

const SVCB_VIP: &str = "10.251.0.11";

const REGISTRY: &str = "services:
- name: svcb
  namespace: default
  vip: 10.251.0.11
  ports:
  - {name: http, port: 80, targetPort: 8080}
  selector: {app: svcb}
";

const SPLIT_50: &str = "apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata:
  name: route-rules-svcb
spec:
  destination:
    name: svcb
  precedence: 1
  route:
  - labels: {version: v0.1}
    weight: 50
  - labels: {version: v0.2}
    weight: 50
";

const ALL_V2: &str = "apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata:
  name: route-rules-svcb
spec:
  destination:
    name: svcb
  precedence: 1
  route:
  - labels: {version: v0.2}
    weight: 100
";

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
/// bodies (one version per line).
fn calls(mesh: &Mesh, client: &Pod, n: usize, extra: &[&str]) -> Vec<String> {
    let url = format!("http://svcb/pay?[1-{n}]");
    let mut args = extra.to_vec();
    args.push(&url);
    let (code, out) = mesh.curl(client, &args);
    assert_eq!(code, 0, "curl failed: {out}");
    out.lines().map(str::to_owned).collect()
}

fn count(bodies: &[String], v: &str) -> usize {
    bodies.iter().filter(|b| *b == v).count()
}

fn follows_pilot(proxy: Sidecar) {
    let mut mesh = Mesh::new();
    mesh.write_registry(REGISTRY);
    mesh.set_names(&[("svcb", SVCB_VIP.parse::<IpAddr>().unwrap())]);
    mesh.start_pilot();
    let v1 = mesh.pod(
        "svcb-v1",
        &[("app", "svcb"), ("version", "v0.1")],
        Some(Sidecar::MeshProxy),
    );
    mesh.app(&v1, "svcb-v0.1", 8080);
    let v2 = mesh.pod(
        "svcb-v2",
        &[("app", "svcb"), ("version", "v0.2")],
        Some(Sidecar::MeshProxy),
    );
    mesh.app(&v2, "svcb-v0.2", 8080);
    let msgd = mesh.pod("msgd", &[], None);
    let msgd_log = mesh.app(&msgd, "msgd", 9997);
    let client = mesh.pod(
        "client",
        &[("app", "svca"), ("version", "v0.1")],
        Some(proxy),
    );
    mesh.wait_synced(&client, 0);

    // Both servers registered themselves: without rules, both get traffic.
    let bodies = calls(&mesh, &client, 100, &[]);
    assert_eq!(bodies.len(), 100, "{bodies:?}");
    assert!(
        count(&bodies, "svcb-v0.1") > 0 && count(&bodies, "svcb-v0.2") > 0,
        "{bodies:?}"
    );

    // 50/50 per request, on one connection.
    let revision = mesh.apply_rules("create", SPLIT_50);
    mesh.wait_synced(&client, revision);
    let bodies = calls(&mesh, &client, 1000, &[]);
    let (a, b) = (count(&bodies, "svcb-v0.1"), count(&bodies, "svcb-v0.2"));
    assert_eq!(a + b, 1000, "every request answered");
    assert!(
        (470..=530).contains(&a),
        "{proxy:?}: split {a}/{b} is not 50/50 within 3 %"
    );

    // Replace: everything to v0.2 within 2 s.
    let started = Instant::now();
    mesh.apply_rules("replace", ALL_V2);
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
    let revision = mesh.apply_rules("create", HEADER_RULE);
    mesh.wait_synced(&client, revision);
    let tester = calls(&mesh, &client, 20, &["-H", "end-user: jason"]);
    assert_eq!(count(&tester, "svcb-v0.1"), 20, "{tester:?}");
    let others = calls(&mesh, &client, 20, &["-H", "end-user: maria"]);
    assert_eq!(count(&others, "svcb-v0.2"), 20, "{others:?}");

    // REGISTRY_ONLY: the external host is refused and never reached.
    let send = format!("http://{}:9997/send?msg=hi", msgd.ip);
    let (_, out) = mesh.curl(&client, &["-o", "/dev/null", "-w", "%{http_code}", &send]);
    assert_ne!(out, "200", "{proxy:?}: the external host was reachable");
    assert!(requests(&msgd_log).is_empty(), "msgd was reached");

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
    let revision = mesh.apply_rules("create", &egress);
    mesh.wait_synced(&client, revision);
    let (code, out) = mesh.curl(&client, &[&send]);
    assert_eq!((code, out.as_str()), (0, "msgd\n"), "{proxy:?}");
    let seen = requests(&msgd_log);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].contains("x-request-id"), "{}", seen[0]);

    assert_eq!(
        mesh.world.escaped_packets(),
        0,
        "a packet to {VIP_CIDR} escaped capture"
    );
}

#[test]
fn envoy_follows_pilot() {
    follows_pilot(Sidecar::Envoy);
}

#[test]
fn mesh_proxy_follows_pilot() {
    follows_pilot(Sidecar::MeshProxy);
}
