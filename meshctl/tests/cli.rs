//! meshctl as a user runs it: real processes, a real store folder.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use predicates::prelude::*;

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/istio-0.4-walk")
}

fn meshctl(store: &Path) -> Command {
    let mut c = Command::cargo_bin("meshctl").unwrap();
    c.env("MESH_STORE", store).env_remove("XDG_STATE_HOME");
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn store_bytes(store: &Path) -> Option<Vec<u8>> {
    std::fs::read(store.join("rules.json")).ok()
}

fn get_json(store: &Path, args: &[&str]) -> serde_json::Value {
    let out = meshctl(store)
        .arg("get")
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn revision(v: &serde_json::Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn validate_accepts_the_seed_folder() {
    let dir = tempfile::tempdir().unwrap();
    meshctl(dir.path())
        .args(["validate", "-f"])
        .arg(samples())
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "route-rules-svcb-v0.2-50.yaml: route-rule/default/route-rules-svcb is valid",
        ))
        .stdout(predicate::str::contains(
            "9 file(s): 6 rule(s) valid, 5 other object(s) skipped",
        ));
    assert!(store_bytes(dir.path()).is_none(), "validate must not write");
}

#[test]
fn validate_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.json");
    std::fs::write(
        &a,
        "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata:\n  name: r\nspec:\n  destination:\n    name: svcb\n  route:\n  - labels: {version: v0.1}\n    weight: 60\n  - labels: {version: v0.2}\n    weight: 60\n",
    )
    .unwrap();
    std::fs::write(
        &b,
        "{\"apiVersion\": \"config.istio.io/v1alpha2\", \"kind\": \"QuotaSpec\"}",
    )
    .unwrap();
    let out = meshctl(dir.path())
        .args(["validate", "-f"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:8:3: document 1: spec.route: weights sum to 120; they must sum to 100\n{}:1:52: document 1: kind: unknown kind `QuotaSpec` in config.istio.io/v1alpha2: allowed kinds are RouteRule, DestinationPolicy, EgressRule\n2 problem(s) in 2 file(s)\n",
        a.display(),
        b.display()
    );
    assert_eq!(err, expected);
}

#[test]
fn validate_reads_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(samples().join("enable-svcb-engress-rule.yaml")).unwrap();
    meshctl(dir.path())
        .args(["validate", "-f", "-"])
        .write_stdin(text)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "-: egress-rule/default/enable-svcb-engress-rule is valid",
        ));
    meshctl(dir.path())
        .args(["validate", "-f", "-"])
        .write_stdin("kind: [")
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("-:"));
}

#[test]
fn create_get_replace_get_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    meshctl(&store)
        .args(["create", "-f"])
        .arg(samples().join("route-rules-svcb-v0.2-50.yaml"))
        .assert()
        .success()
        .stdout("Created config route-rule/default/route-rules-svcb at revision 1\n");

    let first = get_json(&store, &["route-rule", "route-rules-svcb"]);
    assert_eq!(first["apiVersion"], "config.istio.io/v1alpha2");
    assert_eq!(first["spec"]["route"][0]["weight"], 50);
    assert_eq!(first["spec"]["route"][1]["labels"]["version"], "v0.2");
    let r1 = revision(&first);

    meshctl(&store)
        .args(["replace", "-f"])
        .arg(samples().join("route-rules-svcb-v0.2-100.yaml"))
        .assert()
        .success()
        .stdout("Updated config route-rule/default/route-rules-svcb to revision 2\n");

    let second = get_json(&store, &["routerules", "route-rules-svcb"]);
    let r2 = revision(&second);
    assert!(r2 > r1, "revisions must increase: {r1} then {r2}");
    assert_eq!(
        second["spec"]["route"],
        serde_json::json!([{"labels": {"version": "v0.2"}, "weight": 100}])
    );

    meshctl(&store)
        .args(["get", "route-rule"])
        .assert()
        .success()
        .stdout("KIND         NAME               NAMESPACE   REVISION\nroute-rule   route-rules-svcb   default     2\n");

    meshctl(&store)
        .args(["delete", "-f"])
        .arg(samples().join("route-rules-svcb-v0.2-100.yaml"))
        .assert()
        .success()
        .stdout("Deleted config route-rule/default/route-rules-svcb at revision 3\n");
    meshctl(&store)
        .args(["get", "route-rule", "route-rules-svcb"])
        .assert()
        .code(1)
        .stderr("Error: route-rule default/route-rules-svcb not found\n");
}

