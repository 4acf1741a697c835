//! The ingress gateway: mesh-proxy in gateway mode, in a network
//! namespace of its own, configured by pilot from a Gateway and the
//! VirtualServices bound to it (samples/gateway/ingress.yaml). A client
//! outside the mesh calls it by host name: routed by host and path, split
//! per request, hosts nothing binds answered 404; the same VirtualService
//! leaves the sidecars' calls alone; a replace and a delete take effect.

use mesh_testbed::mesh::{Mesh, Pod, Sidecar};
use mesh_testbed::walk::{REGISTRY, names};

const SAMPLE: &str = include_str!("../../samples/gateway/ingress.yaml");

/// Bound to the Gateway, but for a host its server does not serve.
const OTHER_DOMAIN: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: notify-org
spec:
  hosts: [notify.example.org]
  gateways: [ingress]
  http:
  - route:
    - destination: {host: svcb}
";

const ALL_V1: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: notify
spec:
  hosts: [notify.example.com]
  gateways: [ingress]
  http:
  - route:
    - destination: {host: svcb, subset: v1}
";

/// What `n` calls through the gateway with `host` to `path` (on one
/// connection) were answered: each status, and the versions of svcb that
/// served them.
struct Answers {
    statuses: Vec<u16>,
    versions: Vec<String>,
}

impl Answers {
    fn served_by(&self, version: &str) -> usize {
        self.versions.iter().filter(|v| *v == version).count()
    }
}

fn through(mesh: &Mesh, client: &Pod, gateway: &Pod, host: &str, path: &str, n: usize) -> Answers {
    let url = format!("http://{}:80{path}?n=[1-{n}]", gateway.ip);
    let host = format!("Host: {host}");
    let (code, out) = mesh.curl(client, &["-H", &host, "-w", "\n%{http_code}\n", &url]);
    assert_eq!(code, 0, "curl through the gateway failed ({code}): {out}");
    let versions = out
        .lines()
        .filter_map(|l| {
            let v = l
                .strip_prefix("service_b:")?
                .strip_suffix(" is serving the request...")?;
            Some(v.to_owned())
        })
        .collect();
    let statuses = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    Answers { statuses, versions }
}

#[test]
fn the_gateway_routes_outside_calls_by_host_and_path() {
    mesh_testbed::require_root();
    let mut mesh = Mesh::new().unwrap();
    mesh.write_registry(REGISTRY).unwrap();
    mesh.set_names(&names()).unwrap();
    mesh.start_pilot().unwrap();
    for (pod, version) in [("svcb-v1", "v0.1"), ("svcb-v2", "v0.2")] {
        let p = mesh
            .pod(
                pod,
                &[("app", "svcb"), ("version", version)],
                Some(Sidecar::MeshProxy),
            )
            .unwrap();
        mesh.sample(&p, "svcb", &["--version", version]).unwrap();
    }
    let sidecar_client = mesh
        .pod(
            "svca",
            &[("app", "svca"), ("version", "v0.1")],
            Some(Sidecar::MeshProxy),
        )
        .unwrap();
    let gateway = mesh
        .gateway("ingress", &[("mesh", "ingressgateway")])
        .unwrap();
    let outside = mesh.pod("outside", &[], None).unwrap();

    let call = |host: &str, path: &str, n: usize| through(&mesh, &outside, &gateway, host, path, n);

    // No Gateway yet: the gateway listens on nothing.
    let url = format!("http://{}:80/notify", gateway.ip);
    let (code, _) = mesh.curl(&outside, &["-H", "Host: notify.example.com", &url]);
    assert_eq!(
        code, 7,
        "curl must find nothing listening before the Gateway exists"
    );

    let revision = mesh.apply_rules("create", SAMPLE).unwrap();
    mesh.wait_synced(&gateway, revision).unwrap();
    mesh.wait_endpoints(
        &gateway,
        "outbound|80|v0.2|svcb.default.svc.cluster.local",
        1,
    )
    .unwrap();

    // The default route: half to each version, per request.
    let answers = call("notify.example.com", "/notify", 100);
    assert_eq!(answers.statuses, vec![200; 100]);
    assert_eq!(
        (answers.served_by("v0.1"), answers.served_by("v0.2")),
        (50, 50),
        "{:?}",
        answers.versions
    );
    // With the port in the Host header, as browsers send it for :80 too.
    let answers = call("notify.example.com:80", "/notify", 10);
    assert_eq!(answers.statuses, vec![200; 10]);
    assert_eq!(answers.versions.len(), 10);
    // By path: /beta/ goes to v0.2 alone, rewritten to the app's path.
    let answers = call("notify.example.com", "/beta/notify", 20);
    assert_eq!(answers.served_by("v0.2"), 20, "{:?}", answers.versions);
    // A host nothing binds: 404 from the gateway, as Envoy's.
    let answers = call("pay.example.com", "/notify", 1);
    assert_eq!(answers.statuses, [404]);

    // A VirtualService for a host the server does not serve stays unrouted.
    let revision = mesh.apply_rules("create", OTHER_DOMAIN).unwrap();
    mesh.wait_synced(&gateway, revision).unwrap();
    let answers = call("notify.example.org", "/notify", 1);
    assert_eq!(answers.statuses, [404]);
    // meshctl analyze says why.
    let (code, out) = mesh
        .meshctl_on_node(&["analyze", "--pilot", &mesh.debug_address()])
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("virtual-service/default/notify-org: spec.gateways: Gateway default/ingress serves no host matching notify.example.org: its calls there get 404"),
        "{out}"
    );

    // The gateway's VirtualService does not route the sidecars' calls:
    // svca's calls to svcb still reach both versions.
    mesh.wait_synced(&sidecar_client, revision).unwrap();
    let (code, out) = mesh.curl(&sidecar_client, &["http://svcb/notify?n=[1-20]"]);
    assert_eq!(code, 0, "{out}");
    for v in ["v0.1", "v0.2"] {
        assert!(
            out.contains(&format!("service_b:{v} ")),
            "svca's calls never reached svcb {v}: {out}"
        );
    }

    // A replace takes effect at the gateway.
    let revision = mesh.apply_rules("replace", ALL_V1).unwrap();
    mesh.wait_synced(&gateway, revision).unwrap();
    let answers = call("notify.example.com", "/notify", 20);
    assert_eq!(answers.served_by("v0.1"), 20, "{:?}", answers.versions);

    // Without the Gateway, its port closes.
    let (code, out) = mesh.meshctl(&["delete", "gateway", "ingress"]).unwrap();
    assert_eq!(code, 0, "{out}");
    mesh_testbed::eventually(
        "the gateway's port to close",
        std::time::Duration::from_secs(10),
        || {
            let (code, _) = mesh.curl(&outside, &["-H", "Host: notify.example.com", &url]);
            (code == 7).then_some(())
        },
    );
}
