//! `meshctl demo`: walks the seed's rule steps on this machine.
//!
//! Today the walk covers what the mesh can do end to end so far: the seed's
//! rule files are validated and then created, replaced and read back in a
//! real local rule store. The traffic steps (egress refusal, the 50/50
//! split, metrics) join the walk when mesh-proxy and mesh-pilot land.

use std::process::ExitCode;

use anyhow::Context;
use mesh_pilot::store::{Change, LocalStore, Operation, RuleStore};
use mesh_rules::{Source, load};

const SAMPLES: [(&str, &str); 3] = [
    (
        "enable-svcb-engress-rule.yaml",
        include_str!("../../samples/istio-0.4-walk/enable-svcb-engress-rule.yaml"),
    ),
    (
        "route-rules-svcb-v0.2-50.yaml",
        include_str!("../../samples/istio-0.4-walk/route-rules-svcb-v0.2-50.yaml"),
    ),
    (
        "route-rules-svcb-v0.2-100.yaml",
        include_str!("../../samples/istio-0.4-walk/route-rules-svcb-v0.2-100.yaml"),
    ),
];

fn rule(i: usize) -> anyhow::Result<mesh_rules::Rule> {
    let (name, text) = SAMPLES[i];
    let mut loaded = load(&[Source { name, text }]).map_err(|d| anyhow::anyhow!("{d}"))?;
    Ok(loaded.rules.remove(0).value)
}

fn say(applied: &[mesh_pilot::store::Applied]) {
    for a in applied {
        let (verb, at) = match a.operation {
            Operation::Created => ("Created", "at"),
            Operation::Updated => ("Updated", "to"),
            Operation::Deleted => ("Deleted", "at"),
        };
        println!("      {verb} config {} {at} revision {}", a.key, a.revision);
    }
}

/// Runs the walk in a fresh temporary store.
pub async fn run(keep: bool) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("mesh-demo-")
        .tempdir()
        .context("cannot create the demo's store folder")?;
    let store = LocalStore::new(dir.path());
    println!(
        "mesh demo — the Istio 0.4 walk, rule steps (store: {})",
        dir.path().display()
    );

    println!("[1/4] validate the seed's rule files as written (config.istio.io/v1alpha2)");
    for (name, text) in SAMPLES {
        let loaded = load(&[Source { name, text }]).map_err(|d| anyhow::anyhow!("{d}"))?;
        for r in loaded.rules {
            println!("      {name}: {} is valid", r.value.key());
        }
    }

    println!("[2/4] meshctl create -f enable-svcb-engress-rule.yaml  (open svcb -> msgd:9997)");
    say(&store.apply(vec![Change::Create(rule(0)?)]).await?);

    println!("[3/4] meshctl create -f route-rules-svcb-v0.2-50.yaml  (svcb v0.1/v0.2 at 50/50)");
    say(&store.apply(vec![Change::Create(rule(1)?)]).await?);

    println!("[4/4] meshctl replace -f route-rules-svcb-v0.2-100.yaml  (all of svcb to v0.2)");
    say(&store.apply(vec![Change::Replace(rule(2)?)]).await?);

    let snap = store.snapshot().await?;
    println!("      the store now holds, at revision {}:", snap.revision);
    for (key, s) in &snap.rules {
        println!("        {key}  (revision {})", s.revision);
    }
    println!(
        "Traffic steps (egress refusal, the per-request split, metrics) join this walk with mesh-proxy and mesh-pilot."
    );
    if keep {
        let path = dir.keep();
        println!("Store kept: meshctl --store {} get all", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