#[test]
fn get_yaml_output_can_be_replaced_back() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = samples().join("mesh");
    meshctl(dir.path())
        .args(["create", "-f"])
        .arg(mesh.join("enable-svcb-engress-rule.yaml"))
        .arg(mesh.join("route-rules-svcb-v0.2-50.yaml"))
        .assert()
        .success();
    let out = meshctl(dir.path())
        .args(["get", "all", "-o", "yaml"])
        .output()
        .unwrap();
    let yaml = stdout(&out);
    assert!(
        yaml.contains("apiVersion: config.mesh.dev/v1alpha1"),
        "{yaml}"
    );
    meshctl(dir.path())
        .args(["replace", "-f", "-"])
        .write_stdin(yaml.clone())
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Updated config egress-rule/default/enable-svcb-engress-rule",
        ));
    // The same YAML again is stale now: its resourceVersions are older than the store's.
    meshctl(dir.path())
        .args(["replace", "-f", "-"])
        .write_stdin(yaml)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("was changed by someone else"));
}

#[test]
fn refused_writes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    meshctl(&store)
        .args(["create", "-f"])
        .arg(samples().join("enable-svcb-engress-rule.yaml"))
        .assert()
        .success();
    let before = store_bytes(&store).unwrap();

    meshctl(&store)
        .args(["create", "-f"])
        .arg(samples().join("enable-svcb-engress-rule.yaml"))
        .assert()
        .code(1)
        .stderr("Error: egress-rule/default/enable-svcb-engress-rule already exists: use `replace` to change it; nothing was changed\n");
    meshctl(&store)
        .args(["replace", "-f"])
        .arg(samples().join("route-rules-svcb-v0.2-100.yaml"))
        .assert()
        .code(1)
        .stderr("Error: route-rule/default/route-rules-svcb does not exist: use `create` to add it; nothing was changed\n");
    meshctl(&store)
        .args(["delete", "route-rule", "nope"])
        .assert()
        .code(1)
        .stderr("Error: route-rule/default/nope does not exist: use `create` to add it; nothing was changed\n");

    // One good and one bad document: neither is written.
    let mixed = dir.path().join("mixed.yaml");
    let good = std::fs::read_to_string(samples().join("route-rules-svcb-v0.2-50.yaml")).unwrap();
    std::fs::write(
        &mixed,
        format!("{good}---\napiVersion: config.istio.io/v1alpha2\nkind: EgressRule\nmetadata:\n  name: bad\nspec:\n  destination:\n    service: msgd\n  ports:\n  - port: 99999\n    protocol: http\n"),
    )
    .unwrap();
    meshctl(&store)
        .args(["create", "-f"])
        .arg(&mixed)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "document 2: spec.ports[0].port: port 99999 is out of range: it must be between 1 and 65535",
        ))
        .stderr(predicate::str::contains("nothing was changed"));

    // Kubernetes objects are not rules: refused, naming the document.
    meshctl(&store)
        .args(["create", "-f"])
        .arg(samples().join("svca-v0.1.yaml"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "document 1: Deployment svca (extensions/v1beta1) is not a mesh rule: apply it with kubectl",
        ));

    assert_eq!(
        store_bytes(&store).unwrap(),
        before,
        "refused writes must leave the store as it was"
    );
}

#[test]
fn racing_writers_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (writers, per_writer) = (6, 5);
    let mut children = Vec::new();
    for w in 0..writers {
        for i in 0..per_writer {
            // One process per rule, so processes interleave on the store.
            let one = dir.path().join(format!("e-{w}-{i}.yaml"));
            std::fs::write(
                &one,
                format!(
                    "apiVersion: config.istio.io/v1alpha2\nkind: EgressRule\nmetadata:\n  name: e-{w}-{i}\nspec:\n  destination:\n    service: host{w}{i}.example.com\n  ports:\n  - port: 80\n    protocol: http\n"
                ),
            )
            .unwrap();
            let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("meshctl"))
                .env("MESH_STORE", &store)
                .args(["create", "-f"])
                .arg(&one)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            children.push(child);
        }
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let list = get_json(&store, &["egress-rule"]);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), writers * per_writer);
    let mut revs: Vec<u64> = items.iter().map(revision).collect();
    revs.sort();
    assert_eq!(
        revs,
        (1..=(writers * per_writer) as u64).collect::<Vec<_>>()
    );
}

