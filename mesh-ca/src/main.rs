//! `mesh-ca`: signs workload certificates over gRPC (TLS).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mesh_ca::credentials::AUDIENCE;
use mesh_ca::credentials::FollowedTokens;
use mesh_ca::{Authenticator, Authority, CertificateService, KubernetesTokens};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::info;

/// The mesh's certificate authority.
#[derive(Parser)]
#[command(name = "mesh-ca", version, about)]
struct Args {
    /// The CA's files (Istio's `cacerts` layout: ca-cert.pem, ca-key.pem,
    /// cert-chain.pem, root-cert.pem); a self-signed root is generated
    /// there when the folder has none.
    #[arg(long, env = "MESH_CA_DIR", value_name = "DIR")]
    dir: PathBuf,
    /// Where workloads ask for certificates (gRPC over TLS).
    #[arg(long, default_value = "127.0.0.1:15013")]
    address: SocketAddr,
    /// The trust domain of the identities issued.
    #[arg(long, default_value = mesh_rules::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Local mode: callers prove who they are with the tokens in this file
    /// (`token,namespace,service-account[,expires]` per line), followed.
    #[arg(long, value_name = "FILE", required_unless_present = "kubernetes")]
    bootstrap_tokens: Option<PathBuf>,
    /// In a cluster: callers send service-account tokens for audience
    /// `mesh-ca`, checked by the API server (TokenReview).
    #[arg(long, conflicts_with = "bootstrap_tokens")]
    kubernetes: bool,
    /// Lifetime of a certificate when the caller asks for none [default:
    /// 24h, or --max-validity when shorter].
    #[arg(long, value_parser = duration)]
    default_validity: Option<std::time::Duration>,
    /// The longest lifetime a caller may ask for.
    #[arg(long, default_value = "90d", value_parser = duration)]
    max_validity: std::time::Duration,
    /// Names (DNS or IP) of the CA's own serving certificate.
    #[arg(long = "server-name", default_values = ["localhost", "mesh-ca.mesh-system.svc"])]
    server_names: Vec<String>,
}

/// `24h`, `10m`, `90d` (days as 24 h).
fn duration(s: &str) -> Result<std::time::Duration, String> {
    if let Some(days) = s.strip_suffix('d')
        && let Ok(n) = days.parse::<u64>()
    {
        return Ok(std::time::Duration::from_secs(n * 24 * 3600));
    }
    mesh_rules::Duration::parse(s)
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut authority = Authority::load_or_create(&args.dir, &args.trust_domain)?;
    authority.max_validity = args.max_validity;
    authority.default_validity = match args.default_validity {
        Some(d) => {
            anyhow::ensure!(
                d <= args.max_validity,
                "--default-validity is longer than --max-validity"
            );
            d
        }
        None => authority.default_validity.min(args.max_validity),
    };
    let authenticator: Arc<dyn Authenticator> = match &args.bootstrap_tokens {
        Some(file) => Arc::new(FollowedTokens::follow(file)?),
        None => {
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the Kubernetes API (kubeconfig or in-cluster)")?;
            Arc::new(KubernetesTokens::new(client, AUDIENCE))
        }
    };
    let (chain, key) = authority.serving_certificate(&args.server_names)?;
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(chain, key));
    let listener = tokio::net::TcpListener::bind(args.address)
        .await
        .with_context(|| format!("cannot bind {}", args.address))?;
    info!(address = %listener.local_addr()?, trust_domain = %args.trust_domain, "serving");
    let (health, health_service) = tonic_health::server::health_reporter();
    let service = CertificateService::new(Arc::new(authority), authenticator).into_server();
    health.set_serving::<mesh_proto::ca::certificate_service_server::CertificateServiceServer<CertificateService>>().await;
    let server = Server::builder()
        .tls_config(tls)?
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            mesh_runtime::signal::terminated(),
        );
    info!("ready");
    server.await?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = mesh_runtime::log::init() {
        eprintln!("Error: MESH_LOG: {e}");
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The exit diagnostic, not a log line.
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
