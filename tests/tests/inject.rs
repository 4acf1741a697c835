//! The seed's manifests, injected by `meshctl kube-inject` and started as a
//! kubelet would start them (exactly the arguments and environment the
//! injected containers say, the pod's labels from the downward API): the
//! pods join svcb with no flag added by hand, the seed's 50/50 rule splits
//! between them, and a label changed later reaches pilot.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_testbed::eventually;
use mesh_testbed::kubelet::{Kubelet, relabel};
use mesh_testbed::mesh::{Mesh, Sidecar};
use mesh_testbed::netns::POD_NET;
use mesh_testbed::walk::{REGISTRY, ROUTE_50, names};
use serde_json::Value;

/// `meshctl kube-inject -f FILE`, parsed; the Deployment's pod template.
fn injected_template(mesh: &Mesh, file: &str) -> Value {
    let path = format!(
        "{}/../samples/istio-0.4-walk/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let injected = mesh.dir.path().join(format!("injected-{file}"));
    let (code, out) = mesh
        .meshctl(&["kube-inject", "-f", &path, "-o", injected.to_str().unwrap()])
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let out = std::fs::read_to_string(&injected).unwrap();
    let yaml = out
        .split("\n---\n")
        .find(|d| d.contains("kind: Deployment"))
        .unwrap();
    let doc: Value = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {out}"));
    doc["spec"]["template"].clone()
}

#[test]
fn injected_seed_pods_join_svcb_and_split_50_50() {
    let mut mesh = Mesh::new().unwrap();
    mesh.write_registry(REGISTRY).unwrap();
    // Cluster DNS: the service names, and pilot's name in the injected
    // configuration (mesh-pilot.mesh-system.svc) on the node.
    let mut all: Vec<(&str, std::net::IpAddr)> = names().to_vec();
    let pilot_ip = format!("{POD_NET}.1").parse().unwrap();
    all.push(("mesh-pilot.mesh-system.svc", pilot_ip));
    mesh.set_names(&all).unwrap();
    mesh.start_pilot().unwrap();
    let v1 = injected_template(&mesh, "svcb-v0.1.yaml");
    let v2 = injected_template(&mesh, "svcb-v0.2.yaml");
    let b1 = mesh.kube_pod("svcb-v0.1-7d9f", &v1);
    mesh.sample(&b1.pod, "svcb", &["--version", "v0.1"])
        .unwrap();
    let b2 = mesh.kube_pod("svcb-v0.2-5c8b", &v2);
    mesh.sample(&b2.pod, "svcb", &["--version", "v0.2"])
        .unwrap();
    let client = mesh
        .pod("client", &[("app", "svca")], Some(Sidecar::MeshProxy))
        .unwrap();
    let revision = mesh.apply_rules("create", ROUTE_50).unwrap();
    mesh.wait_synced(&client, revision).unwrap();
    mesh.wait_synced(&b1.pod, revision).unwrap();
    // Both injected pods registered as svcb's endpoints, with the
    // workload names the injector gave them.
    let syncz = mesh.pilot_debug("/debug/syncz").unwrap();
    let proxy = |pod: &str| -> Value {
        syncz
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .cloned()
            .unwrap_or_else(|| panic!("{pod} is not connected: {syncz}"))
    };
    assert_eq!(proxy("svcb-v0.1-7d9f")["workload"], "svcb");
    assert_eq!(proxy("svcb-v0.1-7d9f")["labels"]["version"], "v0.1");
    assert_eq!(proxy("svcb-v0.2-5c8b")["labels"]["version"], "v0.2");
    let url = "http://svcb/notify?n=[1-100]";
    let (code, out) = mesh.curl(&client, &[url]);
    assert_eq!(code, 0, "{out}");
    let served = |v: &str| out.matches(&format!("service_b:{v} is serving")).count();
    assert_eq!((served("v0.1"), served("v0.2")), (50, 50), "{out}");
    // A label changed on the running pod reaches pilot.
    let relabelled: BTreeMap<String, String> = [("app", "svcb"), ("version", "v0.3")]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
    relabel(&b1.labels_file, &relabelled);
    eventually(
        "pilot to see the new label",
        Duration::from_secs(10),
        || {
            let syncz = mesh.pilot_debug("/debug/syncz").unwrap();
            let p = syncz
                .as_array()?
                .iter()
                .find(|p| p["name"] == "svcb-v0.1-7d9f")?
                .clone();
            (p["labels"]["version"] == "v0.3").then_some(())
        },
    );
}