#[test]
fn demo_walks_the_rule_steps() {
    let dir = tempfile::tempdir().unwrap();
    meshctl(dir.path())
        .args(["demo", "--rules-only"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Created config egress-rule/default/enable-svcb-engress-rule at revision 1",
        ))
        .stdout(predicate::str::contains(
            "Created config route-rule/default/route-rules-svcb at revision 2",
        ))
        .stdout(predicate::str::contains(
            "Updated config route-rule/default/route-rules-svcb to revision 3",
        ));
}

/// `meshctl convert`: the seed's rules as today's kinds (the IP egress
/// listed as something Istio says differently, exit 2), today's kinds and
/// an HTTPRoute as 0.4 rules (exit 0), whose output `validate` accepts.
#[test]
fn convert_writes_rules_in_the_other_api() {
    let dir = tempfile::tempdir().unwrap();
    let seed = samples();
    let out = meshctl(dir.path())
        .args(["convert", "-f"])
        .arg(seed.join("route-rules-svcb-v0.2-50.yaml"))
        .arg(seed.join("enable-svcb-engress-rule.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    for want in [
        "kind: VirtualService",
        "kind: DestinationRule",
        "kind: ServiceEntry",
        "subset: v0-2",
        "weight: 50",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("egress-rule/default/enable-svcb-engress-rule: spec.destination.service: cannot be expressed: an address as a host"),
        "{err}"
    );
    // Back: the output is valid input, and today's kinds become 0.4 rules.
    let today = dir.path().join("today.yaml");
    std::fs::write(&today, &text).unwrap();
    meshctl(dir.path())
        .args(["validate", "-f"])
        .arg(&today)
        .assert()
        .success();
    let gateway =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/gateway-api/split-services.yaml");
    let out = meshctl(dir.path())
        .args(["convert", "--to", "0.4", "-f"])
        .arg(&today)
        .arg(&gateway)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert_eq!(text.matches("kind: RouteRule").count(), 3, "{text}");
    assert!(
        text.contains("apiVersion: config.istio.io/v1alpha2"),
        "{text}"
    );
    let old = dir.path().join("old.yaml");
    std::fs::write(&old, &text).unwrap();
    meshctl(dir.path())
        .args(["validate", "-f"])
        .arg(&old)
        .assert()
        .success();
}

/// `meshctl dashboard` prints where each page is and contacts nothing.
#[test]
fn dashboard_prints_the_urls() {
    let out = Command::cargo_bin("meshctl")
        .unwrap()
        .arg("dashboard")
        .env("MESH_PROMETHEUS", "127.0.0.1:19090")
        .env("MESH_GRAFANA", "127.0.0.1:13000")
        .env("MESH_TRACING_UI", "127.0.0.1:16686")
        .env("MESH_PILOT_DEBUG", "127.0.0.1:15014")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    for want in [
        "http://127.0.0.1:19090/graph",
        "http://127.0.0.1:13000/d/mesh-overview",
        "http://127.0.0.1:13000/d/mesh-service",
        "http://127.0.0.1:13000/d/mesh-workload",
        "http://127.0.0.1:16686/search",
        "http://127.0.0.1:15014/metrics",
        "meshctl graph --prometheus 127.0.0.1:19090 -o svg",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

/// `meshctl graph` needs a source, and says which one did not answer.
#[test]
fn graph_names_what_it_could_not_read() {
    let out = Command::cargo_bin("meshctl")
        .unwrap()
        .arg("graph")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prometheus"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = Command::cargo_bin("meshctl")
        .unwrap()
        .args(["graph", "--sidecar", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot reach {addr}")), "{err}");
}
