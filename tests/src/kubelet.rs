//! Pods from Kubernetes pod templates, started the way a kubelet would
//! start them, in the network-namespace world: the injected init
//! container's arguments run as they are, the sidecar runs with exactly
//! the arguments and environment its container spec gives (downward-API
//! values filled in as the kubelet fills them) and sees its volumes at
//! their mount paths, in a mount namespace of its own. So a test proves
//! what `meshctl kube-inject` writes, not what the testbed would pass.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use mesh_local::mesh::{Mesh, Pod, Sidecar};
use mesh_local::{Lines, binary};

/// A pod started from a template.
pub struct KubePod {
    /// The pod.
    pub pod: Pod,
    /// The pod's name (what `metadata.name` resolves to).
    pub name: String,
    /// The downward-API labels file the sidecar reads, on this machine.
    pub labels_file: PathBuf,
}

/// The downward-API file form of labels: `key="value"` lines, sorted.
pub fn labels_file_text(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v:?}\n")).collect()
}

fn entry<'a>(spec: &'a Value, list: &str, name: &str) -> &'a Value {
    spec[list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry `{name}` in {spec}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// Single-quotes `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What a kubelet does with a pod template, on a [`Mesh`].
pub trait Kubelet {
    /// Starts pod `name` of an injected pod `template` (`metadata` and
    /// `spec`): runs the `mesh-init` container's arguments, then the
    /// `mesh-proxy` container's, and waits until the sidecar serves.
    fn kube_pod(&mut self, name: &str, template: &Value) -> KubePod;
}

impl Kubelet for Mesh {
    fn kube_pod(&mut self, name: &str, template: &Value) -> KubePod {
        let (ns, ip) = self.world.host(name).unwrap();
        let spec = &template["spec"];
        let labels: BTreeMap<String, String> =
            serde_json::from_value(template["metadata"]["labels"].clone()).unwrap_or_default();
        let proxy = binary("mesh-proxy").unwrap();
        let proxy = proxy.to_str().unwrap();
        // The init container, as root with its capabilities.
        let init = entry(spec, "initContainers", "mesh-init");
        let mut args = vec![proxy.to_owned()];
        args.extend(strings(&init["args"]));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = self.world.exec(&ns, &args);
        assert_eq!(code, 0, "mesh-init failed in {ns}: {out}");
        // The sidecar: its environment as the kubelet resolves it.
        let sidecar = entry(spec, "containers", "mesh-proxy");
        let service_account = spec["serviceAccountName"].as_str().unwrap_or("default");
        let env: Vec<(String, String)> = sidecar["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    None => e["value"].as_str().unwrap_or_default().to_owned(),
                    Some("metadata.name") => name.to_owned(),
                    Some("metadata.namespace") => "default".to_owned(),
                    Some("status.podIP") => ip.to_string(),
                    Some("spec.serviceAccountName") => service_account.to_owned(),
                    Some(other) => panic!("the kubelet emulation does not know {other}"),
                };
                (e["name"].as_str().unwrap().to_owned(), value)
            })
            .collect();
        let (mounts, labels_file) = volumes(self, name, spec, sidecar, &labels);
        let uid = sidecar["securityContext"]["runAsUser"]
            .as_i64()
            .unwrap_or(0);
        let mut script = String::from("set -e; mount -t tmpfs tmpfs /run;");
        for (path, host) in &mounts {
            script += &format!(
                " mkdir -p {p}; mount --bind {h} {p};",
                p = quote(path),
                h = quote(&host.display().to_string())
            );
        }
        script += " exec env";
        for (k, v) in &env {
            script += &format!(" {}", quote(&format!("{k}={v}")));
        }
        script += &format!(" setpriv --reuid={uid} --regid={uid} --clear-groups {proxy}");
        for a in strings(&sidecar["args"]) {
            script += &format!(" {}", quote(&a));
        }
        let cmd = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ];
        let child = self.world.spawn(&ns, None, &cmd, Stdio::piped()).unwrap();
        let mut lines = Lines::new(child.stdout.take().unwrap());
        lines.wait_for("ready", Duration::from_secs(30)).unwrap();
        lines.discard_rest();
        let node_id = format!("sidecar~{ip}~{name}.default~default.svc.cluster.local");
        let pod = Pod {
            ns,
            ip,
            node_id,
            sidecar: Some(Sidecar::MeshProxy),
            app_ip: None,
        };
        KubePod {
            pod,
            name: name.to_owned(),
            labels_file,
        }
    }
}

/// The sidecar's volume mounts as (mount path, folder on this
/// machine), parents first; downward-API files written as the kubelet
/// writes them. Returns them with the labels file.
fn volumes(
    mesh: &Mesh,
    name: &str,
    spec: &Value,
    sidecar: &Value,
    labels: &BTreeMap<String, String>,
) -> (Vec<(String, PathBuf)>, PathBuf) {
    let mut mounts = Vec::new();
    let mut labels_file = PathBuf::new();
    for m in sidecar["volumeMounts"].as_array().into_iter().flatten() {
        let vol_name = m["name"].as_str().unwrap();
        let vol = entry(spec, "volumes", vol_name);
        let host = mesh.dir.path().join(format!("{name}-{vol_name}"));
        make_dir(&host);
        for item in vol["downwardAPI"]["items"].as_array().into_iter().flatten() {
            let field = item["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
            assert_eq!(field, "metadata.labels", "the emulation writes labels only");
            let path = host.join(item["path"].as_str().unwrap());
            std::fs::write(&path, labels_file_text(labels)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            labels_file = path;
        }
        mounts.push((m["mountPath"].as_str().unwrap().to_owned(), host));
    }
    mounts.sort_by_key(|(p, _)| p.len());
    (mounts, labels_file)
}

fn make_dir(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Rewrites a labels file the way the kubelet updates a downward-API
/// volume (a new file swapped in whole).
pub fn relabel(file: &Path, labels: &BTreeMap<String, String>) {
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, labels_file_text(labels)).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}
