//! `mesh-proxy`: the sidecar proxy.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_proto::envoy::config::bootstrap::v3::Bootstrap;
use mesh_proxy::admin::{Admin, Scope};
use mesh_proxy::config::{Bootstrapped, Snapshot};
use mesh_proxy::identity::Identity;
use mesh_proxy::identity::ca::CaFlags;
use mesh_proxy::server::{Options, Proxy, Running, start};
use mesh_proxy::state::OverloadLimits;
use tracing::{error, info, warn};

/// The mesh's sidecar proxy.
#[derive(Parser)]
#[command(
    name = "mesh-proxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Envoy-style bootstrap (YAML or JSON) with `admin` and `static_resources`.
    #[arg(short = 'c', long = "config", value_name = "FILE", required = true)]
    config: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    drain_timeout: u64,
    /// Serve `/stats/prometheus` here too (a sidecar uses 0.0.0.0:15090).
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Serve readiness `/healthz/ready` here (a sidecar uses 0.0.0.0:15021).
    #[arg(long, value_name = "ADDR")]
    health_address: Option<std::net::SocketAddr>,
    /// Check the configuration and exit.
    #[arg(long)]
    validate: bool,
    #[command(flatten)]
    overload: OverloadArgs,
    /// How the standard metrics are named: `mesh_requests_total`, … or
    /// exactly as Istio names them (`istio_requests_total`, …).
    #[arg(long, env = "MESH_METRICS_NAMING", value_enum, default_value = "mesh")]
    metrics_naming: MetricsNaming,
    /// With `--ca-address`: the namespace of the proxy's identity (its
    /// TLS contexts name SDS secrets `default` and `ROOTCA`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// With `--ca-address`: the service account of the proxy's identity.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    #[command(flatten)]
    ca: CaFlags,
}

/// How the standard metrics are named.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MetricsNaming {
    /// `mesh_requests_total`, `mesh_request_duration_milliseconds`, …
    Mesh,
    /// `istio_requests_total`, … so Istio's dashboards and alerts work.
    Istio,
}

impl From<MetricsNaming> for mesh_proxy::telemetry::metrics::Naming {
    fn from(n: MetricsNaming) -> Self {
        match n {
            MetricsNaming::Mesh => Self::Mesh,
            MetricsNaming::Istio => Self::Istio,
        }
    }
}

/// The workload the standard metrics name this proxy by.
fn workload_of(n: &mesh_proto::node::NodeMeta) -> mesh_proxy::telemetry::peer::Workload {
    let name = [&n.workload, &n.name, &n.id]
        .into_iter()
        .find(|s| !s.is_empty())
        .map_or("", |s| s.as_str());
    mesh_proxy::telemetry::peer::Workload::local(name, &n.namespace, &n.labels)
}

/// Proxy-wide caps: past them the proxy sheds load at once instead of
/// holding it in memory.
#[derive(clap::Args)]
struct OverloadArgs {
    /// Downstream connections open at once; more are closed as they come.
    #[arg(long, default_value_t = OverloadLimits::default().max_connections)]
    max_connections: usize,
    /// Downstream requests in flight at once; more are answered 503.
    #[arg(long, default_value_t = OverloadLimits::default().max_requests)]
    max_requests: usize,
}

impl OverloadArgs {
    fn limits(&self) -> OverloadLimits {
        OverloadLimits {
            max_connections: self.max_connections,
            max_requests: self.max_requests,
        }
    }
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Program the pod's packet redirection to the proxy (nat table, chains MESH_*).
    Init(InitArgs),
    /// Run as a workload's sidecar, configured by pilot over xDS (ADS).
    Sidecar(Box<SidecarArgs>),
    /// Run as an ingress gateway, configured by pilot: it listens on the
    /// ports of the Gateways whose selector matches its labels and routes
    /// by host and path as the VirtualServices bound to them say (node id
    /// `router~…`, as Istio's gateways).
    Gateway(Box<SidecarArgs>),
    /// Serve the workload's certificate to an Envoy sidecar over SDS.
    Sds(Box<SdsArgs>),
}

