//! Forwarding one request upstream: the cluster picked by weight, admitted
//! under its circuit breaker, the endpoint by the cluster's policy, then
//! tries with per-try and overall timeouts and retries within the cluster's
//! retry limit; each try's outcome feeds outlier detection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};

use super::{ProxyBody, flagged, tally_of, text};
use crate::config::breaker::{Refusal, RetryPermit};
use crate::config::{Cluster, Endpoint, Failure, Forward, RetryPolicy};
use crate::state::Shared;
use crate::telemetry::flags::Flag;
use crate::telemetry::peer::{HEADER as PEER_HEADER, Workload};
use crate::telemetry::tally::Tally;
use crate::upstream::{Connecting, Downstream, PooledBody, UpstreamBody, UpstreamError, Upstreams};

// Matched as soon as it is returned, never stored (see `Next`).
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Response(Response<PooledBody>),
    /// No response: how, and the error's words.
    Failed(Failure, String),
    TimedOut,
}

/// How an upstream request that got no response failed.
fn failure_of(e: &UpstreamError) -> Failure {
    match e {
        UpstreamError::ConnectTimeout(_) | UpstreamError::Connect(_) | UpstreamError::Tls(_) => {
            Failure::Connect
        }
        UpstreamError::Http(h) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(h);
            while let Some(s) = source {
                if let Some(h2) = s.downcast_ref::<h2::Error>()
                    && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                {
                    return Failure::RefusedStream;
                }
                source = s.source();
            }
            Failure::Reset
        }
    }
}

/// The answer to a request past its cluster's circuit breaker, as Envoy
/// gives it.
fn overflow() -> Response<ProxyBody> {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow\n",
    );
    r.headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    flagged(r, Flag::UpstreamOverflow)
}

/// How the upstream pools reach `cluster`'s endpoints.
fn connecting(cluster: &Cluster) -> Connecting<'_> {
    Connecting {
        http2: cluster.http2,
        timeout: cluster.connect_timeout,
        max_requests: cluster.max_requests_per_connection,
        tls: cluster.tls.as_deref(),
    }
}

/// Sends one try. `head` is the request's head: moved in on the last try,
/// a copy on earlier ones (a retry needs it again).
async fn send(
    mut head: http::request::Parts,
    body: UpstreamBody,
    cluster: &Cluster,
    address: std::net::SocketAddr,
    upstreams: &Upstreams,
    timeout: Option<Duration>,
) -> Outcome {
    // The access log names the endpoint last tried.
    if let Some(t) = head.extensions.get::<Arc<Tally>>() {
        t.upstream(address, &cluster.name);
    }
    let path = head
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    head.uri = if cluster.http2 {
        // HTTP/2 carries the host as :authority, from the URI.
        let host = head.headers.remove(header::HOST);
        let authority = host
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| crate::config::authority(address));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        match Uri::from_parts(uri) {
            Ok(u) => u,
            Err(e) => return Outcome::Failed(Failure::Reset, e.to_string()),
        }
    } else {
        head.version = http::Version::HTTP_11;
        Uri::from(path)
    };
    // What the downstream server attached is not the upstream's business.
    head.extensions.clear();
    let r = Request::from_parts(head, body);
    let fut = async {
        match upstreams.send(address, connecting(cluster), r).await {
            Ok(r) => Outcome::Response(r),
            Err(e) => Outcome::Failed(failure_of(&e), e.to_string()),
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .unwrap_or(Outcome::TimedOut),
        None => fut.await,
    }
}

