//! Test peers: real backends on loopback, mesh-proxy and Envoy as child
//! processes (killed when dropped, also when a test fails), curl as client.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use mesh_testbed::netns;

use std::collections::HashMap;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// An HTTP backend on 127.0.0.1 answering `NAME\n`, echoing request headers
/// as `x-echo-<name>` response headers, counting complete requests, and
/// waiting `x-delay-ms` before answering when asked to. A request with
/// `x-fail-once: CODE` (or `reset`: the connection is closed unanswered)
/// fails the first time its `x-fail-id` is seen, with the response header
/// `x-fail-header: name=value` if given; its retries succeed.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub requests: Arc<AtomicUsize>,
    /// The host (Host header or authority) and body length of each request.
    pub seen: Seen,
    _rt: tokio::runtime::Runtime,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let (n, count) = (name.to_owned(), requests.clone());
        let seen = Seen::default();
        let seen_by_server = seen.clone();
        let failed: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, count, failed) = (n.clone(), count.clone(), failed.clone());
                let seen = seen_by_server.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        answer(req, n.clone(), count.clone(), failed.clone(), seen.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            requests,
            seen,
            _rt: rt,
        }
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// What a backend saw: each request's host and body length.
pub type Seen = Arc<std::sync::Mutex<Vec<(String, usize)>>>;

