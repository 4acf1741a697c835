//! `mesh-inject`: the mesh's admission webhooks over HTTPS — sidecar
//! injection (mutating, `/inject`) and rule validation (`/validate`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use mesh_inject::MeshSettings;
use mesh_inject::certs::{Manager, Settings};
use mesh_inject::webhook::{INJECT_PATH, serve, tls_config, tls_config_resolved};

/// Serve the sidecar-injection webhook.
#[derive(Parser)]
#[command(name = "mesh-inject", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9443")]
    listen: String,
    /// Serving certificate chain (PEM), from mesh-ca or any CA. Without
    /// it, `--kubernetes` makes and rotates one itself.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        required_unless_present = "kubernetes"
    )]
    tls_cert: Option<PathBuf>,
    /// Serving key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// In a cluster: the serving certificate is kept in a Secret of
    /// `POD_NAMESPACE` (made by the first replica, rotated at two thirds of
    /// its life) and its CA put into the webhook configurations.
    #[arg(long, conflicts_with = "tls_cert")]
    kubernetes: bool,
    /// The webhooks' Service (the certificate's names).
    #[arg(long, default_value = "mesh-inject", requires = "kubernetes")]
    service: String,
    /// The Secret holding the certificate.
    #[arg(long, default_value = "mesh-inject-tls", requires = "kubernetes")]
    secret: String,
    /// The MutatingWebhookConfiguration given the CA ("" for none).
    #[arg(long, default_value = "mesh-sidecar-injector", requires = "kubernetes")]
    mutating_webhook: String,
    /// The ValidatingWebhookConfiguration given the CA ("" for none).
    #[arg(long, default_value = "mesh-rule-validation", requires = "kubernetes")]
    validating_webhook: String,
    /// How long a certificate lives (it is replaced at two thirds).
    #[arg(long, default_value = "8760h", requires = "kubernetes", value_parser = validity)]
    cert_validity: std::time::Duration,
    /// Mesh configuration (YAML, or the mesh ConfigMap); defaults when absent.
    #[arg(
        long = "mesh-config",
        visible_alias = "inject-config",
        value_name = "FILE"
    )]
    mesh_config: Option<PathBuf>,
}

/// A duration as rules write them (`90s`, `8760h`).
fn validity(text: &str) -> Result<std::time::Duration, String> {
    mesh_rules::Duration::parse(text)
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

fn read(p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    mesh_runtime::log::init().context("MESH_LOG")?;
    let cfg = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(MeshSettings::default()));
    // The mesh ConfigMap is a volume the kubelet updates: followed, so a
    // change (a new proxy tag, say) reaches the next pod without a restart;
    // a bad change is logged and the last good configuration kept.
    let _follow = match &args.mesh_config {
        Some(p) => {
            let text = read(p)?;
            let name = p.display().to_string();
            cfg.store(std::sync::Arc::new(
                MeshSettings::from_yaml(&name, &String::from_utf8_lossy(&text))
                    .map_err(anyhow::Error::msg)?,
            ));
            let cfg = cfg.clone();
            let watch = mesh_runtime::watch::follow(p, text, move |now| {
                match MeshSettings::from_yaml(&name, &String::from_utf8_lossy(now)) {
                    Ok(c) => {
                        tracing::info!("mesh configuration {name} changed: in force");
                        cfg.store(std::sync::Arc::new(c));
                    }
                    Err(e) => {
                        tracing::warn!("mesh configuration {name} refused, the last one stays: {e}")
                    }
                }
            })
            .with_context(|| format!("cannot follow {}", p.display()))?;
            Some(watch)
        }
        None => None,
    };
    let (tls, certs) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => (
            tls_config(&read(cert)?, &read(key)?).map_err(anyhow::Error::msg)?,
            None,
        ),
        _ => {
            let namespace = std::env::var("POD_NAMESPACE")
                .context("--kubernetes needs POD_NAMESPACE (the downward API sets it)")?;
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes cluster found (in-cluster, KUBECONFIG)")?;
            let settings = Settings {
                namespace,
                service: args.service.clone(),
                secret: args.secret.clone(),
                mutating: args.mutating_webhook.clone(),
                validating: args.validating_webhook.clone(),
                validity: args.cert_validity,
            };
            let manager = Manager::start(client, settings).await?;
            let tls = tls_config_resolved(manager.serving()).map_err(anyhow::Error::msg)?;
            (tls, Some(manager))
        }
    };
    if let Some(manager) = certs {
        let every = manager.settings().check_every();
        tokio::spawn(manager.run(every));
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // The readiness line: tests and supervisors wait for it (rules are
    // validated at VALIDATE_PATH of the same address).
    tracing::info!(
        "mesh-inject listening on https://{}{INJECT_PATH}",
        listener.local_addr()?
    );
    tokio::select! {
        r = serve(listener, tls, cfg) => r.context("webhook server failed"),
        // SIGTERM too: in a container it is PID 1, which ignores what it
        // does not handle.
        () = mesh_runtime::signal::terminated() => Ok(()),
    }
}
