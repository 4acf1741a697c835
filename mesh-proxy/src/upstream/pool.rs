//! The pools of one worker: HTTP/1.1 connections per endpoint (the most
//! recently used first, closed after [`UPSTREAM_IDLE_TIMEOUT`] idle) and
//! one multiplexed HTTP/2 connection per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::client::conn::{http1, http2};

use super::connect::{connect_h1, connect_h2};
use super::{UPSTREAM_IDLE_TIMEOUT, UpstreamBody, UpstreamError};
use crate::config::breaker::Admission;
use crate::config::tls::UpstreamTls;
use crate::identity::Identity;

/// An idle HTTP/1.1 connection and how many requests it carried.
struct IdleH1 {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
    requests: u32,
}

/// An HTTP/2 connection, when a request last used it and how many did.
struct SharedH2 {
    sender: http2::SendRequest<UpstreamBody>,
    used: Instant,
    requests: u32,
}

/// Where pooled connections go: an endpoint, and the TLS they speak
/// ([`UpstreamTls::pool_key`], 0 in the clear), so connections of
/// different TLS settings to one address are never mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    tls: u64,
}

/// How to reach one cluster's endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Connecting<'a> {
    /// HTTP/2 with prior knowledge, else HTTP/1.1.
    pub http2: bool,
    /// How long a TCP connect may take.
    pub timeout: Duration,
    /// Requests a connection carries before it is closed (HTTP/1.1) or no
    /// longer given new ones (HTTP/2); 0: no limit.
    pub max_requests: u32,
    /// TLS to the endpoints.
    pub tls: Option<&'a UpstreamTls>,
}

impl Connecting<'_> {
    /// Whether a connection that carried `requests` takes no more.
    fn spent(&self, requests: u32) -> bool {
        self.max_requests != 0 && requests >= self.max_requests
    }
}

#[derive(Default)]
struct Pools {
    h1: HashMap<Peer, Vec<IdleH1>>,
    h2: HashMap<Peer, SharedH2>,
    /// Whether the task closing idle connections runs.
    sweeping: bool,
}

impl Pools {
    fn is_empty(&self) -> bool {
        self.h1.is_empty() && self.h2.is_empty()
    }

    /// Drops connections idle for longer than the timeout, or closed.
    fn sweep(&mut self, now: Instant) {
        let fresh = |since: Instant| now.saturating_duration_since(since) < UPSTREAM_IDLE_TIMEOUT;
        self.h1.retain(|_, idle| {
            idle.retain(|c| fresh(c.since) && !c.sender.is_closed());
            !idle.is_empty()
        });
        self.h2
            .retain(|_, c| fresh(c.used) && !c.sender.is_closed());
    }
}

/// The upstream connections of one worker. Cloning shares them.
#[derive(Clone)]
pub struct Upstreams {
    pools: Arc<Mutex<Pools>>,
    /// The certificate TLS connections present (set once the proxy has one).
    identity: Arc<OnceLock<Arc<Identity>>>,
}

