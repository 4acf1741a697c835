//! pilot at scale: N simulated proxies (Delta ADS streams that ACK at
//! once) over M services, all on loopback. Measures the time until every
//! proxy has its first configuration, then the time from a rule write to
//! each proxy's ACK of the change (p50 / p99 / max), and pilot's CPU and
//! peak RSS.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mesh_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use mesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_proto::node::NodeMeta;
use mesh_proto::types::XdsType;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::procfs;

/// The outcome of one scale run.
#[derive(Debug, Serialize)]
pub struct ScaleReport {
    /// Simulated proxies.
    pub proxies: usize,
    /// Services in the registry.
    pub services: usize,
    /// Seconds until every proxy had all four types.
    pub initial_sync_s: f64,
    /// Rule write → the proxy received the change, per proxy: p50 (ms).
    pub push_p50_ms: f64,
    /// p99 (ms).
    pub push_p99_ms: f64,
    /// Slowest (ms).
    pub push_max_ms: f64,
    /// pilot's peak resident memory (MB).
    pub pilot_peak_rss_mb: f64,
    /// pilot's CPU seconds for the whole run.
    pub pilot_cpu_s: f64,
}

fn ip(prefix: u8, i: usize) -> String {
    format!("10.{prefix}.{}.{}", i / 250, i % 250 + 1)
}

fn registry(services: usize, proxies: usize) -> String {
    let mut y = String::from("services:\n");
    for s in 0..services {
        y.push_str(&format!(
            "- name: svc-{s}\n  vip: {}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n  selector: {{app: svc-{s}}}\n",
            ip(252, s)
        ));
    }
    y.push_str("workloads:\n");
    for p in 0..proxies {
        y.push_str(&format!(
            "- name: wl-{p}\n  address: {}\n  labels: {{app: svc-{}, version: v1}}\n",
            ip(254, p),
            p % services
        ));
    }
    y
}

/// One simulated proxy: subscribes to everything, ACKs every response,
/// counts the first answer to each type, and stamps the first RDS
/// response after `mark` was set.
async fn proxy(
    xds: String,
    i: usize,
    services: usize,
    synced: Arc<AtomicUsize>,
    mark: Arc<AtomicU64>,
    changed_at: Arc<AtomicU64>,
    epoch: Instant,
) {
    let meta = node(i, services);
    let (mut stream, tx) = connect(&xds, i, &meta).await;
    let mut seen = 0u8;
    loop {
        let r = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                eprintln!("proxy {i}: pilot closed the stream");
                return;
            }
            Err(e) => {
                eprintln!("proxy {i}: stream error: {e}");
                return;
            }
        };
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        });
        if let Some(k) = XdsType::PUSH_ORDER
            .iter()
            .position(|t| t.type_url() == r.type_url)
        {
            let bit = 1 << k;
            if seen & bit == 0 {
                seen |= bit;
                if seen == 0b1111 {
                    synced.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let m = mark.load(Ordering::SeqCst);
        if m != 0
            && r.type_url == XdsType::Route.type_url()
            && changed_at.load(Ordering::SeqCst) == 0
        {
            changed_at.store(epoch.elapsed().as_micros() as u64, Ordering::SeqCst);
        }
    }
}

/// Proxy `i`'s node: workload `wl-i` of service `svc-(i mod services)`.
fn node(i: usize, services: usize) -> NodeMeta {
    NodeMeta {
        id: format!(
            "sidecar~{}~wl-{i}.default~default.svc.cluster.local",
            ip(254, i)
        ),
        namespace: "default".into(),
        name: format!("wl-{i}"),
        workload: format!("wl-{i}"),
        ip: ip(254, i).parse().ok(),
        labels: [
            ("app".to_owned(), format!("svc-{}", i % services)),
            ("version".to_owned(), "v1".to_owned()),
        ]
        .into(),
        service_account: "default".into(),
        explicit: false,
        app_ip: None,
        kind: mesh_proto::node::ProxyKind::MeshProxy,
    }
}

/// Opens proxy `i`'s Delta stream, subscribed to every type. A connection
/// storm may see refused or reset connections; it retries like a proxy
/// would, until pilot takes the stream.
async fn connect(
    xds: &str,
    i: usize,
    meta: &NodeMeta,
) -> (
    tonic::Streaming<mesh_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse>,
    mpsc::UnboundedSender<DeltaDiscoveryRequest>,
) {
    let mut attempt = 0u64;
    loop {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt.min(20))).await;
        }
        attempt += 1;
        let mut client =
            match AggregatedDiscoveryServiceClient::connect(format!("http://{xds}")).await {
                Ok(c) => c.max_decoding_message_size(256 << 20),
                Err(e) => {
                    eprintln!("proxy {i}: connect failed ({e}), retrying");
                    continue;
                }
            };
        let (tx, rx) = mpsc::unbounded_channel();
        for t in XdsType::PUSH_ORDER {
            let _ = tx.send(DeltaDiscoveryRequest {
                node: Some(meta.to_node()),
                type_url: t.type_url().to_owned(),
                ..Default::default()
            });
        }
        match client
            .delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
        {
            Ok(r) => return (r.into_inner(), tx),
            Err(e) => eprintln!("proxy {i}: stream refused ({e}), retrying"),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[k]
}

