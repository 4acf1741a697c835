//! The seed's walk on a real cluster (the substrate's single-node
//! Kubernetes): `kubectl apply -f mesh.yaml`, the seed's manifests through
//! `meshctl kube-inject --upgrade-apis`, a client pod injected by the
//! webhook alone (its namespace labelled `mesh-injection=enabled`), msgd
//! outside the mesh at the seed's address, and the seed's rules through
//! `meshctl create`/`replace` against the cluster. Pods are real
//! containers: each init container programs iptables in its pod's
//! namespace and each sidecar runs from the mesh-proxy image.
//!
//! The apps run from images named as the seed names them, built here from
//! the sample binaries (the seed's own images are not pulled: the test
//! world has no registry); the only change to the seed's manifests is
//! their pull policy (`Always` → `IfNotPresent`). msgd listens on the
//! seed's `10.100.35.27` inside the cluster's own network namespace, which
//! has no link to this machine's network.
//!
//! Then the failures Istio users meet most, with svca's client calling at
//! 100/s: both svcb Deployments restarted and one scaled 2→0→2, pilot's
//! pod deleted, the bundle applied again with a new tag (an upgrade of the
//! control plane) — not one call may fail. Needs `MESH_K8S_BIN` and root.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use mesh_cluster::images::{File, Image};
use mesh_testbed::eventually;
use mesh_testbed::kube::{
    Namespace, TestCluster, http_get, http_request, kubectl_ok, mesh_objects, pods, render, rollout,
};
use serde_json::Value;

/// The seed's msgd address (outside the mesh).
const MSGD: &str = "10.100.35.27";

/// An image named as the seed's, running a sample binary with `args`.
fn seed_image(bin: &Path, program: &str, name: &str, args: &[&str]) -> Image {
    let path = format!("/usr/local/bin/{program}");
    let mut entrypoint = vec![path.clone()];
    entrypoint.extend(args.iter().map(|a| (*a).to_owned()));
    Image {
        name: name.into(),
        files: File::binary(&bin.join(program), &path),
        entrypoint,
    }
}

fn images(bin: &Path) -> Vec<Image> {
    let mut images = mesh_cluster::images::mesh(bin, "mesh.local", "test").unwrap();
    images.push(TestCluster::client_image());
    // The control plane (and the gateway's proxy) once more under a new
    // tag: the upgrade.
    images.extend(
        mesh_cluster::images::mesh(bin, "mesh.local", "next")
            .unwrap()
            .into_iter()
            .filter(|i| {
                ["/mesh-pilot:", "/mesh-inject:", "/mesh-proxy:"]
                    .iter()
                    .any(|p| i.name.contains(p))
            }),
    );
    let msgd_url = format!("http://{MSGD}:9997");
    images.push(seed_image(
        bin,
        "svca",
        "docker.io/bigwhite/istio-demo-svca:v0.1",
        &["--version", "v0.1"],
    ));
    for version in ["v0.1", "v0.2"] {
        images.push(seed_image(
            bin,
            "svcb",
            &format!("docker.io/bigwhite/istio-demo-svcb:{version}"),
            &["--version", version, "--msgd", &msgd_url],
        ));
    }
    images
}

fn walk_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../samples/istio-0.4-walk")
        .join(name)
}

/// msgd at the seed's address in the cluster's network namespace; killed
/// when dropped.
struct Msgd {
    child: Child,
    log: PathBuf,
}

impl Msgd {
    fn start(c: &TestCluster, dir: &Path) -> Msgd {
        c.run(&["ip", "address", "add", &format!("{MSGD}/32"), "dev", "lo"])
            .unwrap();
        let log = dir.join("msgd.log");
        std::fs::write(&log, "").unwrap();
        let program = mesh_testbed::binary("msgd").unwrap();
        let child = c
            .in_network(|| {
                Command::new(&program)
                    .args(["--listen", &format!("{MSGD}:9997"), "--log"])
                    .arg(&log)
                    .stdout(std::process::Stdio::null())
                    .spawn()
            })
            .unwrap()
            .unwrap();
        let msgd = Msgd { child, log };
        eventually("msgd listens", Duration::from_secs(10), || {
            c.in_network(|| std::net::TcpStream::connect((MSGD, 9997)).ok())
                .ok()
                .flatten()
        });
        msgd
    }

