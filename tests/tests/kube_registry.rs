//! pilot's Kubernetes registry against a real API server (the substrate's
//! single-node cluster): Services, Pods and EndpointSlices become the
//! services and workloads pilot translates — ports resolved as the
//! cluster resolves them, health from readiness and termination — and
//! follow every change. Needs the binaries tests/k8s/build.sh makes
//! (`MESH_K8S_BIN`) and root.

use std::time::Duration;

use mesh_testbed::eventually;
use mesh_testbed::kube::{InCluster, Namespace, TestCluster, http_get};
use serde_json::Value;

const DEBUG: &str = "127.0.0.1:15014";

const WORKLOADS: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: svcb}
---
apiVersion: v1
kind: Service
metadata: {name: svcb}
spec:
  selector: {app: svcb}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9090, targetPort: 9090, appProtocol: http}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec:
  clusterIP: None
  selector: {app: svcb}
  ports: [{name: grpc-api, port: 7070}]
---
apiVersion: v1
kind: Service
metadata: {name: outside}
spec:
  type: ExternalName
  externalName: example.invalid
---
apiVersion: v1
kind: Pod
metadata: {name: svcb-v1, labels: {app: svcb, version: v1}}
spec:
  serviceAccountName: svcb
  terminationGracePeriodSeconds: 30
  containers:
  - name: app
    image: mesh.local/client:1
    imagePullPolicy: Never
    ports: [{name: web, containerPort: 9997}]
    # The pod stays terminating (serving) for a while after its deletion.
    lifecycle: {preStop: {sleep: {seconds: 6}}}
---
apiVersion: v1
kind: Pod
metadata: {name: svcb-v2, labels: {app: svcb, version: v2}}
spec:
  containers:
  - name: app
    image: mesh.local/client:1
    imagePullPolicy: Never
    ports: [{name: web, containerPort: 9997}]
    # Never ready: /pause is the image's only program besides curl.
    readinessProbe: {exec: {command: [/usr/bin/curl, --max-time, "1", "http://127.0.0.1:1/"]}, periodSeconds: 1}
"#;

/// pilot's registry now: (services, workloads) of namespace `ns`.
fn registry(c: &TestCluster, ns: &str) -> Option<(Vec<Value>, Vec<Value>)> {
    let body = http_get(c, DEBUG, "/debug/registryz").ok()?;
    let v: Value = serde_json::from_str(&body).expect("registryz is JSON");
    let of_ns = |key: &str| -> Vec<Value> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["namespace"] == ns)
            .cloned()
            .collect()
    };
    Some((of_ns("services"), of_ns("workloads")))
}

fn health_of(workloads: &[Value], name: &str) -> Option<String> {
    workloads
        .iter()
        .find(|w| w["name"] == name)
        .map(|w| w["health"].as_str().unwrap_or_default().to_owned())
}

/// With `MESH_RECORD=DIR`, keeps the API's objects as they are now in
/// DIR/`name`: the fixtures of pilot's unit tests of the same mapping
/// (mesh-pilot/tests/fixtures).
fn record(ns: &Namespace, name: &str) {
    if let Ok(dir) = std::env::var("MESH_RECORD") {
        let json = ns.kubectl(&["get", "services,endpointslices,pods", "-o", "json"]);
        std::fs::write(std::path::Path::new(&dir).join(name), json).unwrap();
    }
}

#[test]
fn pilot_follows_services_pods_and_endpoint_conditions() {
    let c = TestCluster::up(&[TestCluster::client_image()]);
    let ns = Namespace::create(&c, "shop");
    let store = tempfile::tempdir().unwrap();
    let kubeconfig = c.kubeconfig();
    let _pilot = InCluster::start(
        &c,
        "mesh-pilot",
        &[
            "--store",
            store.path().to_str().unwrap(),
            "--kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--xds-address",
            "127.0.0.1:15010",
            "--debug-address",
            DEBUG,
            "--warmup",
            "0",
        ],
    );
    // The cluster's own Service is there from the first list.
    let (services, _) = registry(&c, "default").expect("registryz answers");
    assert!(
        services.iter().any(|s| s["name"] == "kubernetes"),
        "{services:?}"
    );

    ns.apply(WORKLOADS);
    ns.wait_ready("svcb-v1");
    let cluster_ip = ns.field("service/svcb", "{.spec.clusterIP}");
    let v1_ip = ns.field("pod/svcb-v1", "{.status.podIP}");
    let (services, workloads) =
        eventually("svcb-v1 healthy in pilot", Duration::from_secs(10), || {
            let (s, w) = registry(&c, "shop")?;
            (health_of(&w, "svcb-v1").as_deref() == Some("healthy")
                && health_of(&w, "svcb-v2").is_some())
            .then_some((s, w))
        });
    record(&ns, "kube-shop-ready.json");
    // Services: the ExternalName one is not a mesh service; UDP ports are
    // not carried; a named target port is the container port it names;
    // appProtocol and port-name prefixes declare protocols.
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["headless", "svcb"]);
    let svcb = &services[1];
    assert_eq!(svcb["vip"], cluster_ip.as_str());
    assert_eq!(svcb["selector"], serde_json::json!({"app": "svcb"}));
    assert_eq!(
        svcb["ports"],
        serde_json::json!([
            {"name": "http", "port": 80, "targetPort": 9997, "protocol": "http"},
            {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "http"},
        ])
    );
    let headless = &services[0];
    assert!(headless.get("vip").is_none(), "{headless}");
    assert_eq!(headless["ports"][0]["protocol"], "grpc");
    // Workloads: address, labels and service account from the pod; a pod
    // that is not ready takes no traffic.
    let v1 = workloads.iter().find(|w| w["name"] == "svcb-v1").unwrap();
    assert_eq!(v1["address"], v1_ip.as_str());
    assert_eq!(v1["serviceAccount"], "svcb");
    assert_eq!(
        v1["labels"],
        serde_json::json!({"app": "svcb", "version": "v1"})
    );
    assert_eq!(
        health_of(&workloads, "svcb-v2").as_deref(),
        Some("unhealthy")
    );

    // A deleted pod drains while it terminates (its preStop hook holds it
    // serving), then leaves.
    ns.kubectl(&["delete", "pod", "svcb-v1", "--wait=false"]);
    eventually("svcb-v1 draining", Duration::from_secs(5), || {
        let (_, w) = registry(&c, "shop")?;
        (health_of(&w, "svcb-v1").as_deref() == Some("draining")).then_some(())
    });
    record(&ns, "kube-shop-terminating.json");
    eventually("svcb-v1 gone", Duration::from_secs(45), || {
        let (_, w) = registry(&c, "shop")?;
        health_of(&w, "svcb-v1").is_none().then_some(())
    });
    // A deleted Service leaves too.
    ns.kubectl(&["delete", "service", "headless"]);
    eventually("headless gone", Duration::from_secs(5), || {
        let (s, _) = registry(&c, "shop")?;
        s.iter().all(|s| s["name"] != "headless").then_some(())
    });
}
