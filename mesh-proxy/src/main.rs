//! `mesh-proxy`: the sidecar proxy.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_proto::envoy::config::bootstrap::v3::Bootstrap;
use mesh_proxy::config::Snapshot;
use mesh_proxy::server::{Options, start};
use mesh_rules::FieldPath;

/// The mesh's sidecar proxy.
#[derive(Parser)]
#[command(name = "mesh-proxy", version, about)]
struct Args {
    /// Envoy-style bootstrap (YAML or JSON) with `admin` and `static_resources`.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: PathBuf,
    /// Worker threads (default: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    drain_timeout: u64,
    /// Check the configuration and exit.
    #[arg(long)]
    validate: bool,
}

/// Reads a bootstrap file, naming file, line:column and field of any problem.
fn load(path: &PathBuf) -> anyhow::Result<(Snapshot, Option<std::net::SocketAddr>)> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
    let docs = mesh_rules::yaml::read_stream(&text)
        .map_err(|e| anyhow::anyhow!("{name}:{}: {}", e.position, e.message))?;
    let Some((_, doc)) = docs.first() else {
        anyhow::bail!("{name}: the file is empty");
    };
    let bootstrap: Bootstrap = mesh_proto::json::from_document(doc)
        .map_err(|e| anyhow::anyhow!("{name}:{}: {}: {}", e.position, e.path, e.message))?;
    Snapshot::from_bootstrap(&bootstrap).map_err(|e| {
        let pos = doc.locate(&FieldPath::parse(&e.path), true);
        anyhow::anyhow!("{name}:{pos}: {}: {}", e.path, e.message)
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (snapshot, admin) = match load(&args.config) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("Error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if args.validate {
        println!("{}: valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    let concurrency = args
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = Options {
        concurrency,
        drain_timeout: Duration::from_secs(args.drain_timeout),
    };
    let running = match start(snapshot, admin, opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for (name, addr) in &running.listeners {
        println!("listener {name} {addr}");
    }
    if let Some(a) = running.admin {
        println!("admin {a}");
    }
    // The readiness line: every socket is bound and accepting.
    println!("ready");
    let shared = running.shared.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
        shared.shutdown();
    });
    running.wait();
    ExitCode::SUCCESS
}
