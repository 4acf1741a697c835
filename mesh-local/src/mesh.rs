//! A mesh in a [`World`]: pilot in the node namespace (xDS on the bridge
//! address), pods with real capture and a sidecar following pilot, apps,
//! and `meshctl` writing the rule store pilot watches.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_rules::identity::{DEFAULT_TRUST_DOMAIN, Identity};

use crate::netns::{LOOPBACK_NET, POD_NET, World, output};
use crate::{Doing, Error, Lines, Result, arg, binary, envoy_binary, poll};

/// Which proxy a pod runs as its sidecar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sidecar {
    /// `mesh-proxy sidecar` on a Delta ADS stream.
    #[default]
    MeshProxy,
    /// `mesh-proxy sidecar --xds-flavor sotw` (State of the World).
    MeshProxySotw,
    /// An unmodified Envoy bootstrapped only with the ADS cluster
    /// (State-of-the-World).
    Envoy,
    /// The same Envoy on an incremental (Delta) ADS stream.
    EnvoyDelta,
}

impl Sidecar {
    /// mesh-proxy, whatever its xDS flavour.
    pub fn is_mesh_proxy(self) -> bool {
        matches!(self, Sidecar::MeshProxy | Sidecar::MeshProxySotw)
    }

    /// How the demo names it.
    pub fn name(self) -> &'static str {
        if self.is_mesh_proxy() {
            "mesh-proxy"
        } else {
            "Envoy"
        }
    }
}

/// A pod: a namespace on the bridge, maybe with a sidecar.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Its namespace.
    pub ns: String,
    /// Its IP.
    pub ip: Ipv4Addr,
    /// Its xDS node id.
    pub node_id: String,
    /// Its sidecar, if any.
    pub sidecar: Option<Sidecar>,
    /// In a loopback world, where its app listens (its sidecar listens on
    /// `ip`, as callers and the app's own calls expect).
    pub app_ip: Option<Ipv4Addr>,
}

/// pilot's xDS port on the bridge.
pub const XDS_PORT: u16 = 15010;
/// pilot's xDS port over mutual TLS (Istio's), used when the mesh has mTLS.
pub const XDS_TLS_PORT: u16 = 15012;
/// How the sidecars report spans, to the node's address on the bridge (or
/// the loopback node address): Zipkin v2 JSON on 9411, OTLP on 4317 (gRPC)
/// or 4318 (HTTP) — the ports Jaeger and OpenTelemetry collectors use.
/// [`Mesh::start_jaeger`] starts a collector there; without one the
/// sidecars' reports are refused inside the world and counted as dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tracer {
    /// Zipkin v2 JSON.
    #[default]
    Zipkin,
    /// OTLP over gRPC.
    OtlpGrpc,
    /// OTLP over HTTP.
    OtlpHttp,
}

impl Tracer {
    /// pilot's flags for this tracer with a collector on `host`.
    fn pilot_args(self, host: &str) -> Vec<String> {
        match self {
            Tracer::Zipkin => vec!["--zipkin-address".into(), format!("{host}:9411")],
            Tracer::OtlpGrpc => vec![
                "--otlp-address".into(),
                format!("{host}:4317"),
                "--otlp-protocol".into(),
                "grpc".into(),
            ],
            Tracer::OtlpHttp => vec![
                "--otlp-address".into(),
                format!("{host}:4318"),
                "--otlp-protocol".into(),
                "http".into(),
            ],
        }
    }
}

/// Jaeger's configuration: receivers on the collector host (`{host}`),
/// spans kept in memory, queries on `{query}`.
const JAEGER_CONFIG: &str = "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp, zipkin]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {level: none}
    logs: {level: warn}
extensions:
  jaeger_storage: {backends: {mem: {memory: {max_traces: 100000}}}}
  jaeger_query:
    storage: {traces: mem}
    http: {endpoint: '{query}:16686'}
    grpc: {endpoint: '{query}:16685'}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: '{host}:4317'}
      http: {endpoint: '{host}:4318'}
  zipkin: {endpoint: '{host}:9411'}
processors:
  batch: {timeout: 100ms}
exporters:
  jaeger_storage_exporter: {trace_storage: mem}
";

/// Mutual TLS between the sidecars: mesh-ca runs in the node namespace,
/// each sidecar gets a bootstrap token for its service account (its
/// `app` label) and asks for its certificate, pilot configures TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtls {
    /// Workloads take TLS or plaintext.
    Permissive,
    /// Workloads take TLS only.
    Strict,
}