impl Upstreams {
    /// No connections yet; TLS ones will present `identity`'s certificate.
    pub fn new(identity: Arc<OnceLock<Arc<Identity>>>) -> Self {
        Upstreams {
            pools: Arc::default(),
            identity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pools> {
        // Uncontended: one worker thread uses it.
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `req` to `addr` over HTTP/2 or HTTP/1.1, on a pooled
    /// connection when one is free, else on a new one connected within
    /// `how.timeout`. An HTTP/1.1 request wants an origin-form URI and
    /// a Host header; an HTTP/2 one an absolute URI.
    pub async fn send(
        &self,
        addr: SocketAddr,
        how: Connecting<'_>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let addr = Peer {
            addr,
            tls: how.tls.map_or(0, |t| t.pool_key),
        };
        if how.http2 {
            self.send_h2(addr, how, req).await
        } else {
            self.send_h1(addr, how, req).await
        }
    }

    async fn send_h1(
        &self,
        addr: Peer,
        how: Connecting<'_>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        loop {
            let (mut sender, requests, pooled) = match self.idle_h1(addr) {
                Some((s, n)) => (s, n, true),
                // Boxed: connecting is rare, and its state would otherwise
                // grow every request's future (copied as it is set up).
                None => (
                    Box::pin(connect_h1(addr.addr, how, self.identity.get())).await?,
                    0,
                    false,
                ),
            };
            let requests = requests + 1;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // After 101 the connection belongs to the upgrade.
                    let reuse =
                        resp.status() != StatusCode::SWITCHING_PROTOCOLS && !how.spent(requests);
                    let checkin = reuse.then(|| Checkin {
                        pools: self.clone(),
                        addr,
                        sender,
                        requests,
                    });
                    return Ok(resp.map(|body| PooledBody::new(body, checkin)));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the pooled connection was closing
                    // (the keep-alive race). Try the next one.
                    Some(r) if pooled => req = r,
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently used ready idle connection to `addr`. Closed and
    /// expired ones are dropped; ones still finishing a response stay.
    fn idle_h1(&self, addr: Peer) -> Option<(http1::SendRequest<UpstreamBody>, u32)> {
        let mut pools = self.lock();
        let idle = pools.h1.get_mut(&addr)?;
        let now = Instant::now();
        let mut found = None;
        let mut busy = Vec::new();
        while let Some(c) = idle.pop() {
            if c.sender.is_closed()
                || now.saturating_duration_since(c.since) >= UPSTREAM_IDLE_TIMEOUT
            {
                continue;
            }
            if c.sender.is_ready() {
                found = Some((c.sender, c.requests));
                break;
            }
            busy.push(c);
        }
        idle.extend(busy.into_iter().rev());
        found
    }

    fn checkin_h1(&self, addr: Peer, sender: http1::SendRequest<UpstreamBody>, requests: u32) {
        if sender.is_closed() {
            return;
        }
        let mut pools = self.lock();
        pools.h1.entry(addr).or_default().push(IdleH1 {
            sender,
            since: Instant::now(),
            requests,
        });
        self.start_sweeper(&mut pools);
    }

    async fn send_h2(
        &self,
        addr: Peer,
        how: Connecting<'_>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let mut again = false;
        loop {
            let (mut sender, fresh) = match self.shared_h2(addr, how) {
                Some(s) => (s, false),
                None => (Box::pin(self.connect_shared_h2(addr, how)).await?, true),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(|body| PooledBody::new(body, None))),
                Err(mut e) => match e.take_message() {
                    // The connection was going away (GOAWAY) before it took
                    // the request: once more, on a new one.
                    Some(r) if !fresh && !again => {
                        self.lock().h2.remove(&addr);
                        (req, again) = (r, true);
                    }
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    /// The shared connection to `addr`, counting one more request on it; a
    /// connection that has carried its share leaves the pool (its streams
    /// finish) and the next request opens another.
    fn shared_h2(
        &self,
        addr: Peer,
        how: Connecting<'_>,
    ) -> Option<http2::SendRequest<UpstreamBody>> {
        let mut pools = self.lock();
        let c = pools.h2.get_mut(&addr)?;
        if c.sender.is_closed() {
            return None;
        }
        c.used = Instant::now();
        c.requests += 1;
        let sender = c.sender.clone();
        if how.spent(c.requests) {
            pools.h2.remove(&addr);
        }
        Some(sender)
    }

    async fn connect_shared_h2(
        &self,
        addr: Peer,
        how: Connecting<'_>,
    ) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
        let sender = connect_h2(addr.addr, how, self.identity.get()).await?;
        if how.spent(1) {
            return Ok(sender);
        }
        let mut pools = self.lock();
        pools.h2.insert(
            addr,
            SharedH2 {
                sender: sender.clone(),
                used: Instant::now(),
                requests: 1,
            },
        );
        self.start_sweeper(&mut pools);
        Ok(sender)
    }

    /// Starts the task that closes idle connections, unless it runs. It
    /// stops once the pools are empty, so an idle worker does not wake.
    fn start_sweeper(&self, pools: &mut Pools) {
        if pools.sweeping {
            return;
        }
        pools.sweeping = true;
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let mut pools = this.lock();
                pools.sweep(Instant::now());
                if pools.is_empty() {
                    pools.sweeping = false;
                    return;
                }
            }
        });
    }
}

/// Returns an HTTP/1.1 connection to the pool.
struct Checkin {
    pools: Upstreams,
    addr: Peer,
    sender: http1::SendRequest<UpstreamBody>,
    requests: u32,
}

/// A response body that puts its HTTP/1.1 connection back in the pool when
/// it ends. Dropped before its end, the connection closes with it. Either
/// way the request's places under its cluster's circuit breaker are given
/// back then.
pub struct PooledBody {
    body: Incoming,
    checkin: Option<Checkin>,
    admission: Option<Admission>,
}

impl PooledBody {
    fn new(body: Incoming, checkin: Option<Checkin>) -> Self {
        let mut b = PooledBody {
            body,
            checkin,
            admission: None,
        };
        if b.body.is_end_stream() {
            b.release();
        }
        b
    }

    /// Holds the request's admission until the body ends.
    pub fn holding(mut self, admission: Admission) -> Self {
        if !self.body.is_end_stream() {
            self.admission = Some(admission);
        }
        self
    }

    fn release(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.pools.checkin_h1(c.addr, c.sender, c.requests);
        }
        self.admission = None;
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            // A broken body leaves the connection unusable.
            Poll::Ready(Some(Err(_))) => {
                self.checkin = None;
                self.admission = None;
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
