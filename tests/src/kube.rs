//! Helpers for tests on a real cluster ([`mesh_cluster`]): the cluster of
//! one test ([`TestCluster`]), a mesh process inside its network
//! ([`InCluster`]), a namespace of the test's own, manifests applied to it with kube-rs (from a thread in
//! the cluster's network namespace), waiting for readiness and rollouts,
//! exec and logs through the cluster's kubectl. When the test fails, every
//! pod's logs and events are printed before the namespace goes.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use mesh_cluster::Cluster;
use mesh_cluster::images::Image;
use serde::Deserialize;

/// The Kubernetes binaries tests/k8s/build.sh made (`MESH_K8S_BIN`).
pub fn k8s_bin_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("MESH_K8S_BIN").expect(
        "MESH_K8S_BIN names the Kubernetes binaries: build them with tests/k8s/build.sh (scripts/test.sh does)",
    ))
}

/// A cluster of one test: up with `images` imported when made, down
/// (every process, mount, cgroup and file it made gone) when dropped, also
/// when the test fails.
pub struct TestCluster {
    cluster: Cluster,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Brings a cluster up and imports `images`.
    pub fn up(images: &[Image]) -> TestCluster {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix(&mesh_cluster::owned_prefix())
            .tempdir()
            .expect("a run folder");
        let opts = mesh_cluster::Up {
            run: dir.path().join("run"),
            bin: k8s_bin_dir(),
            node_program: crate::binary("meshctl").expect("meshctl"),
        };
        let cluster = Cluster::at(&opts.run);
        let tc = TestCluster { cluster, _dir: dir };
        mesh_cluster::up(&opts, &mut |step| eprintln!("cluster: {step}"))
            .unwrap_or_else(|e| panic!("cluster up: {e}"));
        mesh_cluster::images::import(&tc, images).unwrap_or_else(|e| panic!("images: {e}"));
        tc
    }

    /// The client image (`mesh.local/client:1`): `pause` to keep a pod
    /// running, and curl to exec.
    pub fn client_image() -> Image {
        let mut files = mesh_cluster::images::File::binary(&k8s_bin_dir().join("pause"), "/pause");
        files.extend(mesh_cluster::images::File::binary(
            Path::new("/usr/bin/curl"),
            "/usr/bin/curl",
        ));
        Image {
            name: "mesh.local/client:1".into(),
            files,
            entrypoint: vec!["/pause".into()],
        }
    }
}

impl Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Err(e) = mesh_cluster::down(&self.cluster.run) {
            eprintln!("cluster down: {e}");
        }
    }
}

/// A mesh process started inside a cluster's network namespace (as the
/// test's child, with the host's files); killed when dropped.
pub struct InCluster(Child);