#[derive(clap::Args)]
struct SidecarArgs {
    /// Pilot's xDS address (`host:port`).
    #[arg(long, env = "MESH_PILOT_ADDRESS", value_name = "HOST:PORT")]
    xds_address: String,
    /// Reach pilot over mutual TLS (its port 15012) with the workload's
    /// certificate; needs the `--ca-*` flags.
    #[arg(long, env = "MESH_XDS_TLS", requires = "ca_address")]
    xds_tls: bool,
    /// The SPIFFE ID pilot must present over TLS (default: service account
    /// `mesh-pilot` in `mesh-system` of the trust domain).
    #[arg(long, env = "MESH_PILOT_IDENTITY", value_name = "SPIFFE-ID")]
    pilot_identity: Option<mesh_rules::identity::Identity>,
    /// The aggregated stream's flavour: incremental (`delta`) or State of
    /// the World (`sotw`).
    #[arg(long, env = "MESH_XDS_FLAVOR", value_enum, default_value = "delta")]
    xds_flavor: XdsFlavor,
    /// The pod's name; pilot registers the pod while the proxy is connected.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod_name: String,
    /// The workload the pod belongs to (its Deployment, StatefulSet, …);
    /// the pod's name when not given.
    #[arg(long, env = "WORKLOAD_NAME", default_value = "")]
    workload: String,
    /// Namespace of the workload.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The workload's IP (inbound listeners and registration).
    #[arg(long, env = "INSTANCE_IP")]
    ip: Option<std::net::IpAddr>,
    /// The workload's labels, `key=value,…`.
    #[arg(long, env = "MESH_LABELS", default_value = "", value_parser = labels)]
    labels: std::collections::BTreeMap<String, String>,
    /// A file of the pod's labels as the Kubernetes downward API writes it
    /// (`key="value"` lines); followed, so label changes reach pilot.
    /// `--labels` are added on top.
    #[arg(long, env = "MESH_LABELS_FILE", value_name = "FILE")]
    labels_file: Option<PathBuf>,
    /// The workload's service account.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// `none`: no traffic redirection; apps use the proxy explicitly (an
    /// HTTP proxy on IP:15001) and callers reach the workload at IP:port,
    /// where the proxy listens and forwards to the app at --app-ip.
    #[arg(
        long,
        env = "INTERCEPTION_MODE",
        value_enum,
        ignore_case = true,
        default_value = "redirect"
    )]
    interception_mode: Interception,
    /// With `--interception-mode none`: where the app listens.
    #[arg(long, env = "MESH_APP_IP")]
    app_ip: Option<std::net::IpAddr>,
    /// The xDS node id (default `sidecar~IP~WORKLOAD.NAMESPACE~NAMESPACE.svc.cluster.local`, as Istio).
    #[arg(long)]
    node_id: Option<String>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Admin endpoint.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_address: std::net::SocketAddr,
    /// Prometheus endpoint.
    #[arg(long, default_value = "0.0.0.0:15090")]
    metrics_address: std::net::SocketAddr,
    /// Readiness endpoint.
    #[arg(long, default_value = "0.0.0.0:15021")]
    health_address: std::net::SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    drain_timeout: u64,
    /// After SIGTERM, keep serving this long before draining: Kubernetes
    /// marks a terminating pod's endpoint at once and pilot tells the
    /// callers' sidecars, which stop sending here before the listeners
    /// close (the injector sets it; 0 drains at once).
    #[arg(long, default_value = "0", value_name = "SECONDS")]
    drain_delay: u64,
    #[command(flatten)]
    overload: OverloadArgs,
    /// How the standard metrics are named (`mesh` or `istio`).
    #[arg(long, env = "MESH_METRICS_NAMING", value_enum, default_value = "mesh")]
    metrics_naming: MetricsNaming,
    #[command(flatten)]
    ca: CaFlags,
}

