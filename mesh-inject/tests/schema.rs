//! Every manifest the injector writes must pass Kubernetes' own OpenAPI
//! schema, strictly (no unknown fields), for every supported version. The
//! validator is the real one: `kubernetes-validate` from PyPI.

use std::path::Path;
use std::process::Command;

/// Kubernetes versions the mesh supports.
const VERSIONS: [&str; 9] = [
    "1.29", "1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37",
];

/// Outputs that are expected to fail the schema, and why.
const NOT_VALIDATED: [(&str, &str); 6] = [
    (
        "deployment-apps-v1beta1.out.yaml",
        "apps/v1beta1 is not served; the .upgraded variant is validated",
    ),
    (
        "deployment-apps-v1beta2.out.yaml",
        "apps/v1beta2 is not served; the .upgraded variant is validated",
    ),
    (
        "seed-svca-v0.1.out.yaml",
        "extensions/v1beta1 is not served; the .upgraded variant is validated",
    ),
    (
        "seed-svcb-v0.1.out.yaml",
        "extensions/v1beta1 is not served; the .upgraded variant is validated",
    ),
    (
        "seed-svcb-v0.2.out.yaml",
        "extensions/v1beta1 is not served; the .upgraded variant is validated",
    ),
    (
        "unknown-fields.out.yaml",
        "it carries fields Kubernetes does not know, on purpose",
    ),
];

#[test]
fn injected_manifests_pass_the_kubernetes_schema_strictly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut docs = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".out.yaml") && !NOT_VALIDATED.iter().any(|(x, _)| x == n))
        .collect();
    names.sort();
    assert_eq!(names.len(), 16, "golden outputs to validate: {names:?}");
    for name in &names {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        for (_, doc) in mesh_rules::yaml::read_stream(&text).unwrap() {
            // The validator has no schema for List; check its items.
            match doc.value.get("kind").and_then(|k| k.as_str()) {
                Some("List") => docs.extend(doc.value["items"].as_array().unwrap().iter().cloned()),
                _ => docs.push(doc.value),
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let all = tmp.path().join("all.yaml");
    let yaml: Vec<String> = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    std::fs::write(&all, yaml.join("---\n")).unwrap();

    for version in VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", version])
            .arg(&all)
            .output()
            .expect("kubernetes-validate is installed (pip install kubernetes-validate; scripts/test.sh does it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let passed = text
            .lines()
            .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
            .count();
        let other: Vec<_> = text
            .lines()
            .filter(|l| !(l.starts_with("INFO") && l.contains(" passed ")))
            .collect();
        assert!(
            out.status.success() && other.is_empty(),
            "Kubernetes {version}:\n{}",
            other.join("\n")
        );
        assert_eq!(
            passed,
            docs.len(),
            "Kubernetes {version}: every document must be checked:\n{text}"
        );
    }
}
