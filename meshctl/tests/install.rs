//! `meshctl install`: the committed bundles are its output, each object
//! passes the real Kubernetes schema check (`kubernetes-validate`), the
//! Prometheus configuration passes upstream `promtool` (with Kubernetes discovery), Grafana gets exactly the
//! dashboards in the repository.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Renders into a fresh folder; returns it and the files' paths.
fn render(extra: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let out = assert_cmd::Command::cargo_bin("meshctl")
        .unwrap()
        .arg("install")
        .args(extra)
        .arg("-o")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<PathBuf> = [dir.path().to_owned(), dir.path().join("addons")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    (dir, files)
}

fn documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[test]
fn the_committed_bundles_are_what_install_renders() {
    let (dir, files) = render(&[]);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "addons/grafana.yaml",
            "addons/prometheus.yaml",
            "addons/servicegraph.yaml",
            "addons/zipkin.yaml",
            "istio-api.yaml",
            "mesh.yaml",
        ]
    );
    for f in &files {
        let committed = repo()
            .join("install/kubernetes")
            .join(f.strip_prefix(dir.path()).unwrap());
        assert_eq!(
            std::fs::read_to_string(&committed).unwrap_or_default(),
            std::fs::read_to_string(f).unwrap(),
            "{} differs from `meshctl install`: run `meshctl install -o install/kubernetes`",
            committed.display()
        );
    }
}

#[test]
fn every_object_passes_the_kubernetes_schema() {
    let (_dir, files) = render(&[]);
    // Every Kubernetes release from 1.29 (native sidecars) to 1.37.
    for minor in 29..=37 {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", &format!("1.{minor}")])
            .args(&files)
            .output()
            .expect("kubernetes-validate is installed (scripts/test.sh does it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "Kubernetes 1.{minor}: {text}");
    }
    let kinds: Vec<String> = files
        .iter()
        .flat_map(|f| documents(f))
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "ClusterRole",
        "ServiceAccount",
        "CustomResourceDefinition",
        "Namespace",
        "ClusterRoleBinding",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    // Every container runs as non-root on a read-only root filesystem.
    for d in files.iter().flat_map(|f| documents(f)) {
        if d["kind"] != "Deployment" {
            continue;
        }
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{d}");
        for c in pod["containers"].as_array().unwrap() {
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{c}");
            assert_eq!(
                c["securityContext"]["capabilities"]["drop"][0], "ALL",
                "{c}"
            );
            assert!(
                c["readinessProbe"].is_object() && c["resources"]["requests"].is_object(),
                "{c}"
            );
        }
    }
}

#[test]
fn prometheus_config_passes_promtool() {
    let (dir, files) = render(&[]);
    let prometheus = files
        .iter()
        .find(|f| f.ends_with("prometheus.yaml"))
        .unwrap();
    let config = documents(prometheus)
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .unwrap();
    let yml = dir.path().join("prometheus.yml");
    std::fs::write(&yml, config["data"]["prometheus.yml"].as_str().unwrap()).unwrap();
    // Upstream's promtool: Debian's leaves Kubernetes discovery out.
    let promtool = std::env::var("MESH_PROMTOOL").expect(
        "MESH_PROMTOOL names promtool built by tests/prometheus/build.sh (scripts/test.sh sets it)",
    );
    let out = Command::new(promtool)
        .args(["check", "config", "--syntax-only"])
        .arg(&yml)
        .output()
        .expect("promtool runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn grafana_gets_the_repositorys_dashboards() {
    let (_dir, files) = render(&[]);
    let grafana = files.iter().find(|f| f.ends_with("grafana.yaml")).unwrap();
    let maps = documents(grafana);
    let dashboards = maps
        .iter()
        .find(|d| d["metadata"]["name"] == "grafana-dashboards")
        .unwrap();
    let data = dashboards["data"].as_object().unwrap();
    assert_eq!(data.len(), 3);
    for (name, json) in data {
        let file = repo()
            .join("install/kubernetes/addons/dashboards")
            .join(name);
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let got: serde_json::Value = serde_json::from_str(json.as_str().unwrap()).unwrap();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn set_changes_a_value_everywhere_and_refuses_unknown_ones() {
    let (_dir, files) = render(&[
        "--set",
        "namespace=observability",
        "--set",
        "prometheus.retention=2d",
    ]);
    for f in &files {
        for d in documents(f) {
            if let Some(ns) = d["metadata"]["namespace"].as_str() {
                assert_eq!(ns, "observability", "{}", f.display());
            }
        }
    }
    let text = std::fs::read_to_string(
        files
            .iter()
            .find(|f| f.ends_with("prometheus.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert!(text.contains("--storage.tsdb.retention.time=2d"));
    let out = assert_cmd::Command::cargo_bin("meshctl")
        .unwrap()
        .args(["install", "--set", "prometheus.imag=x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("there is no value `prometheus.imag`")
            && err.contains("prometheus.image (default"),
        "{err}"
    );
}