    /// Every request msgd received, as it logged them.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Msgd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `meshctl ARGS` against the cluster: exit code and output.
fn meshctl(c: &TestCluster, args: &[&str]) -> (Option<i32>, String) {
    let out = mesh_testbed::kube::meshctl(c, args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A seed manifest through `meshctl kube-inject --upgrade-apis`, its pull
/// policy made one a cluster without a registry can follow.
fn injected(file: &str) -> String {
    let out = Command::new(mesh_testbed::binary("meshctl").unwrap())
        .args(["kube-inject", "--upgrade-apis", "-f"])
        .arg(walk_file(file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .replace("imagePullPolicy: Always", "imagePullPolicy: IfNotPresent")
}

/// `n` calls of svca's `/pay` from the client pod on one connection:
/// (calls answered 200, by svcb v0.1, by svcb v0.2).
fn pay(ns: &Namespace<'_>, n: usize) -> (usize, usize, usize) {
    let out = ns.exec(
        "client",
        &[
            "curl",
            "-s",
            "-w",
            "\n%{http_code}\n",
            &format!("http://svca/pay?n=[1-{n}]"),
        ],
    );
    let ok = out.lines().filter(|l| *l == "200").count();
    let served = |v: &str| out.matches(&format!("service_b:{v} is serving")).count();
    (ok, served("v0.1"), served("v0.2"))
}

/// Requests svca's sidecar reported to svcb (`mesh_requests_total`,
/// reporter source), by destination version, from its metrics port.
fn by_version(c: &TestCluster, svca_ip: &str) -> std::collections::BTreeMap<String, u64> {
    let text = http_get(c, &format!("{svca_ip}:15090"), "/stats/prometheus")
        .unwrap_or_else(|e| panic!("svca's metrics: {e}"));
    let mut sums = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("mesh_requests_total{"))
    {
        let label = |name: &str| {
            let at = line.find(&format!("{name}=\""))? + name.len() + 2;
            Some(&line[at..at + line[at..].find('"')?])
        };
        if label("reporter") != Some("source")
            || !label("destination_service").is_some_and(|s| s.starts_with("svcb."))
        {
            continue;
        }
        let value: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64);
        *sums
            .entry(label("destination_version").unwrap_or("unknown").to_owned())
            .or_default() += value;
    }
    sums
}

/// The address of pilot's pod (the one not going away, during a rollout).
fn pilot_ip(c: &TestCluster) -> Option<String> {
    let out = pods(c, "mesh-system", "app=mesh-pilot", "json");
    let pods: Value = serde_json::from_str(&out).ok()?;
    pods["items"]
        .as_array()?
        .iter()
        .find(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["podIP"].is_string())
        .and_then(|p| p["status"]["podIP"].as_str())
        .map(str::to_owned)
}

/// Waits until `pods` sidecars of the default namespace are connected to
/// pilot with every xDS type SYNCED.
fn synced(c: &TestCluster, pods: usize) {
    // A pilot going away keeps its streams until it ends (up to its grace
    // period).
    let mut last = String::new();
    let done = mesh_local::poll(
        "the sidecars synced with pilot",
        Duration::from_secs(60),
        || {
            let ip = pilot_ip(c)?;
            let body = http_get(c, &format!("{ip}:15014"), "/debug/syncz").ok()?;
            let proxies: Vec<Value> = serde_json::from_str(&body).ok()?;
            let synced = proxies
                .iter()
                .filter(|p| {
                    p["namespace"] == "default"
                        && p["states"]
                            .as_object()
                            .is_some_and(|s| !s.is_empty() && s.values().all(|v| v == "SYNCED"))
                })
                .count();
            last = format!(
                "pilot {ip}: {synced} synced of {}",
                serde_json::to_string_pretty(&proxies).unwrap_or_default()
            );
            (synced == pods).then_some(())
        },
    );
    if let Err(e) = done {
        panic!("{e}; {last}");
    }
}

/// Calls svca's `/pay` from the client pod at 100/s until stopped.
struct Load {
    child: Child,
    lines: mesh_testbed::Lines,
}

impl Load {
    /// Starts `calls` calls; returns once the first answered.
    fn start(c: &TestCluster, calls: usize) -> Load {
        let url = format!("http://svca/pay?n=[1-{calls}]");
        let mut child = c
            .command(&[
                "kubectl",
                "exec",
                "-n",
                "default",
                "client",
                "-c",
                "client",
                "--",
                "curl",
                "-s",
                "--rate",
                "100/s",
                "-o",
                "/dev/null",
                "-w",
                "status=%{http_code}\n",
                &url,
            ])
            .unwrap()
            // Its own process group, so kubectl goes with it.
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = mesh_testbed::Lines::new(child.stdout.take().unwrap());
        lines
            .wait_for("status=", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the load: {e}"));
        Load { child, lines }
    }

    /// Waits until `n` more calls were answered.
    fn wait_calls(&mut self, n: usize) {
        for _ in 0..n {
            self.lines
                .wait_for("status=", Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("the load: {e}"));
        }
    }

    /// Waits for every call; (calls made, the statuses of those that failed).
    fn finish(mut self) -> (usize, Vec<String>) {
        let _ = self.child.wait();
        self.tally()
    }

    /// Stops the calls; (calls made, the statuses of those that failed).
    fn stop(mut self) -> (usize, Vec<String>) {
        // SAFETY: killpg on the group of a child this test started.
        unsafe { libc::killpg(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        self.tally()
    }

    fn tally(&mut self) -> (usize, Vec<String>) {
        self.lines.wait_for_end(Duration::from_secs(10)).unwrap();
        let statuses: Vec<&String> = self
            .lines
            .seen
            .iter()
            // Whole lines only: the kill may cut the last one short.
            .filter(|l| l.starts_with("status=") && l.len() == "status=200".len())
            .collect();
        let failed = statuses
            .iter()
            .filter(|l| l.as_str() != "status=200")
            .map(|l| (*l).clone())
            .collect();
        (statuses.len(), failed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // SAFETY: as in stop; a no-op when the group is gone.
        unsafe { libc::killpg(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Counts the TCP connections pods open straight to a Service address
/// (SYNs from the pod range to the service range as they reach the node,
/// before kube-proxy rewrites them): capture sends a meshed app's calls to
/// its sidecar, which connects to endpoints, so there are none. The
/// sidecars' own connections to pilot (15010) and every pod's to the API
/// server (the control plane and CoreDNS are not meshed) are not counted.
/// The rules go with the test's cluster.
struct Escapes<'a>(&'a TestCluster);

const ESCAPE_COMMENT: &str = "mesh-test-escaped";
const TO_PILOT_COMMENT: &str = "mesh-test-to-pilot";

impl<'a> Escapes<'a> {
    fn count(c: &'a TestCluster) -> Escapes<'a> {
        let insert = |args: &[&str]| {
            let mut full = vec!["iptables", "-t", "raw", "-I", "PREROUTING"];
            full.extend_from_slice(args);
            c.run(&full).unwrap_or_else(|e| panic!("{full:?}: {e}"));
        };
        let syns = |port: &[&str], comment: &str| {
            let mut args = vec![
                "-s",
                mesh_cluster::POD_CIDR,
                "-d",
                mesh_cluster::SERVICE_CIDR,
                "-p",
                "tcp",
                "--syn",
            ];
            args.extend_from_slice(port);
            args.extend(["-m", "comment", "--comment", comment]);
            insert(&args);
        };
        syns(&["!", "--dport", "15010"], ESCAPE_COMMENT);
        // The control: the sidecars' connections to pilot's Service are
        // seen the same way (so a count of 0 above means something).
        syns(&["--dport", "15010"], TO_PILOT_COMMENT);
        // Inserted above both: the API server's address is not counted.
        let api = format!("{}/32", mesh_cluster::API_SERVICE_IP);
        insert(&["-d", &api, "-j", "RETURN"]);
        Escapes(c)
    }

    /// Connections counted so far: (escaped, to pilot).
    fn counts(&self) -> (u64, u64) {
        let list = self
            .0
            .run(&[
                "iptables",
                "-t",
                "raw",
                "-L",
                "PREROUTING",
                "-v",
                "-x",
                "-n",
            ])
            .unwrap();
        let count = |comment: &str| -> u64 {
            list.lines()
                .find(|l| l.contains(&format!("/* {comment} */")))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no counting rule {comment} in\n{list}"))
        };
        (count(ESCAPE_COMMENT), count(TO_PILOT_COMMENT))
    }
}

/// The bundle's Deployments.
const CONTROL_PLANE: [&str; 3] = ["mesh-pilot", "mesh-inject", "mesh-ingressgateway"];

#[test]
fn the_seed_walk_on_a_real_cluster() {
    let bin = mesh_testbed::binary("msgd").unwrap();
    let bin = bin.parent().unwrap();
    let c = TestCluster::up(&images(bin));
    let dir = tempfile::tempdir().unwrap();
    render(dir.path(), &[]);
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();

    // The mesh, then Istio's groups for the seed's rules unchanged:
    // pilot, already running, reads the kinds that come later (the seed's
    // rules below go there and must act).
    kubectl_ok(&c, &["apply", "-f", "-"], &read("mesh.yaml"));
    for deployment in CONTROL_PLANE {
        rollout(&c, "mesh-system", deployment, 120);
    }
    kubectl_ok(&c, &["apply", "-f", "-"], &read("istio-api.yaml"));
    kubectl_ok(
        &c,
        &[
            "wait",
            "--for=condition=Established",
            "crd",
            "egressrules.config.istio.io",
            "--timeout=60s",
        ],
        "",
    );
    let msgd = Msgd::start(&c, dir.path());
    let escapes = Escapes::count(&c);

    // The seed's namespace; the webhook injects what kube-inject did not.
    let ns = Namespace {
        cluster: &c,
        name: "default".into(),
    };
    ns.kubectl(&["label", "namespace", "default", "mesh-injection=enabled"]);
    kubectl_ok(
        &c,
        &["apply", "-n", "default", "-f", "-"],
        &injected("svca-v0.1.yaml"),
    );
    kubectl_ok(
        &c,
        &["apply", "-n", "default", "-f", "-"],
        &injected("svcb-v0.1.yaml"),
    );
    ns.client_pod("client", "mesh.local/client:1");
    let containers = ns.field("pod/client", "{.spec.containers[*].name}");
    assert_eq!(
        containers, "client mesh-proxy",
        "the webhook injected the client"
    );
    ns.rollout("svca");
    ns.rollout("svcb");
    synced(&c, 3);

    // meshctl reaches pilot and the sidecars through the API server's
    // port-forward, as a user with a kubeconfig does.
    let (code, status) = meshctl(&c, &["proxy-status"]);
    assert_eq!(code, Some(0), "{status}");
    let svca_pod = ns.kubectl(&[
        "get",
        "pod",
        "-l",
        "app=svca",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let row = status
        .lines()
        .find(|l| l.contains(svca_pod.trim()))
        .unwrap_or_else(|| panic!("{svca_pod} is not in proxy-status:\n{status}"));
    assert_eq!(row.matches("SYNCED").count(), 4, "{row}");
    let (code, clusters) = meshctl(
        &c,
        &[
            "proxy-config",
            "clusters",
            &format!("{}.default", svca_pod.trim()),
        ],
    );
    assert_eq!(code, Some(0), "{clusters}");
    assert!(
        clusters.contains("outbound|80||svcb.default.svc.cluster.local"),
        "{clusters}"
    );

    // Step 1: svcb's call to msgd leaves the mesh: refused until an egress
    // rule allows it, and msgd gets nothing.
    let (ok, _, _) = pay(&ns, 1);
    assert_eq!(ok, 0, "/pay succeeded with no egress rule");
    assert!(
        msgd.requests().is_empty(),
        "msgd was reached: {:?}",
        msgd.requests()
    );

    // Step 2: the seed's egress rule, created with meshctl on the cluster.
    let egress = walk_file("enable-svcb-engress-rule.yaml");
    let (code, out) = meshctl(&c, &["create", "-f", egress.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Created config egress-rule/default/enable-svcb-engress-rule"),
        "{out}"
    );
    // Under Istio's group, whose CRD came after pilot started.
    ns.kubectl(&["get", "egressrule.config.istio.io/enable-svcb-engress-rule"]);
    eventually(
        "/pay succeeds with the egress rule",
        Duration::from_secs(15),
        || (pay(&ns, 1).0 == 1).then_some(()),
    );
    // The trace headers svca and svcb forward reach msgd.
    let last = msgd.requests().pop().expect("msgd got the call");
    let headers = &last["headers"];
    for h in ["x-request-id", "x-b3-traceid", "x-b3-spanid"] {
        assert!(headers.get(h).is_some(), "{h} missing at msgd: {last}");
    }

    // Step 3: svcb v0.2 beside v0.1 (through kube-inject, as the seed), and
    // the seed's 50/50 rule: an exact split per request.
    kubectl_ok(
        &c,
        &["apply", "-n", "default", "-f", "-"],
        &injected("svcb-v0.2.yaml"),
    );
    ns.rollout("svcb-v0.2");
    synced(&c, 4);
    let split = walk_file("route-rules-svcb-v0.2-50.yaml");
    let (code, out) = meshctl(&c, &["create", "-f", split.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    eventually("both versions serve", Duration::from_secs(15), || {
        let (_, a, b) = pay(&ns, 10);
        (a == 5 && b == 5).then_some(())
    });
    let svca_ip = ns.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=svca",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    let before = by_version(&c, &svca_ip);
    assert_eq!(pay(&ns, 100), (100, 50, 50), "the 50/50 split of 100 calls");
    // svca's sidecar counts them by destination version, as Prometheus
    // would scrape them (its metrics port on the pod's address).
    let after = by_version(&c, &svca_ip);
    let diff = |v: &str| after.get(v).unwrap_or(&0) - before.get(v).unwrap_or(&0);
    assert_eq!(
        (diff("v0.1"), diff("v0.2")),
        (50, 50),
        "{before:?} → {after:?}"
    );

    // Step 4: replaced by the 100 % rule while 300 calls flow at 100/s:
    // none fails, and then every call goes to v0.2.
    let all = walk_file("route-rules-svcb-v0.2-100.yaml");
    let mut load = Load::start(&c, 300);
    // The change lands while the load flows: after its first 50 answers.
    load.wait_calls(50);
    let (code, out) = meshctl(&c, &["replace", "-f", all.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    let (calls, failed) = load.finish();
    assert_eq!(
        (calls, failed),
        (300, vec![]),
        "the load during the replace"
    );
    eventually("v0.2 serves every call", Duration::from_secs(15), || {
        (pay(&ns, 10) == (10, 0, 10)).then_some(())
    });
    assert_eq!(pay(&ns, 100), (100, 0, 100), "the 100 % rule");

    // Rolling updates with traffic flowing (Istio users' most reported
    // failure): with no route rule both versions serve; each Deployment is
    // restarted, and v0.2 scaled from 2 to 0 to 2, while svca's client
    // calls at 100/s. Not one call fails.
    let (code, out) = meshctl(&c, &["delete", "-f", all.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    ns.kubectl(&["scale", "deployment/svcb-v0.2", "--replicas=2"]);
    ns.rollout("svcb-v0.2");
    eventually("both versions serve again", Duration::from_secs(15), || {
        let (ok, a, b) = pay(&ns, 20);
        (ok == 20 && a > 0 && b > 0).then_some(())
    });
    let load = Load::start(&c, 30000);
    for deployment in ["svcb", "svcb-v0.2"] {
        ns.kubectl(&["rollout", "restart", &format!("deployment/{deployment}")]);
        ns.rollout(deployment);
    }
    ns.kubectl(&["scale", "deployment/svcb-v0.2", "--replicas=0"]);
    ns.kubectl(&[
        "wait",
        "--for=delete",
        "pods",
        "-l",
        "app=svcb,version=v0.2",
        "--timeout=60s",
    ]);
    ns.kubectl(&["scale", "deployment/svcb-v0.2", "--replicas=2"]);
    ns.rollout("svcb-v0.2");
    let (calls, failed) = load.stop();
    assert!(
        calls > 500,
        "the load ran through the rollouts ({calls} calls)"
    );
    assert_eq!(failed, Vec::<String>::new(), "of {calls} calls");
    eprintln!(
        "rollouts: {calls} calls at 100/s through two restarts and a scale 2→0→2, none failed"
    );
    // The new pods of both versions serve.
    let (ok, a, b) = pay(&ns, 100);
    assert!(
        ok == 100 && a > 0 && b > 0,
        "after the rollouts: {ok} ok, {a} v0.1, {b} v0.2"
    );

    // The ingress gateway: callers outside the mesh (the node's own
    // network) reach svcb through the gateway's NodePort as
    // notify.example.com, routed by path and split by version.
    let (code, out) = meshctl(
        &c,
        &[
            "create",
            "-f",
            &walk_file("../gateway/ingress.yaml").to_string_lossy(),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let node_port = kubectl_ok(
        &c,
        &[
            "-n",
            "mesh-system",
            "get",
            "service/mesh-ingressgateway",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
        "",
    );
    let gateway = format!("{}:{}", mesh_cluster::NODE_IP, node_port.trim());
    let outside = |path: &str| http_request(&c, &gateway, "notify.example.com", path);
    eventually(
        "the gateway to route notify.example.com",
        Duration::from_secs(30),
        || {
            let (status, body) = outside("/beta/notify").ok()?;
            (status == 200 && body.contains("service_b:v0.2 ")).then_some(())
        },
    );
    for _ in 0..10 {
        let (status, body) = outside("/beta/notify").unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with("service_b:v0.2 "),
            "/beta/ is v0.2's: {body}"
        );
    }
    let mut versions = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let (status, body) = outside("/notify").unwrap();
        assert_eq!(status, 200, "{body}");
        let version = body
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        *versions.entry(version).or_insert(0) += 1;
    }
    assert_eq!(
        versions.len(),
        2,
        "both versions serve the gateway's calls: {versions:?}"
    );
    let (status, _) = http_request(&c, &gateway, "pay.example.com", "/pay").unwrap();
    assert_eq!(status, 404, "a host no VirtualService binds");

    // pilot's pod deleted and made again, then the bundle applied again
    // with a new tag (an upgrade of pilot and the webhooks), with the
    // same load flowing: the sidecars keep their last configuration,
    // reconnect, and not one call fails.
    let load = Load::start(&c, 30000);
    kubectl_ok(
        &c,
        &[
            "-n",
            "mesh-system",
            "delete",
            "pod",
            "-l",
            "app=mesh-pilot",
            "--wait=true",
        ],
        "",
    );
    rollout(&c, "mesh-system", "mesh-pilot", 120);
    synced(&c, 5);
    let next = tempfile::tempdir().unwrap();
    render(next.path(), &["tag=next"]);
    kubectl_ok(
        &c,
        &["apply", "-f", "-"],
        &std::fs::read_to_string(next.path().join("mesh.yaml")).unwrap(),
    );
    for deployment in CONTROL_PLANE {
        rollout(&c, "mesh-system", deployment, 120);
    }
    let image = kubectl_ok(
        &c,
        &[
            "-n",
            "mesh-system",
            "get",
            "deployment/mesh-pilot",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
        "",
    );
    assert_eq!(image, "mesh.local/mesh-pilot:next");
    synced(&c, 5);
    let (calls, failed) = load.stop();
    assert_eq!(failed, Vec::<String>::new(), "of {calls} calls");
    eprintln!("pilot restart and upgrade: {calls} calls at 100/s, none failed");

    // Every meshed call of the whole walk went through a sidecar.
    let (escaped, to_pilot) = escapes.counts();
    assert!(
        to_pilot > 0,
        "the count sees no pod's connection to a Service"
    );
    assert_eq!(
        escaped, 0,
        "connections to Service addresses escaped capture"
    );
    eprintln!("capture: 0 of the pods' connections to Services escaped ({to_pilot} to pilot seen)");

    // meshctl uninstall leaves nothing the bundles made.
    let (code, out) = meshctl(&c, &["uninstall"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("deleted CustomResourceDefinition/routerules.config.istio.io"),
        "{out}"
    );
    let left = mesh_objects(&c);
    assert!(
        left.trim().is_empty() || !left.contains('/'),
        "left behind: {left}"
    );
    drop(msgd);
}
