//! Listening sockets and what happens to an accepted connection: the
//! original-destination hand-off of a capture listener, the inspectors
//! that pick a filter chain, then the chain's protocol (HTTP or TCP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tracing::Instrument;

use crate::config::ListenerKind;
use crate::sniff::Detected;
use crate::state::{Conn, Shared};
use crate::transport::Stream;
use crate::upstream::Upstreams;

/// A listening socket on `addr` that shares the port with the other
/// workers' (SO_REUSEPORT: the kernel spreads connections); on an IPv6
/// address, IPv6 only unless `dual_stack`.
pub fn bind(addr: SocketAddr, dual_stack: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(!dual_stack)?;
    }
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
pub fn bind_all(
    addr: SocketAddr,
    dual_stack: bool,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind(addr, dual_stack)?;
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind(addr, dual_stack)?);
    }
    Ok(all)
}

/// Counts a worker's open connections so draining can wait for them.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    closed: Notify,
}

impl Connections {
    /// Waits until every connection closed, or `deadline`.
    pub async fn drained(&self, deadline: tokio::time::Instant) {
        while self.open.load(Ordering::Acquire) > 0 {
            let wait = self.closed.notified();
            if self.open.load(Ordering::Acquire) == 0
                || tokio::time::timeout_at(deadline, wait).await.is_err()
            {
                break;
            }
        }
    }
}

/// One open connection, counted until dropped.
struct ConnectionGuard(Arc<Connections>, Arc<Shared>);

impl ConnectionGuard {
    fn open(conns: &Arc<Connections>, shared: &Arc<Shared>) -> Self {
        let stats = &shared.stats;
        stats.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
        stats.downstream_cx_active.fetch_add(1, Ordering::Relaxed);
        conns.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(conns.clone(), shared.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let stats = &self.1.stats;
        stats.downstream_cx_active.fetch_sub(1, Ordering::Relaxed);
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// Accepts on `listener` (listener `name`) until aborted.
pub async fn accept_loop(
    listener: tokio::net::TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
    upstreams: Upstreams,
    conns: Arc<Connections>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        // Over the proxy's cap a connection is closed at once: shedding it
        // costs nothing, serving it would cost memory.
        let stats = &shared.stats;
        if stats.downstream_cx_active.load(Ordering::Relaxed)
            >= shared.overload.limits.max_connections as u64
        {
            stats.downstream_cx_overflow.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        let guard = ConnectionGuard::open(&conns, &shared);
        let (name, shared, upstreams) = (name.clone(), shared.clone(), upstreams.clone());
        // Disabled unless debug is on for this module: one check per connection.
        let span = tracing::debug_span!("conn", listener = %name, %peer);
        tokio::spawn(
            async move {
                let _guard = guard;
                handle(stream, &name, shared, upstreams).await;
            }
            .instrument(span),
        );
    }
}

/// Takes one accepted connection to the listener and chain that handle it.
async fn handle(
    stream: tokio::net::TcpStream,
    name: &str,
    shared: Arc<Shared>,
    upstreams: Upstreams,
) {
    let snap = shared.config.load_full();
    let Some(own) = snap.listeners.get(name).cloned() else {
        return;
    };
    // A capture listener hands the connection to the listener for where it
    // was going; without one, its own chain handles it.
    let original_dst = own
        .use_original_dst
        .then(|| crate::orig_dst::original_dst(&stream))
        .flatten();
    let target = original_dst
        .and_then(|d| snap.listener_for(d))
        .filter(|l| l.name != own.name)
        .cloned()
        .unwrap_or(own);
    // The connection keeps its listener, not the whole configuration.
    drop(snap);
    // Inspector filters look at the first bytes to pick a chain.
    let mut alpn = Vec::new();
    let detected = match target.inspect {
        Some(i) => {
            let deadline = tokio::time::Instant::now() + i.timeout;
            match crate::sniff::detect(&stream, i.timeout).await {
                Some(Detected::Tls) if i.tls => {
                    alpn = crate::sniff::offered_alpn(&stream, deadline).await;
                    Some(Detected::Tls)
                }
                Some(d) => Some(d),
                None if i.continue_on_timeout => None,
                None => return,
            }
        }
        None => None,
    };
    // No chain for this connection: closed, as Envoy does.
    let Some(chain) = target.chain_for(detected, &alpn) else {
        tracing::debug!(?detected, "no filter chain matches; closed");
        return;
    };
    tracing::debug!(handler = %target.name, chain, ?original_dst, ?alpn, "connection accepted");
    let peer = stream.peer_addr().ok();
    let dst_port = original_dst
        .or_else(|| stream.local_addr().ok())
        .map_or(0, |a| a.port());
    let (stream, peer_identity, detected) = match &target.chains[chain].tls {
        None => (Stream::Plain(stream), None, detected),
        Some(tls) => match crate::transport::accept(stream, tls, shared.identity.get()).await {
            Ok((stream, identity)) => {
                // What TLS agreed tells the protocol inside it.
                let inner = match stream.alpn() {
                    Some(b"h2") => Some(Detected::Http2),
                    Some(b"http/1.1" | b"http/1.0") => Some(Detected::Http1),
                    _ => None,
                };
                (stream, identity, inner)
            }
            Err(e) => {
                shared
                    .stats
                    .ssl_handshake_error
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!("TLS refused: {e}");
                return;
            }
        },
    };
    let rbac = crate::config::rbac::Subject {
        request: None,
        port: dst_port,
        principal: peer_identity.as_deref(),
    };
    if let Err(why) = crate::config::rbac::decide_all(&target.chains[chain].rbac, &rbac) {
        shared.stats.rbac_denied.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("connection refused: {why}");
        return;
    }
    let conn = Arc::new(Conn {
        listener: target.name.as_str().into(),
        chain,
        original_dst,
        peer,
        dst_port,
        peer_identity,
        ambiguous_framing: Arc::default(),
    });
    match &target.chains[chain].kind {
        ListenerKind::Tcp(cfg) => crate::tcp::proxy(stream, cfg, &conn, &shared).await,
        ListenerKind::Http(manager) => {
            crate::http::serve(stream, conn, manager, shared, upstreams, detected).await
        }
    }
}

#[cfg(test)]
mod tests {
    /// Nagle's algorithm would hold small responses back for up to 40 ms;
    /// accepted connections must have it off without a call each.
    #[test]
    fn accepted_connections_inherit_nodelay() {
        let l = super::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        l.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    /// `::` with ipv4_compat takes IPv4 connections too; without, only IPv6.
    #[test]
    fn dual_stack_takes_both_families() {
        let dual = super::bind("[::]:0".parse().unwrap(), true).unwrap();
        let port = dual.local_addr().unwrap().port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(std::net::TcpStream::connect(("::1", port)).is_ok());
        let v6 = super::bind("[::]:0".parse().unwrap(), false).unwrap();
        let port = v6.local_addr().unwrap().port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