/// The backend's answer: counted once the whole request arrived (a request
/// cut short was not delivered), then delayed if asked, then echoed.
async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    name: String,
    count: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    seen: Seen,
) -> Result<hyper::Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(hyper::Response::new(Full::new(Bytes::new())));
    };
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let host = header("host")
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    seen.lock().unwrap().push((host, body.len()));
    count.fetch_add(1, Ordering::SeqCst);
    if let (Some(fail), Some(id)) = (header("x-fail-once"), header("x-fail-id"))
        && failed.lock().unwrap().insert(id.to_owned())
    {
        if fail == "reset" {
            // An error from the service: hyper closes the connection unanswered.
            return Err(std::io::Error::other("reset as asked"));
        }
        let mut r = hyper::Response::new(Full::new(Bytes::from("failed once\n")));
        *r.status_mut() = fail.parse().expect("a status code");
        if let Some((k, v)) = header("x-fail-header").and_then(|h| h.split_once('=')) {
            r.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        return Ok(r);
    }
    let delay = parts
        .headers
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(ms) = delay {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let mut r = hyper::Response::new(Full::new(Bytes::from(format!("{name}\n"))));
    for (k, v) in &parts.headers {
        if let Ok(h) = hyper::header::HeaderName::from_bytes(format!("x-echo-{k}").as_bytes()) {
            r.headers_mut().append(h, v.clone());
        }
    }
    r.headers_mut()
        .insert("x-echo-path", parts.uri.path().parse().unwrap());
    r.headers_mut().insert(
        "x-echo-version",
        format!("{:?}", parts.version).parse().unwrap(),
    );
    if let Some(a) = parts.uri.authority() {
        r.headers_mut()
            .insert("x-echo-authority", a.as_str().parse().unwrap());
    }
    r.headers_mut()
        .insert("x-body-len", body.len().to_string().parse().unwrap());
    Ok(r)
}

/// A child process killed on drop.
pub struct Process {
    pub child: Child,
    pub lines: HashMap<String, String>,
    pub stdout: Option<BufReader<std::process::ChildStdout>>,
    pub config_path: Option<PathBuf>,
    pub _dir: Option<tempfile::TempDir>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts mesh-proxy with `config` and waits for its `ready` line.
pub fn mesh_proxy(config: &str) -> Process {
    mesh_proxy_with(config, &[])
}

/// Like [`mesh_proxy`], with extra command-line arguments.
pub fn mesh_proxy_with(config: &str, extra: &[&str]) -> Process {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .arg("--config")
        .arg(&path)
        .args(["--concurrency", "1"])
        .args(extra)
        .env(mesh_testbed::LOG_ENV.0, mesh_testbed::LOG_ENV.1)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = HashMap::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    loop {
        let line =
            mesh_testbed::read_message(&mut reader).expect("mesh-proxy exited before it was ready");
        let line = line.as_str();
        if line == "ready" {
            break;
        }
        if let Some((kind, rest)) = line.split_once(' ') {
            let key = match kind {
                "listener" => rest
                    .split_once(' ')
                    .map(|(n, _)| format!("listener {n}"))
                    .unwrap(),
                other => other.to_owned(),
            };
            lines.insert(key, rest.rsplit(' ').next().unwrap().to_owned());
        }
    }
    Process {
        child,
        lines,
        stdout: Some(reader),
        config_path: Some(path),
        _dir: Some(dir),
    }
}

impl Process {
    /// Reads stdout lines until one starts with `prefix`; returns it.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let reader = self.stdout.as_mut().expect("stdout is piped");
        loop {
            let line = mesh_testbed::read_message(reader)
                .unwrap_or_else(|| panic!("process exited while waiting for {prefix:?}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Replaces the config file (atomically, as editors and ConfigMaps do).
    pub fn rewrite_config(&self, text: &str) {
        let path = self
            .config_path
            .as_ref()
            .expect("started with a config file");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Sends a signal.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn listener(&self, name: &str) -> String {
        self.lines[&format!("listener {name}")].clone()
    }
    pub fn admin(&self) -> String {
        self.lines["admin"].clone()
    }
}

/// Starts Envoy with `config`, waits until its admin says LIVE, and reads
/// the bound listener addresses from the admin API.
pub fn envoy(config: &str) -> Process {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.yaml");
    std::fs::write(&path, config).unwrap();
    let admin_path = dir.path().join("admin");
    let mut child = Command::new(mesh_testbed::envoy_binary().unwrap())
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "error"])
        .arg("--admin-address-path")
        .arg(&admin_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Envoy's stdout carries only access logs (its own logs go to stderr).
    let stdout = child.stdout.take().map(BufReader::new);
    let mut p = Process {
        child,
        lines: HashMap::new(),
        stdout,
        config_path: None,
        _dir: None,
    };
    // Envoy writes its admin address once it is up; then /ready says LIVE once listeners are ready.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let admin = loop {
        if let Ok(a) = std::fs::read_to_string(&admin_path)
            && !a.trim().is_empty()
        {
            break a.trim().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "envoy did not start");
        assert!(p.child.try_wait().unwrap().is_none(), "envoy exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    loop {
        let (code, body) = curl(&["-s", &format!("http://{admin}/ready")]);
        if code == 0 && body.trim() == "LIVE" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "envoy never became ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (_, listeners) = curl(&["-s", &format!("http://{admin}/listeners?format=json")]);
    let v: serde_json::Value = serde_json::from_str(&listeners).unwrap();
    for l in v["listener_statuses"].as_array().unwrap() {
        let sa = &l["local_address"]["socket_address"];
        p.lines.insert(
            format!("listener {}", l["name"].as_str().unwrap()),
            format!("{}:{}", sa["address"].as_str().unwrap(), sa["port_value"]),
        );
    }
    p.lines.insert("admin".into(), admin);
    p._dir = Some(dir);
    p
}

/// Runs curl; returns its exit code and stdout.
pub fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// A bootstrap that Envoy and mesh-proxy both run: one HTTP listener on an
/// ephemeral port, the given virtual host routes, static clusters.
pub fn bootstrap(routes: &str, clusters: &[(&str, &Backend)]) -> String {
    let mut c = String::new();
    for (name, b) in clusters {
        c.push_str(&format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{address: 127.0.0.1, port_value: {}}}\n",
            b.addr.port()
        ));
    }
    format!(
        r#"admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: http
    address:
      socket_address: {{address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: local
            virtual_hosts:
            - name: svcb
              domains: ["svcb", "svcb:80", "*"]
              routes:
{routes}  clusters:
{c}"#
    )
}

/// Adds `line` (e.g. `codec_type: HTTP1`) to the HTTP connection manager
/// of a [`bootstrap`].
pub fn with_hcm(config: &str, line: &str) -> String {
    config.replace(
        "          stat_prefix: http\n",
        &format!("          stat_prefix: http\n          {line}\n"),
    )
}

/// A route to one cluster for every path.
pub fn route_to(cluster: &str) -> String {
    format!(
        "              - match: {{prefix: \"/\"}}\n                route: {{cluster: {cluster}}}\n"
    )
}

/// A 50/50 (or any) weighted route.
pub fn weighted(w1: u32, w2: u32) -> String {
    format!(
        "              - match: {{prefix: \"/\"}}\n                route:\n                  weighted_clusters:\n                    clusters:\n                    - {{name: v1, weight: {w1}}}\n                    - {{name: v2, weight: {w2}}}\n"
    )
}

/// A backend that answers one request per connection while advertising
/// keep-alive, then closes: every reuse of a pooled connection races the
/// server's close (the "503 from churn" of Istio users).
pub struct ClosingBackend {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
}

impl ClosingBackend {
    pub fn start() -> ClosingBackend {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if buf.is_empty() {
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n",
                );
                // Closed without warning, as an idle-timeout close looks to the client.
            }
        });
        ClosingBackend { addr, requests }
    }
}

/// An HTTP/1.1 keep-alive backend (answers `ok`) that counts the
/// connections it accepts and reports when a client closes one.
pub struct CountingBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// When each connection was closed by its client.
    pub closed: std::sync::mpsc::Receiver<std::time::Instant>,
}

impl CountingBackend {
    pub fn start() -> CountingBackend {
        Self::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    }

    /// The same backend giving `answer` (a whole HTTP/1.1 response) to
    /// every request.
    pub fn answering(answer: &'static [u8]) -> CountingBackend {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, closed) = std::sync::mpsc::channel();
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        match s.read(&mut chunk) {
                            Ok(0) => {
                                let _ = tx.send(std::time::Instant::now());
                                return;
                            }
                            Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&chunk[..n]),
                        }
                        // Requests without bodies: one answer per head.
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            if s.write_all(answer).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        CountingBackend {
            addr,
            accepted,
            closed,
        }
    }
}

/// A bootstrap routing everything to one STATIC cluster `cluster` with the
/// endpoint `addr`.
pub fn bootstrap_to(cluster: &str, addr: SocketAddr) -> String {
    let backend_cfg = format!(
        "  - name: {cluster}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {cluster}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{address: 127.0.0.1, port_value: {}}}\n",
        addr.port()
    );
    bootstrap(&route_to(cluster), &[])
        .replace("  clusters:\n", &format!("  clusters:\n{backend_cfg}"))
}

/// Sends raw bytes to `addr` and returns everything the server answers
/// until it closes or 5 s pass.
pub fn raw_http(addr: &str, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A STATIC cluster with several endpoints (and optional extra YAML lines
/// for the cluster, indented four spaces). `None` ports are endpoints that
/// are down (nothing listens there).
pub fn cluster(name: &str, ports: &[(u16, &str)], extra: &str) -> String {
    let mut c = format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n"
    );
    for (port, health) in ports {
        c.push_str(&format!(
            "        - endpoint:\n            address:\n              socket_address: {{address: 127.0.0.1, port_value: {port}}}\n          health_status: {health}\n"
        ));
    }
    c
}

/// A port nothing listens on.
/// A loopback port free at the moment (for a listener the test makes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback port where nothing listens, held for as long as the value
/// lives: a socket bound without `listen`, so connections are refused and
/// no other test's server can take the port meanwhile.
pub struct DeadPort {
    /// The port.
    pub port: u16,
    _socket: std::os::fd::OwnedFd,
}

pub fn dead_port() -> DeadPort {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let bound = libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len);
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut got_len = len;
        libc::getsockname(fd, &mut got as *mut _ as *mut libc::sockaddr, &mut got_len);
        DeadPort {
            port: u16::from_be(got.sin_port),
            _socket: socket,
        }
    }
}

/// Status and seconds taken of one GET of `path` through `proxy`'s `http`
/// listener with Host `host`.
pub fn timed_get(proxy: &Process, path: &str, host: &str) -> (u16, f64) {
    let url = format!("http://{}{path}", proxy.listener("http"));
    let host = format!("host: {host}");
    let (_, out) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{time_total}",
        "-H",
        &host,
        &url,
    ]);
    let (code, took) = out.split_once(' ').unwrap();
    (code.parse().unwrap(), took.parse().unwrap())
}
