//! Forwarding one request upstream: the cluster picked by weight, the
//! endpoint by the cluster's policy, then tries with per-try and overall
//! timeouts and retries within the cluster's retry budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};

use super::{ProxyBody, text};
use crate::config::{Cluster, Endpoint, Forward};
use crate::state::Shared;
use crate::upstream::{Downstream, PooledBody, UpstreamBody, Upstreams};

/// Counts a request in flight to a cluster (the retry budget's base).
struct ClusterInFlight<'a>(&'a Cluster);

impl<'a> ClusterInFlight<'a> {
    fn new(c: &'a Cluster) -> Self {
        c.in_flight.fetch_add(1, Ordering::Relaxed);
        ClusterInFlight(c)
    }
}

impl Drop for ClusterInFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Outcome {
    Response(Response<PooledBody>),
    ConnectFailed(String),
    TimedOut,
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
            Err(e) => return Outcome::ConnectFailed(e.to_string()),
        }
    } else {
        head.version = http::Version::HTTP_11;
        Uri::from(path)
    };
    // What the downstream server attached is not the upstream's business.
    head.extensions.clear();
    let r = Request::from_parts(head, body);
    let fut = async {
        match upstreams
            .send(address, cluster.http2, cluster.connect_timeout, r)
            .await
        {
            Ok(r) => Outcome::Response(r),
            Err(e) => Outcome::ConnectFailed(e.to_string()),
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .unwrap_or(Outcome::TimedOut),
        None => fut.await,
    }
}

/// A copy of a request head for one try (extensions are not carried).
fn copy_head(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

/// Forwards with retries. A request without a body can be replayed: it is
/// retried once when the connection fails before any response (the
/// keep-alive race: a pooled connection closed by the server as the request
/// went out), and per the route's retry policy otherwise. A request with a
/// body is streamed once.
pub(super) async fn forward(
    req: Request<Incoming>,
    fwd: &Forward,
    original_dst: Option<std::net::SocketAddr>,
    shared: &Shared,
    upstreams: &Upstreams,
) -> Response<ProxyBody> {
    use hyper::body::Body;
    let (parts, body) = req.into_parts();
    let mut parts = Some(parts);
    let body_failed = Arc::new(AtomicBool::new(false));
    let mut streamed = (!body.is_end_stream()).then(|| Downstream::new(body, body_failed.clone()));
    let policy = &fwd.retry;
    let max_tries = if streamed.is_none() {
        1 + policy.num_retries.max(1)
    } else {
        1
    };
    let deadline = fwd.timeout.map(|t| tokio::time::Instant::now() + t);
    let (mut status, mut last_error) = (StatusCode::SERVICE_UNAVAILABLE, String::new());
    // The cluster is chosen once per request; retries stay in it.
    let Some(cluster) = &fwd.clusters.pick().1 else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "cluster not found\n");
    };
    let _in_flight = ClusterInFlight::new(cluster);
    // The retry in flight holds a place in the cluster's retry budget.
    let mut permit: Option<crate::config::RetryPermit<'_>> = None;
    let mut budget_allows = || match cluster.try_retry() {
        Some(p) => {
            permit = Some(p);
            true
        }
        None => {
            shared
                .stats
                .upstream_rq_retry_overflow
                .fetch_add(1, Ordering::Relaxed);
            false
        }
    };
    let mut failed: Option<Arc<Endpoint>> = None;
    for attempt in 0..max_tries {
        let may_retry = attempt + 1 < max_tries;
        let Some((endpoint, address)) = cluster.target(original_dst, failed.as_ref()) else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
        };
        let remaining = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let per_try = match (policy.per_try_timeout, remaining) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        };
        let body = match streamed.take() {
            Some(b) => Either::Left(b),
            None => Either::Right(Full::new(Bytes::new())),
        };
        // The last try takes the head itself; earlier ones a copy.
        let Some(head) = (if may_retry {
            parts.as_ref().map(copy_head)
        } else {
            parts.take()
        }) else {
            break;
        };
        let outcome = {
            let _busy = endpoint.start();
            send(head, body, cluster, address, upstreams, per_try).await
        };
        let retry = match outcome {
            Outcome::Response(r) => {
                let server_error = r.status().is_server_error();
                if server_error {
                    endpoint.failures.fetch_add(1, Ordering::Relaxed);
                }
                let wanted =
                    server_error && policy.on_5xx && may_retry && attempt < policy.num_retries;
                if !(wanted && budget_allows()) {
                    return r.map(Either::Left);
                }
                true
            }
            Outcome::TimedOut => {
                shared
                    .stats
                    .upstream_rq_timeout
                    .fetch_add(1, Ordering::Relaxed);
                endpoint.failures.fetch_add(1, Ordering::Relaxed);
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    return text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n");
                }
                (status, last_error) = (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream per-try timeout".into(),
                );
                may_retry && attempt < policy.num_retries && budget_allows()
            }
            Outcome::ConnectFailed(_) if body_failed.load(Ordering::Relaxed) => {
                let mut r = text(StatusCode::BAD_REQUEST, "malformed request body\n");
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            Outcome::ConnectFailed(e) => {
                shared
                    .stats
                    .upstream_cx_fail
                    .fetch_add(1, Ordering::Relaxed);
                endpoint.failures.fetch_add(1, Ordering::Relaxed);
                (status, last_error) = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("upstream connect error or disconnect/reset before headers: {e}"),
                );
                // Without a connect-failure policy a first try that got no
                // answer is still tried once more (the keep-alive race),
                // outside the budget; with one, every retry counts against
                // it. (hyper-util also resends, on its own, a request that
                // never left a pooled connection the server had closed.)
                may_retry
                    && if policy.on_connect_failure {
                        budget_allows()
                    } else {
                        attempt == 0
                    }
            }
        };
        if !retry {
            break;
        }
        failed = Some(endpoint.clone());
        shared
            .stats
            .upstream_rq_retry
            .fetch_add(1, Ordering::Relaxed);
    }
    text(status, format!("{last_error}\n"))
}
