//! Helpers for tests on a real cluster ([`mesh_cluster`]): a namespace of
//! the test's own, manifests applied to it, waiting for readiness and
//! rollouts, exec and logs — through the cluster's own kubectl. When the
//! test fails, every pod's logs and events are printed before the
//! namespace goes.

use mesh_cluster::Cluster;

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

    /// Applies a YAML stream in this namespace.
    pub fn apply(&self, yaml: &str) {
        self.cluster
            .apply_in(Some(&self.name), yaml)
            .unwrap_or_else(|e| panic!("apply: {e}\n{yaml}"));
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