/// Replaces `path` at once (a rename), so a follower never reads half.
fn replace_file(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .doing(|| format!("write {}", path.display()))
}

/// mesh-ca's port on the node.
pub const CA_PORT: u16 = 15013;

/// A mesh: the world, a folder for its files, the rule store and pilot.
pub struct Mesh {
    /// Files of this mesh (store, registry, app logs, bootstraps); 0755 so
    /// the proxy user can read what it needs.
    pub dir: tempfile::TempDir,
    /// The rule store folder.
    pub store: PathBuf,
    /// The registry file pilot follows.
    pub registry: PathBuf,
    /// The mesh's settings file pilot follows (the `mesh` ConfigMap's
    /// document: outbound policy, access log).
    pub settings: PathBuf,
    pilot: Option<(u32, Lines)>,
    /// How pilot tells the sidecars to report spans (set before
    /// [`Mesh::start_pilot`]); every trace is recorded.
    pub tracer: Tracer,
    /// Mutual TLS (set before [`Mesh::start_pilot`]); off when `None`.
    pub mtls: Option<Mtls>,
    /// The lifetime sidecars ask for their certificates (`4m`); the CA's
    /// default when `None`.
    pub cert_validity: Option<String>,
    /// mesh-ca's process, while it runs.
    ca: Option<u32>,
    /// The namespaces and processes (dropped last).
    pub world: World,
}

impl Mesh {
    /// An empty world with an empty store and registry; pilot not started.
    pub fn new() -> Result<Mesh> {
        Mesh::in_world(World::new()?)
    }

    /// The same on loopback, without root: pods are addresses 127.10.0.N,
    /// their apps listen on 127.11.0.N, sidecars are used explicitly (no
    /// capture), everything runs as the current user.
    pub fn loopback() -> Result<Mesh> {
        Mesh::in_world(World::loopback())
    }

    fn in_world(mut world: World) -> Result<Mesh> {
        let dir = tempfile::tempdir().doing(|| "create the mesh's folder".into())?;
        world.logs = Some(dir.path().to_owned());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .doing(|| format!("open {} to the proxy user", dir.path().display()))?;
        let store = dir.path().join("store");
        let registry = dir.path().join("registry.yaml");
        let settings = dir.path().join("mesh.yaml");
        let mesh = Mesh {
            dir,
            store,
            registry,
            settings,
            pilot: None,
            tracer: Tracer::default(),
            mtls: None,
            cert_validity: None,
            ca: None,
            world,
        };
        mesh.write_registry("services: []\n")?;
        mesh.write_settings("# the mesh's settings: pilot's flags rule\n")?;
        Ok(mesh)
    }

    /// pilot's xDS address, reachable from every pod: over mutual TLS
    /// when the mesh has mTLS (pilot then keeps no plaintext port).
    pub fn xds_address(&self) -> String {
        let port = if self.mtls.is_some() {
            XDS_TLS_PORT
        } else {
            XDS_PORT
        };
        if self.world.loopback {
            format!("{LOOPBACK_NET}.1:{port}")
        } else {
            format!("{POD_NET}.1:{port}")
        }
    }

    /// pilot's debug address (in the node namespace, or on loopback).
    pub fn debug_address(&self) -> String {
        if self.world.loopback {
            format!("{LOOPBACK_NET}.1:15014")
        } else {
            "127.0.0.1:15014".into()
        }
    }

    /// Replaces the registry file (pilot reloads it).
    pub fn write_registry(&self, yaml: &str) -> Result<()> {
        replace_file(&self.registry, yaml)
    }

    /// Replaces the mesh's settings file (pilot reloads it; one that does
    /// not parse leaves the last good settings in force).
    pub fn write_settings(&self, yaml: &str) -> Result<()> {
        replace_file(&self.settings, yaml)
    }

