//! The pools of one worker: HTTP/1.1 connections per endpoint (the most
//! recently used first, closed after [`UPSTREAM_IDLE_TIMEOUT`] idle) and
//! one multiplexed HTTP/2 connection per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::client::conn::{http1, http2};

use super::connect::{connect_h1, connect_h2};
use super::{UPSTREAM_IDLE_TIMEOUT, UpstreamBody, UpstreamError};

/// An idle HTTP/1.1 connection.
struct IdleH1 {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// An HTTP/2 connection and when a request last used it.
struct SharedH2 {
    sender: http2::SendRequest<UpstreamBody>,
    used: Instant,
}

#[derive(Default)]
struct Pools {
    h1: HashMap<SocketAddr, Vec<IdleH1>>,
    h2: HashMap<SocketAddr, SharedH2>,
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
#[derive(Clone, Default)]
pub struct Upstreams {
    pools: Arc<Mutex<Pools>>,
}

impl Upstreams {
    /// No connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Pools> {
        // Uncontended: one worker thread uses it.
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `req` to `addr` over HTTP/2 or HTTP/1.1, on a pooled
    /// connection when one is free, else on a new one connected within
    /// `connect_timeout`. An HTTP/1.1 request wants an origin-form URI and
    /// a Host header; an HTTP/2 one an absolute URI.
    pub async fn send(
        &self,
        addr: SocketAddr,
        http2: bool,
        connect_timeout: Duration,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if http2 {
            self.send_h2(addr, connect_timeout, req).await
        } else {
            self.send_h1(addr, connect_timeout, req).await
        }
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        loop {
            let (mut sender, pooled) = match self.idle_h1(addr) {
                Some(s) => (s, true),
                // Boxed: connecting is rare, and its state would otherwise
                // grow every request's future (copied as it is set up).
                None => (Box::pin(connect_h1(addr, connect_timeout)).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // After 101 the connection belongs to the upgrade.
                    let reuse = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
                    let checkin = reuse.then(|| Checkin {
                        pools: self.clone(),
                        addr,
                        sender,
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
    fn idle_h1(&self, addr: SocketAddr) -> Option<http1::SendRequest<UpstreamBody>> {
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
                found = Some(c.sender);
                break;
            }
            busy.push(c);
        }
        idle.extend(busy.into_iter().rev());
        found
    }

    fn checkin_h1(&self, addr: SocketAddr, sender: http1::SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut pools = self.lock();
        pools.h1.entry(addr).or_default().push(IdleH1 {
            sender,
            since: Instant::now(),
        });
        self.start_sweeper(&mut pools);
    }

    async fn send_h2(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let mut again = false;
        loop {
            let (mut sender, fresh) = match self.shared_h2(addr) {
                Some(s) => (s, false),
                None => (
                    Box::pin(self.connect_shared_h2(addr, connect_timeout)).await?,
                    true,
                ),
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

    fn shared_h2(&self, addr: SocketAddr) -> Option<http2::SendRequest<UpstreamBody>> {
        let mut pools = self.lock();
        let c = pools.h2.get_mut(&addr)?;
        if c.sender.is_closed() {
            return None;
        }
        c.used = Instant::now();
        Some(c.sender.clone())
    }

    async fn connect_shared_h2(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
        let sender = connect_h2(addr, timeout).await?;
        let mut pools = self.lock();
        pools.h2.insert(
            addr,
            SharedH2 {
                sender: sender.clone(),
                used: Instant::now(),
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
    addr: SocketAddr,
    sender: http1::SendRequest<UpstreamBody>,
}

/// A response body that puts its HTTP/1.1 connection back in the pool when
/// it ends. Dropped before its end, the connection closes with it.
pub struct PooledBody {
    body: Incoming,
    checkin: Option<Checkin>,
}

impl PooledBody {
    fn new(body: Incoming, checkin: Option<Checkin>) -> Self {
        let mut b = PooledBody { body, checkin };
        if b.body.is_end_stream() {
            b.release();
        }
        b
    }

    fn release(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.pools.checkin_h1(c.addr, c.sender);
        }
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
            Poll::Ready(Some(Err(_))) => self.checkin = None,
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
