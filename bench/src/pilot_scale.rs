//! pilot at scale: N simulated proxies (Delta ADS streams that ACK at
//! once) over M services, all on loopback, with or without a Sidecar per
//! service that scopes its proxies to K services. Measures the time until
//! every proxy has its first configuration; the time from a rule write to
//! each affected proxy's receipt of the changed routes, and from an
//! endpoint change in the registry to its receipt of the endpoints
//! (p50 / p99 / max); pilot's CPU per endpoint change, its peak RSS, and
//! the bytes it sent.

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
use prost::Message;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::procfs;

/// Endpoint changes measured per run (CPU time is read in 10 ms ticks;
/// several changes make the per-change figure finer).
const ENDPOINT_CHANGES: usize = 20;

/// How long a phase may take before the run fails.
const WAIT: Duration = Duration::from_secs(60);

/// The thread pilot reads a changed registry file on (the file watch's).
const REGISTRY_THREAD: &str = "notify-rs";

/// What one run sets up.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Simulated proxies.
    pub proxies: usize,
    /// Services in the registry.
    pub services: usize,
    /// Services each proxy's Sidecar lets it call; 0: no Sidecar (every
    /// proxy gets every service).
    pub scope: usize,
}

/// The outcome of one scale run (the field names `bench/results`'
/// `pilot-scale-*.json` promise).
#[derive(Debug, Serialize)]
pub struct ScaleReport {
    /// Simulated proxies.
    pub proxies: usize,
    /// Services in the registry.
    pub services: usize,
    /// Backend services beside them (the rolling restart's; each proxy's
    /// Sidecar lists one, an unscoped proxy gets them all).
    pub backend_services: usize,
    /// Whether each proxy was scoped by a Sidecar.
    pub scoped: bool,
    /// Services in each proxy's scope (all of them when not scoped).
    pub services_per_proxy: usize,
    /// Seconds until every proxy had all four types.
    pub initial_sync_s: f64,
    /// Proxies whose routes the rule change touches.
    pub route_affected_proxies: usize,
    /// Rule write → an affected proxy received the changed routes: p50 (ms).
    pub route_push_p50_ms: f64,
    /// p99 (ms).
    pub route_push_p99_ms: f64,
    /// Slowest (ms).
    pub route_push_max_ms: f64,
    /// Proxies outside the change's scope that were sent routes anyway
    /// (should be 0).
    pub route_pushes_outside_scope: usize,
    /// Registry write → an affected proxy received the endpoints, over
    /// every endpoint change: p50 (ms).
    pub endpoint_push_p50_ms: f64,
    /// p99 (ms).
    pub endpoint_push_p99_ms: f64,
    /// pilot's CPU per endpoint change, registry re-read included (ms).
    pub cpu_ms_per_endpoint_change: f64,
    /// The same without the file registry's re-read (parsing the whole
    /// file, on the file watch's thread): what translating and pushing
    /// the change costs, as with a registry that reports changes (ms).
    pub cpu_ms_per_endpoint_change_without_registry_read: f64,
    /// Registry writes of the rolling restart of the backends (each of
    /// their pods replaced once, a new one up before an old one goes).
    pub rolling_restart_writes: usize,
    /// Endpoint responses a proxy received during it: mean.
    pub rolling_restart_pushes_per_proxy_mean: f64,
    /// Most any proxy received.
    pub rolling_restart_pushes_per_proxy_max: u64,
    /// Assignments of a backend with no endpoint received (should be 0:
    /// no backend ever had none).
    pub rolling_restart_zero_endpoint_assignments: u64,
    /// Last write → every proxy holds only new pods for its backends (ms).
    pub rolling_restart_converged_ms: f64,
    /// pilot's peak resident memory (bytes).
    pub pilot_rss_bytes: u64,
    /// pilot's CPU seconds for the whole run.
    pub pilot_cpu_s: f64,
    /// Bytes of xDS responses the proxies received, over the whole run.
    pub bytes_sent: u64,
}

fn ip(prefix: u8, i: usize) -> String {
    format!("10.{prefix}.{}.{}", i / 250, i % 250 + 1)
}

/// Backend services whose endpoints a rolling restart replaces (beside
/// the M services; no proxy is one of their endpoints, so every endpoint
/// of theirs is replaced).
const BACKENDS: usize = 100;
/// Pods per backend.
const PODS: usize = 2;

/// How far a rolling restart of the backends has got: backends before
/// `done` run their new pods only; backend `done` runs old and new while
/// `surge` (a new pod is up before an old one goes, as a Deployment's
/// `maxSurge` does).
#[derive(Debug, Clone, Copy, Default)]
struct Rollout {
    done: usize,
    surge: bool,
}