/// Gets the workload's first certificate from mesh-ca (waiting until it
/// comes) and keeps it renewed on a thread of its own; the roots file is
/// followed while the returned watch lives. `None` without a CA (the
/// proxy then refuses TLS configuration).
fn certify(
    ca: &CaFlags,
    namespace: &str,
    service_account: &str,
) -> anyhow::Result<Option<(Arc<Identity>, mesh_runtime::watch::FileWatch)>> {
    let Some(settings) = ca.settings() else {
        return Ok(None);
    };
    let id = mesh_rules::identity::Identity::new(&ca.trust_domain, namespace, service_account);
    let c = mesh_proxy::identity::ca::certify(id, settings)?;
    c.first
        .blocking_recv()
        .context("the certificate thread ended")?;
    Ok(Some((c.identity, c.roots_watch)))
}

/// The SDS agent for an Envoy sidecar: the workload's certificate from
/// mesh-ca, served to the Envoy beside it on a Unix socket.
#[derive(clap::Args)]
struct SdsArgs {
    /// The Unix socket Envoy's `sds-grpc` cluster names.
    #[arg(long, env = "MESH_SDS_SOCKET", value_name = "PATH")]
    socket: PathBuf,
    /// Namespace of the workload.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The workload's service account.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    #[command(flatten)]
    ca: CaFlags,
}

/// Runs the SDS agent; logs `ready` once the certificate is in hand and
/// the socket listens.
fn sds(a: SdsArgs) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        anyhow::ensure!(
            a.ca.ca_address.is_some(),
            "the SDS agent needs --ca-address"
        );
        let (identity, _roots_watch) =
            certify(&a.ca, &a.namespace, &a.service_account)?.context("no CA settings")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let _ = std::fs::remove_file(&a.socket);
            let listener = tokio::net::UnixListener::bind(&a.socket)
                .with_context(|| format!("cannot listen on {}", a.socket.display()))?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            info!(socket = %a.socket.display(), identity = %identity.id, "ready");
            tonic::transport::Server::builder()
                .add_service(mesh_proxy::identity::sds::Sds::server(identity))
                .serve_with_incoming(incoming)
                .await?;
            Ok(())
        })
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// The xDS stream's flavour.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum XdsFlavor {
    /// Incremental.
    Delta,
    /// State of the World.
    Sotw,
}

/// How traffic reaches the sidecar.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Interception {
    /// The pod's nat rules (`mesh-proxy init`) redirect it.
    Redirect,
    /// Nothing redirects it (Istio's `NONE`).
    None,
}

fn labels(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("`{kv}` is not key=value"))
        })
        .collect()
}

/// Who the sidecar is, from its arguments (and the labels file).
fn node_meta(a: &SidecarArgs, node_type: &str) -> anyhow::Result<mesh_proto::node::NodeMeta> {
    let ip = a.ip.map(|i| i.to_string()).unwrap_or_default();
    let pod = if a.pod_name.is_empty() {
        a.workload.clone()
    } else {
        a.pod_name.clone()
    };
    let mut labels = match &a.labels_file {
        Some(path) => read_labels(path)?,
        None => Default::default(),
    };
    labels.extend(a.labels.clone());
    Ok(mesh_proto::node::NodeMeta {
        id: a.node_id.clone().unwrap_or_else(|| {
            format!(
                "{node_type}~{ip}~{pod}.{}~{}.svc.cluster.local",
                a.namespace, a.namespace
            )
        }),
        namespace: a.namespace.clone(),
        name: pod.clone(),
        workload: if a.workload.is_empty() {
            pod
        } else {
            a.workload.clone()
        },
        ip: a.ip,
        labels,
        service_account: a.service_account.clone(),
        explicit: a.interception_mode == Interception::None,
        app_ip: a.app_ip,
        kind: mesh_proto::node::ProxyKind::MeshProxy,
    })
}

