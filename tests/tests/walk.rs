//! The seed's walk end to end, as root, in network-namespace pods with
//! real capture, pilot, mesh-proxy sidecars and the sample services. The
//! expectations live with the walk ([`walk::Report::checks`]) so that
//! `meshctl demo` shows the same verdicts.

use mesh_testbed::mesh::Mesh;
use mesh_testbed::walk;

#[test]
fn the_seed_walk() {
    let mut mesh = Mesh::new();
    let report = walk::run(&mut mesh, &mut |line| eprintln!("{line}"));
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
    assert_eq!(report.checks().len(), 10);
}

/// The same walk without root: pods are loopback addresses, sidecars are
/// used explicitly (INTERCEPTION_MODE NONE), same pilot, rules and apps —
/// what `meshctl demo` runs for a user without root.
#[test]
fn the_seed_walk_on_loopback() {
    let mut mesh = Mesh::loopback();
    let report = walk::run(&mut mesh, &mut |line| eprintln!("{line}"));
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
    assert_eq!(report.checks().len(), 9, "no capture, so no escape count");
}
