//! Workers and listeners: `--concurrency N` threads, each with its own
//! single-threaded runtime, its own accept socket per listener
//! (SO_REUSEPORT, so the kernel spreads connections) and its own upstream
//! pools; the configuration is shared and swapped atomically.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{Notify, mpsc, watch};

use crate::config::{Codec, HttpManager, ListenerKind, Snapshot};
use crate::stats::Stats;
use crate::upstream::Upstreams;

/// State every worker shares.
pub struct Shared {
    /// The configuration in force.
    pub config: ArcSwap<Snapshot>,
    /// Counters.
    pub stats: Stats,
    /// Whether a first configuration was applied (readiness; a sidecar on
    /// xDS starts empty).
    ready: AtomicBool,
    shutdown: watch::Sender<bool>,
    binder: Mutex<Binder>,
}

/// The bound listeners and the workers that accept on them.
struct Binder {
    bound: BTreeMap<String, SocketAddr>,
    workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
}

/// What a worker is told when the set of bound listeners changes.
enum WorkerCommand {
    /// Accept on this socket for listener `name`.
    Accept(Arc<str>, std::net::TcpListener),
    /// Stop accepting for listener `name` (its connections carry on).
    Close(Arc<str>),
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

    /// True once a configuration was applied.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Swaps in a new configuration; requests in flight keep the old one.
    ///
    /// Listeners to bind that are new (or moved) are bound first: when one
    /// cannot be bound nothing changes and the error says which. Listeners
    /// that are gone stop accepting; their open connections finish.
    /// Returns the newly bound listeners with their addresses.
    pub fn apply(&self, snapshot: Snapshot) -> anyhow::Result<Vec<(String, SocketAddr)>> {
        let mut binder = self.binder.lock().expect("binder lock");
        let wanted: BTreeMap<String, SocketAddr> = snapshot
            .listeners
            .values()
            .filter(|l| l.bind)
            .map(|l| (l.name.clone(), l.address))
            .collect();
        let mut opened = Vec::new();
        for (name, addr) in &wanted {
            let same = binder
                .bound
                .get(name)
                .is_some_and(|b| b == addr || (addr.port() == 0 && b.ip() == addr.ip()));
            if same {
                continue;
            }
            let sockets = bind_all(*addr, binder.workers.len())
                .with_context(|| format!("listener {name}: cannot bind {addr}"))?;
            opened.push((name.clone(), sockets));
        }
        self.config.store(Arc::new(snapshot));
        self.ready.store(true, Ordering::Release);
        self.stats.config_accepted.fetch_add(1, Ordering::Relaxed);
        let closed: Vec<String> = binder
            .bound
            .keys()
            .filter(|n| !wanted.contains_key(*n) || opened.iter().any(|(o, _)| o == *n))
            .cloned()
            .collect();
        for name in closed {
            binder.bound.remove(&name);
            let name: Arc<str> = name.into();
            for w in &binder.workers {
                let _ = w.send(WorkerCommand::Close(name.clone()));
            }
        }
        let mut added = Vec::new();
        for (name, sockets) in opened {
            let addr = sockets[0].local_addr()?;
            binder.bound.insert(name.clone(), addr);
            added.push((name.clone(), addr));
            let name: Arc<str> = name.into();
            for (w, s) in binder.workers.iter().zip(sockets) {
                let _ = w.send(WorkerCommand::Accept(name.clone(), s));
            }
        }
        Ok(added)
    }

    /// The bound listeners and their addresses.
    pub fn bound(&self) -> Vec<(String, SocketAddr)> {
        let b = self.binder.lock().expect("binder lock");
        b.bound.iter().map(|(n, a)| (n.clone(), *a)).collect()
    }
}

impl Snapshot {
    /// The HTTP settings of chain `chain` of listener `name`, if that is an
    /// HTTP chain.
    pub fn http_manager(&self, name: &str, chain: usize) -> Option<&HttpManager> {
        match &self.listeners.get(name)?.chains.get(chain)?.kind {
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
    // Accepted sockets inherit it (Linux): no setsockopt per connection.
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// One socket per worker on `addr` (port 0: the port the first one got).
fn bind_all(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind(addr)?;
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind(addr)?);
    }
    Ok(all)
}

/// Starts the workers and the admin endpoint, then applies `snapshot`
/// (binding its listeners). An empty snapshot is fine: a sidecar on xDS
/// binds its listeners when the first configuration arrives.
pub fn start(
    snapshot: Snapshot,
    admin: Option<SocketAddr>,
    opts: Options,
) -> anyhow::Result<Running> {
    let concurrency = opts.concurrency.max(1);
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
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..concurrency).map(|_| mpsc::unbounded_channel()).unzip();
    let shared = Arc::new(Shared {
        config: ArcSwap::from_pointee(Snapshot::empty()),
        stats: Stats::default(),
        ready: AtomicBool::new(false),
        shutdown: tx,
        binder: Mutex::new(Binder {
            bound: BTreeMap::new(),
            workers: senders,
        }),
    });
    let mut workers = Vec::new();
    for (w, commands) in receivers.into_iter().enumerate() {
        let shared = shared.clone();
        let drain = opts.drain_timeout;
        workers.push(
            std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || worker(commands, shared, drain))?,
        );
    }
    let bound = if snapshot.listeners.is_empty() && snapshot.clusters.is_empty() {
        Vec::new()
    } else {
        shared.apply(snapshot)?
    };
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