/// Runs as a sidecar: starts empty, binds what pilot sends. Logs
/// `connected`, `config applied version V`, `config rejected: …` and
/// `listener NAME ADDR` as they happen, and `ready` after the first
/// configuration is in force.
fn sidecar(a: SidecarArgs, node_type: &str, logging: mesh_runtime::log::Logging) -> ExitCode {
    let meta = match node_meta(&a, node_type) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    mesh_runtime::memory::limit_malloc_arenas(a.concurrency);
    let opts = Options {
        concurrency: a.concurrency,
        drain_timeout: Duration::from_secs(a.drain_timeout),
        overload: a.overload.limits(),
        naming: a.metrics_naming.into(),
        identity: None,
    };
    let endpoints = [
        (Some(a.admin_address), Scope::Admin),
        (Some(a.metrics_address), Scope::Metrics),
        (Some(a.health_address), Scope::Health),
    ];
    let running = match start(Snapshot::empty(), opts)
        .and_then(|r| serve_admin(&r, &endpoints, logging).map(|()| r))
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let telemetry = running.proxy.shared.clone();
    telemetry.telemetry.set_local(workload_of(&meta));
    // The certificate before the configuration that may need it.
    let mut pilot = mesh_proxy::xds::Pilot {
        address: a.xds_address.clone(),
        tls: None,
    };
    let _roots_watch = match certify(&a.ca, &a.namespace, &a.service_account) {
        Ok(Some((identity, watch))) => {
            let _ = telemetry.telemetry.principal.set(identity.id.uri().into());
            if a.xds_tls {
                let expected = a
                    .pilot_identity
                    .clone()
                    .unwrap_or_else(|| mesh_rules::identity::Identity::pilot(&a.ca.trust_domain));
                pilot.tls = Some((identity.clone(), expected.uri()));
            }
            let _ = telemetry.identity.set(identity);
            Some(watch)
        }
        Ok(None) => None,
        Err(e) => return fail(e),
    };
    let (node_tx, node) = tokio::sync::watch::channel(meta.to_node());
    // Label changes (the kubelet rewrites the file) re-announce the pod.
    let _labels_watch = match &a.labels_file {
        Some(path) => match follow_labels(path, meta, a.labels.clone(), node_tx, telemetry) {
            Ok(w) => Some(w),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let flavor = match a.xds_flavor {
        XdsFlavor::Delta => mesh_proxy::xds::Flavor::Delta,
        XdsFlavor::Sotw => mesh_proxy::xds::Flavor::Sotw,
    };
    follow_pilot(pilot, flavor, node, running.proxy.clone());
    wait_for_signal_then_drain(running, Duration::from_secs(a.drain_delay));
    ExitCode::SUCCESS
}

/// Follows pilot on a thread of its own, logging what happens.
fn follow_pilot(
    pilot: mesh_proxy::xds::Pilot,
    flavor: mesh_proxy::xds::Flavor,
    node: tokio::sync::watch::Receiver<mesh_proto::envoy::config::core::v3::Node>,
    proxy: std::sync::Arc<Proxy>,
) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut first = true;
        let report = move |event| {
            use mesh_proxy::xds::Event;
            match event {
                Event::Connected => info!("connected"),
                Event::Disconnected(why) => warn!("xds: {why}; retrying"),
                Event::Applied { version, bound } => {
                    log_bound(&bound);
                    info!("config applied version {version}");
                    if std::mem::take(&mut first) {
                        info!("ready");
                    }
                }
                Event::Idle => mesh_runtime::memory::release_after_config(),
                Event::Rejected { type_url, reason } => {
                    warn!(type_url, "config rejected: {reason}");
                }
            }
        };
        rt.block_on(mesh_proxy::xds::run(pilot, flavor, node, proxy, report));
    });
}

