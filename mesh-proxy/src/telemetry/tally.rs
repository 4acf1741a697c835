//! One request as telemetry sees it: started when it arrives, told along
//! the way what happened (bytes read, the service and the peer, flags),
//! finished when the response body ends or is dropped — then counted in
//! the standard metrics.
//!
//! The HTTP path carries the [`Tally`] in the request's extensions; the
//! response body is wrapped in [`Metered`], which finishes it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Bytes, Frame, SizeHint};

use super::access_log::{LogEnd, LogStart};
use super::flags::Flags;
use super::metrics::{Call, Measures, Reporter};
use super::peer::{NOBODY, Workload};
use super::spans::{SpanEnd, SpanStart};
use crate::config::service::Service;
use crate::state::Shared;

/// What one request did so far.
#[derive(Debug)]
pub struct Tally {
    start: Instant,
    reporter: Reporter,
    grpc: bool,
    /// The caller's SPIFFE ID (mutual TLS, inbound).
    peer_principal: Option<Arc<str>>,
    request_bytes: AtomicU64,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    peer: Option<Arc<Workload>>,
    service: Option<Arc<Service>>,
    flags: Flags,
    span: Option<Box<SpanStart>>,
    log: Option<Box<LogStart>>,
}

impl Tally {
    /// A request arriving now; `grpc` when its content type says so;
    /// `peer_principal`: who called, when mutual TLS told.
    pub fn start(reporter: Reporter, grpc: bool, peer_principal: Option<Arc<str>>) -> Arc<Tally> {
        Arc::new(Tally {
            start: Instant::now(),
            reporter,
            grpc,
            peer_principal,
            request_bytes: AtomicU64::new(0),
            seen: Mutex::new(Seen::default()),
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request goes out of this proxy's workload (the caller's side).
    pub fn outbound(&self) -> bool {
        self.reporter == Reporter::Source
    }

    /// Request body bytes read.
    pub fn read(&self, n: usize) {
        self.request_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The other side's workload, as the exchange told.
    pub fn peer(&self, peer: Workload) {
        self.seen().peer = Some(Arc::new(peer));
    }

    /// The service the request went to.
    pub fn service(&self, service: &Arc<Service>) {
        self.seen().service = Some(service.clone());
    }

    /// Adds response flags.
    pub fn flag(&self, flags: impl Into<Flags>) {
        let mut seen = self.seen();
        seen.flags = seen.flags.union(flags.into());
    }

    /// The request is a recorded span.
    pub fn trace(&self, span: SpanStart) {
        self.seen().span = Some(Box::new(span));
    }

    /// The request is logged.
    pub fn log(&self, log: LogStart) {
        self.seen().log = Some(Box::new(log));
    }

    /// The request belongs to trace `id` (for its access log).
    pub fn trace_id(&self, id: u128) {
        if let Some(l) = &mut self.seen().log {
            l.trace_id = Some(id);
        }
    }

    /// The request is tried on `endpoint` of `cluster` (for its access log).
    pub fn upstream(&self, endpoint: std::net::SocketAddr, cluster: &str) {
        if let Some(l) = &mut self.seen().log {
            l.upstream = Some((endpoint, cluster.to_owned()));
        }
    }

    /// The response's headers (for its access log).
    pub fn response_headers(&self, headers: &http::HeaderMap) {
        if let Some(l) = &mut self.seen().log {
            l.response(headers);
        }
    }

    /// Counts the request, answered `code` (gRPC status `grpc`) with
    /// `response_bytes` of body, and ends its span.
    fn finish(&self, shared: &Arc<Shared>, code: u16, grpc: Option<u8>, response_bytes: u64) {
        let seen = std::mem::take(&mut *self.seen());
        let service = seen.service.unwrap_or_else(Service::unknown);
        if let Some(span) = seen.span {
            let end = SpanEnd {
                code,
                flags: seen.flags.to_string(),
                service: &service.host,
            };
            shared.telemetry.spans.record(shared, *span, end);
        }
        let call = Call {
            reporter: self.reporter,
            local: shared.telemetry.local(),
            peer: seen.peer.unwrap_or_else(|| NOBODY.clone()),
            service,
            protocol: if self.grpc { "grpc" } else { "http" },
            code,
            grpc: grpc.filter(|_| self.grpc),
            flags: seen.flags,
            local_principal: shared.telemetry.principal.get().cloned(),
            peer_principal: self.peer_principal.clone(),
        };
        let measures = Measures {
            duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
            request_bytes: self.request_bytes.load(Ordering::Relaxed),
            response_bytes,
        };
        if let Some(log) = seen.log {
            let end = LogEnd {
                code,
                flags: seen.flags.to_string(),
                bytes_received: measures.request_bytes,
                bytes_sent: response_bytes,
                duration_ms: measures.duration_ms as u64,
            };
            log.finish(shared, end);
        }
        shared.telemetry.metrics.request(&call, measures);
    }
}

/// The gRPC status in `headers` (`grpc-status`), if any.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u8> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A response body that finishes its request's [`Tally`] when it ends or
/// is dropped (the client went away: flag `DC`).
pub struct Metered<B: Body> {
    inner: B,
    finish: Option<(Arc<Tally>, Arc<Shared>)>,
    code: u16,
    grpc: Option<u8>,
    bytes: u64,
}

impl<B: Body> Metered<B> {
    /// Wraps the body of a response with status `code` and `headers`.
    pub fn new(
        inner: B,
        tally: Arc<Tally>,
        shared: Arc<Shared>,
        code: u16,
        headers: &http::HeaderMap,
    ) -> Self {
        Metered {
            inner,
            finish: Some((tally, shared)),
            code,
            grpc: grpc_status(headers),
            bytes: 0,
        }
    }

    fn done(&mut self) {
        if let Some((tally, shared)) = self.finish.take() {
            tally.finish(&shared, self.code, self.grpc, self.bytes);
        }
    }
}

impl<B: Body> Drop for Metered<B> {
    fn drop(&mut self) {
        if let Some((tally, _)) = self.finish.as_ref().filter(|_| !self.inner.is_end_stream()) {
            tally.flag(super::flags::Flag::DownstreamTermination);
        }
        self.done();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                } else if let Some(t) = f.trailers_ref() {
                    this.grpc = grpc_status(t).or(this.grpc);
                }
                if this.inner.is_end_stream() {
                    this.done();
                }
            }
            Poll::Ready(None) => this.done(),
            Poll::Ready(Some(Err(_))) => {
                if let Some((tally, _)) = &this.finish {
                    tally.flag(super::flags::Flag::UpstreamReset);
                }
                this.done();
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
