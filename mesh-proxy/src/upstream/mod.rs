//! Upstream connections of one worker: HTTP/1.1 connections pooled per
//! endpoint (the most recently used first, closed after
//! [`UPSTREAM_IDLE_TIMEOUT`] idle) and one multiplexed HTTP/2 connection
//! per endpoint.
//!
//! Built on hyper's connection API rather than hyper-util's pooled client:
//! that client hashes a (scheme, authority) key and spawns a task per
//! request to see the connection back into its pool, and it cannot hand
//! back a request it never wrote for the caller to send elsewhere. Here a
//! connection goes back to the pool when its response body ends, and a
//! request refused by a pooled connection that was closing is sent again
//! on a fresh one without a copy.

mod connect;
mod pool;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Bytes, Frame, Incoming};

pub use pool::{Connecting, PooledBody, Upstreams};

/// How long an idle pooled upstream connection is kept. Shorter than common
/// servers' keep-alive timeouts (5 s and up), so the proxy closes first and
/// rarely sends on a connection the server is closing.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Request bodies sent upstream: the client's, or none.
pub type UpstreamBody = http_body_util::Either<Downstream, http_body_util::Full<Bytes>>;

/// A downstream request body that remembers whether the client's side of it
/// broke (e.g. a malformed chunk), so the proxy answers 400 rather than
/// blaming the upstream.
pub struct Downstream {
    body: Incoming,
    failed: Arc<AtomicBool>,
}

impl Downstream {
    /// Wraps `body`; `failed` is raised when reading it fails.
    pub fn new(body: Incoming, failed: Arc<AtomicBool>) -> Self {
        Downstream { body, failed }
    }
}

impl hyper::body::Body for Downstream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &r {
            self.failed.store(true, Ordering::Relaxed);
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

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connect did not finish in the cluster's connect timeout.
    #[error("connect timeout after {0:?}")]
    ConnectTimeout(Duration),
    /// The TCP connect failed.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection failed, or closed before the response head.
    #[error("{0}")]
    Http(#[source] hyper::Error),
}