fn read_labels(
    path: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the labels file {}", path.display()))?;
    mesh_proxy::podinfo::parse_labels(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Follows the labels file; each change is sent as a new node (the xDS
/// client reconnects to tell pilot).
fn follow_labels(
    path: &std::path::Path,
    mut meta: mesh_proto::node::NodeMeta,
    extra: std::collections::BTreeMap<String, String>,
    node: tokio::sync::watch::Sender<mesh_proto::envoy::config::core::v3::Node>,
    shared: std::sync::Arc<mesh_proxy::state::Shared>,
) -> anyhow::Result<mesh_runtime::watch::FileWatch> {
    let last = std::fs::read(path).unwrap_or_default();
    let shown = path.display().to_string();
    let watch =
        mesh_runtime::watch::follow(
            path,
            last,
            move |bytes| match mesh_proxy::podinfo::parse_labels(&String::from_utf8_lossy(bytes)) {
                Ok(mut labels) => {
                    labels.extend(extra.clone());
                    if labels != meta.labels {
                        info!(?labels, "labels changed; telling pilot");
                        meta.labels = labels;
                        shared.telemetry.set_local(workload_of(&meta));
                        node.send_replace(meta.to_node());
                    }
                }
                Err(e) => warn!("{shown}: {e}; keeping the labels in force"),
            },
        )?;
    Ok(watch)
}

/// The process's exit diagnostic (not a log line: logging may not be up).
fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("Error: {e:#}");
    ExitCode::FAILURE
}

fn log_bound(bound: &[mesh_proxy::server::Bound]) {
    for b in bound {
        info!("listener {} {}", b.name, b.address);
    }
}

/// Binds the admin, metrics and health ports that are asked for, logs
/// where they are, and serves them until the proxy drains.
fn serve_admin(
    running: &Running,
    endpoints: &[(Option<std::net::SocketAddr>, Scope)],
    logging: mesh_runtime::log::Logging,
) -> anyhow::Result<()> {
    let mut bound = Vec::new();
    for (addr, scope) in endpoints {
        let Some(addr) = addr else { continue };
        let e = mesh_proxy::admin::bind(*addr, *scope)?;
        let what = match scope {
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
            Scope::Health => "health",
        };
        info!("{what} {}", e.listener.local_addr()?);
        bound.push(e);
    }
    if !bound.is_empty() {
        let admin = Admin {
            shared: running.proxy.shared.clone(),
            logging: Some(std::sync::Arc::new(logging)),
        };
        mesh_proxy::admin::spawn(bound, admin)?;
    }
    Ok(())
}

/// Blocks until SIGTERM or SIGINT, serves on for `delay`, then drains and
/// returns when every worker stopped.
fn wait_for_signal_then_drain(running: Running, delay: Duration) {
    let shared = running.proxy.shared.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(mesh_runtime::signal::terminated());
        if !delay.is_zero() {
            info!(?delay, "terminating: serving on before draining");
            std::thread::sleep(delay);
        }
        shared.shutdown();
    });
    running.wait();
}

fn ports(s: &str) -> Result<Vec<u16>, String> {
    if s == "*" || s.is_empty() {
        return Ok(vec![]);
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port (1-65535)"))
        })
        .collect()
}

fn cidrs(s: &str) -> Result<Vec<String>, String> {
    if s == "*" || s.is_empty() {
        return Ok(vec![]);
    }
    s.split(',')
        .map(|c| {
            let c = c.trim();
            mesh_rules::registry::parse_cidr(c)
                .map(|_| c.to_owned())
                .ok_or_else(|| format!("`{c}` is not an IP address or CIDR"))
        })
        .collect()
}

