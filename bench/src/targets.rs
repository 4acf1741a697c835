//! The things measured: a direct connection, mesh-proxy, Envoy and HAProxy,
//! each given the same three listeners (small HTTP body, 16 KiB body, TCP),
//! one worker thread, pinned to the proxy CPU.

use std::net::SocketAddr;

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Where the backend listens.
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    /// HTTP, small body.
    pub small: SocketAddr,
    /// HTTP, 16 KiB body.
    pub large: SocketAddr,
    /// TCP sink.
    pub tcp: SocketAddr,
    /// gRPC (HTTP/2 prior knowledge): the standard health service.
    pub grpc: SocketAddr,
    /// HTTP, small body, every request also copied to the small backend
    /// (a mirror): only proxies that mirror have it.
    pub mirrored: Option<SocketAddr>,
    /// TCP to the small HTTP backend: under mutual TLS each connection is
    /// a new handshake between the sidecars (mTLS chains only).
    pub handshake: Option<SocketAddr>,
}

/// A measured target.
pub struct Target {
    /// Row name.
    pub name: String,
    /// Its addresses, in the order of [`Backends`].
    pub addrs: Backends,
    /// The proxy process (none for `direct`).
    pub child: Option<Child>,
    /// The other proxies of a sidecar chain (the server side), measured
    /// with it.
    pub peers: Vec<Target>,
    /// Processes the target needs but that are not measured (pilot).
    pub helpers: Vec<Child>,
    /// The most resident memory (MB, all its processes) seen during a load.
    pub loaded_rss_mb: std::cell::Cell<f64>,
    /// The most resident memory (MB) seen during the last load.
    pub row_rss_mb: std::cell::Cell<f64>,
    /// Folders removed with the target (configurations, the CA's).
    dirs: Vec<PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        for c in self.child.iter_mut().chain(&mut self.helpers) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Target {
    /// The direct connection: the backends themselves.
    pub fn direct(b: Backends) -> Target {
        Target {
            name: "direct".into(),
            addrs: b,
            child: None,
            peers: vec![],
            helpers: vec![],
            loaded_rss_mb: Default::default(),
            row_rss_mb: Default::default(),
            dirs: Vec::new(),
        }
    }

    /// A proxy process measured as `name`, serving on `addrs`.
    fn process(name: &str, addrs: Backends, child: Child, dir: Option<PathBuf>) -> Target {
        Target {
            name: name.into(),
            addrs,
            child: Some(child),
            peers: vec![],
            helpers: vec![],
            loaded_rss_mb: Default::default(),
            row_rss_mb: Default::default(),
            dirs: dir.into_iter().collect(),
        }
    }

    /// The pids of every proxy of the target (none for `direct`).
    pub fn pids(&self) -> Vec<u32> {
        self.child
            .iter()
            .map(Child::id)
            .chain(self.peers.iter().flat_map(Target::pids))
            .collect()
    }
}

/// A sidecar chain: `client_side` in front of `server_side` in front of
/// the backend, as a call crosses two sidecars in a mesh.
pub fn chain(
    name: &str,
    start: impl Fn(Backends) -> anyhow::Result<Target>,
    to: Backends,
) -> anyhow::Result<Target> {
    let server_side = start(to)?;
    let mut client_side = start(server_side.addrs)?;
    client_side.name = name.to_owned();
    client_side.peers.push(server_side);
    Ok(client_side)
}

/// Which proxy a mutual-TLS chain is made of.
pub enum Sidecar<'a> {
    /// mesh-proxy (this binary), its certificate its own.
    MeshProxy(&'a Path),
    /// Envoy, its certificate from an SDS agent (this mesh-proxy binary).
    Envoy(&'a Path),
}

/// A sidecar chain with STRICT mutual TLS between its sides, as two
/// workloads of a mesh: each side's certificate from a mesh-ca of the
/// chain's own (on `helper_cpu`, not measured), the client side checking
/// the server side's identity.
pub fn mtls_chain(
    name: &str,
    sidecar: Sidecar,
    mesh_ca: &Path,
    to: Backends,
    cpu: &str,
    helper_cpu: &str,
) -> anyhow::Result<Target> {
    use crate::mtls::{CLIENT_ACCOUNT, ChainTls, SERVER_ACCOUNT, Side};
    let dir = temp_dir("mtls");
    let mut ca = crate::mtls::Ca::start(mesh_ca, &dir, helper_cpu)?;
    let mut side = |account: &str, side: Side| -> anyhow::Result<Extras> {
        let (agent, flags) = match sidecar {
            Sidecar::MeshProxy(_) => (None, ca.flags(account)?),
            Sidecar::Envoy(mesh_proxy) => {
                let socket = ca.agent(mesh_proxy, account, helper_cpu)?;
                (Some(socket), Vec::new())
            }
        };
        Ok(Extras {
            // As the plain Envoy rows: a sidecar's access log.
            access_log: matches!(sidecar, Sidecar::Envoy(_)),
            tls: Some(ChainTls { side, agent, flags }),
            ..Extras::default()
        })
    };
    let peer = format!("spiffe://cluster.local/ns/default/sa/{SERVER_ACCOUNT}");
    let (server, client) = (
        side(SERVER_ACCOUNT, Side::Server)?,
        side(CLIENT_ACCOUNT, Side::Client { peer })?,
    );
    let start = |to, extras: &Extras, name| match sidecar {
        Sidecar::MeshProxy(binary) => mesh_proxy_with(binary, to, cpu, extras, name),
        Sidecar::Envoy(_) => envoy_with(to, cpu, extras, name),
    };
    let server_side = start(to, &server, "server side")?;
    refuses_plaintext(server_side.addrs.small)
        .with_context(|| format!("{name}: the server side is not STRICT"))?;
    let mut client_side = start(server_side.addrs, &client, name)?;
    client_side.peers.push(server_side);
    client_side.helpers.extend(ca.into_processes());
    client_side.dirs.push(dir);
    Ok(client_side)
}

/// Whether a plaintext request to `addr` goes unanswered (a STRICT mTLS
/// listener takes only TLS).
fn refuses_plaintext(addr: SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    anyhow::ensure!(
        !answer.starts_with(b"HTTP/"),
        "it answered plaintext HTTP: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn ports() -> Backends {
    let a = |p| SocketAddr::from(([127, 0, 0, 1], p));
    Backends {
        small: a(free_port()),
        large: a(free_port()),
        tcp: a(free_port()),
        grpc: a(free_port()),
        mirrored: None,
        handshake: None,
    }
}

/// A proxy's listeners: the four, a mirroring one, and under mutual TLS
/// the handshake one.
fn listeners(extras: &Extras) -> Backends {
    let mut listen = with_mirror(ports());
    if extras.tls.is_some() {
        listen.handshake = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
    }
    listen
}

/// `b` with a mirroring listener too.
fn with_mirror(b: Backends) -> Backends {
    Backends {
        mirrored: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
        ..b
    }
}

/// What a bootstrap does besides routing.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// A file access log (to /dev/null), as an Envoy sidecar has.
    pub access_log: bool,
    /// Zipkin tracing of 1 % of the calls (Istio's default), spans sent
    /// to the small backend (which accepts any POST).
    pub tracing: bool,
    /// Mutual TLS with the other side of a chain.
    pub tls: Option<crate::mtls::ChainTls>,
}

/// The HCM tracing block of [`Extras::tracing`] and its collector cluster.
fn tracing_yaml(to: Backends) -> (String, String) {
    let hcm = "          tracing:\n            random_sampling: {value: 1}\n            provider:\n              name: envoy.tracers.zipkin\n              typed_config:\n                \"@type\": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig\n                collector_cluster: zipkin\n                collector_endpoint: /api/v2/spans\n                collector_endpoint_version: HTTP_JSON\n                shared_span_context: false\n".to_owned();
    let cluster = format!(
        "  - name: zipkin\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: zipkin\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{address: 127.0.0.1, port_value: {}}}\n",
        to.small.port()
    );
    (hcm, cluster)
}

/// An Envoy-format bootstrap with the four listeners, and the mirroring
/// one when `listen` has it, doing `extras` on the HTTP listeners.
pub fn envoy_bootstrap(listen: Backends, to: Backends, admin_port: u16, extras: &Extras) -> String {
    let (trace, trace_cluster) = if extras.tracing {
        tracing_yaml(to)
    } else {
        Default::default()
    };
    let log = if extras.access_log {
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: /dev/null\n".to_owned()
    } else {
        String::new()
    } + &trace;
    let tls_listener = |alpn: &str| {
        extras
            .tls
            .as_ref()
            .map_or_else(String::new, |t| t.listener_socket("      ", alpn))
    };
    let tls_cluster = |alpn: &str| {
        extras
            .tls
            .as_ref()
            .map_or_else(String::new, |t| t.cluster_socket("    ", alpn))
    };
    let http = |name: &str, l: SocketAddr, cluster: &str, mirror: &str| {
        format!(
            r#"  - name: {name}
    address:
      socket_address: {{address: 127.0.0.1, port_value: {}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
{log}          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: {name}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: {cluster}{mirror}}}
{tls}"#,
            l.port(),
            tls = tls_listener(if name == "grpc" { "h2" } else { "h2, http/1.1" }),
        )
    };
    let cluster = |name: &str, a: SocketAddr| {
        let http2 = if name == "grpc" {
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {}\n"
        } else {
            ""
        };
        let alpn = match name {
            "grpc" => "h2",
            "tcp" | "handshake" => "",
            _ => "http/1.1",
        };
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{http2}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{address: 127.0.0.1, port_value: {}}}\n{}",
            a.port(),
            tls_cluster(alpn),
        )
    };
    let tcp = |name: &str, l: SocketAddr| {
        format!(
            "  - name: {name}\n    address:\n      socket_address: {{address: 127.0.0.1, port_value: {}}}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: {name}\n          cluster: {name}\n{}",
            l.port(),
            tls_listener(""),
        )
    };
    // Under mTLS, a TCP listener to the small backend: a handshake per
    // connection between the sidecars.
    let (handshake_listener, handshake_cluster) = match (&extras.tls, listen.handshake) {
        (Some(_), Some(l)) => (
            tcp("handshake", l),
            cluster("handshake", to.handshake.unwrap_or(to.small)),
        ),
        _ => Default::default(),
    };
    let agent = extras
        .tls
        .as_ref()
        .map_or_else(String::new, |t| t.agent_cluster());
    format!(
        "admin:\n  address:\n    socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}\nstatic_resources:\n  listeners:\n{}{}{}{}{handshake_listener}  clusters:\n{}{}{}{}{handshake_cluster}{agent}",
        http("small", listen.small, "small", "")
            + &listen.mirrored.map_or_else(String::new, |m| http(
                "mirrored",
                m,
                "small",
                ", request_mirror_policies: [{cluster: mirror}]"
            )),
        http("large", listen.large, "large", ""),
        http("grpc", listen.grpc, "grpc", ""),
        tcp("tcp", listen.tcp),
        cluster("small", to.small),
        cluster("large", to.large),
        cluster("tcp", to.tcp),
        cluster("grpc", to.grpc) + &cluster("mirror", to.small) + &trace_cluster,
    )
}