impl Rollout {
    /// Backend `b`'s pods: (pod, address) of the old, the new or both.
    fn pods(self, b: usize) -> Vec<(String, String)> {
        let old = (0..PODS).map(|k| (format!("backend-{b}-old-{k}"), ip(251, b * PODS + k)));
        let new = (0..PODS).map(|k| (format!("backend-{b}-new-{k}"), ip(250, b * PODS + k)));
        match (b < self.done, b == self.done && self.surge) {
            (true, _) => new.collect(),
            (false, true) => old.chain(new).collect(),
            (false, false) => old.collect(),
        }
    }
}

/// The file registry: M services with one workload per proxy, `extra`
/// more workloads of `svc-0` (the endpoint changes add them), and the
/// backends' pods as far as `rollout` has got.
fn registry(services: usize, proxies: usize, extra: usize, rollout: Rollout) -> String {
    let mut y = String::from("services:\n");
    for s in 0..services {
        y.push_str(&format!(
            "- name: svc-{s}\n  vip: {}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n  selector: {{app: svc-{s}}}\n",
            ip(252, s)
        ));
    }
    for b in 0..BACKENDS {
        y.push_str(&format!(
            "- name: backend-{b}\n  vip: {}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n  selector: {{app: backend-{b}}}\n",
            ip(249, b)
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
    for e in 0..extra {
        y.push_str(&format!(
            "- name: extra-{e}\n  address: {}\n  labels: {{app: svc-0, version: v1}}\n",
            ip(253, e)
        ));
    }
    for b in 0..BACKENDS {
        for (name, address) in rollout.pods(b) {
            y.push_str(&format!(
                "- name: {name}\n  address: {address}\n  labels: {{app: backend-{b}}}\n"
            ));
        }
    }
    y
}

/// The backend a proxy of `svc-s` calls (in its scope when scoped).
fn backend_of(s: usize) -> usize {
    s % BACKENDS
}

/// Writes the registry by rename, as an editor or the kubelet would, so
/// pilot never reads half a file.
fn write_registry(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The services in `svc-s`'s scope: itself and the next K-1.
fn scope_of(s: usize, services: usize, scope: usize) -> impl Iterator<Item = usize> {
    (0..scope.min(services)).map(move |j| (s + j) % services)
}

/// One Sidecar per service, selecting its workloads, listing its scope
/// and its backend.
fn sidecars(services: usize, scope: usize) -> String {
    let mut y = String::new();
    for s in 0..services {
        y.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: svc-{s}}}\nspec:\n  workloadSelector:\n    labels: {{app: svc-{s}}}\n  egress:\n  - hosts:\n"
        ));
        for t in scope_of(s, services, scope) {
            y.push_str(&format!("    - ./svc-{t}.default.svc.cluster.local\n"));
        }
        y.push_str(&format!(
            "    - ./backend-{}.default.svc.cluster.local\n",
            backend_of(s)
        ));
    }
    y
}

/// Writes rules (YAML documents) to pilot's store, as `meshctl create`.
fn create_rules(store: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let loaded = mesh_rules::load(&[mesh_rules::Source { name, text }])
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let changes = loaded
        .rules
        .into_iter()
        .map(|r| mesh_pilot::store::Change::Create(r.value))
        .collect();
    mesh_pilot::store::LocalStore::new(store).apply_blocking(changes)?;
    Ok(())
}

/// What every simulated proxy reports to the harness.
#[derive(Default)]
struct Probe {
    /// Proxies that hold all four types.
    synced: AtomicUsize,
    /// When the rule was written (µs since the epoch; 0: not yet).
    route_mark: AtomicU64,
    /// When the current endpoint change was written (0: none).
    endpoint_mark: AtomicU64,
    /// Bytes of every response received.
    bytes: AtomicU64,
    /// The rolling restart is on: proxies check backend endpoints.
    rolling: std::sync::atomic::AtomicBool,
    /// Endpoint assignments of a backend with no endpoint at all, received
    /// during the rolling restart (a backend always has one).
    empty_backends: AtomicU64,
}

/// When one proxy received the change of each phase (µs; 0: not yet).
#[derive(Default)]
struct Stamps {
    route: AtomicU64,
    endpoint: AtomicU64,
    /// Endpoint responses received during the rolling restart.
    rolling_pushes: AtomicU64,
    /// The backends whose endpoints it last received were all new pods
    /// (bit b of word b / 64).
    backends_new: [AtomicU64; BACKENDS.div_ceil(64)],
}