#[derive(clap::Args)]
struct InitArgs {
    /// The proxy's user id; its connections are not captured.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The proxy's group id.
    #[arg(long, default_value_t = 1337)]
    proxy_gid: u32,
    /// Inbound ports to capture, comma-separated, or `*` for all.
    #[arg(long, default_value = "*", value_parser = ports)]
    inbound_ports: std::vec::Vec<u16>,
    /// Inbound ports never captured (15090 and 15021 always are excluded).
    #[arg(long, default_value = "", value_parser = ports)]
    exclude_inbound_ports: std::vec::Vec<u16>,
    /// Outbound destinations to capture (CIDRs), or `*` for all.
    #[arg(long, default_value = "*", value_parser = cidrs)]
    outbound_cidrs: std::vec::Vec<String>,
    /// Outbound destinations never captured.
    #[arg(long, default_value = "", value_parser = cidrs)]
    exclude_outbound_cidrs: std::vec::Vec<String>,
    /// Outbound ports never captured.
    #[arg(long, default_value = "", value_parser = ports)]
    exclude_outbound_ports: std::vec::Vec<u16>,
    /// Print the rules instead of applying them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules instead.
    #[arg(long)]
    cleanup: bool,
}

fn init(a: InitArgs) -> ExitCode {
    use mesh_proxy::capture::{Capture, Family, apply, cleanup, restore_input};
    let mut exclude_inbound = vec![15090, 15021];
    exclude_inbound.extend(
        a.exclude_inbound_ports
            .iter()
            .filter(|p| !matches!(p, 15090 | 15021)),
    );
    let capture = Capture {
        proxy_uid: a.proxy_uid,
        proxy_gid: a.proxy_gid,
        inbound_ports: a.inbound_ports,
        exclude_inbound_ports: exclude_inbound,
        outbound_cidrs: a.outbound_cidrs,
        exclude_outbound_cidrs: a.exclude_outbound_cidrs,
        exclude_outbound_ports: a.exclude_outbound_ports,
        ..Capture::default()
    };
    let result = match (a.dry_run, a.cleanup) {
        (true, false) => {
            println!("# iptables-restore --noflush");
            print!("{}", restore_input(&capture, Family::V4));
            println!("# ip6tables-restore --noflush (where the pod has IPv6)");
            print!("{}", restore_input(&capture, Family::V6));
            Ok(())
        }
        (true, true) => {
            println!(
                "# removes the jumps to MESH_* from PREROUTING and OUTPUT, then flushes and deletes MESH_* chains"
            );
            Ok(())
        }
        (false, true) => cleanup(),
        (false, false) => apply(&capture),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Reads a bootstrap file's contents (`bytes`, read from `path`), naming
/// file, line:column and field of any problem. `previous`: the
/// configuration in force, whose counters carry over.
fn load(path: &Path, bytes: &[u8], previous: Option<&Snapshot>) -> anyhow::Result<Bootstrapped> {
    let loaded = load_inner(path, bytes, previous);
    mesh_runtime::memory::release_after_config();
    loaded
}

fn load_inner(
    path: &Path,
    bytes: &[u8],
    previous: Option<&Snapshot>,
) -> anyhow::Result<Bootstrapped> {
    let name = path.display().to_string();
    let text = std::str::from_utf8(bytes).with_context(|| format!("{name} is not UTF-8"))?;
    let Some(doc) = mesh_rules::yaml::read_one(text).map_err(|e| e.in_file(&name, 0))? else {
        anyhow::bail!("{name}: the file is empty");
    };
    let bootstrap: Bootstrap =
        mesh_proto::json::from_document(mesh_proto::descriptors::Schema::Proxy, &doc)
            .map_err(|e| e.in_file(&name, 0))?;
    Ok(Snapshot::from_bootstrap(&bootstrap, previous).map_err(|e| {
        let position = doc.locate(&e.path, true);
        e.located(position).in_file(&name, 0)
    })?)
}

/// Follows the config file: a new valid version is swapped in without
/// dropping a connection; an invalid one is refused (the last good one keeps
/// serving) and the reason logged (`config applied version N` /
/// `config rejected: …`).
fn watch_config(
    path: PathBuf,
    last: Vec<u8>,
    proxy: std::sync::Arc<Proxy>,
) -> anyhow::Result<mesh_runtime::watch::FileWatch> {
    let mut version = 1u64;
    let file = path.clone();
    // The contents `follow` compared are the ones applied (no second read).
    let watch = mesh_runtime::watch::follow(&path, last, move |bytes| {
        let in_force = proxy.shared.config.load_full();
        let result = load(&file, bytes, Some(&in_force)).and_then(|loaded| {
            let mut snap = loaded.snapshot;
            snap.version = (version + 1).to_string();
            proxy.apply(snap)
        });
        match result {
            Ok(bound) => {
                version += 1;
                log_bound(&bound);
                info!("config applied version {version}");
            }
            Err(e) => {
                let shared = &proxy.shared;
                let rejected = &shared.stats.config_rejected;
                rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let keeping = shared.config.load().version.clone();
                error!(keeping, "config rejected: {e:#}");
            }
        }
    })?;
    Ok(watch)
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let sidecar_args = match args.command.take() {
        Some(Sub::Init(a)) => return init(a),
        Some(Sub::Sidecar(a)) => Some((*a, "sidecar")),
        Some(Sub::Gateway(a)) => Some((*a, mesh_proto::node::GATEWAY_NODE_TYPE)),
        Some(Sub::Sds(a)) => {
            if let Err(e) = mesh_runtime::log::init() {
                return fail(anyhow::anyhow!("MESH_LOG: {e}"));
            }
            return sds(*a);
        }
        None => None,
    };
    let logging = match mesh_runtime::log::init() {
        Ok(l) => l,
        Err(e) => return fail(anyhow::anyhow!("MESH_LOG: {e}")),
    };
    if let Some((a, node_type)) = sidecar_args {
        return sidecar(a, node_type, logging);
    }
    let config = args
        .config
        .clone()
        .expect("clap requires --config without a subcommand");
    // What the running config was read from; a change is anything else.
    let loaded_bytes = match std::fs::read(&config) {
        Ok(b) => b,
        Err(e) => return fail(anyhow::anyhow!("cannot read {}: {e}", config.display())),
    };
    let Bootstrapped {
        mut snapshot,
        admin,
        node,
    } = match load(&config, &loaded_bytes, None) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    snapshot.version = "1".into();
    if args.validate {
        // The command's answer, not a log line.
        println!("{}: valid", config.display());
        return ExitCode::SUCCESS;
    }
    let concurrency = args
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    mesh_runtime::memory::limit_malloc_arenas(concurrency);
    // The certificate before the listeners that may need it.
    let (identity, _roots_watch) = match certify(&args.ca, &args.namespace, &args.service_account) {
        Ok(Some((identity, watch))) => (Some(identity), Some(watch)),
        Ok(None) => (None, None),
        Err(e) => return fail(e),
    };
    let opts = Options {
        concurrency,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        overload: args.overload.limits(),
        naming: args.metrics_naming.into(),
        identity,
    };
    let endpoints = [
        (admin, Scope::Admin),
        (args.metrics_address, Scope::Metrics),
        (args.health_address, Scope::Health),
    ];
    let running = match start(snapshot, opts)
        .and_then(|r| serve_admin(&r, &endpoints, logging).map(|()| r))
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };

    if let Some(n) = &node {
        running.proxy.shared.telemetry.set_local(workload_of(n));
    }
    log_bound(&running.listeners);
    let _watch = watch_config(config, loaded_bytes, running.proxy.clone())
        .inspect_err(|e| warn!("the config file will not be reloaded: {e:#}"));
    // Every socket is bound and accepting, and config changes are followed.
    info!("ready");
    wait_for_signal_then_drain(running, Duration::ZERO);
    ExitCode::SUCCESS
}
