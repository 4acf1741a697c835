//! The HTTP path: route each request, pick a cluster by weight and an
//! endpoint by the cluster's policy, forward over pooled connections, and
//! answer errors the way Envoy users know (503 no healthy upstream, 504
//! upstream request timeout, 404 no route).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;

use crate::config::{Cluster, Endpoint, Forward, HttpManager, RequestView, Route, RouteAction};
use crate::server::{Conn, Shared};
use crate::upstream::{PooledBody, UpstreamBody, Upstreams};

/// Response bodies: streamed from upstream, or made by the proxy.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// A downstream request body that remembers whether the client's side of it
/// broke (e.g. a malformed chunk), so the proxy answers 400 rather than
/// blaming the upstream.
pub struct Downstream {
    body: Incoming,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl hyper::body::Body for Downstream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let r = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(_))) = &r {
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

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(Either::Right(Full::new(body.into())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, and Transfer-Encoding: each hop frames the
/// body itself. `TE: trailers` stays, as Envoy keeps it: gRPC servers may
/// require it.
fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    // Most messages have none: one pass over the few names present is
    // cheaper than a lookup per hop-by-hop name.
    let hop = |n: &HeaderName| *n == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(n);
    if !h.keys().any(hop) {
        return;
    }
    h.remove(header::TRANSFER_ENCODING);
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Writes `n` as lowercase hex, most significant digit first, filling `out`.
fn hex(mut n: u128, out: &mut [u8]) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 0xF) as usize];
        n >>= 4;
    }
}

/// A random non-zero 64-bit id in 16 hex digits (B3 trace and span ids).
fn b3_id() -> HeaderValue {
    let mut s = [0u8; 16];
    hex(u128::from(fastrand::u64(1..)), &mut s);
    HeaderValue::from_bytes(&s).expect("hex is a valid header value")
}

/// Starts a trace (no trace headers yet) or a child span of the caller's
/// (its span becomes the parent), in B3 multi-header form, and moves a W3C
/// `traceparent` on to a new parent id the same way. Apps forward these
/// headers; each sidecar hop is one span.
fn continue_trace(headers: &mut http::HeaderMap) {
    match headers.get("x-b3-spanid").cloned() {
        Some(parent) if headers.contains_key("x-b3-traceid") => {
            headers.insert(HeaderName::from_static("x-b3-parentspanid"), parent);
            headers.insert(HeaderName::from_static("x-b3-spanid"), b3_id());
        }
        _ if !headers.contains_key("x-b3-traceid") && !headers.contains_key("b3") => {
            headers.insert(HeaderName::from_static("x-b3-traceid"), b3_id());
            headers.insert(HeaderName::from_static("x-b3-spanid"), b3_id());
            headers.remove("x-b3-parentspanid");
        }
        _ => {}
    }
    if !headers.contains_key("x-b3-sampled") && !headers.contains_key("b3") {
        headers.insert(
            HeaderName::from_static("x-b3-sampled"),
            HeaderValue::from_static("1"),
        );
    }
    // traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>
    if let Some(tp) = headers.get("traceparent")
        && let Ok::<[u8; 55], _>(mut next) = tp.as_bytes().try_into()
        && [next[2], next[35], next[52]] == [b'-'; 3]
    {
        hex(u128::from(fastrand::u64(1..)), &mut next[36..52]);
        if let Ok(v) = HeaderValue::from_bytes(&next) {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
    }
}

/// A random request id in UUID v4 form (8-4-4-4-12 hex digits).
fn request_id() -> HeaderValue {
    let n = fastrand::u128(..);
    let n = (n & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut s = [b'-'; 36];
    hex(n >> 96, &mut s[0..8]);
    hex(n >> 80, &mut s[9..13]);
    hex(n >> 64, &mut s[14..18]);
    hex(n >> 48, &mut s[19..23]);
    hex(n, &mut s[24..36]);
    HeaderValue::from_bytes(&s).expect("hex is a valid header value")
}

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

/// Marks an endpoint busy for the life of a request.
struct InFlight<'a>(&'a Endpoint);

impl<'a> InFlight<'a> {
    fn new(e: &'a Endpoint) -> Self {
        e.active.fetch_add(1, Ordering::Relaxed);
        e.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(e)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Refuses message framings that let two parsers disagree about where a
/// request ends (request smuggling): Content-Length beside
/// Transfer-Encoding, and transfer codings other than `chunked`. (hyper
/// already refuses differing Content-Length values, obs-fold and bad chunk
/// sizes.)
fn refuse_framing(req: &Request<Incoming>, conn: &Conn) -> Option<Response<ProxyBody>> {
    let h = req.headers();
    let te: Vec<_> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    // hyper drops Content-Length when Transfer-Encoding is present; the
    // connection's framing watch saw both.
    let both = conn.ambiguous_framing.load(Ordering::Acquire);
    let refusal = if te.is_empty() && !both {
        return None;
    } else if both || h.contains_key(header::CONTENT_LENGTH) {
        (
            StatusCode::BAD_REQUEST,
            "Content-Length and Transfer-Encoding together are not allowed\n",
        )
    } else if te.len() != 1 || !te[0].as_bytes().eq_ignore_ascii_case(b"chunked") {
        (
            StatusCode::NOT_IMPLEMENTED,
            "only Transfer-Encoding: chunked is supported\n",
        )
    } else {
        return None;
    };
    let mut r = text(refusal.0, refusal.1);
    // The rest of the connection cannot be trusted: close it.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(r)
}

/// Handles one request arriving on connection `conn`.
pub async fn handle(
    mut req: Request<Incoming>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    upstreams: Upstreams,
) -> Result<Response<ProxyBody>, Infallible> {
    if let Some(r) = refuse_framing(&req, &conn) {
        return Ok(finish(&shared, r));
    }
    // One snapshot for the whole request: a swap mid-request does not affect it.
    let snap = shared.config.load_full();
    let Some(manager) = snap.http_manager(&conn.listener, conn.chain) else {
        return Ok(finish(
            &shared,
            text(StatusCode::SERVICE_UNAVAILABLE, "listener removed\n"),
        ));
    };
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let route = {
        let view = RequestView {
            method: req.method().as_str(),
            authority: &authority,
            path: req.uri().path(),
            headers: req.headers(),
        };
        manager.routes.route(&view)
    };
    let Some(route) = route else {
        return Ok(finish(
            &shared,
            text(
                StatusCode::NOT_FOUND,
                format!("no route for {authority}{}\n", req.uri().path()),
            ),
        ));
    };
    let fwd = match &route.action {
        RouteAction::Direct { status, body } => {
            let mut r = text(*status, body.clone());
            route.response_headers.apply(r.headers_mut());
            return Ok(finish(&shared, r));
        }
        RouteAction::Forward(f) => f,
    };
    // An HTTP/1.1 upgrade (WebSocket) keeps its Upgrade/Connection headers
    // and, once the upstream agrees (101), becomes a byte tunnel.
    let upgrade = upgrade_protocol(&req);
    let downstream_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    prepare_request(&mut req, manager, route, fwd, &authority);
    if let Some(proto) = &upgrade {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(header::UPGRADE, proto.clone());
    }
    let mut resp = forward(req, fwd, conn.original_dst, &shared, &upstreams).await;
    if let (Some(proto), Some(down)) = (upgrade, downstream_upgrade)
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Either::Left(_) = resp.body()
    {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(down), Ok(up)) = (down.await, up.await) {
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            }
        });
        strip_hop_by_hop(resp.headers_mut());
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        resp.headers_mut().insert(header::UPGRADE, proto);
        return Ok(finish(&shared, resp));
    }
    strip_hop_by_hop(resp.headers_mut());
    route.response_headers.apply(resp.headers_mut());
    Ok(finish(&shared, resp))
}

