//! `mesh-pilot`: serves xDS (ADS) to the mesh's proxies.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mesh_pilot::ads::Discovery;
use mesh_pilot::store::{LocalStore, RuleStore};
use mesh_pilot::translate::{
    AccessLogEncoding, MeshConfig, MtlsConfig, MtlsMode, OutboundPolicy, TraceProtocol,
    TracingConfig,
};
use mesh_pilot::world::{self, Update};
use mesh_rules::mesh_config::MeshSettings;
use tracing::{info, warn};

/// The mesh's control plane.
#[derive(Parser)]
#[command(name = "mesh-pilot", version, about)]
struct Args {
    /// The local rule store's folder (what `meshctl create` writes).
    /// Without it, `--kubernetes` reads rules from the cluster's custom
    /// resources (and writes back whether each was accepted).
    #[arg(
        long,
        env = "MESH_STORE",
        value_name = "DIR",
        required_unless_present = "kubernetes"
    )]
    store: Option<PathBuf>,
    /// A file registry (YAML of services and workloads); reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    registry: Option<PathBuf>,
    /// Watch a Kubernetes cluster's Services, EndpointSlices and Pods (the
    /// Kubernetes registry, beside the file registry). The cluster is the
    /// one `--kubeconfig` names, else `KUBECONFIG`'s, `~/.kube/config`'s,
    /// or, in a pod, its own.
    #[arg(long)]
    kubernetes: bool,
    /// The kubeconfig of `--kubernetes`.
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// Where proxies connect over plaintext gRPC (Istio's 15010). On at
    /// 127.0.0.1:15010 when pilot has no CA; with one, only when given.
    #[arg(long, value_name = "ADDRESS")]
    xds_address: Option<std::net::SocketAddr>,
    /// Where proxies connect over mutual TLS (Istio's 15012): each presents
    /// its workload's certificate and may only speak for that namespace
    /// and service account. On when `--ca-address` is given.
    #[arg(long, default_value = "127.0.0.1:15012", value_name = "ADDRESS")]
    xds_tls_address: std::net::SocketAddr,
    /// Debug endpoints (`/debug/syncz`, `/debug/push_history`, `/debug/config_dump`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_address: std::net::SocketAddr,
    /// What proxies do with destinations no service or egress rule names.
    #[arg(long, value_enum, default_value = "registry-only")]
    outbound_policy: Outbound,
    /// After starting, how long to let proxies of a previous pilot come
    /// back and register their workloads before sending configuration.
    #[arg(long, default_value = "1", value_name = "SECONDS")]
    warmup: f64,
    /// The cluster DNS domain.
    #[arg(long, default_value = mesh_rules::registry::DEFAULT_DOMAIN)]
    domain: String,
    /// Where proxies report spans in Zipkin v2 JSON (`host:port`, as
    /// Istio's `zipkinAddress`).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "otlp_address")]
    zipkin_address: Option<String>,
    /// Proxies print a line per call to stdout, in this encoding (Istio's
    /// `accessLogFile: /dev/stdout`, `accessLogEncoding`); off without it.
    #[arg(long, value_enum, value_name = "ENCODING")]
    access_log: Option<AccessLog>,
    /// Where proxies report spans by OTLP (`host:port`).
    #[arg(long, value_name = "HOST:PORT")]
    otlp_address: Option<String>,
    /// How OTLP reaches `--otlp-address`.
    #[arg(long, value_enum, default_value = "grpc")]
    otlp_protocol: OtlpProtocol,
    /// The percentage of traces recorded (of those starting at a proxy or
    /// arriving without a sampling decision; a caller's decision wins).
    #[arg(long, default_value = "1", value_name = "PERCENT", value_parser = percent)]
    trace_sampling: f64,
    /// Mutual TLS between sidecars (their certificates from mesh-ca): how
    /// workloads take connections — `permissive` (TLS or plaintext) or
    /// `strict` (TLS only); callers use TLS to every mesh workload. Off
    /// without it.
    #[arg(long, value_enum, value_name = "MODE")]
    mtls: Option<Mtls>,
    /// pilot's own certificate (for xDS over TLS) from mesh-ca; the trust
    /// domain is the workloads' too.
    #[command(flatten)]
    ca: mesh_identity::ca::CaFlags,
    /// pilot's namespace (its identity's).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mesh-system")]
    namespace: String,
    /// pilot's service account (its identity's).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "mesh-pilot")]
    service_account: String,
    /// pilot's pod: its name in the leader Lease (with --kubernetes).
    #[arg(long, env = "POD_NAME", default_value = "mesh-pilot")]
    pod_name: String,
    /// The mesh's settings file (the `mesh` ConfigMap mounted, which the
    /// injector reads too): its `outboundTrafficPolicy`, `accessLogFile`
    /// and `accessLogEncoding` win over the flags. Followed: a change is
    /// in force at once; a file that does not parse is logged and the last
    /// good one kept.
    #[arg(long, env = "MESH_CONFIG", value_name = "FILE")]
    mesh_config: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mtls {
    Permissive,
    Strict,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AccessLog {
    Json,
    Text,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OtlpProtocol {
    Grpc,
    Http,
}

fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("`{s}` is not a percentage (0 to 100)")),
    }
}

