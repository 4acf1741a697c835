//! Leftovers of a killed run (namespaces named after a process that is
//! gone, and what still runs in them) are removed by `meshctl demo
//! --cleanup`; namespaces of live runs are left alone.

use std::process::Command;

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn leftovers_of_killed_runs_are_removed() {
    mesh_testbed::require_root();
    // A pid that is gone: a child that already exited.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = format!("m{}-0-node", gone.id());
    let live = mesh_testbed::netns::World::new().unwrap();
    assert!(
        Command::new("ip")
            .args(["netns", "add", &dead])
            .status()
            .unwrap()
            .success()
    );
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &dead, "sleep", "300"])
        .spawn()
        .unwrap();
    let (code, out) = {
        let o = Command::new(mesh_testbed::binary("meshctl").unwrap())
            .args(["demo", "--cleanup"])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("removed network namespace {dead}")),
        "{out}"
    );
    let list = namespaces();
    assert!(!list.contains(&dead), "{list}");
    assert!(
        list.contains(&live.node),
        "a live run's namespace was removed: {list}"
    );
    // The process that ran inside was killed.
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "{status:?}");
}