fn finish(shared: &Shared, r: Response<ProxyBody>) -> Response<ProxyBody> {
    shared.stats.response(r.status().as_u16());
    r
}

/// The protocol an HTTP/1.1 request asks to upgrade to, if any.
fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    (wants && req.version() == http::Version::HTTP_11)
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

fn prepare_request(
    req: &mut Request<Incoming>,
    manager: &HttpManager,
    route: &Route,
    fwd: &Forward,
    authority: &str,
) {
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if manager.generate_request_id && !headers.contains_key("x-request-id") {
        headers.insert(HeaderName::from_static("x-request-id"), request_id());
    }
    if manager.tracing {
        continue_trace(headers);
    }
    route.request_headers.apply(headers);
    let host = fwd
        .host_rewrite
        .clone()
        .or_else(|| HeaderValue::from_str(authority).ok());
    if let Some(h) = host {
        headers.insert(header::HOST, h);
    }
    if let (Some(new_prefix), crate::config::PathMatch::Prefix(old)) =
        (&fwd.prefix_rewrite, &route.path)
    {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let rewritten = format!("{new_prefix}{}", &pq[old.len().min(pq.len())..]);
        if let Ok(uri) = rewritten.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
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
async fn forward(
    req: Request<Incoming>,
    fwd: &Forward,
    original_dst: Option<std::net::SocketAddr>,
    shared: &Shared,
    upstreams: &Upstreams,
) -> Response<ProxyBody> {
    use hyper::body::Body;
    let (parts, body) = req.into_parts();
    let mut parts = Some(parts);
    let body_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streamed = (!body.is_end_stream()).then(|| Downstream {
        body,
        failed: body_failed.clone(),
    });
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
            let _busy = InFlight::new(endpoint);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = request_id();
        let id = a.to_str().unwrap();
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(
            id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(groups[2].starts_with('4'), "version 4: {id}");
        assert!("89ab".contains(&groups[3][..1]), "RFC 9562 variant: {id}");
        assert_ne!(request_id(), a);
    }

    #[test]
    fn traces_start_and_continue_per_hop() {
        let mut h = http::HeaderMap::new();
        continue_trace(&mut h);
        let trace = h["x-b3-traceid"].clone();
        let span = h["x-b3-spanid"].clone();
        assert_eq!(trace.len(), 16);
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(!h.contains_key("x-b3-parentspanid"));
        // The next hop: same trace, the caller's span is the parent.
        continue_trace(&mut h);
        assert_eq!(h["x-b3-traceid"], trace);
        assert_eq!(h["x-b3-parentspanid"], span);
        assert_ne!(h["x-b3-spanid"], span);
        // A sampling decision made upstream is kept; W3C context moves on.
        let mut h = http::HeaderMap::new();
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        continue_trace(&mut h);
        assert_eq!(h["x-b3-sampled"], "0");
        let tp = h["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(
            tp.ends_with("-01") && !tp.contains("b7ad6b7169203331"),
            "{tp}"
        );
    }
}