/// The flags the mesh configuration starts from; the settings file's keys
/// win over them.
#[derive(Clone)]
struct MeshFlags {
    domain: String,
    outbound: Outbound,
    access_log: Option<AccessLog>,
    tracing: TracingConfig,
    mtls: Option<MtlsConfig>,
}

impl MeshFlags {
    /// The mesh configuration: the flags, with what `settings` sets.
    fn mesh(&self, settings: &MeshSettings) -> MeshConfig {
        use mesh_rules::mesh_config::{self as file, OutboundMode};
        let outbound = match settings.outbound_traffic_policy.map(|p| p.mode) {
            Some(OutboundMode::RegistryOnly) => OutboundPolicy::RegistryOnly,
            Some(OutboundMode::AllowAny) => OutboundPolicy::AllowAny,
            None => match self.outbound {
                Outbound::RegistryOnly => OutboundPolicy::RegistryOnly,
                Outbound::AllowAny => OutboundPolicy::AllowAny,
            },
        };
        let flag_encoding = self.access_log.map(|a| match a {
            AccessLog::Json => AccessLogEncoding::Json,
            AccessLog::Text => AccessLogEncoding::Text,
        });
        let file_encoding = settings.access_log_encoding.map(|e| match e {
            file::AccessLogEncoding::Json => AccessLogEncoding::Json,
            file::AccessLogEncoding::Text => AccessLogEncoding::Text,
        });
        let access_log = match settings.access_log_file {
            Some(file::AccessLogFile::Off) => None,
            Some(file::AccessLogFile::Stdout) => Some(
                file_encoding
                    .or(flag_encoding)
                    .unwrap_or(AccessLogEncoding::Text),
            ),
            // An encoding alone changes the flag's log, if there is one.
            None => flag_encoding.map(|f| file_encoding.unwrap_or(f)),
        };
        MeshConfig {
            domain: self.domain.clone(),
            outbound,
            tracing: self.tracing.clone(),
            access_log,
            mtls: self.mtls.clone(),
        }
    }
}

impl Args {
    fn flags_only(&self) -> MeshFlags {
        MeshFlags {
            domain: self.domain.clone(),
            outbound: self.outbound_policy,
            access_log: self.access_log,
            tracing: self.tracing(),
            mtls: self.mtls.map(|m| MtlsConfig {
                trust_domain: self.ca.trust_domain.clone(),
                mode: match m {
                    Mtls::Permissive => MtlsMode::Permissive,
                    Mtls::Strict => MtlsMode::Strict,
                },
            }),
        }
    }

    /// The mesh configuration the flags and `settings` make.
    fn mesh(&self, settings: &MeshSettings) -> MeshConfig {
        self.flags_only().mesh(settings)
    }

