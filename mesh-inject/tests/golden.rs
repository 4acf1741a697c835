//! Golden tests: every workload kind, the seed's manifests, and the
//! options, injected and compared with reviewed output files. Set
//! `MESH_BLESS=1` to rewrite the expected files after a deliberate change.

use std::path::{Path, PathBuf};

use mesh_inject::{MeshSettings, Options, SidecarMode, inject_manifests};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Injects `name.in.yaml` and compares with `name[.variant].out.yaml`.
fn check(name: &str, variant: Option<&str>, cfg: &MeshSettings, opts: &Options) {
    let dir = golden_dir();
    let input = dir.join(format!("{name}.in.yaml"));
    let text = std::fs::read_to_string(&input).unwrap();
    let out = inject_manifests(&input.display().to_string(), &text, cfg, opts)
        .unwrap_or_else(|d| panic!("{d}"));
    let expected_path = match variant {
        Some(v) => dir.join(format!("{name}.{v}.out.yaml")),
        None => dir.join(format!("{name}.out.yaml")),
    };
    if std::env::var_os("MESH_BLESS").is_some() {
        std::fs::write(&expected_path, &out.yaml).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with MESH_BLESS=1 to create it)",
            expected_path.display()
        )
    });
    assert_eq!(
        out.yaml,
        expected,
        "{} differs from its golden file",
        input.display()
    );
}

fn plain(name: &str) {
    check(name, None, &MeshSettings::default(), &Options::default());
}

fn upgraded(name: &str) {
    check(
        name,
        Some("upgraded"),
        &MeshSettings::default(),
        &Options { upgrade_apis: true },
    );
}

#[test]
fn pod() {
    plain("pod");
}

#[test]
fn deployments() {
    plain("deployment");
    for old in ["deployment-apps-v1beta1", "deployment-apps-v1beta2"] {
        plain(old);
        upgraded(old);
    }
}

#[test]
fn other_workloads() {
    for name in [
        "statefulset",
        "daemonset",
        "replicaset",
        "replicationcontroller",
        "job",
        "cronjob",
    ] {
        plain(name);
    }
}

#[test]
fn list() {
    plain("list");
}

#[test]
fn skipped_and_passed_through() {
    plain("skipped");
    let text = std::fs::read_to_string(golden_dir().join("skipped.in.yaml")).unwrap();
    let out = inject_manifests(
        "skipped",
        &text,
        &MeshSettings::default(),
        &Options::default(),
    )
    .unwrap();
    let input_docs: Vec<serde_json::Value> = mesh_rules::yaml::read_stream(&text)
        .unwrap()
        .into_iter()
        .map(|(_, d)| d.value)
        .collect();
    assert_eq!(
        out.documents, input_docs,
        "skipped documents must come out unchanged"
    );
}

#[test]
fn unknown_fields_are_kept() {
    plain("unknown-fields");
}

#[test]
fn native_sidecar() {
    let cfg = MeshSettings {
        sidecar_mode: SidecarMode::Native,
        ..MeshSettings::default()
    };
    check("deployment", Some("native"), &cfg, &Options::default());
}

#[test]
fn seed_manifests() {
    for name in ["seed-svca-v0.1", "seed-svcb-v0.1", "seed-svcb-v0.2"] {
        plain(name);
        upgraded(name);
    }
}

#[test]
fn seed_inputs_are_the_samples() {
    for name in ["svca-v0.1", "svcb-v0.1", "svcb-v0.2"] {
        let sample = golden_dir().join(format!("../../../samples/istio-0.4-walk/{name}.yaml"));
        let copy = golden_dir().join(format!("seed-{name}.in.yaml"));
        assert_eq!(
            std::fs::read(sample).unwrap(),
            std::fs::read(copy).unwrap(),
            "{name}"
        );
    }
}
