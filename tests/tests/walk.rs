//! The seed's walk end to end, as root, in network-namespace pods with
//! real capture, pilot, mesh-proxy sidecars and the sample services — and
//! the same walk on loopback, as a user without root gets it. The
//! expectations live with the walk ([`walk::Report::checks`]) so that
//! `meshctl demo` shows the same verdicts.

use std::process::Command;

use mesh_testbed::mesh::{Mesh, Sidecar};
use mesh_testbed::walk;

fn walk_holds(mut mesh: Mesh, sidecar: Sidecar, checks: usize) {
    let report = walk::run(&mut mesh, sidecar, &mut |line| eprintln!("{line}")).unwrap();
    let failed: Vec<String> = report
        .checks()
        .into_iter()
        .filter(|c| !c.ok)
        .map(|c| c.what)
        .collect();
    assert!(
        failed.is_empty(),
        "the walk failed:\n{}\n{report:#?}",
        failed.join("\n")
    );
    assert_eq!(report.checks().len(), checks);
}

#[test]
fn the_seed_walk() {
    walk_holds(Mesh::new().unwrap(), Sidecar::MeshProxy, 11);
}

/// The same walk with an unmodified Envoy 1.40 in every pod, configured
/// only by pilot over ADS: pilot speaks xDS as Envoy understands it.
#[test]
fn the_seed_walk_with_envoy_sidecars() {
    walk_holds(Mesh::new().unwrap(), Sidecar::Envoy, 10);
}

/// `meshctl demo --loopback`, the product a user without root runs, as a
/// process: pods are loopback addresses, sidecars are used explicitly
/// (INTERCEPTION_MODE NONE), same pilot, rules and apps. Nothing is
/// captured, so there is no escape count to check. It finds its binaries
/// next to meshctl and builds nothing.
#[test]
fn meshctl_demo_on_loopback() {
    let out = Command::new(mesh_testbed::binary("meshctl").unwrap())
        .args(["demo", "--loopback"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("10 of 10 checks hold"), "{stdout}");
    assert!(!stdout.contains('✗'), "{stdout}");
    assert!(!stdout.contains("building"), "nothing is built: {stdout}");
}

/// Without its binaries the demo says which is missing and where it
/// looked, and exits non-zero; it does not panic or build anything.
#[test]
fn meshctl_demo_without_binaries_says_what_is_missing() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(mesh_testbed::binary("meshctl").unwrap())
        .args(["demo", "--loopback"])
        .env("MESH_BIN_DIR", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mesh-proxy is missing in") && stderr.contains("MESH_BIN_DIR"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
