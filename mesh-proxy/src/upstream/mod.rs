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

pub mod connect;
mod pool;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Bytes, Frame, Incoming};
use tokio::sync::mpsc;

pub use pool::{Connecting, PooledBody, Upstreams};

use crate::telemetry::tally::Tally;

/// How long an idle pooled upstream connection is kept. Shorter than common
/// servers' keep-alive timeouts (5 s and up), so the proxy closes first and
/// rarely sends on a connection the server is closing.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Request bodies sent upstream: the client's, or none.
pub type UpstreamBody = http_body_util::Either<Downstream, http_body_util::Full<Bytes>>;

/// A request body sent upstream: the client's, which remembers whether
/// the client's side of it broke (e.g. a malformed chunk) so the proxy
/// answers 400 rather than blaming the upstream, and hands a copy of each
/// frame to its mirrors; or such a copy, for a mirror.
pub struct Downstream {
    source: Source,
    failed: Arc<AtomicBool>,
    /// Counts the client's bytes for the standard metrics.
    tally: Option<Arc<Tally>>,
}

enum Source {
    Client {
        body: Incoming,
        /// Where copies go; a mirror that falls behind is cut off.
        copies: Vec<mpsc::Sender<Copied>>,
    },
    Copy {
        frames: mpsc::Receiver<Copied>,
        ended: bool,
        /// The original's, so a copy keeps its framing (Content-Length).
        hint: hyper::body::SizeHint,
    },
}

/// A copied frame, or the end of the body (`None`): a channel closed
/// without it means the copy was cut off.
type Copied = Option<Frame<Bytes>>;

/// Frames a mirror may fall behind the original before it is cut off.
const MIRROR_BACKLOG: usize = 16;

/// A mirror's copy of a body was cut off: the original's failed, or the
/// mirror fell behind (the original never waits for it).
#[derive(Debug, thiserror::Error)]
#[error("the mirrored request body was cut off")]
pub struct CopyCut;

impl Downstream {
    /// Wraps `body`; `failed` is raised when reading it fails; `tally`
    /// counts its bytes.
    pub fn new(body: Incoming, failed: Arc<AtomicBool>, tally: Option<Arc<Tally>>) -> Self {
        Downstream {
            source: Source::Client {
                body,
                copies: Vec::new(),
            },
            failed,
            tally,
        }
    }

    /// A body that receives a copy of every frame of this one as it is
    /// read (only a client's body can be copied).
    pub fn copy(&mut self) -> Option<Downstream> {
        let Source::Client { copies, body } = &mut self.source else {
            return None;
        };
        let hint = hyper::body::Body::size_hint(&*body);
        let (tx, rx) = mpsc::channel(MIRROR_BACKLOG);
        copies.push(tx);
        Some(Downstream {
            source: Source::Copy {
                frames: rx,
                ended: false,
                hint,
            },
            failed: Arc::new(AtomicBool::new(false)),
            tally: None,
        })
    }
}

/// Hands `frame` (or the end) to every copy still keeping up.
fn send_copies(copies: &mut Vec<mpsc::Sender<Copied>>, frame: Option<&Frame<Bytes>>) {
    copies.retain(|tx| {
        let copy = frame.map(|f| match (f.data_ref(), f.trailers_ref()) {
            (Some(d), _) => Frame::data(d.clone()),
            (None, Some(t)) => Frame::trailers(t.clone()),
            (None, None) => Frame::data(Bytes::new()),
        });
        tx.try_send(copy).is_ok()
    });
}

impl hyper::body::Body for Downstream {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match &mut this.source {
            Source::Client { body, copies } => {
                let r = Pin::new(&mut *body).poll_frame(cx);
                if let (Poll::Ready(Some(Ok(f))), Some(t)) = (&r, &this.tally)
                    && let Some(d) = f.data_ref()
                {
                    t.read(d.len());
                }
                match &r {
                    Poll::Ready(Some(Ok(f))) if !copies.is_empty() => {
                        send_copies(copies, Some(f));
                        if body.is_end_stream() {
                            send_copies(copies, None);
                        }
                    }
                    Poll::Ready(None) => send_copies(copies, None),
                    Poll::Ready(Some(Err(_))) => {
                        this.failed.store(true, Ordering::Relaxed);
                        copies.clear();
                    }
                    _ => {}
                }
                r.map_err(Into::into)
            }
            Source::Copy { frames, ended, .. } => match frames.poll_recv(cx) {
                Poll::Ready(Some(Some(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(None)) => {
                    *ended = true;
                    Poll::Ready(None)
                }
                Poll::Ready(None) if *ended => Poll::Ready(None),
                Poll::Ready(None) => Poll::Ready(Some(Err(CopyCut.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Client { body, .. } => body.is_end_stream(),
            Source::Copy { ended, .. } => *ended,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.source {
            Source::Client { body, .. } => body.size_hint(),
            Source::Copy { hint, .. } => *hint,
        }
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
    /// TLS to the endpoint could not be set up.
    #[error("{0}")]
    Tls(#[source] crate::transport::TlsError),
    /// The connection failed, or closed before the response head.
    #[error("{0}")]
    Http(#[source] hyper::Error),
}