/// Sends a copy of the request to each of the route's mirrors whose share
/// takes it, in a task of its own: the original neither waits for the
/// copies nor sees how they end. A copy without a body leaves once the
/// original has its answer (when the returned sender drops), so on a busy
/// worker its work never sits on the original's path; a body is copied as
/// the original reads it.
fn mirror(
    head: Option<&http::request::Parts>,
    body: &mut Option<Downstream>,
    fwd: &Forward,
    upstreams: &Upstreams,
) -> Option<tokio::sync::watch::Sender<()>> {
    // Upgrades (WebSocket) are not mirrored.
    let head =
        head.filter(|h| !fwd.mirrors.is_empty() && !h.headers.contains_key(header::UPGRADE))?;
    let (release, gate) = tokio::sync::watch::channel(());
    for m in &fwd.mirrors {
        let Some(cluster) = &m.cluster else { continue };
        if !m.share.pick() {
            continue;
        }
        let copied = match body.as_mut().map(Downstream::copy) {
            None => Either::Right(Full::new(Bytes::new())),
            Some(Some(b)) => Either::Left(b),
            Some(None) => continue,
        };
        let fwd_timeout = fwd.timeout;
        let mut head = copy_head(head);
        // A shadow is not the request: it tells the tally nothing.
        head.extensions.clear();
        if let Some(host) = head.headers.get(header::HOST) {
            let shadow = m.host(host);
            head.headers.insert(header::HOST, shadow);
        }
        let (cluster, upstreams) = (cluster.clone(), upstreams.clone());
        let gate = body.is_none().then(|| gate.clone());
        tokio::spawn(async move {
            if let Some(mut after) = gate {
                // Err once the original answered (the sender dropped).
                let _ = after.changed().await;
            }
            shadow(head, copied, cluster, upstreams, fwd_timeout).await;
        });
    }
    Some(release)
}

/// One mirrored request: admitted under its cluster's breaker, sent once,
/// its answer read and dropped (so the connection goes back to the pool).
async fn shadow(
    head: http::request::Parts,
    body: UpstreamBody,
    cluster: Arc<Cluster>,
    upstreams: Upstreams,
    timeout: Option<Duration>,
) {
    use http_body_util::BodyExt;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let Ok(admission) = admit(&cluster, deadline).await else {
        return;
    };
    let Some((endpoint, address)) = cluster.target(None, None, None) else {
        return;
    };
    let _busy = endpoint.start();
    let failed = match send(head, body, &cluster, address, &upstreams, timeout).await {
        Outcome::Response(r) => {
            let failed = r.status().is_server_error();
            let _ = r.into_body().holding(admission).collect().await;
            failed
        }
        Outcome::Failed(..) | Outcome::TimedOut => true,
    };
    if failed {
        endpoint.failures.fetch_add(1, Ordering::Relaxed);
    }
    cluster.observe(endpoint, failed);
}

/// A copy of a request head for one try (of the extensions, only the
/// request's tally is carried).
fn copy_head(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    if let Some(t) = p.extensions.get::<Arc<Tally>>() {
        r.extensions_mut().insert(t.clone());
    }
    r.into_parts().0
}

/// What to do after a try.
// Returned and matched at once, never stored: boxing the response would
// only add an allocation per answer.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// Answer the client with this.
    Answer(Response<ProxyBody>),
    /// Try again: `policy` when the route's policy asked (it waits its
    /// back-off first), else the keep-alive race's one immediate retry.
    Retry { policy: bool },
    /// Stop: answer with the last failure.
    Stop,
}

/// One request's tries: what the route allows, the cluster's retry
/// budget, and the failure to answer with when tries run out.
struct Tries<'a> {
    policy: &'a RetryPolicy,
    cluster: &'a Cluster,
    shared: &'a Shared,
    max: u32,
    deadline: Option<tokio::time::Instant>,
    /// The retry in flight holds a place under the cluster's retry limit.
    permit: Option<RetryPermit>,
    /// The answer when tries run out: status, words, response flag.
    last: (StatusCode, String, Flag),
}

