//! Workers and the listeners they accept on: `--concurrency N` threads,
//! each with its own single-threaded runtime, its own accept socket per
//! listener (SO_REUSEPORT, so the kernel spreads connections) and its own
//! upstream pools. [`Proxy::apply`] puts a configuration in force and
//! binds or closes listeners to match it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::config::Snapshot;
use crate::listener::{Connections, accept_loop, bind_all};
use crate::state::Shared;
use crate::upstream::Upstreams;

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads.
    pub concurrency: usize,
    /// How long in-flight requests may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Proxy-wide caps on connections and requests.
    pub overload: crate::state::OverloadLimits,
    /// How the standard metrics are named.
    pub naming: crate::telemetry::metrics::Naming,
    /// The workload's identity, when it has one from the start (a static
    /// bootstrap with TLS needs it before its listeners bind).
    pub identity: Option<Arc<crate::identity::Identity>>,
}

/// The running data plane: shared state, and the workers' listeners.
pub struct Proxy {
    /// What the data path and the admin endpoint read.
    pub shared: Arc<Shared>,
    binder: Mutex<Binder>,
}

/// The bound listeners and the workers that accept on them.
struct Binder {
    /// Name → address and whether dual-stack.
    bound: BTreeMap<String, (SocketAddr, bool)>,
    workers: Vec<mpsc::UnboundedSender<WorkerCommand>>,
}

/// What a worker is told when the set of bound listeners changes.
enum WorkerCommand {
    /// Accept on this socket for listener `name`.
    Accept(Arc<str>, std::net::TcpListener),
    /// Stop accepting for listener `name` (its connections carry on).
    Close(Arc<str>),
}

/// A listener bound by a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The listener's name.
    pub name: String,
    /// Where it listens (port 0 resolved).
    pub address: SocketAddr,
}

impl Proxy {
    /// Swaps in a new configuration; requests in flight keep the old one.
    ///
    /// Listeners to bind that are new (or moved) are bound first: when one
    /// cannot be bound nothing changes and the error says which. Listeners
    /// that are gone stop accepting; their open connections finish.
    /// Returns the newly bound listeners.
    pub fn apply(&self, snapshot: Snapshot) -> anyhow::Result<Vec<Bound>> {
        // A panic elsewhere while holding it leaves the map consistent:
        // every change below happens after the last fallible step.
        if let Some(place) = snapshot.needs_identity()
            && self.shared.identity.get().is_none()
        {
            anyhow::bail!(
                "{place} uses TLS with the workload's certificate, and this proxy has none: start it with --ca-address"
            );
        }
        let mut binder = self.binder.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: BTreeMap<String, (SocketAddr, bool)> = snapshot
            .listeners
            .values()
            .filter(|l| l.bind)
            .map(|l| (l.name.clone(), (l.address, l.dual_stack)))
            .collect();
        let mut opened = Vec::new();
        for (name, (addr, dual)) in &wanted {
            let same = binder.bound.get(name).is_some_and(|(b, d)| {
                d == dual && (b == addr || (addr.port() == 0 && b.ip() == addr.ip()))
            });
            if same {
                continue;
            }
            let sockets = bind_all(*addr, *dual, binder.workers.len())
                .with_context(|| format!("listener {name}: cannot bind {addr}"))?;
            let address = sockets[0].local_addr()?;
            opened.push((name.clone(), address, sockets));
        }
        self.shared.swap(snapshot);
        let closed: Vec<String> = binder
            .bound
            .keys()
            .filter(|n| !wanted.contains_key(*n) || opened.iter().any(|(o, _, _)| o == *n))
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
        for (name, address, sockets) in opened {
            binder
                .bound
                .insert(name.clone(), (address, wanted[&name].1));
            let shared_name: Arc<str> = name.as_str().into();
            for (w, s) in binder.workers.iter().zip(sockets) {
                let _ = w.send(WorkerCommand::Accept(shared_name.clone(), s));
            }
            added.push(Bound { name, address });
        }
        Ok(added)
    }

    /// The bound listeners.
    pub fn bound(&self) -> Vec<Bound> {
        let b = self.binder.lock().unwrap_or_else(|p| p.into_inner());
        b.bound
            .iter()
            .map(|(n, (a, _))| Bound {
                name: n.clone(),
                address: *a,
            })
            .collect()
    }
}

/// A running proxy.
pub struct Running {
    /// The proxy, for applying configurations.
    pub proxy: Arc<Proxy>,
    /// Listeners bound by the first configuration.
    pub listeners: Vec<Bound>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// Starts the workers, then applies `snapshot` (binding its listeners).
/// An empty snapshot is fine: a sidecar on xDS binds its listeners when the
/// first configuration arrives.
pub fn start(snapshot: Snapshot, opts: Options) -> anyhow::Result<Running> {
    let concurrency = opts.concurrency.max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..concurrency).map(|_| mpsc::unbounded_channel()).unzip();
    let shared = Shared::new(opts.overload, opts.naming);
    if let Some(identity) = opts.identity {
        let _ = shared.telemetry.principal.set(identity.id.uri().into());
        let _ = shared.identity.set(identity);
    }
    let proxy = Arc::new(Proxy {
        shared: Arc::new(shared),
        binder: Mutex::new(Binder {
            bound: BTreeMap::new(),
            workers: senders,
        }),
    });
    let mut workers = Vec::new();
    for (w, commands) in receivers.into_iter().enumerate() {
        let shared = proxy.shared.clone();
        let drain = opts.drain_timeout;
        workers.push(
            std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || worker(commands, shared, drain))?,
        );
    }
    let listeners = if snapshot.listeners.is_empty() && snapshot.clusters.is_empty() {
        Vec::new()
    } else {
        proxy.apply(snapshot)?
    };
    Ok(Running {
        proxy,
        listeners,
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
        let upstreams = Upstreams::new(shared.identity.clone());
        let mut loops: HashMap<Arc<str>, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut stop = shared.shutdown_signal();
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
        conns.drained(tokio::time::Instant::now() + drain).await;
    });
}