fn haproxy_config(listen: Backends, to: Backends) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
         frontend small\n  mode http\n  bind 127.0.0.1:{}\n  default_backend small\n\
         backend small\n  mode http\n  http-reuse always\n  server s1 {}\n\
         frontend large\n  mode http\n  bind 127.0.0.1:{}\n  default_backend large\n\
         backend large\n  mode http\n  http-reuse always\n  server s1 {}\n\
         listen tcp\n  mode tcp\n  bind 127.0.0.1:{}\n  server s1 {}\n\
         frontend grpc\n  mode http\n  bind 127.0.0.1:{} proto h2\n  default_backend grpc\n\
         backend grpc\n  mode http\n  http-reuse always\n  server s1 {} proto h2\n",
        listen.small.port(),
        to.small,
        listen.large.port(),
        to.large,
        listen.tcp.port(),
        to.tcp,
        listen.grpc.port(),
        to.grpc,
    )
}

pub fn wait_ready(addr: SocketAddr, child: &mut Child, name: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        anyhow::ensure!(child.try_wait()?.is_none(), "{name} exited during start-up");
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{name} did not start listening on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn pinned(cpu: &str, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]).arg(program);
    c
}

/// A fresh folder per target (two mesh-proxies of a chain must not share
/// a config file: each follows its file and would take the other's).
fn temp_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("mesh-bench-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Starts mesh-proxy (one worker) in front of `to`; its standard
/// metrics are always on.
pub fn mesh_proxy(binary: &Path, to: Backends, cpu: &str) -> anyhow::Result<Target> {
    mesh_proxy_with(binary, to, cpu, &Extras::default(), "mesh-proxy")
}

/// Starts mesh-proxy doing `extras`, named `name`.
pub fn mesh_proxy_with(
    binary: &Path,
    to: Backends,
    cpu: &str,
    extras: &Extras,
    name: &str,
) -> anyhow::Result<Target> {
    let listen = listeners(extras);
    let dir = temp_dir("mesh-proxy");
    let cfg = dir.join("bootstrap.yaml");
    std::fs::write(&cfg, envoy_bootstrap(listen, to, free_port(), extras))?;
    let ca_flags = extras.tls.iter().flat_map(|t| t.flags.iter());
    let mut child = pinned(cpu, binary)
        .arg("--config")
        .arg(&cfg)
        .args(["--concurrency", "1"])
        .args(ca_flags)
        .stdout(Stdio::null())
        .spawn()?;
    wait_ready(listen.tcp, &mut child, "mesh-proxy")?;
    Ok(Target::process(name, listen, child, Some(dir)))
}

/// The workload address the sidecar configured by pilot serves on.
const POD_IP: &str = "127.0.20.1";

/// Starts mesh-pilot (on the load CPU, not measured) and a mesh-proxy
/// sidecar configured only over ADS, in front of `to`: the backends are
/// the workload's app, registered as one service with ports
/// `http-small`, `http-large`, `tcp-sink` and `grpc-health`; pilot gives the sidecar
/// its inbound listeners on the pod address (explicit mode, no capture),
/// with what a sidecar has on (request ids, tracing).
pub fn mesh_proxy_via_pilot(
    proxy: &Path,
    pilot: &Path,
    to: Backends,
    cpu: &str,
    load_cpu: &str,
) -> anyhow::Result<Target> {
    let dir = temp_dir("mesh-pilot");
    let registry = dir.join("registry.yaml");
    std::fs::write(
        &registry,
        format!(
            "services:\n- name: bench\n  namespace: default\n  ports:\n  - {{name: http-small, port: {s}, targetPort: {s}}}\n  - {{name: http-large, port: {l}, targetPort: {l}}}\n  - {{name: tcp-sink, port: {t}, targetPort: {t}}}\n  - {{name: grpc-health, port: {g}, targetPort: {g}}}\n  selector: {{app: bench}}\nworkloads:\n- name: bench-1\n  address: {POD_IP}\n  labels: {{app: bench}}\n  serviceAccount: bench\n",
            s = to.small.port(),
            l = to.large.port(),
            t = to.tcp.port(),
            g = to.grpc.port()
        ),
    )?;
    let (pilot, xds) =
        crate::pilot_scale::start_pilot(pinned(load_cpu, pilot), &dir.join("store"), &registry)?;
    let local = |p| format!("127.0.0.1:{p}");
    let child = pinned(cpu, proxy)
        .arg("sidecar")
        .args(["--xds-address", &xds])
        .args(["--workload", "bench-1", "--labels", "app=bench"])
        .args([
            "--ip",
            POD_IP,
            "--interception-mode",
            "none",
            "--app-ip",
            "127.0.0.1",
        ])
        .args(["--concurrency", "1"])
        .args(["--admin-address", &local(free_port())])
        .args(["--metrics-address", &local(free_port())])
        .args(["--health-address", &local(free_port())])
        .stdout(Stdio::null())
        .spawn();
    let mut target = Target {
        name: "mesh-proxy (via pilot)".into(),
        addrs: Backends {
            small: format!("{POD_IP}:{}", to.small.port()).parse()?,
            large: format!("{POD_IP}:{}", to.large.port()).parse()?,
            tcp: format!("{POD_IP}:{}", to.tcp.port()).parse()?,
            grpc: format!("{POD_IP}:{}", to.grpc.port()).parse()?,
            mirrored: None,
            handshake: None,
        },
        child: None,
        peers: vec![],
        helpers: vec![pilot],
        loaded_rss_mb: Default::default(),
        row_rss_mb: Default::default(),
        dirs: vec![dir],
    };
    let mut child = child?;
    let ready = wait_ready(target.addrs.tcp, &mut child, "mesh-proxy sidecar");
    target.child = Some(child);
    ready?;
    Ok(target)
}

/// Starts Envoy (`--concurrency 1`, access log on) in front of `to`.
pub fn envoy(to: Backends, cpu: &str) -> anyhow::Result<Target> {
    let extras = Extras {
        access_log: true,
        ..Extras::default()
    };
    envoy_with(to, cpu, &extras, "envoy")
}

/// Starts Envoy doing `extras`, named `name`; its own stats are always on.
pub fn envoy_with(to: Backends, cpu: &str, extras: &Extras, name: &str) -> anyhow::Result<Target> {
    let listen = listeners(extras);
    let dir = temp_dir("envoy");
    let cfg = dir.join("bootstrap.yaml");
    std::fs::write(&cfg, envoy_bootstrap(listen, to, free_port(), extras))?;
    let binary = which("envoy")?;
    let log = dir.join("envoy.log");
    let mut child = pinned(cpu, &binary)
        .arg("-c")
        .arg(&cfg)
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "error"])
        // SDS needs a node to name.
        .args(["--service-node", name, "--service-cluster", "bench"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    wait_ready(listen.tcp, &mut child, "envoy").map_err(|e| {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        anyhow::anyhow!("{e}: {}", said.trim())
    })?;
    Ok(Target::process(name, listen, child, Some(dir)))
}

/// Starts HAProxy (`nbthread 1`) in front of `to`.
pub fn haproxy(to: Backends, cpu: &str) -> anyhow::Result<Target> {
    let listen = ports();
    let dir = temp_dir("haproxy");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(listen, to))?;
    let binary = which("haproxy")?;
    let mut child = pinned(cpu, &binary)
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_ready(listen.tcp, &mut child, "haproxy")?;
    Ok(Target::process("haproxy", listen, child, Some(dir)))
}

/// Starts the floor: mesh-bench's byte relay (a blocking thread per
/// direction) in front of `to`.
pub fn relay(to: Backends, cpu: &str) -> anyhow::Result<Target> {
    let listen = ports();
    let pair = |l: SocketAddr, t: SocketAddr| format!("{l}={t}");
    let mut child = pinned(cpu, &std::env::current_exe()?)
        .arg("relay")
        .args([
            pair(listen.small, to.small),
            pair(listen.large, to.large),
            pair(listen.tcp, to.tcp),
            pair(listen.grpc, to.grpc),
        ])
        .stdout(Stdio::null())
        .spawn()?;
    wait_ready(listen.tcp, &mut child, "relay")?;
    Ok(Target::process("floor (byte relay)", listen, child, None))
}

/// A program on PATH.
pub fn which(program: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    anyhow::ensure!(
        !p.is_empty(),
        "{program} is not installed (bench/run installs it)"
    );
    Ok(PathBuf::from(p))
}