impl<'a> Tries<'a> {
    /// The tries of a request to `cluster` by `fwd`; one only for a
    /// streamed body (`replayable` false), which cannot be sent twice.
    fn new(
        fwd: &'a Forward,
        cluster: &'a Cluster,
        shared: &'a Shared,
        replayable: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Self {
        Tries {
            policy: &fwd.retry,
            cluster,
            shared,
            max: if replayable {
                1 + fwd.retry.num_retries.max(1)
            } else {
                1
            },
            deadline,
            permit: None,
            last: (
                StatusCode::SERVICE_UNAVAILABLE,
                String::new(),
                Flag::UpstreamReset,
            ),
        }
    }

    /// Takes a place under the retry limit, or counts the refusal.
    fn budget_allows(&mut self) -> bool {
        match self.cluster.load.try_retry(&self.cluster.limits.retries) {
            Some(p) => {
                self.permit = Some(p);
                true
            }
            None => {
                let overflow = &self.shared.stats.upstream_rq_retry_overflow;
                overflow.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The timeout of the next try: the per-try timeout within what is
    /// left of the request's.
    fn per_try(&self) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        let remaining = self.deadline.map(|d| d.saturating_duration_since(now));
        match (self.policy.per_try_timeout, remaining) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        }
    }

    /// Decides after try `attempt` (0-based) to `endpoint` ended with `outcome`.
    fn next(
        &mut self,
        attempt: u32,
        outcome: Outcome,
        endpoint: &Endpoint,
        body_failed: bool,
    ) -> Next {
        let may_retry = attempt + 1 < self.max;
        let by_policy = may_retry && attempt < self.policy.num_retries;
        let stats = &self.shared.stats;
        match outcome {
            Outcome::Response(r) => {
                let status = r.status().as_u16();
                let failed = r.status().is_server_error();
                if failed {
                    endpoint.failures.fetch_add(1, Ordering::Relaxed);
                }
                self.cluster.observe(endpoint, failed);
                let wanted = by_policy && self.policy.retries_response(status, r.headers());
                if wanted && self.budget_allows() {
                    Next::Retry { policy: true }
                } else {
                    Next::Answer(r.map(Either::Left))
                }
            }
            Outcome::TimedOut => {
                stats.upstream_rq_timeout.fetch_add(1, Ordering::Relaxed);
                endpoint.failures.fetch_add(1, Ordering::Relaxed);
                self.cluster.observe(endpoint, true);
                if self
                    .deadline
                    .is_some_and(|d| tokio::time::Instant::now() >= d)
                {
                    let r = text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n");
                    return Next::Answer(flagged(r, Flag::UpstreamTimeout));
                }
                self.last = (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream per-try timeout".into(),
                    Flag::UpstreamTimeout,
                );
                let wanted = by_policy && self.policy.retries_failure(Failure::Timeout);
                if wanted && self.budget_allows() {
                    Next::Retry { policy: true }
                } else {
                    Next::Stop
                }
            }
            Outcome::Failed(..) if body_failed => {
                let mut r = text(StatusCode::BAD_REQUEST, "malformed request body\n");
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                Next::Answer(flagged(r, Flag::DownstreamProtocolError))
            }
            Outcome::Failed(kind, e) => {
                stats.upstream_cx_fail.fetch_add(1, Ordering::Relaxed);
                endpoint.failures.fetch_add(1, Ordering::Relaxed);
                self.cluster.observe(endpoint, true);
                self.last = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("upstream connect error or disconnect/reset before headers: {e}"),
                    flag_of(kind),
                );
                // With a policy for this failure every retry counts against
                // the budget; without one a first try that got no answer is
                // still tried once more (the keep-alive race), outside it.
                if by_policy && self.policy.retries_failure(kind) {
                    if self.budget_allows() {
                        Next::Retry { policy: true }
                    } else {
                        Next::Stop
                    }
                } else if may_retry && attempt == 0 {
                    Next::Retry { policy: false }
                } else {
                    Next::Stop
                }
            }
        }
    }
}

/// A place for the request under `cluster`'s circuit breaker, or the
/// answer when there is none.
async fn admit(
    cluster: &Cluster,
    deadline: Option<tokio::time::Instant>,
) -> Result<crate::config::breaker::Admission, Response<ProxyBody>> {
    let admitted = cluster
        .load
        .admit(&cluster.limits, !cluster.http2, deadline)
        .await;
    admitted.map_err(|refusal| match refusal {
        Refusal::Overflow => overflow(),
        Refusal::Timeout => flagged(
            text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n"),
            Flag::UpstreamTimeout,
        ),
    })
}

/// Forwards with retries. A request without a body can be replayed: it is
/// retried once when the connection fails before any response (the
/// keep-alive race: a pooled connection closed by the server as the request
/// went out), and per the route's retry policy otherwise. A request with a
/// body is streamed once.
pub(super) async fn forward(
    req: Request<Incoming>,
    fwd: &Forward,
    conn: &crate::state::Conn,
    shared: &Shared,
    upstreams: &Upstreams,
) -> Response<ProxyBody> {
    use hyper::body::Body;
    let tally = tally_of(&req);
    let (mut parts, body) = req.into_parts();
    let keyed = crate::config::hash::request_hash(&fwd.hash_policy, &parts.headers, conn.peer);
    let body_failed = Arc::new(AtomicBool::new(false));
    let mut streamed =
        (!body.is_end_stream()).then(|| Downstream::new(body, body_failed.clone(), tally.clone()));
    // The cluster is chosen once per request; retries stay in it.
    let Some(cluster) = &fwd.clusters.pick().cluster else {
        let r = text(StatusCode::SERVICE_UNAVAILABLE, "cluster not found\n");
        return flagged(r, Flag::NoCluster);
    };
    let exchange = introduce(tally.as_deref(), cluster, &mut parts.headers, shared);
    let mut parts = Some(parts);
    let deadline = fwd.timeout.map(|t| tokio::time::Instant::now() + t);
    let admission = match admit(cluster, deadline).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    // Held until the original is answered (see `mirror`).
    let _mirrors_wait = mirror(parts.as_ref(), &mut streamed, fwd, upstreams);
    let mut tries = Tries::new(fwd, cluster, shared, streamed.is_none(), deadline);
    let mut failed: Option<Arc<Endpoint>> = None;
    let mut retries = 0;
    for attempt in 0..tries.max {
        let Some((endpoint, address)) =
            cluster.target(conn.original_dst, failed.as_ref(), keyed.hash)
        else {
            let r = text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
            return flagged(r, Flag::NoHealthyUpstream);
        };
        let Some((head, body)) = this_try(attempt + 1 == tries.max, &mut parts, &mut streamed)
        else {
            break;
        };
        let outcome = {
            let _busy = endpoint.start();
            send(head, body, cluster, address, upstreams, tries.per_try()).await
        };
        match tries.next(
            attempt,
            outcome,
            endpoint,
            body_failed.load(Ordering::Relaxed),
        ) {
            Next::Answer(mut r) => {
                peer_answered(&mut r, tally.as_deref(), exchange);
                if let Some(c) = keyed.set_cookie {
                    r.headers_mut().append(header::SET_COOKIE, c);
                }
                return r.map(|b| match b {
                    Either::Left(upstream) => Either::Left(upstream.holding(admission)),
                    made => made,
                });
            }
            Next::Stop => break,
            Next::Retry { policy } => {
                if policy {
                    retries += 1;
                    tokio::time::sleep(fwd.retry.wait_before(retries)).await;
                }
            }
        }
        failed = Some(endpoint.clone());
        shared
            .stats
            .upstream_rq_retry
            .fetch_add(1, Ordering::Relaxed);
    }
    ran_out(tries.last, retries)
}

/// A try's head and body: the last try takes the head itself, earlier ones
/// a copy; a streamed body goes with the first.
fn this_try(
    last: bool,
    parts: &mut Option<http::request::Parts>,
    streamed: &mut Option<Downstream>,
) -> Option<(http::request::Parts, UpstreamBody)> {
    let head = if last {
        parts.take()
    } else {
        parts.as_ref().map(copy_head)
    }?;
    let body = match streamed.take() {
        Some(b) => Either::Left(b),
        None => Either::Right(Full::new(Bytes::new())),
    };
    Some((head, body))
}

/// The answer when tries ran out: the last failure's.
fn ran_out((status, error, flag): (StatusCode, String, Flag), retries: u32) -> Response<ProxyBody> {
    let r = flagged(text(status, format!("{error}\n")), flag);
    match retries {
        0 => r,
        _ => flagged(r, Flag::RetryLimitExceeded),
    }
}

/// The response flag of a try that got no response.
fn flag_of(kind: Failure) -> Flag {
    match kind {
        Failure::Connect => Flag::UpstreamConnectFailure,
        _ => Flag::UpstreamReset,
    }
}

/// Notes the request's service and, to a mesh workload's sidecar, says
/// who calls (see [`crate::telemetry::peer`]); true when it did.
fn introduce(
    tally: Option<&Tally>,
    cluster: &Cluster,
    headers: &mut http::HeaderMap,
    shared: &Shared,
) -> bool {
    let Some(t) = tally else { return false };
    t.service(&cluster.meta.service);
    let exchange = cluster.meta.peer_exchange && t.outbound();
    if exchange {
        headers.insert(PEER_HEADER, shared.telemetry.local_header());
    }
    exchange
}

/// Takes the peer header off an answer (never passed on); when this
/// request introduced itself, the workload it names answered.
fn peer_answered(r: &mut Response<ProxyBody>, tally: Option<&Tally>, exchanged: bool) {
    let peer = r.headers_mut().remove(PEER_HEADER);
    if let (Some(t), Some(w)) = (tally, peer.filter(|_| exchanged))
        && let Some(w) = Workload::from_header(&w)
    {
        t.peer(w);
    }
}