impl InCluster {
    /// Starts the mesh binary `name` with `args` and waits until it logs
    /// `ready`.
    pub fn start(cluster: &Cluster, name: &str, args: &[&str]) -> InCluster {
        let program = crate::binary(name).unwrap_or_else(|e| panic!("{e}"));
        let mut child = cluster
            .in_network(|| {
                Command::new(&program)
                    .args(args)
                    .env(crate::LOG_ENV.0, crate::LOG_ENV.1)
                    .stdout(Stdio::piped())
                    .spawn()
            })
            .and_then(|spawned| {
                spawned.map_err(|e| mesh_cluster::Error::Setup(format!("start {name}: {e}")))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let mut lines = crate::Lines::new(child.stdout.take().expect("piped"));
        let this = InCluster(child);
        lines
            .wait_for("ready", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        lines.discard_rest();
        this
    }
}

impl InCluster {
    /// The process id (to pause it: `SIGSTOP`, `SIGCONT`).
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for InCluster {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The cluster-wide objects and namespaces the bundles label as the
/// mesh's (`kubectl get … -o name`; namespaced ones go with mesh-system).
pub fn mesh_objects(c: &Cluster) -> String {
    kubectl_ok(
        c,
        &[
            "get",
            "crd,clusterrole,clusterrolebinding,namespace,mutatingwebhookconfiguration,validatingwebhookconfiguration",
            "-l",
            "app.kubernetes.io/part-of=mesh",
            "-o",
            "name",
        ],
        "",
    )
}

/// `kubectl get pods -l SELECTOR -o jsonpath=JSONPATH` in `namespace`
/// (`{.items[*].status.podIP}`, or `json` for the whole list).
pub fn pods(c: &Cluster, namespace: &str, selector: &str, output: &str) -> String {
    let output = if output == "json" {
        output.to_owned()
    } else {
        format!("jsonpath={output}")
    };
    kubectl_ok(
        c,
        &[
            "-n", namespace, "get", "pods", "-l", selector, "-o", &output,
        ],
        "",
    )
}

/// An HTTP GET from inside the cluster's network (a debug endpoint of a
/// process started there): the body of a 200 answer, or why not.
pub fn http_get(cluster: &Cluster, address: &str, path: &str) -> Result<String, String> {
    match http_request(cluster, address, address, path)? {
        (200, body) => Ok(body),
        (status, _) => Err(format!("GET {path}: status {status}")),
    }
}

/// An HTTP/1.0 GET of `path` with `Host: host` to `address` from inside
/// the cluster's network (the node's own, as a caller outside the mesh):
/// the answer's status and body.
pub fn http_request(
    cluster: &Cluster,
    address: &str,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let answer = cluster
        .in_network(|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(address)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("GET {path}: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// A namespace for one test; deleted when dropped.
pub struct Namespace<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// Its name.
    pub name: String,
}

impl<'a> Namespace<'a> {
    /// Creates namespace `name`.
    pub fn create(cluster: &'a Cluster, name: &str) -> Namespace<'a> {
        cluster
            .run(&["kubectl", "create", "namespace", name])
            .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
        Namespace {
            cluster,
            name: name.to_owned(),
        }
    }

    /// kubectl in this namespace; its output, or the test fails with the
    /// command's error.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut full = vec!["kubectl", "-n", &self.name];
        full.extend_from_slice(args);
        self.cluster
            .run(&full)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// Applies a YAML stream in this namespace with kube-rs (server-side
    /// apply; each object's kind found by discovery), from a thread inside
    /// the cluster's network namespace.
    pub fn apply(&self, yaml: &str) {
        let docs = yaml_documents(yaml);
        let kubeconfig = self.cluster.kubeconfig();
        let applied = self
            .cluster
            .in_network(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(server_side_apply(&kubeconfig, &self.name, docs))
            })
            .unwrap_or_else(|e| panic!("apply: {e}"));
        applied.unwrap_or_else(|e| panic!("apply: {e:#}\n{yaml}"));
    }

    /// Runs a client pod `name` from the local image `image` (its
    /// entrypoint keeps it running; tests `exec` into it) and waits until
    /// it is Ready.
    pub fn client_pod(&self, name: &str, image: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - {{name: {name}, image: \"{image}\", imagePullPolicy: Never}}\n"
        ));
        self.wait_ready(name);
    }

    /// Waits until pod `pod` is Ready.
    pub fn wait_ready(&self, pod: &str) {
        self.kubectl(&[
            "wait",
            &format!("pod/{pod}"),
            "--for=condition=Ready",
            "--timeout=60s",
        ]);
    }

    /// Waits until deployment `name` has rolled out.
    pub fn rollout(&self, name: &str) {
        self.kubectl(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=60s",
        ]);
    }

    /// Runs `cmd` in pod `pod` (its first container); its output.
    pub fn exec(&self, pod: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        self.kubectl(&args)
    }

    /// Pod `pod`'s log (its first container).
    pub fn logs(&self, pod: &str) -> String {
        self.kubectl(&["logs", pod])
    }

    /// A jsonpath field of an object (`pod/server`, `{.status.podIP}`).
    pub fn field(&self, object: &str, jsonpath: &str) -> String {
        self.kubectl(&["get", object, "-o", &format!("jsonpath={jsonpath}")])
    }

    /// Every pod's state, events and logs, for a failure message.
    pub fn dump(&self) -> String {
        let run = |args: &[&str]| {
            let mut full = vec!["kubectl", "-n", &self.name];
            full.extend_from_slice(args);
            self.cluster.run(&full).unwrap_or_else(|e| e.to_string())
        };
        let mut out = run(&["get", "pods", "-o", "wide"]);
        out += &run(&["get", "events", "--sort-by=.lastTimestamp"]);
        let pods = run(&["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"]);
        for pod in pods.split_whitespace() {
            out += &format!("--- logs of {pod}\n");
            out += &run(&["logs", pod, "--all-containers", "--prefix"]);
        }
        out
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("namespace {} at the failure:\n{}", self.name, self.dump());
        }
        let _ = self
            .cluster
            .run(&["kubectl", "delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// The documents of a YAML stream, as JSON values (empty ones dropped).
fn yaml_documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_json::Value::deserialize(d).unwrap_or_else(|e| panic!("YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Applies each object as its owner "mesh-tests", namespaced objects in
/// `namespace`.
async fn server_side_apply(
    kubeconfig: &Path,
    namespace: &str,
    docs: Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let discovery = Discovery::new(client.clone()).run().await?;
    for doc in docs {
        let obj: DynamicObject = serde_json::from_value(doc)?;
        let types = obj
            .types
            .as_ref()
            .context("an object without apiVersion and kind")?;
        let gvk = GroupVersionKind::try_from(types)?;
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .with_context(|| format!("the cluster does not serve {gvk:?}"))?;
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            Api::namespaced_with(client.clone(), namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let name = obj
            .metadata
            .name
            .clone()
            .context("an object without a name")?;
        api.patch(
            &name,
            &PatchParams::apply("mesh-tests").force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("{} {name}", types.kind))?;
    }
    Ok(())
}

/// kubectl inside the cluster with `input` on stdin: (success, stdout and
/// stderr).
pub fn kubectl(c: &Cluster, args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut full = vec!["kubectl"];
    full.extend_from_slice(args);
    let mut child = c
        .command(&full)
        .unwrap()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// [`kubectl`] that must succeed; its output.
pub fn kubectl_ok(c: &Cluster, args: &[&str], input: &str) -> String {
    let (ok, text) = kubectl(c, args, input);
    assert!(ok, "kubectl {}: {text}", args.join(" "));
    text
}

/// The bundles `meshctl install` renders into `dir` for the tests' images
/// (`mesh.local/…:test`), with more `KEY=VALUE` settings.
pub fn render(dir: &Path, set: &[&str]) {
    let meshctl = crate::binary("meshctl").unwrap();
    let mut cmd = Command::new(meshctl);
    cmd.args(["install", "--set", "hub=mesh.local", "--set", "tag=test"]);
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.arg("-o").arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The documents of a YAML stream (empty ones dropped).
pub fn documents(text: &str) -> Vec<serde_json::Value> {
    yaml_documents(text)
}

/// `meshctl ARGS` run against the cluster (its admin kubeconfig, from the
/// cluster's network namespace), as a user with KUBECONFIG set runs it.
pub fn meshctl(c: &Cluster, args: &[&str]) -> std::process::Output {
    let program = crate::binary("meshctl").unwrap();
    c.in_network(|| {
        Command::new(&program)
            .args(args)
            .env("KUBECONFIG", c.kubeconfig())
            .env_remove("MESH_STORE")
            .output()
    })
    .unwrap()
    .unwrap()
}

/// Waits until Deployment `deployment` of `namespace` has rolled out,
/// failing the test after `timeout_s` seconds.
pub fn rollout(c: &Cluster, namespace: &str, deployment: &str, timeout_s: u32) {
    kubectl_ok(
        c,
        &[
            "-n",
            namespace,
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            &format!("--timeout={timeout_s}s"),
        ],
        "",
    );
}