    /// Starts pilot in the node namespace and waits for `ready`.
    pub fn start_pilot(&mut self) -> Result<()> {
        let pilot = binary("mesh-pilot")?;
        let (store, registry, settings, xds, debug) = (
            arg(&self.store)?.to_owned(),
            arg(&self.registry)?.to_owned(),
            arg(&self.settings)?.to_owned(),
            self.xds_address(),
            self.debug_address(),
        );
        let node = self.world.node.clone();
        let mut tracer = self.tracer.pilot_args(&self.collector_host());
        let mut xds_flag = "--xds-address";
        if let Some(mode) = self.mtls {
            self.start_ca()?;
            xds_flag = "--xds-tls-address";
            let me = Identity::pilot(DEFAULT_TRUST_DOMAIN);
            tracer.extend(self.ca_args("mesh-pilot", &me.namespace, &me.service_account)?);
            tracer.push("--mtls".into());
            tracer.push(
                if mode == Mtls::Strict {
                    "strict"
                } else {
                    "permissive"
                }
                .into(),
            );
        }
        let child = self.world.spawn(
            &node,
            None,
            &[
                arg(&pilot)?,
                "--store",
                &store,
                "--registry",
                &registry,
                "--mesh-config",
                &settings,
                xds_flag,
                &xds,
                "--debug-address",
                &debug,
                "--trace-sampling",
                "100",
            ]
            .into_iter()
            .chain(tracer.iter().map(String::as_str))
            .collect::<Vec<_>>(),
            Stdio::piped(),
        )?;
        let pid = child.id();
        let mut lines = Lines::new(child.stdout.take().expect("piped"));
        lines.wait_for("ready", Duration::from_secs(30))?;
        self.pilot = Some((pid, lines));
        Ok(())
    }

    /// mesh-ca's files (Istio's `cacerts` layout).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// The roots file every sidecar trusts and follows.
    pub fn roots_file(&self) -> PathBuf {
        self.dir.path().join("roots.pem")
    }

    /// Stops mesh-ca (the sidecars keep their certificates until they
    /// expire).
    pub fn stop_ca(&mut self) {
        if let Some(pid) = self.ca.take() {
            self.world.kill(pid);
        }
    }

