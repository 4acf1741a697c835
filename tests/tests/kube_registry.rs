//! pilot's Kubernetes registry against a real API server (the substrate's
//! single-node cluster): Services, Pods and EndpointSlices become the
//! services and workloads pilot translates — ports resolved as the
//! cluster resolves them, health from readiness and termination — and
//! follow every change; at scale (1000 Services of 3 endpoints each), to
//! a connected proxy, and across a relist (410 Gone after an API server
//! restart). Needs the binaries tests/k8s/build.sh makes (`MESH_K8S_BIN`)
//! and root.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
---
# A service outside the cluster: no selector, its slice written by hand
# (documentation addresses, RFC 5737: nothing is sent to them).
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  ports: [{name: tcp-db, port: 5432, targetPort: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: tcp-db, port: 15432, protocol: TCP}]
endpoints:
- addresses: [192.0.2.10]
- addresses: [192.0.2.11]
  conditions: {ready: false}
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
fn pilot_follows_the_cluster() {
    let c = TestCluster::up(&[TestCluster::client_image()]);
    let store = tempfile::tempdir().unwrap();
    let kubeconfig = c.kubeconfig();
    let pilot = InCluster::start(
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
    services_pods_and_endpoint_conditions(&c);
    at_scale_to_proxies_and_across_a_relist(&c, &pilot);
}

fn services_pods_and_endpoint_conditions(c: &TestCluster) {
    let ns = Namespace::create(c, "shop");
    // The cluster's own Service is there from the first list.
    let (services, _) = registry(c, "default").expect("registryz answers");
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
            let (s, w) = registry(c, "shop")?;
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
    assert_eq!(names, ["db", "headless", "svcb"]);
    let svcb = &services[2];
    assert_eq!(svcb["vip"], cluster_ip.as_str());
    assert_eq!(svcb["selector"], serde_json::json!({"app": "svcb"}));
    assert_eq!(
        svcb["ports"],
        serde_json::json!([
            {"name": "http", "port": 80, "targetPort": 9997, "protocol": "http"},
            {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "http"},
        ])
    );
    let headless = &services[1];
    assert!(headless.get("vip").is_none(), "{headless}");
    assert_eq!(headless["ports"][0]["protocol"], "grpc");
    // Without a selector: the slice's addresses are the endpoints, its
    // port the target port, its conditions their health.
    let db = &services[0];
    assert_eq!(db["ports"][0]["targetPort"], 15432, "{db}");
    assert_eq!(
        health_of(&workloads, "db-192.0.2.10").as_deref(),
        Some("healthy")
    );
    assert_eq!(
        health_of(&workloads, "db-192.0.2.11").as_deref(),
        Some("unhealthy")
    );
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
        let (_, w) = registry(c, "shop")?;
        (health_of(&w, "svcb-v1").as_deref() == Some("draining")).then_some(())
    });
    record(&ns, "kube-shop-terminating.json");
    eventually("svcb-v1 gone", Duration::from_secs(45), || {
        let (_, w) = registry(c, "shop")?;
        health_of(&w, "svcb-v1").is_none().then_some(())
    });
    // A deleted Service leaves too.
    ns.kubectl(&["delete", "service", "headless"]);
    eventually("headless gone", Duration::from_secs(5), || {
        let (s, _) = registry(c, "shop")?;
        s.iter().all(|s| s["name"] != "headless").then_some(())
    });
}

/// Services created at once, each with one slice of [`PER_SERVICE`]
/// endpoints.
const SCALE: usize = 1000;
const PER_SERVICE: usize = 3;
/// Services created per apply.
const BATCH: usize = 100;
const PROXY_ADMIN: &str = "127.0.0.1:15000";

/// Endpoint `j` of service `i`: benchmark addresses (RFC 2544), which
/// nothing here sends to.
fn endpoint(i: usize, j: usize) -> String {
    let n = i * PER_SERVICE + j;
    format!("198.18.{}.{}", n / 256, n % 256)
}

/// A Service without a selector and its one slice listing `addresses`.
fn service_with_endpoints(name: &str, addresses: &[String]) -> String {
    let endpoints: String = addresses
        .iter()
        .map(|a| format!("- addresses: [\"{a}\"]\n"))
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}---
"
    )
}

/// pilot's healthy endpoint addresses per service of namespace `ns`
/// (services it holds without any listed with none).
fn endpoints(c: &TestCluster, ns: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let (services, workloads) = registry(c, ns)?;
    let mut by_service: BTreeMap<String, Vec<String>> = services
        .iter()
        .map(|s| (s["name"].as_str().unwrap_or_default().to_owned(), vec![]))
        .collect();
    for w in workloads.iter().filter(|w| w["health"] == "healthy") {
        let service = w["labels"]["kubernetes.io/service-name"].as_str();
        if let Some(list) = service.and_then(|s| by_service.get_mut(s)) {
            list.push(w["address"].as_str().unwrap_or_default().to_owned());
        }
    }
    Some(by_service)
}