/// Starts mesh-pilot (`pilot`: the program, maybe behind `taskset`) on
/// `store` and `registry`, with ephemeral ports and no warm-up; returns it
/// once it says `ready`, with its xDS address.
pub fn start_pilot(
    mut pilot: Command,
    store: &Path,
    registry: &Path,
) -> anyhow::Result<(std::process::Child, String)> {
    let mut child = pilot
        .arg("--store")
        .arg(store)
        .arg("--registry")
        .arg(registry)
        .args(["--xds-address", "127.0.0.1:0"])
        .args(["--debug-address", "127.0.0.1:0"])
        .args(["--warmup", "0"])
        // JSON log lines, read back as messages below.
        .env("MESH_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut xds = None;
    loop {
        let Some(l) = lines.next().transpose()? else {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("mesh-pilot exited during start-up");
        };
        let l = mesh_runtime::log::json_message(&l).unwrap_or(l);
        if let Some(a) = l.trim().strip_prefix("xds ") {
            xds = Some(a.to_owned());
        }
        if l.trim() == "ready" {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let xds = xds.ok_or_else(|| anyhow::anyhow!("mesh-pilot did not say its xds address"))?;
    Ok((child, xds))
}

/// Runs the scale benchmark with the pilot binary at `pilot`.
pub fn run(pilot: &Path, proxies: usize, services: usize) -> anyhow::Result<ScaleReport> {
    let dir = tempfile::tempdir()?;
    let reg = dir.path().join("registry.yaml");
    std::fs::write(&reg, registry(services, proxies))?;
    let store = dir.path().join("store");
    let (mut child, xds) = start_pilot(Command::new(pilot), &store, &reg)?;
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let epoch = Instant::now();
    let synced = Arc::new(AtomicUsize::new(0));
    let mark = Arc::new(AtomicU64::new(0));
    let stamps: Vec<Arc<AtomicU64>> = (0..proxies).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (i, stamp) in stamps.iter().enumerate() {
        rt.spawn(proxy(
            xds.clone(),
            i,
            services,
            synced.clone(),
            mark.clone(),
            stamp.clone(),
            epoch,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while synced.load(Ordering::SeqCst) < proxies {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {proxies} proxies synced in 300 s",
            synced.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let initial_sync_s = epoch.elapsed().as_secs_f64();
    // The rule: svc-0 (which every proxy may call) gets a 50/50 split.
    let rule = "apiVersion: config.mesh.dev/v1alpha1\nkind: RouteRule\nmetadata: {name: svc-0-split}\nspec:\n  destination: {name: svc-0}\n  route:\n  - labels: {version: v1}\n    weight: 50\n  - labels: {version: v2}\n    weight: 50\n";
    let loaded = mesh_rules::load(&[mesh_rules::Source {
        name: "scale.yaml",
        text: rule,
    }])
    .map_err(|d| anyhow::anyhow!("{d}"))?;
    let written = epoch.elapsed().as_micros() as u64;
    mark.store(written.max(1), Ordering::SeqCst);
    mesh_pilot::store::LocalStore::new(&store).apply_blocking(vec![
        mesh_pilot::store::Change::Create(loaded.rules[0].value.clone()),
    ])?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while stamps.iter().any(|s| s.load(Ordering::SeqCst) == 0) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every proxy got the change in 300 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut ms: Vec<f64> = stamps
        .iter()
        .map(|s| (s.load(Ordering::SeqCst).saturating_sub(written)) as f64 / 1000.0)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let report = ScaleReport {
        proxies,
        services,
        initial_sync_s,
        push_p50_ms: percentile(&ms, 0.5),
        push_p99_ms: percentile(&ms, 0.99),
        push_max_ms: ms.last().copied().unwrap_or(0.0),
        pilot_peak_rss_mb: procfs::peak_rss_mb(pid),
        pilot_cpu_s: procfs::cpu_seconds(pid),
    };
    // The simulated proxies go first, so none reports pilot's exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    let _ = child.kill();
    let _ = child.wait();
    Ok(report)
}