impl Stamps {
    /// Notes a backend's endpoints from an endpoint response of the
    /// rolling restart.
    fn see_backend(&self, probe: &Probe, r: &mesh_proto::envoy::service::discovery::v3::Resource) {
        use mesh_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
        let Some(b) = r
            .name
            .strip_prefix("outbound|80||backend-")
            .and_then(|n| n.strip_suffix(".default.svc.cluster.local"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return;
        };
        let Some(cla) = r
            .resource
            .as_ref()
            .and_then(|a| ClusterLoadAssignment::decode(a.value.as_slice()).ok())
        else {
            return;
        };
        use mesh_proto::envoy::config::core::v3::address::Address;
        use mesh_proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
        let addresses: Vec<&str> = cla
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| match e.host_identifier.as_ref()? {
                HostIdentifier::Endpoint(e) => match e.address.as_ref()?.address.as_ref()? {
                    Address::SocketAddress(s) => Some(s.address.as_str()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if addresses.is_empty() {
            probe.empty_backends.fetch_add(1, Ordering::SeqCst);
        }
        let new = !addresses.is_empty() && addresses.iter().all(|a| a.starts_with("10.250."));
        let (word, bit) = (&self.backends_new[b / 64], 1u64 << (b % 64));
        if new {
            word.fetch_or(bit, Ordering::SeqCst);
        } else {
            word.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    fn backend_is_new(&self, b: usize) -> bool {
        self.backends_new[b / 64].load(Ordering::SeqCst) & (1 << (b % 64)) != 0
    }
}

impl Stamps {
    /// Records the first response of `kind` after its phase began.
    fn see(&self, probe: &Probe, kind: XdsType, now: u64) {
        let (mark, stamp) = match kind {
            XdsType::Route => (&probe.route_mark, &self.route),
            XdsType::Endpoint => (&probe.endpoint_mark, &self.endpoint),
            _ => return,
        };
        if mark.load(Ordering::SeqCst) != 0 && stamp.load(Ordering::SeqCst) == 0 {
            stamp.store(now.max(1), Ordering::SeqCst);
        }
    }
}

/// One simulated proxy: subscribes to everything, ACKs every response,
/// counts its first answer to each type, and stamps the phases.
async fn proxy(
    xds: String,
    i: usize,
    services: usize,
    probe: Arc<Probe>,
    stamps: Arc<Stamps>,
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
        probe
            .bytes
            .fetch_add(r.encoded_len() as u64, Ordering::Relaxed);
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        });
        let Some(k) = XdsType::PUSH_ORDER
            .iter()
            .position(|t| t.type_url() == r.type_url)
        else {
            continue;
        };
        if seen & (1 << k) == 0 {
            seen |= 1 << k;
            if seen == 0b1111 {
                probe.synced.fetch_add(1, Ordering::SeqCst);
            }
        }
        let now = epoch.elapsed().as_micros() as u64;
        stamps.see(&probe, XdsType::PUSH_ORDER[k], now);
        if XdsType::PUSH_ORDER[k] == XdsType::Endpoint && probe.rolling.load(Ordering::SeqCst) {
            stamps.rolling_pushes.fetch_add(1, Ordering::SeqCst);
            for res in &r.resources {
                stamps.see_backend(&probe, res);
            }
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

/// Waits until `done` holds, up to [`WAIT`].
fn wait_until(what: &str, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Milliseconds from `mark` to each stamp of `picked` proxies, sorted.
fn delays(stamps: &[Arc<Stamps>], picked: &[usize], mark: u64, endpoint: bool) -> Vec<f64> {
    let mut ms: Vec<f64> = picked
        .iter()
        .map(|&i| {
            let s = &stamps[i];
            let at = if endpoint { &s.endpoint } else { &s.route };
            at.load(Ordering::SeqCst).saturating_sub(mark) as f64 / 1000.0
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    ms
}

/// The running world of one scale run: pilot, the proxies' runtime and
/// what they report.
struct Run {
    scale: Scale,
    pilot: std::process::Child,
    registry: std::path::PathBuf,
    store: std::path::PathBuf,
    rt: Option<tokio::runtime::Runtime>,
    probe: Arc<Probe>,
    stamps: Vec<Arc<Stamps>>,
    epoch: Instant,
    _dir: tempfile::TempDir,
}

impl Drop for Run {
    /// The simulated proxies go first, so none reports pilot's exit.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        let _ = self.pilot.kill();
        let _ = self.pilot.wait();
    }
}

impl Run {
    fn now(&self) -> u64 {
        (self.epoch.elapsed().as_micros() as u64).max(1)
    }

    /// Proxies whose scope holds `svc-0`, the service both changes touch.
    fn affected(&self) -> Vec<usize> {
        let Scale {
            proxies,
            services,
            scope,
        } = self.scale;
        (0..proxies)
            .filter(|&i| scope == 0 || scope_of(i % services, services, scope).any(|t| t == 0))
            .collect()
    }

    /// A 50/50 split of svc-0: ms to each affected proxy's new routes,
    /// and how many proxies outside the scope got routes anyway.
    fn route_change(&self, affected: &[usize]) -> anyhow::Result<(Vec<f64>, usize)> {
        let rule = "apiVersion: config.mesh.dev/v1alpha1\nkind: RouteRule\nmetadata: {name: svc-0-split}\nspec:\n  destination: {name: svc-0}\n  route:\n  - labels: {version: v1}\n    weight: 50\n  - labels: {version: v2}\n    weight: 50\n";
        let mark = self.now();
        self.probe.route_mark.store(mark, Ordering::SeqCst);
        create_rules(&self.store, "scale.yaml", rule)?;
        wait_until("every affected proxy got the new routes", || {
            affected
                .iter()
                .all(|&i| self.stamps[i].route.load(Ordering::SeqCst) != 0)
        })?;
        let ms = delays(&self.stamps, affected, mark, false);
        let outside = self
            .stamps
            .iter()
            .enumerate()
            .filter(|(i, s)| s.route.load(Ordering::SeqCst) != 0 && !affected.contains(i))
            .count();
        Ok((ms, outside))
    }

    /// [`ENDPOINT_CHANGES`] workloads added to svc-0, one at a time: ms to
    /// each affected proxy's new endpoints, and pilot's CPU ms per change
    /// with and without the registry file's re-read.
    fn endpoint_changes(&self, affected: &[usize]) -> anyhow::Result<(Vec<f64>, f64, f64)> {
        let Scale {
            proxies, services, ..
        } = self.scale;
        let mut ms = Vec::new();
        let pid = self.pilot.id();
        let cpu_before = procfs::cpu_seconds(pid);
        let read_before = procfs::threads_cpu_seconds(pid, REGISTRY_THREAD);
        for extra in 1..=ENDPOINT_CHANGES {
            for s in &self.stamps {
                s.endpoint.store(0, Ordering::SeqCst);
            }
            let mark = self.now();
            self.probe.endpoint_mark.store(mark, Ordering::SeqCst);
            let text = registry(services, proxies, extra, Rollout::default());
            write_registry(&self.registry, &text)?;
            wait_until("every affected proxy got the new endpoints", || {
                affected
                    .iter()
                    .all(|&i| self.stamps[i].endpoint.load(Ordering::SeqCst) != 0)
            })?;
            ms.extend(delays(&self.stamps, affected, mark, true));
        }
        let cpu = procfs::cpu_seconds(pid) - cpu_before;
        let read = procfs::threads_cpu_seconds(pid, REGISTRY_THREAD) - read_before;
        ms.sort_by(|a, b| a.total_cmp(b));
        let per_change = |s: f64| s * 1000.0 / ENDPOINT_CHANGES as f64;
        Ok((ms, per_change(cpu), per_change(cpu - read)))
    }
}

/// What the rolling restart measured.
struct Rolling {
    writes: usize,
    mean: f64,
    max: u64,
    converged_ms: f64,
}

/// The pace of the rolling restart's registry writes (one pod up or down
/// every few milliseconds: a fast rollout).
const ROLL_STEP: Duration = Duration::from_millis(5);

impl Run {
    /// The backends proxy `i` reaches.
    fn backends_of(&self, i: usize) -> Vec<usize> {
        if self.scale.scope == 0 {
            (0..BACKENDS).collect()
        } else {
            vec![backend_of(i % self.scale.services)]
        }
    }

    /// Every backend's pods replaced, one backend at a time (new pods up,
    /// then the old ones gone), by registry writes [`ROLL_STEP`] apart.
    fn rolling_restart(&self) -> anyhow::Result<Rolling> {
        let Scale {
            proxies, services, ..
        } = self.scale;
        self.probe.rolling.store(true, Ordering::SeqCst);
        let mut writes = 0;
        for done in 0..BACKENDS {
            for surge in [true, false] {
                let rollout = Rollout {
                    done: if surge { done } else { done + 1 },
                    surge,
                };
                let text = registry(services, proxies, ENDPOINT_CHANGES, rollout);
                write_registry(&self.registry, &text)?;
                writes += 1;
                std::thread::sleep(ROLL_STEP);
            }
        }
        let last = Instant::now();
        let behind = || -> Vec<(usize, usize)> {
            self.stamps
                .iter()
                .enumerate()
                .flat_map(|(i, s)| {
                    self.backends_of(i)
                        .into_iter()
                        .filter(|&b| !s.backend_is_new(b))
                        .map(move |b| (i, b))
                })
                .collect()
        };
        wait_until("every proxy holds the backends' new pods", || {
            behind().is_empty()
        })
        .map_err(|e| {
            let behind = behind();
            e.context(format!(
                "{} (proxy, backend) pairs behind, e.g. {:?}",
                behind.len(),
                &behind[..behind.len().min(5)]
            ))
        })?;
        let converged_ms = last.elapsed().as_secs_f64() * 1000.0;
        self.probe.rolling.store(false, Ordering::SeqCst);
        let pushes: Vec<u64> = self
            .stamps
            .iter()
            .map(|s| s.rolling_pushes.load(Ordering::SeqCst))
            .collect();
        Ok(Rolling {
            writes,
            mean: pushes.iter().sum::<u64>() as f64 / pushes.len().max(1) as f64,
            max: pushes.iter().copied().max().unwrap_or(0),
            converged_ms,
        })
    }
}

/// Starts pilot over the scale's registry (and Sidecars), then the proxies.
fn start(pilot: &Path, scale: Scale) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let reg = dir.path().join("registry.yaml");
    std::fs::write(
        &reg,
        registry(scale.services, scale.proxies, 0, Rollout::default()),
    )?;
    let store = dir.path().join("store");
    if scale.scope > 0 {
        create_rules(
            &store,
            "sidecars.yaml",
            &sidecars(scale.services, scale.scope),
        )?;
    }
    let (child, xds) = start_pilot(Command::new(pilot), &store, &reg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let probe: Arc<Probe> = Arc::default();
    let stamps: Vec<Arc<Stamps>> = (0..scale.proxies).map(|_| Arc::default()).collect();
    let epoch = Instant::now();
    for (i, own) in stamps.iter().enumerate() {
        let task = proxy(
            xds.clone(),
            i,
            scale.services,
            probe.clone(),
            own.clone(),
            epoch,
        );
        rt.spawn(task);
    }
    Ok(Run {
        scale,
        pilot: child,
        registry: reg,
        store,
        rt: Some(rt),
        probe,
        stamps,
        epoch,
        _dir: dir,
    })
}

/// Runs the scale benchmark with the pilot binary at `pilot`.
pub fn run(pilot: &Path, scale: Scale) -> anyhow::Result<ScaleReport> {
    let run = start(pilot, scale)?;
    wait_until("every proxy synced", || {
        run.probe.synced.load(Ordering::SeqCst) == scale.proxies
    })?;
    let initial_sync_s = run.epoch.elapsed().as_secs_f64();
    let affected = run.affected();
    let (route, outside) = run.route_change(&affected)?;
    let (endpoint, cpu_ms, cpu_ms_without_read) = run.endpoint_changes(&affected)?;
    let rolling = run.rolling_restart()?;
    let pid = run.pilot.id();
    let report = ScaleReport {
        proxies: scale.proxies,
        services: scale.services,
        backend_services: BACKENDS,
        scoped: scale.scope > 0,
        services_per_proxy: if scale.scope > 0 {
            scale.scope.min(scale.services)
        } else {
            scale.services
        },
        initial_sync_s,
        route_affected_proxies: affected.len(),
        route_push_p50_ms: percentile(&route, 0.5),
        route_push_p99_ms: percentile(&route, 0.99),
        route_push_max_ms: route.last().copied().unwrap_or(0.0),
        route_pushes_outside_scope: outside,
        endpoint_push_p50_ms: percentile(&endpoint, 0.5),
        endpoint_push_p99_ms: percentile(&endpoint, 0.99),
        cpu_ms_per_endpoint_change: cpu_ms,
        cpu_ms_per_endpoint_change_without_registry_read: cpu_ms_without_read,
        rolling_restart_writes: rolling.writes,
        rolling_restart_pushes_per_proxy_mean: rolling.mean,
        rolling_restart_pushes_per_proxy_max: rolling.max,
        rolling_restart_zero_endpoint_assignments: run.probe.empty_backends.load(Ordering::SeqCst),
        rolling_restart_converged_ms: rolling.converged_ms,
        pilot_rss_bytes: (procfs::peak_rss_mb(pid) * 1024.0 * 1024.0) as u64,
        pilot_cpu_s: procfs::cpu_seconds(pid),
        bytes_sent: run.probe.bytes.load(Ordering::Relaxed),
    };
    drop(run);
    Ok(report)
}