    fn tracing(&self) -> TracingConfig {
        let collector = match (&self.zipkin_address, &self.otlp_address) {
            (Some(z), _) => Some((z.clone(), TraceProtocol::Zipkin)),
            (None, Some(o)) => Some((
                o.clone(),
                match self.otlp_protocol {
                    OtlpProtocol::Grpc => TraceProtocol::OtlpGrpc,
                    OtlpProtocol::Http => TraceProtocol::OtlpHttp,
                },
            )),
            (None, None) => None,
        };
        TracingConfig {
            sampling: self.trace_sampling,
            collector,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Outbound {
    RegistryOnly,
    AllowAny,
}

fn read_registry(path: &PathBuf) -> anyhow::Result<mesh_rules::registry::Registry> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
    mesh_pilot::registry::from_yaml(&name, &text).map_err(anyhow::Error::msg)
}

/// Reloads the registry file when it changes; a broken file is reported and
/// the last good registry stays.
fn follow_registry(
    path: PathBuf,
    updates: world::Updates,
) -> anyhow::Result<mesh_runtime::watch::FileWatch> {
    let last = std::fs::read(&path).unwrap_or_default();
    let file = path.clone();
    let watch = mesh_runtime::watch::follow(&path, last, move |_| match read_registry(&file) {
        Ok(r) => {
            info!(
                "registry reloaded: {} services, {} workloads",
                r.services.len(),
                r.workloads.len()
            );
            updates.send(Update::Registry(r));
        }
        Err(e) => warn!("registry not reloaded, keeping the last good one: {e:#}"),
    })?;
    Ok(watch)
}

/// Warns about fields of stored rules the mesh does not act on (rules
/// stored before such fields were refused at write time); `meshctl
/// analyze` lists them too.
fn warn_not_acted_on(rules: &mesh_pilot::store::Snapshot) {
    for stored in rules.rules.values() {
        for p in mesh_rules::support::unsupported(&stored.rule.spec) {
            warn!(rule = %stored.rule.key(), field = %p.path, "{}", p.message);
        }
    }
}

/// The Kubernetes client `--kubernetes` uses.
async fn kube_client(args: &Args) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes cluster found (KUBECONFIG, ~/.kube/config, in-cluster)")?,
    };
    info!(cluster = %config.cluster_url, "kubernetes");
    Ok(kube::Client::try_from(config)?)
}

async fn run(args: Args, logging: mesh_runtime::log::Logging) -> anyhow::Result<()> {
    mesh_proto::descriptors::keep_loaded(mesh_proto::descriptors::Schema::Xds);
    let mut registries = world::Registries::default();
    if let Some(p) = &args.registry {
        registries.file = read_registry(p)?;
    }
    let client = match args.kubernetes {
        true => Some(kube_client(&args).await?),
        false => None,
    };
    let watch_metrics = mesh_pilot::registry::kubernetes::WatchMetrics::default();
    let kubernetes = match &client {
        Some(client) => {
            let k =
                mesh_pilot::registry::kubernetes::Kubernetes::start(client.clone(), &watch_metrics);
            k.synced().await?;
            registries.kubernetes = k.registry();
            info!(
                services = registries.kubernetes.services.len(),
                workloads = registries.kubernetes.workloads.len(),
                "kubernetes registry synced"
            );
            Some(k)
        }
        None => None,
    };
    let mut rules = match &args.store {
        Some(dir) => LocalStore::new(dir)
            .watch()
            .await
            .with_context(|| format!("cannot follow the rule store {}", dir.display()))?,
        None => {
            let client = client.context("rules come from --store DIR or --kubernetes")?;
            let leader = mesh_pilot::store::kubernetes::lease::elect(
                client.clone(),
                &args.namespace,
                args.pod_name.clone(),
            );
            mesh_pilot::store::kubernetes::watch(client, leader)
                .await
                .context("cannot follow the cluster's rules")?
        }
    };
    let settings_metrics = mesh_pilot::settings::SettingsMetrics::default();
    let settings = match &args.mesh_config {
        Some(path) => mesh_pilot::settings::read(path, &settings_metrics)?,
        None => MeshSettings::default(),
    };
    let mesh = args.mesh(&settings);
    warn_not_acted_on(&rules.current());
    let warmup = std::time::Duration::from_secs_f64(args.warmup.max(0.0));
    let (updates, worlds) = world::spawn(mesh, registries, rules.current(), warmup);
    let kubernetes_watched = kubernetes.is_some();
    if let Some(k) = kubernetes {
        k.forward(updates.clone());
    }
    let _settings_watch = match &args.mesh_config {
        Some(p) => {
            let (flags, updates) = (args.flags_only(), updates.clone());
            let apply = move |s: MeshSettings| updates.send(Update::Mesh(flags.mesh(&s)));
            let watch = mesh_pilot::settings::follow(p, settings_metrics.clone(), apply);
            Some(watch.with_context(|| format!("cannot follow {}", p.display()))?)
        }
        None => None,
    };
    let _registry_watch = match args.registry.clone() {
        Some(p) => Some(follow_registry(p, updates.clone())?),
        None => None,
    };
    {
        let updates = updates.clone();
        tokio::spawn(async move {
            while let Some(s) = rules.changed().await {
                info!("rules changed: revision {}", s.revision);
                warn_not_acted_on(&s);
                updates.send(Update::Rules(s));
            }
        });
    }
    let metrics = mesh_pilot::ads::metrics::PilotMetrics::with(|r| {
        if args.mesh_config.is_some() {
            settings_metrics.register(r)
        }
        if kubernetes_watched {
            watch_metrics.register(r)
        }
    });
    let discovery = Discovery::new(worlds, updates, metrics);
    let debug_listener = tokio::net::TcpListener::bind(args.debug_address)
        .await
        .with_context(|| format!("debug: cannot bind {}", args.debug_address))?;
    let debug_state = mesh_pilot::debug::Debug {
        discovery: discovery.clone(),
        logging: Some(logging),
    };
    info!("debug {}", debug_listener.local_addr()?);
    tokio::spawn(mesh_pilot::debug::serve(
        debug_listener,
        Arc::new(debug_state),
    ));
    serve_xds(&args, discovery).await
}

