//! Workers and listeners: `--concurrency N` threads, each with its own
//! single-threaded runtime, its own accept socket per listener
//! (SO_REUSEPORT, so the kernel spreads connections) and its own upstream
//! pools; the configuration is shared and swapped atomically.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{Notify, watch};

use crate::config::{HttpManager, ListenerKind, Snapshot};
use crate::http::Upstreams;
use crate::stats::Stats;

/// State every worker shares.
pub struct Shared {
    /// The configuration in force.
    pub config: ArcSwap<Snapshot>,
    /// Counters.
    pub stats: Stats,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Starts draining: listeners stop accepting, connections finish.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// True once draining started.
    pub fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Swaps in a new configuration; requests in flight keep the old one.
    pub fn apply(&self, snapshot: Snapshot) {
        self.config.store(Arc::new(snapshot));
        self.stats.config_accepted.fetch_add(1, Ordering::Relaxed);
    }
}

impl Snapshot {
    /// The HTTP settings of listener `name`, if it is an HTTP listener.
    pub fn http_manager(&self, name: &str) -> Option<&HttpManager> {
        match &self.listeners.get(name)?.kind {
            ListenerKind::Http(m) => Some(m),
            ListenerKind::Tcp(_) => None,
        }
    }
}

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads.
    pub concurrency: usize,
    /// How long in-flight requests may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Where Prometheus scrapes `/stats/prometheus` (a sidecar's 15090).
    pub metrics: Option<SocketAddr>,
    /// Where the kubelet probes `/healthz/ready` (a sidecar's 15021).
    pub health: Option<SocketAddr>,
}

/// A running proxy.
pub struct Running {
    /// Shared state (configuration, counters, shutdown).
    pub shared: Arc<Shared>,
    /// Bound listeners: name and address (port 0 resolved).
    pub listeners: Vec<(String, SocketAddr)>,
    /// Bound admin address.
    pub admin: Option<SocketAddr>,
    /// Bound metrics address.
    pub metrics: Option<SocketAddr>,
    /// Bound health address.
    pub health: Option<SocketAddr>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Binds every listener and the admin endpoint, then starts the workers.
pub fn start(
    snapshot: Snapshot,
    admin: Option<SocketAddr>,
    opts: Options,
) -> anyhow::Result<Running> {
    let concurrency = opts.concurrency.max(1);
    let mut names: Vec<_> = snapshot
        .listeners
        .values()
        .filter(|l| l.bind)
        .map(|l| l.name.clone())
        .collect();
    names.sort();
    // sockets[w] = the sockets of worker w, one per listener.
    let mut sockets: Vec<Vec<(Arc<str>, std::net::TcpListener)>> =
        (0..concurrency).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for name in &names {
        let wanted = snapshot.listeners[name].address;
        let first =
            bind(wanted).with_context(|| format!("listener {name}: cannot bind {wanted}"))?;
        let addr = first.local_addr()?;
        bound.push((name.clone(), addr));
        let name: Arc<str> = name.as_str().into();
        sockets[0].push((name.clone(), first));
        for w in sockets.iter_mut().skip(1) {
            w.push((
                name.clone(),
                bind(addr).with_context(|| format!("listener {name}: cannot bind {addr}"))?,
            ));
        }
    }
    use crate::admin::Scope;
    let mut endpoints = Vec::new();
    let mut bound_endpoint = |addr: Option<SocketAddr>,
                              scope: Scope,
                              what: &str|
     -> anyhow::Result<Option<SocketAddr>> {
        let Some(a) = addr else { return Ok(None) };
        let l =
            std::net::TcpListener::bind(a).with_context(|| format!("{what}: cannot bind {a}"))?;
        l.set_nonblocking(true)?;
        let local = l.local_addr()?;
        endpoints.push((l, scope));
        Ok(Some(local))
    };
    let admin_addr = bound_endpoint(admin, Scope::Admin, "admin")?;
    let metrics_addr = bound_endpoint(opts.metrics, Scope::Metrics, "metrics")?;
    let health_addr = bound_endpoint(opts.health, Scope::Health, "health")?;
    let (tx, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        config: ArcSwap::from_pointee(snapshot),
        stats: Stats::default(),
        shutdown: tx,
    });
    let mut workers = Vec::new();
    for (w, socks) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let drain = opts.drain_timeout;
        workers.push(
            std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || worker(socks, shared, drain))?,
        );
    }
    if !endpoints.is_empty() {
        let shared = shared.clone();
        workers.push(
            std::thread::Builder::new()
                .name("admin".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async move {
                        for (l, scope) in endpoints {
                            let l = tokio::net::TcpListener::from_std(l).expect("admin listener");
                            tokio::spawn(crate::admin::serve(l, shared.clone(), scope));
                        }
                        let mut stop = shared.shutdown.subscribe();
                        let _ = stop.wait_for(|s| *s).await;
                    });
                })?,
        );
    }
    Ok(Running {
        shared,
        listeners: bound,
        admin: admin_addr,
        metrics: metrics_addr,
        health: health_addr,
        workers,
    })
}

