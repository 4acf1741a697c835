//! `mesh-inject`: serves sidecar injection as a Kubernetes mutating
//! admission webhook over HTTPS.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use mesh_inject::InjectConfig;
use mesh_inject::webhook::{INJECT_PATH, serve, tls_config};

/// Serve the sidecar-injection webhook.
#[derive(Parser)]
#[command(name = "mesh-inject", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9443")]
    listen: String,
    /// Serving certificate chain (PEM): from mesh-ca, or the install bundle's Secret.
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// Serving key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
    /// Mesh configuration (YAML, or the mesh ConfigMap); defaults when absent.
    #[arg(
        long = "mesh-config",
        visible_alias = "inject-config",
        value_name = "FILE"
    )]
    mesh_config: Option<PathBuf>,
}

fn read(p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    mesh_runtime::log::init().context("MESH_LOG")?;
    let cfg = match &args.mesh_config {
        Some(p) => InjectConfig::from_yaml(
            &p.display().to_string(),
            &String::from_utf8_lossy(&read(p)?),
        )
        .map_err(anyhow::Error::msg)?,
        None => InjectConfig::default(),
    };
    let tls =
        tls_config(&read(&args.tls_cert)?, &read(&args.tls_key)?).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // The readiness line: tests and supervisors wait for it.
    tracing::info!(
        "mesh-inject listening on https://{}{INJECT_PATH}",
        listener.local_addr()?
    );
    tokio::select! {
        r = serve(listener, tls, cfg) => r.context("webhook server failed"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