/// Serves xDS over mutual TLS (with a CA) and over plaintext (without
/// one, or where the user keeps it) until SIGTERM; logs `ready` once the
/// listeners are bound (and pilot's first certificate is in force).
async fn serve_xds(args: &Args, discovery: Discovery) -> anyhow::Result<()> {
    let bind = |a: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(a)
            .await
            .with_context(|| format!("xds: cannot bind {a}"))
    };
    let server = || {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_service(discovery.clone().into_service())
    };
    let plaintext = match (args.xds_address, args.ca.settings()) {
        (Some(a), _) => Some(a),
        (None, None) => Some("127.0.0.1:15010".parse()?),
        (None, Some(_)) => None,
    };
    let tls = match args.ca.settings() {
        Some(settings) => {
            let id = mesh_rules::identity::Identity::new(
                &args.ca.trust_domain,
                &args.namespace,
                &args.service_account,
            );
            let c = mesh_identity::ca::certify(id, settings)?;
            c.first.await.context("the certificate thread ended")?;
            let listener = bind(args.xds_tls_address).await?;
            info!(identity = %c.identity.id, "xds over mutual TLS {}", listener.local_addr()?);
            let incoming = mesh_identity::grpc::incoming(listener, c.identity.clone());
            Some((incoming, c.roots_watch))
        }
        None => None,
    };
    let plaintext = match plaintext {
        Some(a) => {
            let listener = bind(a).await?;
            info!("xds {}", listener.local_addr()?);
            Some(tokio_stream::wrappers::TcpListenerStream::new(listener))
        }
        None => None,
    };
    info!("ready");
    let plaintext = async {
        match plaintext {
            Some(incoming) => {
                server()
                    .serve_with_incoming_shutdown(incoming, mesh_runtime::signal::terminated())
                    .await
            }
            None => Ok(()),
        }
    };
    let tls = async {
        match tls {
            Some((incoming, _roots_watch)) => {
                server()
                    .serve_with_incoming_shutdown(incoming, mesh_runtime::signal::terminated())
                    .await
            }
            None => Ok(()),
        }
    };
    // On SIGTERM the servers stop accepting, but their ADS streams never
    // end by themselves: after a moment for answers in flight they are
    // closed, so proxies reconnect to another pilot at once instead of at
    // the end of the pod's grace period.
    let closing = async {
        mesh_runtime::signal::terminated().await;
        info!("terminating: closing the proxies' streams in 1 s");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    tokio::select! {
        served = async { tokio::try_join!(plaintext, tls) } => { served?; }
        () = closing => {}
    }
    Ok(())
}

/// pilot's worker threads.
const WORKERS: usize = 2;

/// glibc malloc arenas: one. A stream's buffers are allocated on one
/// worker and often freed on the other; in one arena every free is
/// reusable by both. At 2000 proxies peak RSS was 192–193 MB with one and
/// 193–210 MB with two, push latency and CPU the same.
const MALLOC_ARENAS: usize = 1;

fn main() -> ExitCode {
    let args = Args::parse();
    let logging = match mesh_runtime::log::init() {
        Ok(l) => l,
        Err(e) => return fail(anyhow::anyhow!("MESH_LOG: {e}")),
    };
    mesh_runtime::memory::limit_malloc_arenas(MALLOC_ARENAS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(args, logging)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// The process's exit diagnostic (not a log line: logging may not be up).
fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("Error: {e:#}");
    ExitCode::FAILURE
}