impl Running {
    /// Waits until every worker has drained and stopped.
    pub fn wait(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// Counts open connections so draining can wait for them.
#[derive(Default)]
struct Connections {
    open: AtomicUsize,
    closed: Notify,
}

struct ConnectionGuard(Arc<Connections>, Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.1
            .stats
            .downstream_cx_active
            .fetch_sub(1, Ordering::Relaxed);
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

fn worker(sockets: Vec<(Arc<str>, std::net::TcpListener)>, shared: Arc<Shared>, drain: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("worker runtime");
    rt.block_on(async move {
        let conns = Arc::new(Connections::default());
        let upstreams = Upstreams::new();
        let mut loops = Vec::new();
        for (name, sock) in sockets {
            let listener = tokio::net::TcpListener::from_std(sock).expect("listener");
            loops.push(tokio::spawn(accept_loop(
                listener,
                name,
                shared.clone(),
                upstreams.clone(),
                conns.clone(),
            )));
        }
        let mut stop = shared.shutdown.subscribe();
        let _ = stop.wait_for(|s| *s).await;
        for l in &loops {
            l.abort();
        }
        // Drain: connections finish their requests (HTTP ones were told to close).
        let deadline = tokio::time::Instant::now() + drain;
        while conns.open.load(Ordering::Acquire) > 0 {
            let wait = conns.closed.notified();
            if conns.open.load(Ordering::Acquire) == 0
                || tokio::time::timeout_at(deadline, wait).await.is_err()
            {
                break;
            }
        }
    });
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
    upstreams: Upstreams,
    conns: Arc<Connections>,
) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        shared
            .stats
            .downstream_cx_total
            .fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .downstream_cx_active
            .fetch_add(1, Ordering::Relaxed);
        conns.open.fetch_add(1, Ordering::AcqRel);
        let guard = ConnectionGuard(conns.clone(), shared.clone());
        let (name, shared, upstreams) = (name.clone(), shared.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let snap = shared.config.load_full();
            let Some(own) = snap.listeners.get(&*name).cloned() else {
                return;
            };
            // A capture listener hands the connection to the listener for
            // where it was going; without one, its own chain handles it.
            let original_dst = own
                .use_original_dst
                .then(|| crate::orig_dst::original_dst(&stream))
                .flatten();
            let target = original_dst
                .and_then(|d| snap.listener_for(d))
                .filter(|l| l.name != own.name)
                .cloned()
                .unwrap_or(own);
            drop(snap);
            let conn = Arc::new(Conn {
                listener: target.name.as_str().into(),
                original_dst,
            });
            match &target.kind {
                ListenerKind::Tcp(cfg) => {
                    crate::tcp::proxy(stream, cfg, &conn, shared.clone()).await
                }
                ListenerKind::Http(_) => serve_http(stream, conn, shared, upstreams).await,
            }
        });
    }
}

/// What a connection came in on.
#[derive(Debug)]
pub struct Conn {
    /// The listener that handles it (after any original-destination hand-off).
    pub listener: Arc<str>,
    /// Where it was going before the capture rules redirected it.
    pub original_dst: Option<SocketAddr>,
}

/// Largest request head accepted; larger ones get 431.
const MAX_HEAD: usize = 60 * 1024;
/// A client that has not sent a full request head by then is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_http(
    stream: tokio::net::TcpStream,
    conn_info: Arc<Conn>,
    shared: Arc<Shared>,
    upstreams: Upstreams,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32);
    let mut stop = shared.shutdown.subscribe();
    let svc_shared = shared.clone();
    let svc = hyper::service::service_fn(move |req| {
        crate::http::handle(
            req,
            conn_info.clone(),
            svc_shared.clone(),
            upstreams.clone(),
        )
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