    /// Starts mesh-ca in the node namespace (a root generated in the
    /// mesh's folder on the first start, bootstrap tokens from a file the
    /// sidecars are added to) and waits until it serves; on the first
    /// start the roots are copied where the proxy user can read them.
    pub fn start_ca(&mut self) -> Result<()> {
        let ca = binary("mesh-ca")?;
        let dir = self.dir.path();
        let tokens = dir.join("ca-tokens");
        if !tokens.exists() {
            std::fs::write(&tokens, "# token,namespace,service-account\n")
                .doing(|| format!("write {}", tokens.display()))?;
        }
        let (host, node) = (self.collector_host(), self.world.node.clone());
        let (cadir, address) = (dir.join("ca"), format!("{host}:{CA_PORT}"));
        let pid = self.world.spawn_ready(
            &node,
            None,
            &[
                arg(&ca)?,
                "--dir",
                arg(&cadir)?,
                "--address",
                &address,
                "--bootstrap-tokens",
                arg(&tokens)?,
                "--server-name",
                &host,
            ],
        )?;
        self.ca = Some(pid);
        let roots = dir.join("roots.pem");
        if !roots.exists() {
            std::fs::copy(cadir.join("root-cert.pem"), &roots)
                .and_then(|_| {
                    std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o644))
                })
                .doing(|| format!("copy the roots to {}", roots.display()))?;
        }
        Ok(())
    }

    /// A new bootstrap token for `name`, of service account `account` in
    /// `namespace`, added to mesh-ca's token file; returns the file
    /// holding it (readable by the proxy user).
    pub fn ca_token(&self, name: &str, namespace: &str, account: &str) -> Result<PathBuf> {
        use std::io::Write;
        let dir = self.dir.path();
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let file = dir.join(format!("{name}.token"));
        std::fs::write(&file, &token)
            .and_then(|()| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)))
            .doing(|| format!("write {}", file.display()))?;
        let tokens = dir.join("ca-tokens");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&tokens)
            .and_then(|mut f| writeln!(f, "{token},{namespace},{account}"))
            .doing(|| format!("add a token to {}", tokens.display()))?;
        Ok(file)
    }

    /// mesh-ca's address as pods see it.
    pub fn ca_address(&self) -> String {
        format!("{}:{CA_PORT}", self.collector_host())
    }

    /// mesh-ca's flags for `name`, of service account `account` in
    /// `namespace`, with a new bootstrap token.
    fn ca_args(&self, name: &str, namespace: &str, account: &str) -> Result<Vec<String>> {
        let file = self.ca_token(name, namespace, account)?;
        let validity = self
            .cert_validity
            .iter()
            .flat_map(|v| ["--cert-validity".to_owned(), v.clone()]);
        Ok([
            "--ca-address",
            &self.ca_address(),
            "--ca-server-name",
            &self.collector_host(),
            "--ca-roots",
            arg(&self.roots_file())?,
            "--ca-token-file",
            arg(&file)?,
            "--service-account",
            account,
        ]
        .map(str::to_owned)
        .into_iter()
        .chain(validity)
        .collect())
    }

    /// Where span collectors listen: the node's address as pods see it.
    fn collector_host(&self) -> String {
        let net = if self.world.loopback {
            LOOPBACK_NET
        } else {
            POD_NET
        };
        format!("{net}.1")
    }

    /// Starts a real Jaeger (all in one: OTLP and Zipkin receivers, memory
    /// storage, the query API) in the node namespace, at the collector
    /// host, and waits until it answers queries. `MESH_JAEGER_BIN` names
    /// the binary (`tests/jaeger/build.sh` builds it and prints its path).
    pub fn start_jaeger(&mut self) -> Result<()> {
        let bin = std::env::var("MESH_JAEGER_BIN").map_err(|_| {
            Error::Unexpected(
                "MESH_JAEGER_BIN is not set: run tests/jaeger/build.sh and set it to the path it prints".into(),
            )
        })?;
        let config = self.dir.path().join("jaeger.yaml");
        let text = JAEGER_CONFIG
            .replace("{host}", &self.collector_host())
            .replace("{query}", &self.jaeger_query_host());
        std::fs::write(&config, text).doing(|| format!("write {}", config.display()))?;
        let node = self.world.node.clone();
        self.world.spawn(
            &node,
            None,
            &[&bin, "--config", &format!("file:{}", arg(&config)?)],
            Stdio::null(),
        )?;
        poll("Jaeger to answer queries", Duration::from_secs(30), || {
            self.jaeger("/api/services").ok().map(|_| ())
        })
    }

    fn jaeger_query_host(&self) -> String {
        if self.world.loopback {
            self.collector_host()
        } else {
            "127.0.0.1".into()
        }
    }

    /// Jaeger's query API answer at `path` (`/api/traces?service=…`).
    pub fn jaeger(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("http://{}:16686{path}", self.jaeger_query_host());
        self.json_on_node(&url, "Jaeger")
    }

    /// GET `url` from the node namespace, as JSON; `who` answers there.
    fn json_on_node(&self, url: &str, who: &str) -> Result<serde_json::Value> {
        let (code, out) = self.world.exec(&self.world.node, &["curl", "-sf", url]);
        if code != 0 {
            return Err(Error::Unexpected(format!(
                "{who} did not answer {url} (curl exit {code})"
            )));
        }
        serde_json::from_str(&out)
            .map_err(|e| Error::Unexpected(format!("{who}'s {url} is not JSON ({e}): {out}")))
    }

    /// Starts a real Prometheus in the node namespace, scraping the
    /// sidecars at `targets` (`IP:15090`, `/stats/prometheus`) every
    /// second, and waits until it is ready. [`Mesh::promql`] queries it.
    pub fn start_prometheus(&mut self, targets: &[String]) -> Result<()> {
        let dir = self.dir.path().join("prometheus");
        let config = dir.join("prometheus.yml");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 900ms}}\nscrape_configs:\n- job_name: sidecars\n  metrics_path: /stats/prometheus\n  static_configs:\n  - targets: [{list}]\n- job_name: pilot\n  metrics_path: /metrics\n  static_configs:\n  - targets: ['{}']\n",
            self.debug_address()
        );
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&config, text))
            .doing(|| format!("write {}", config.display()))?;
        let node = self.world.node.clone();
        self.world.spawn(
            &node,
            None,
            &[
                "prometheus",
                &format!("--config.file={}", arg(&config)?),
                &format!("--storage.tsdb.path={}", arg(&dir.join("data"))?),
                "--web.listen-address=127.0.0.1:9090",
            ],
            Stdio::null(),
        )?;
        poll("Prometheus to be ready", Duration::from_secs(30), || {
            let (code, out) = self.world.exec(
                &self.world.node,
                &["curl", "-sf", "http://127.0.0.1:9090/-/ready"],
            );
            (code == 0 && out.contains("Ready")).then_some(())
        })
    }

    /// The result of PromQL `query` (an instant query) against the
    /// Prometheus of [`Mesh::start_prometheus`]: its `data.result` list.
    pub fn promql(&self, query: &str) -> Result<Vec<serde_json::Value>> {
        let (code, out) = self.world.exec(
            &self.world.node,
            &[
                "curl",
                "-sf",
                "--data-urlencode",
                &format!("query={query}"),
                "http://127.0.0.1:9090/api/v1/query",
            ],
        );
        let answer: serde_json::Value = serde_json::from_str(&out).map_err(|e| {
            Error::Unexpected(format!(
                "Prometheus answered {query} with curl exit {code}: {e}: {out}"
            ))
        })?;
        if answer["status"] != "success" {
            return Err(Error::Unexpected(format!("PromQL {query}: {answer}")));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Kills pilot (SIGKILL: no goodbye to the proxies).
    pub fn kill_pilot(&mut self) {
        if let Some((pid, _)) = self.pilot.take() {
            self.world.kill(pid);
        }
    }

    /// pilot's `/debug/...` answer as JSON.
    pub fn pilot_debug(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("http://{}{path}", self.debug_address());
        self.json_on_node(&url, "pilot's debug endpoint")
    }

    /// A sample of pilot's `/metrics` (`series` as printed, labels
    /// included); 0 when pilot has not printed it yet.
    pub fn pilot_metric(&self, series: &str) -> Result<f64> {
        let url = format!("http://{}/metrics", self.debug_address());
        let (code, out) = self.world.exec(&self.world.node, &["curl", "-sf", &url]);
        if code != 0 {
            return Err(Error::Unexpected(format!(
                "pilot did not answer {url} (curl exit {code})"
            )));
        }
        Ok(out
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0))
    }

    /// Waits until pilot has sent `pod`'s proxy a configuration computed
    /// from rule store revision `revision` or later, and the proxy ACKed
    /// every type of it (SYNCED).
    pub fn wait_synced(&self, pod: &Pod, revision: u64) -> Result<()> {
        poll(
            &format!("{} to be SYNCED at revision {revision}", pod.node_id),
            Duration::from_secs(20),
            || {
                let proxies = self.pilot_debug("/debug/syncz").ok()?;
                proxies.as_array()?.iter().find(|p| {
                    p["node"] == pod.node_id.as_str()
                        && p["rules_revision"].as_u64() >= Some(revision)
                        && p["states"]
                            .as_object()
                            .is_some_and(|s| s.len() == 4 && s.values().all(|v| v == "SYNCED"))
                })?;
                Some(())
            },
        )
    }

    /// Waits until `pod`'s sidecar holds at least `n` healthy endpoints in
    /// `cluster` (its admin `/clusters`, as Envoy prints it): a registered
    /// workload has reached the callers' configuration.
    pub fn wait_endpoints(&self, pod: &Pod, cluster: &str, n: usize) -> Result<()> {
        poll(
            &format!(
                "{n} healthy endpoint(s) of {cluster} in {}'s sidecar",
                pod.ns
            ),
            Duration::from_secs(20),
            || {
                let flags = self.endpoint_stats(pod, cluster, "health_flags");
                let count = flags.iter().filter(|f| *f == "healthy").count();
                (count >= n).then_some(())
            },
        )
    }

    /// The values of stat `stat` of each endpoint of `cluster` in `pod`'s
    /// sidecar: its admin `/clusters` rows `CLUSTER::ADDRESS::STAT::VALUE`,
    /// which mesh-proxy and Envoy print alike.
    pub fn endpoint_stats(&self, pod: &Pod, cluster: &str, stat: &str) -> Vec<String> {
        let prefix = format!("{cluster}::");
        self.admin(pod, "/clusters")
            .lines()
            .filter_map(|l| {
                // An IPv6 address holds `::` too: split from the right.
                let mut parts = l.strip_prefix(&prefix)?.rsplitn(3, "::");
                let (value, name) = (parts.next()?, parts.next()?);
                (name == stat).then(|| value.trim().to_owned())
            })
            .collect()
    }

    /// Adds a pod with `labels`; with a sidecar, programs capture and
    /// starts the proxy as uid 1337, and waits until it serves its first
    /// configuration from pilot.
    pub fn pod(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        sidecar: Option<Sidecar>,
    ) -> Result<Pod> {
        let (ns, ip) = self.world.host(name)?;
        let node_id = format!("sidecar~{ip}~{name}.default~default.svc.cluster.local");
        // On loopback an app with a sidecar moves aside: the sidecar takes
        // the pod's address, as callers expect.
        let app_ip = (self.world.loopback && sidecar.is_some())
            .then(|| Ipv4Addr::new(127, 11, ip.octets()[2], ip.octets()[3]));
        let pod = Pod {
            ns,
            ip,
            node_id,
            sidecar,
            app_ip,
        };
        let labels_arg = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let Some(kind) = sidecar else {
            return Ok(pod);
        };
        if !kind.is_mesh_proxy() && self.world.loopback {
            return Err(Error::Unexpected(
                "Envoy sidecars run in the network-namespace world only".into(),
            ));
        }
        if !self.world.loopback {
            let proxy = binary("mesh-proxy")?;
            let (code, out) = self.world.exec(&pod.ns, &[arg(&proxy)?, "init"]);
            if code != 0 {
                return Err(Error::Command {
                    command: format!("mesh-proxy init (in {})", pod.ns),
                    output: out,
                });
            }
        }
        let account = service_account(name, labels);
        match kind {
            Sidecar::MeshProxy | Sidecar::MeshProxySotw => {
                let flavor = if kind == Sidecar::MeshProxy {
                    "delta"
                } else {
                    "sotw"
                };
                let ca = match self.mtls {
                    Some(_) => {
                        let mut ca = self.ca_args(name, "default", account)?;
                        ca.push("--xds-tls".into());
                        ca
                    }
                    None => Vec::new(),
                };
                self.start_mesh_proxy("sidecar", &pod, name, &labels_arg, flavor, &ca)?
            }
            Sidecar::Envoy | Sidecar::EnvoyDelta => {
                let api = if kind == Sidecar::Envoy {
                    "GRPC"
                } else {
                    "DELTA_GRPC"
                };
                let sds = match self.mtls {
                    Some(_) => Some(self.start_sds_agent(&pod, name, account)?),
                    None => None,
                };
                self.start_envoy(&pod, name, labels, api, sds.as_deref())?
            }
        }
        Ok(pod)
    }

    /// Adds a pod running mesh-proxy as an ingress gateway with `labels`
    /// (Gateways select it by them), and waits until it serves its first
    /// configuration from pilot. Its listeners come from the Gateways.
    pub fn gateway(&mut self, name: &str, labels: &[(&str, &str)]) -> Result<Pod> {
        let (ns, ip) = self.world.host(name)?;
        let pod = Pod {
            ns,
            ip,
            node_id: format!("router~{ip}~{name}.default~default.svc.cluster.local"),
            sidecar: Some(Sidecar::MeshProxy),
            app_ip: None,
        };
        if !self.world.loopback {
            // As the bundle's gateway pods do (a pod sysctl): the proxy
            // user may bind the Gateways' ports below 1024.
            let (code, out) = self.world.exec(
                &pod.ns,
                &["sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0"],
            );
            if code != 0 {
                return Err(Error::Command {
                    command: format!("sysctl (in {})", pod.ns),
                    output: out,
                });
            }
        }
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.start_mesh_proxy("gateway", &pod, name, &labels.join(","), "delta", &[])?;
        Ok(pod)
    }

    /// Starts `mesh-proxy MODE` (`sidecar` or `gateway`) for `pod`.
    fn start_mesh_proxy(
        &mut self,
        mode: &str,
        pod: &Pod,
        name: &str,
        labels: &str,
        flavor: &str,
        extra: &[String],
    ) -> Result<()> {
        let proxy = binary("mesh-proxy")?;
        let (xds, ip) = (self.xds_address(), pod.ip.to_string());
        let mut args = vec![
            arg(&proxy)?.to_owned(),
            mode.into(),
            "--xds-address".into(),
            xds,
            "--workload".into(),
            name.into(),
            "--ip".into(),
            ip.clone(),
            "--labels".into(),
            labels.into(),
            "--node-id".into(),
            pod.node_id.clone(),
            "--xds-flavor".into(),
            flavor.into(),
            "--concurrency".into(),
            "1".into(),
        ];
        if let Some(app) = pod.app_ip {
            // No capture on loopback: the app uses its sidecar explicitly,
            // and the sidecar's ports live on the pod's own address.
            for (flag, value) in [
                ("--interception-mode", "none".to_owned()),
                ("--app-ip", app.to_string()),
                ("--admin-address", format!("{ip}:15000")),
                ("--metrics-address", format!("{ip}:15090")),
                ("--health-address", format!("{ip}:15021")),
            ] {
                args.push(flag.into());
                args.push(value);
            }
        }
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.world.spawn_ready(&pod.ns, Some(1337), &args)?;
        Ok(())
    }

    /// Envoy with an ADS bootstrap; `api_type` `GRPC` (State of the World)
    /// or `DELTA_GRPC`.
    /// Starts `mesh-proxy sds` in `pod` (as the proxy user): it gets the
    /// workload's certificate from mesh-ca and serves it to the pod's
    /// Envoy on a Unix socket, whose path it returns.
    fn start_sds_agent(&mut self, pod: &Pod, name: &str, account: &str) -> Result<String> {
        let proxy = binary("mesh-proxy")?;
        // A folder of the proxy user's own: it creates the socket there.
        let folder = self.dir.path().join(format!("{name}-sds"));
        std::fs::create_dir(&folder)
            .and_then(|()| std::os::unix::fs::chown(&folder, Some(1337), Some(1337)))
            .doing(|| format!("create {}", folder.display()))?;
        let socket = folder.join("sds.sock");
        let socket = arg(&socket)?.to_owned();
        let mut args = vec![
            arg(&proxy)?.to_owned(),
            "sds".into(),
            "--socket".into(),
            socket.clone(),
        ];
        args.extend(self.ca_args(name, "default", account)?);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.world.spawn_ready(&pod.ns, Some(1337), &args)?;
        Ok(socket)
    }

    fn start_envoy(
        &mut self,
        pod: &Pod,
        name: &str,
        labels: &[(&str, &str)],
        api_type: &str,
        sds: Option<&str>,
    ) -> Result<()> {
        let bootstrap = envoy_bootstrap(pod, name, labels, api_type, sds);
        let path = self.dir.path().join(format!("{name}-envoy.yaml"));
        std::fs::write(&path, bootstrap)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)))
            .doing(|| format!("write {}", path.display()))?;
        let envoy = envoy_binary()?;
        self.world.spawn(
            &pod.ns,
            Some(1337),
            &[
                arg(&envoy)?,
                "-c",
                arg(&path)?,
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ],
            Stdio::null(),
        )?;
        // Envoy's readiness signal: /ready says LIVE once its first xDS
        // configuration is in force.
        poll(
            &format!("envoy in {} to be LIVE", pod.ns),
            Duration::from_secs(30),
            || {
                let (_, out) = self
                    .world
                    .exec(&pod.ns, &["curl", "-s", "http://127.0.0.1:15000/ready"]);
                (out.trim() == "LIVE").then_some(())
            },
        )
    }

    /// Starts a sample service (`svca`, `svcb`, `msgd`) in `pod` as an
    /// ordinary app (not the proxy user, so its calls are captured) and
    /// waits until it listens.
    pub fn sample(&mut self, pod: &Pod, bin: &str, args: &[&str]) -> Result<()> {
        let path = binary(bin)?;
        let mut full = vec![arg(&path)?.to_owned()];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        if self.world.loopback {
            let port = if bin == "msgd" { 9997 } else { 8080 };
            let listen = pod.app_ip.unwrap_or(pod.ip);
            full.extend(["--listen".into(), format!("{listen}:{port}")]);
            if pod.sidecar.is_some() {
                full.extend(["--proxy".into(), format!("{}:15001", pod.ip)]);
            }
        }
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let child = self.world.spawn(&pod.ns, None, &full, Stdio::piped())?;
        let mut lines = Lines::new(child.stdout.take().expect("piped"));
        lines.wait_for("listening", Duration::from_secs(10))?;
        lines.discard_rest();
        Ok(())
    }

    /// Starts msgd in `pod` on 9997; returns its request log (one JSON
    /// object per request, with the headers it got).
    pub fn msgd(&mut self, pod: &Pod) -> Result<PathBuf> {
        let log = self.dir.path().join(format!("{}-msgd.log", pod.ns));
        std::fs::write(&log, "").doing(|| format!("create {}", log.display()))?;
        self.sample(pod, "msgd", &["--log", arg(&log)?])?;
        Ok(log)
    }

    /// Runs meshctl against the mesh's store; returns (exit code, stdout+stderr).
    pub fn meshctl(&self, args: &[&str]) -> Result<(i32, String)> {
        let out = Command::new(binary("meshctl")?)
            .args(args)
            .arg("--store")
            .arg(&self.store)
            .output()
            .doing(|| "run meshctl".into())?;
        Ok((
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// Runs meshctl in the node namespace, where pilot's debug address is
    /// (`proxy-status`, `analyze`); returns (exit code, stdout).
    pub fn meshctl_on_node(&self, args: &[&str]) -> Result<(i32, String)> {
        let meshctl = binary("meshctl")?;
        let mut full = vec![arg(&meshctl)?];
        full.extend_from_slice(args);
        Ok(self.world.exec(&self.world.node, &full))
    }

    /// Writes `yaml` to a file and runs `meshctl VERB -f FILE`; returns the
    /// store revision it reached.
    pub fn apply_rules(&self, verb: &str, yaml: &str) -> Result<u64> {
        let path = self
            .dir
            .path()
            .join(format!("rule-{}.yaml", fastrand_name()));
        std::fs::write(&path, yaml).doing(|| format!("write {}", path.display()))?;
        let (code, out) = self.meshctl(&[verb, "-f", arg(&path)?])?;
        if code != 0 {
            return Err(Error::Command {
                command: format!("meshctl {verb}"),
                output: out,
            });
        }
        // "Created config … at revision N" / "Updated config … to revision N"
        out.lines()
            .filter_map(|l| l.rsplit_once("revision ")?.1.trim().parse().ok())
            .max()
            .ok_or_else(|| Error::Unexpected(format!("no revision in meshctl's answer: {out}")))
    }

    /// curl in `pod` as an app would (not the proxy user, so captured;
    /// on loopback through its sidecar as HTTP proxy).
    pub fn curl(&self, pod: &Pod, args: &[&str]) -> (i32, String) {
        output(self.curl_command(pod, args))
    }

    /// The command [`Mesh::curl`] runs, to start it in the background.
    pub fn curl_command(&self, pod: &Pod, args: &[&str]) -> Command {
        let proxy = format!("{}:15001", pod.ip);
        let mut full = vec!["curl", "-s", "--max-time", "30"];
        if self.world.loopback && pod.sidecar.is_some() {
            full.extend(["-x", &proxy]);
        }
        full.extend_from_slice(args);
        let mut c = self.world.command(&pod.ns, &full);
        c.stdout(Stdio::piped());
        c
    }

    /// A GET on `pod`'s sidecar admin endpoint; its body.
    pub fn admin(&self, pod: &Pod, path: &str) -> String {
        let host = if self.world.loopback {
            pod.ip.to_string()
        } else {
            "127.0.0.1".into()
        };
        let url = format!("http://{host}:15000{path}");
        self.world.exec(&pod.ns, &["curl", "-s", &url]).1
    }

    /// Resolves service names to VIPs in every namespace.
    pub fn set_names(&mut self, names: &[(&str, IpAddr)]) -> Result<()> {
        self.world.set_names(names)
    }
}

/// An Envoy bootstrap that knows only pilot (ADS over `api_type`, `GRPC`
/// or `DELTA_GRPC`) and tells it the pod's node metadata.
/// A pod's service account: its `app` label (else its name), so each
/// service has an identity of its own.
fn service_account<'a>(name: &'a str, labels: &[(&str, &'a str)]) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| *k == "app")
        .map_or(name, |(_, v)| v)
}

/// An Envoy bootstrap with only the ADS cluster (and, with mutual TLS,
/// the `sds-grpc` cluster of the pod's SDS agent at `sds`).
fn envoy_bootstrap(
    pod: &Pod,
    name: &str,
    labels: &[(&str, &str)],
    api_type: &str,
    sds: Option<&str>,
) -> String {
    let account = service_account(name, labels);
    let sds_cluster = sds.map_or_else(String::new, |path| {
        format!(
            r#"  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{pipe: {{path: "{path}"}}}}
"#
        )
    });
    let labels_yaml = labels
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // With an SDS agent (mutual TLS), Envoy reaches pilot over TLS too,
    // with the pod's certificate, and checks pilot's identity.
    let xds_ip = format!("{POD_NET}.1");
    let (xds_port, xds_tls) = match sds {
        None => (XDS_PORT, String::new()),
        Some(_) => (XDS_TLS_PORT, xds_tls_socket()),
    };
    format!(
        r#"node:
  id: "{id}"
  cluster: "{name}"
  metadata:
    NAMESPACE: default
    WORKLOAD_NAME: "{name}"
    SERVICE_ACCOUNT: "{account}"
    INSTANCE_IPS: "{ip}"
    LABELS: {{{labels_yaml}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{cluster_name: xds-grpc}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: {xds_ip}, port_value: {xds_port}}}}}
{xds_tls}{sds_cluster}"#,
        id = pod.node_id,
        ip = pod.ip,
    )
}

/// The TLS transport socket of an Envoy's `xds-grpc` cluster: the pod's
/// certificate and the roots from its SDS agent, pilot's identity checked.
fn xds_tls_socket() -> String {
    let sds_source = "{api_config_source: {api_type: GRPC, transport_api_version: V3, \
        grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}]}, resource_api_version: V3}";
    let pilot = Identity::pilot(DEFAULT_TRUST_DOMAIN).uri();
    format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificate_sds_secret_configs:
          - {{name: default, sds_config: {sds_source}}}
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
              - {{san_type: URI, matcher: {{exact: "{pilot}"}}}}
            validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {sds_source}}}
"#
    )
}

fn fastrand_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Lines of an app's request log.
pub fn requests(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Mesh's Drop kills pilot before the world goes (the world then kills
/// everything else and removes the namespaces).
impl Drop for Mesh {
    fn drop(&mut self) {
        self.kill_pilot();
    }
}
