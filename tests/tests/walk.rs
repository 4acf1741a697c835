//! The seed's walk end to end, as root, in network-namespace pods with
//! real capture, pilot, mesh-proxy sidecars and the sample services — and
//! the same walk on loopback, as a user without root gets it. The
//! expectations live with the walk ([`walk::Report::checks`]) so that
//! `meshctl demo` shows the same verdicts.

use mesh_testbed::mesh::Mesh;
use mesh_testbed::walk;

fn walk_holds(mut mesh: Mesh, checks: usize) {
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
    assert_eq!(report.checks().len(), checks);
}

#[test]
fn the_seed_walk() {
    walk_holds(Mesh::new(), 10);
}

/// Pods are loopback addresses, sidecars are used explicitly
/// (INTERCEPTION_MODE NONE), same pilot, rules and apps — what `meshctl
/// demo` runs for a user without root. Nothing is captured, so there is no
/// escape count to check.
#[test]
fn the_seed_walk_on_loopback() {
    walk_holds(Mesh::loopback(), 9);
}