fn worker(
    mut commands: mpsc::UnboundedReceiver<WorkerCommand>,
    shared: Arc<Shared>,
    drain: Duration,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("worker runtime");
    rt.block_on(async move {
        let conns = Arc::new(Connections::default());
        let upstreams = Upstreams::new();
        let mut loops: HashMap<Arc<str>, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut stop = shared.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                command = commands.recv() => match command {
                    Some(WorkerCommand::Accept(name, sock)) => {
                        let listener = tokio::net::TcpListener::from_std(sock).expect("listener");
                        let task = tokio::spawn(accept_loop(
                            listener,
                            name.clone(),
                            shared.clone(),
                            upstreams.clone(),
                            conns.clone(),
                        ));
                        if let Some(old) = loops.insert(name, task) {
                            old.abort();
                        }
                    }
                    Some(WorkerCommand::Close(name)) => {
                        if let Some(old) = loops.remove(&name) {
                            old.abort();
                        }
                    }
                    None => break,
                },
            }
        }
        for l in loops.values() {
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
            // Inspector filters look at the first bytes to pick a chain.
            let detected = match target.inspect {
                Some(i) => match crate::sniff::detect(&stream, i.timeout).await {
                    Some(d) => Some(d),
                    None if i.continue_on_timeout => None,
                    None => return,
                },
                None => None,
            };
            // No chain for this connection: closed, as Envoy does.
            let Some(chain) = target.chain_for(detected) else {
                return;
            };
            let conn = Arc::new(Conn {
                listener: target.name.as_str().into(),
                chain,
                original_dst,
                ambiguous_framing: Arc::default(),
            });
            match &target.chains[chain].kind {
                ListenerKind::Tcp(cfg) => {
                    crate::tcp::proxy(stream, cfg, &conn, shared.clone()).await
                }
                ListenerKind::Http(m) => {
                    let settings = (m.codec, m.request_headers_timeout);
                    serve_http(stream, conn, shared, upstreams, settings, detected).await
                }
            }
        });
    }
}

/// What a connection came in on.
#[derive(Debug)]
pub struct Conn {
    /// The listener that handles it (after any original-destination hand-off).
    pub listener: Arc<str>,
    /// The listener's filter chain that handles it.
    pub chain: usize,
    /// Where it was going before the capture rules redirected it.
    pub original_dst: Option<SocketAddr>,
    /// Raised when a request on it carried both Content-Length and
    /// Transfer-Encoding (see [`crate::framing`]).
    pub ambiguous_framing: Arc<AtomicBool>,
}

/// Largest request head accepted; larger ones get 431.
const MAX_HEAD: usize = 60 * 1024;

/// Serves HTTP on a downstream connection: HTTP/1.x or HTTP/2 as the
/// listener's codec allows and the first bytes (or the inspector that
/// already looked at them) tell.
async fn serve_http(
    stream: tokio::net::TcpStream,
    conn_info: Arc<Conn>,
    shared: Arc<Shared>,
    upstreams: Upstreams,
    settings: (Codec, Option<Duration>),
    detected: Option<crate::sniff::Detected>,
) {
    use crate::sniff::Detected;
    let (codec, headers_timeout) = settings;
    let mut stream =
        crate::framing::Watched::new(stream, conn_info.ambiguous_framing.clone(), headers_timeout);
    let (http2, first) = match (codec, detected) {
        (Codec::Http1, _) => (false, Default::default()),
        (Codec::Http2, _) => (true, Default::default()),
        (Codec::Auto, Some(d @ (Detected::Http1 | Detected::Http2))) => {
            (d == Detected::Http2, Default::default())
        }
        // One read tells, and hyper gets the bytes read again.
        (Codec::Auto, _) => match crate::sniff::read_http_version(&mut stream).await {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    stream.replay(first);
    let io = TokioIo::new(stream);
    let svc_shared = shared.clone();
    let svc = hyper::service::service_fn(move |req| {
        crate::http::handle(
            req,
            conn_info.clone(),
            svc_shared.clone(),
            upstreams.clone(),
        )
    });
    let stop = shared.shutdown.subscribe();
    if http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD as u32)
            .serve_connection(io, svc);
        until_drained(conn, stop, |c| c.graceful_shutdown()).await;
    } else {
        // The head timeout is the socket watcher's (from a head's first
        // byte); hyper's would also cut idle keep-alive connections.
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD)
            .serve_connection(io, svc)
            .with_upgrades();
        until_drained(conn, stop, |c| c.graceful_shutdown()).await;
    }
}

/// Runs a connection; once draining starts it is told to finish the
/// request in flight and close (HTTP/1.1 `Connection: close`, HTTP/2
/// GOAWAY) with `drain`.
async fn until_drained<C: Future>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    drain: impl FnOnce(Pin<&mut C>),
) {
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopping => {
            drain(conn.as_mut());
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    /// Nagle's algorithm would hold small responses back for up to 40 ms;
    /// accepted connections must have it off without a call each.
    #[test]
    fn accepted_connections_inherit_nodelay() {
        let l = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        l.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