/// Whether the proxy's clusters hold endpoint `address` (Envoy's
/// `/clusters` lines: `cluster::address:port::field::value`).
fn proxy_holds(c: &TestCluster, address: &str) -> Option<bool> {
    let clusters = http_get(c, PROXY_ADMIN, "/clusters").ok()?;
    Some(clusters.contains(&format!("::{address}:8080::health_flags::healthy")))
}

/// Compacts etcd's whole history (through its HTTP gateway on the node's
/// loopback): a watch from any earlier resource version is then `410
/// Gone`.
fn compact_etcd(c: &TestCluster) {
    let post = |path: &str, body: &str| -> Value {
        let out = c
            .run(&[
                "curl",
                "-sS",
                "-X",
                "POST",
                &format!("http://127.0.0.1:2379{path}"),
                "-d",
                body,
            ])
            .unwrap_or_else(|e| panic!("etcd {path}: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcd {path}: {e}: {out}"))
    };
    let now = post("/v3/kv/range", r#"{"key": "AA=="}"#);
    let revision = now["header"]["revision"].as_str().expect("a revision");
    let compacted = post(
        "/v3/kv/compaction",
        &format!(r#"{{"revision": "{revision}", "physical": true}}"#),
    );
    assert!(compacted.get("header").is_some(), "{compacted}");
}

/// One sample of a metric on pilot's `/metrics` (0 when absent).
fn pilot_metric(c: &TestCluster, series: &str) -> f64 {
    let text = http_get(c, DEBUG, "/metrics").expect("pilot's metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn at_scale_to_proxies_and_across_a_relist(c: &TestCluster, pilot: &InCluster) {
    let ns = Namespace::create(c, "scale");
    let name = |i: usize| format!("scale-{i}");
    let all = |i: usize| -> Vec<String> { (0..PER_SERVICE).map(|j| endpoint(i, j)).collect() };

    // 1000 Services with 3 endpoints each, applied 100 at a time while
    // pilot's registry is read: each one counts from the start of its
    // batch's apply to the first reading holding it whole.
    let seen: Mutex<HashMap<String, Instant>> = Mutex::default();
    let mut batches = vec![];
    let applied = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(180);
            while Instant::now() < deadline {
                let finished = applied.load(Ordering::SeqCst);
                if let Some(now) = endpoints(c, "scale") {
                    let at = Instant::now();
                    let mut seen = seen.lock().unwrap();
                    for (service, list) in now {
                        if list.len() == PER_SERVICE {
                            seen.entry(service).or_insert(at);
                        }
                    }
                    if finished && seen.len() == SCALE {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        for b in 0..SCALE / BATCH {
            let yaml: String = (b * BATCH..(b + 1) * BATCH)
                .map(|i| service_with_endpoints(&name(i), &all(i)))
                .collect();
            batches.push(Instant::now());
            ns.apply(&yaml);
        }
        applied.store(true, Ordering::SeqCst);
    });
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), SCALE, "services pilot held whole");
    let mut delays: Vec<Duration> = (0..SCALE)
        .map(|i| seen[&name(i)] - batches[i / BATCH])
        .collect();
    delays.sort();
    eprintln!(
        "{SCALE} services × {PER_SERVICE} endpoints: in pilot after p50 {:?}, max {:?} (from their batch's start; a batch of {BATCH} applied in {:?} on average)",
        delays[SCALE / 2],
        delays[SCALE - 1],
        batches[batches.len() - 1].duration_since(batches[0]) / (batches.len() as u32 - 1),
    );
    assert!(
        delays[SCALE - 1] <= Duration::from_secs(5),
        "a service reached pilot {:?} after its creation began",
        delays[SCALE - 1]
    );

    // A proxy of the namespace: it holds every service's endpoints.
    let _proxy = InCluster::start(
        c,
        "mesh-proxy",
        &[
            "sidecar",
            "--xds-address",
            "127.0.0.1:15010",
            "--namespace",
            "scale",
            "--pod-name",
            "watcher",
            "--ip",
            "127.0.0.1",
            "--admin-address",
            PROXY_ADMIN,
        ],
    );
    // An endpoint removed reaches it in under a second (from the API's
    // answer to the removal to the proxy's configuration without it).
    for i in [3, 333, 666, 999] {
        let gone = endpoint(i, 0);
        eventually(
            "the proxy holds the endpoint",
            Duration::from_secs(10),
            || proxy_holds(c, &gone)?.then_some(()),
        );
        ns.kubectl(&[
            "patch",
            "endpointslice",
            &name(i),
            "--type=json",
            "-p",
            r#"[{"op": "remove", "path": "/endpoints/0"}]"#,
        ]);
        let removed = Instant::now();
        let mut polls = 0;
        eventually("the removal at the proxy", Duration::from_secs(5), || {
            polls += 1;
            (!proxy_holds(c, &gone)?).then_some(())
        });
        let took = removed.elapsed();
        eprintln!(
            "endpoint removal of {} at the proxy after {took:?} ({polls} reads)",
            name(i)
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(
            proxy_holds(c, &endpoint(i, 1)) == Some(true),
            "the others stay"
        );
    }

    // Relist: pilot is paused while a Service goes, one comes and an
    // endpoint leaves, and the API server restarts meanwhile (its new
    // watch cache starts after pilot's last resource version, so pilot's
    // watches resume into 410 Gone and list again). pilot must end with
    // exactly the API's state: nothing kept, nothing missed.
    assert_eq!(
        pilot_metric(c, r#"pilot_k8s_reg_lists_total{kind="Service"}"#),
        1.0,
        "one list since the start"
    );
    // SAFETY: pausing our own child.
    unsafe { libc::kill(pilot.pid(), libc::SIGSTOP) };
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            // SAFETY: resuming our own child (also when the test fails).
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let resume = Resume(pilot.pid());
    ns.kubectl(&["delete", "service/scale-1", "endpointslice/scale-1"]);
    let late: Vec<String> = (1..=PER_SERVICE).map(|n| format!("198.19.0.{n}")).collect();
    ns.apply(&service_with_endpoints("late", &late));
    ns.kubectl(&[
        "patch",
        "endpointslice",
        "scale-2",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/endpoints/0"}]"#,
    ]);
    // etcd forgets the history pilot would resume from, and the API
    // server starts again with an empty watch cache.
    compact_etcd(c);
    c.restart("kube-apiserver").expect("restart the API server");
    eventually(
        "the API server ready again",
        Duration::from_secs(60),
        || {
            let ok = c.run(&["kubectl", "get", "--raw", "/readyz"]).ok()?;
            (ok == "ok").then_some(())
        },
    );
    drop(resume);
    // The Services' watch (the kind with the deleted object) must have
    // resumed into 410 Gone and listed again; the others do the same or
    // resume (here EndpointSlices resume: the new API server serves their
    // watch from the compacted revision on), and either way the state
    // below must be exact.
    let relisted = |kind: &str| {
        let lists = format!("pilot_k8s_reg_lists_total{{kind=\"{kind}\"}}");
        let expired =
            format!("pilot_k8s_reg_watch_errors_total{{kind=\"{kind}\",reason=\"expired\"}}");
        pilot_metric(c, &expired) >= 1.0 && pilot_metric(c, &lists) >= 2.0
    };
    let relisted_services = mesh_local::poll("relist", Duration::from_secs(60), || {
        relisted("Service").then_some(())
    });
    assert!(
        relisted_services.is_ok(),
        "the Services' watch resumed into 410 Gone and listed again: {}",
        http_get(c, DEBUG, "/metrics").unwrap_or_default()
    );
    eprintln!(
        "relisted: Services, EndpointSlices {}, Pods {}",
        relisted("EndpointSlice"),
        relisted("Pod")
    );
    let now = eventually(
        "pilot holds the API's state",
        Duration::from_secs(30),
        || {
            let now = endpoints(c, "scale")?;
            (now.get("late").map(Vec::len) == Some(PER_SERVICE)
                && now.get("scale-2").map(Vec::len) == Some(PER_SERVICE - 1))
            .then_some(now)
        },
    );
    assert!(!now.contains_key("scale-1"), "the deleted service is gone");
    assert_eq!(now["late"], late, "the new one is there");
    assert_eq!(now.len(), SCALE, "999 of the first, and the late one");
    assert_eq!(
        now["scale-2"],
        all(2)[1..],
        "scale-2 lost its first endpoint"
    );
    assert_eq!(now["scale-4"], all(4), "untouched");
    // The proxy follows: the late service's endpoints in, the deleted
    // one's and the removed one out.
    eventually(
        "the proxy holds the API's state",
        Duration::from_secs(10),
        || {
            (proxy_holds(c, &late[0])?
                && !proxy_holds(c, &endpoint(1, 1))?
                && !proxy_holds(c, &endpoint(2, 0))?)
            .then_some(())
        },
    );
}
