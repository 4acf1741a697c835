//! `meshctl kube-inject` as a user runs it.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/istio-0.4-walk")
}

fn meshctl() -> Command {
    Command::cargo_bin("meshctl").unwrap()
}

fn docs(yaml: &[u8]) -> Vec<serde_json::Value> {
    mesh_rules::yaml::read_stream(std::str::from_utf8(yaml).unwrap())
        .unwrap()
        .into_iter()
        .map(|(_, d)| d.value)
        .collect()
}

#[test]
fn seed_manifest_keeps_its_api_version_and_warns() {
    let out = meshctl()
        .args(["kube-inject", "-f"])
        .arg(samples().join("svca-v0.1.yaml"))
        .assert()
        .success()
        .stderr(
            "Warning: Deployment/svca: extensions/v1beta1 Deployment is not served by Kubernetes 1.16 and newer; use apps/v1 (meshctl kube-inject --upgrade-apis converts it)\n",
        )
        .get_output()
        .stdout
        .clone();
    let d = docs(&out);
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["apiVersion"], "extensions/v1beta1");
    let containers = &d[0]["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[1]["name"], "mesh-proxy");
    assert_eq!(containers[1]["securityContext"]["runAsUser"], 1337);
    assert_eq!(d[1]["kind"], "Service");
}

#[test]
fn upgrade_apis_converts_to_apps_v1_with_a_selector() {
    let out = meshctl()
        .args(["kube-inject", "--upgrade-apis", "-f"])
        .arg(samples().join("svcb-v0.2.yaml"))
        .assert()
        .success()
        .stderr("Warning: Deployment/svcb-v0.2: converted from extensions/v1beta1 to apps/v1\n")
        .get_output()
        .stdout
        .clone();
    let d = docs(&out);
    assert_eq!(d[0]["apiVersion"], "apps/v1");
    assert_eq!(
        d[0]["spec"]["selector"],
        serde_json::json!({"matchLabels": {"app": "svcb", "version": "v0.2"}})
    );
}

#[test]
fn a_bad_document_fails_the_whole_file_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("app.yaml");
    let good = std::fs::read_to_string(samples().join("svcb-v0.2.yaml")).unwrap();
    std::fs::write(
        &input,
        format!("{good}---\napiVersion: apps/v2\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      containers: []\n"),
    )
    .unwrap();
    let output = dir.path().join("out.yaml");
    meshctl()
        .args(["kube-inject", "-f"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .assert()
        .code(1)
        .stderr(format!(
            "{}:18:13: document 2: apiVersion: `apps/v2` is not an API version of Deployment: use apps/v1 or extensions/v1beta1 or apps/v1beta1 or apps/v1beta2\nError: 1 problem(s) found; nothing was written\n",
            input.display()
        ));
    assert!(!output.exists(), "nothing may be written on error");
}

#[test]
fn empty_pod_is_refused_with_its_field() {
    meshctl()
        .args(["kube-inject", "-f", "-"])
        .write_stdin("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: []\n")
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with(
            "-:6:3: document 1: spec.containers: a pod needs at least one container\n",
        ));
}

#[test]
fn mesh_config_from_a_config_map_and_native_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let cm = dir.path().join("mesh-cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: mesh\n  namespace: mesh-system\ndata:\n  mesh: |\n    hub: registry.example.com/mesh\n    tag: \"2.0\"\n    pilotAddress: pilot.example:15010\n    excludeOutboundCidrs: [169.254.169.254/32]\n",
    )
    .unwrap();
    let out = meshctl()
        .args(["kube-inject", "--native-sidecar", "--mesh-config"])
        .arg(&cm)
        .arg("-f")
        .arg(samples().join("svca-v0.1.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = docs(&out.stdout);
    let spec = &d[0]["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"].as_array().unwrap().len(),
        1,
        "native sidecars are init containers"
    );
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["name"], "mesh-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["image"], "registry.example.com/mesh/mesh-proxy:2.0");
    assert_eq!(proxy["args"][2], "pilot.example:15010");
    let init_args: Vec<&str> = spec["initContainers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        init_args
            .windows(2)
            .any(|w| w == ["--exclude-outbound-cidrs", "169.254.169.254/32"]),
        "{init_args:?}"
    );

    std::fs::write(&cm, "hub: x\npilotAdress: typo:15010\n").unwrap();
    meshctl()
        .args(["kube-inject", "--mesh-config"])
        .arg(&cm)
        .args(["-f", "-"])
        .write_stdin("")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            ":2:1: pilotAdress: unknown field `pilotAdress`, expected one of",
        ));
}
