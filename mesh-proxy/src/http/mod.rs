//! The HTTP path of a connection: serve the downstream connection
//! (HTTP/1.x or HTTP/2), route each request in the configuration in force,
//! forward it ([`forward`]) and answer errors the way Envoy users know
//! (503 no healthy upstream, 504 upstream request timeout, 404 no route).
//!
//! - `headers.rs`: hop-by-hop headers, upgrades, framing refusals.
//! - `forward.rs`: cluster and endpoint choice, tries, retries, budget.

mod forward;
mod headers;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

use crate::config::cors::Cors;
use crate::config::rbac;
use crate::config::trace::TraceConfig;
use crate::config::{Codec, Forward, HttpManager, Redirect, RequestView, Route, RouteAction};
use crate::sniff::Detected;
use crate::state::{Conn, Shared};
use crate::telemetry::access_log::LogStart;
use crate::telemetry::flags::{Flag, Flags};
use crate::telemetry::metrics::Reporter;
use crate::telemetry::peer::{HEADER as PEER_HEADER, Workload};
use crate::telemetry::spans::SpanStart;
use crate::telemetry::tally::{Metered, Tally};
use crate::telemetry::trace::{next_span, request_id};
use crate::upstream::{PooledBody, Upstreams};
use forward::forward;
use headers::{refuse_framing, refuse_host, strip_hop_by_hop, upgrade_protocol};
use opentelemetry::KeyValue;

/// Response bodies: streamed from upstream, or made by the proxy.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(Either::Right(Full::new(body.into())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Marks an answer with the response flags that explain it (read back
/// when the request is counted).
fn flagged(mut r: Response<ProxyBody>, flag: Flag) -> Response<ProxyBody> {
    let flags = r.extensions().get::<Flags>().copied().unwrap_or_default();
    r.extensions_mut().insert(flags.with(flag));
    r
}

/// The request's tally (the HTTP path puts one in every request).
fn tally_of<B>(req: &Request<B>) -> Option<Arc<Tally>> {
    req.extensions().get::<Arc<Tally>>().cloned()
}

/// Largest request head accepted; larger ones get 431.
const MAX_HEAD: usize = 60 * 1024;

/// Serves HTTP on a downstream connection handled by `manager`: HTTP/1.x
/// or HTTP/2 as its codec allows and the first bytes (or the inspector
/// that already looked at them) tell.
pub async fn serve(
    stream: crate::transport::Stream,
    conn: Arc<Conn>,
    manager: &HttpManager,
    shared: Arc<Shared>,
    upstreams: Upstreams,
    detected: Option<Detected>,
) {
    manager
        .stats
        .downstream_cx_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut stream = crate::framing::Watched::new(
        stream,
        conn.ambiguous_framing.clone(),
        manager.request_headers_timeout,
    );
    let (http2, first) = match (manager.codec, detected) {
        (Codec::Http1, _) => (false, Default::default()),
        (Codec::Http2, _) => (true, Default::default()),
        (Codec::Auto, Some(d @ (Detected::Http1 | Detected::Http2))) => {
            (d == Detected::Http2, Default::default())
        }
        // One read tells, and hyper gets the bytes read again.
        (Codec::Auto, _) => match crate::sniff::read_http_version(&mut stream).await {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    stream.replay(first);
    let io = TokioIo::new(stream);
    let svc_shared = shared.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (conn, shared, upstreams) = (conn.clone(), svc_shared.clone(), upstreams.clone());
        async move { Ok::<_, Infallible>(respond(req, &conn, &shared, &upstreams).await) }
    });
    let stop = shared.shutdown_signal();
    if http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD as u32)
            .serve_connection(io, svc);
        until_drained(conn, stop, |c| c.graceful_shutdown()).await;
    } else {
        // The head timeout is the socket watcher's (from a head's first
        // byte); hyper's would also cut idle keep-alive connections.
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD)
            .serve_connection(io, svc)
            .with_upgrades();
        until_drained(conn, stop, |c| c.graceful_shutdown()).await;
    }
}

/// One request on a connection, counted: under the proxy's cap, in the
/// configuration in force when it arrived (a swap mid-request does not
/// affect it; the next request on the connection sees the new one, so route
/// changes reach keep-alive connections).
async fn respond(
    mut req: Request<Incoming>,
    conn: &Conn,
    shared: &Arc<Shared>,
    upstreams: &Upstreams,
) -> Response<Metered<ProxyBody>> {
    let snap = shared.config.load_full();
    let slot = shared.overload.request();
    let manager = snap.http_manager(&conn.listener, conn.chain);
    let reporter = match manager {
        Some(m) if m.inbound => Reporter::Destination,
        _ => Reporter::Source,
    };
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    let tally = Tally::start(reporter, grpc, conn.peer_identity.clone());
    req.extensions_mut().insert(tally.clone());
    let r = match manager {
        // Over the proxy's cap: shed before any work or buffering.
        _ if slot.is_none() => {
            let overload = &shared.stats.downstream_rq_overload;
            overload.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "overloaded\n");
            r.headers_mut()
                .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
            flagged(r, Flag::Overloaded)
        }
        Some(manager) => {
            let r = handle(req, manager, conn, shared, upstreams).await;
            manager.stats.response(r.status().as_u16());
            r
        }
        None => text(StatusCode::SERVICE_UNAVAILABLE, "listener removed\n"),
    };
    drop(slot);
    let status = r.status().as_u16();
    shared.stats.response(status);
    if let Some(f) = r.extensions().get::<Flags>() {
        tally.flag(*f);
    }
    tally.response_headers(r.headers());
    let (parts, body) = r.into_parts();
    let body = Metered::new(body, tally, shared.clone(), status, &parts.headers);
    Response::from_parts(parts, body)
}

/// Runs a connection; once draining starts it is told to finish the
/// request in flight and close (HTTP/1.1 `Connection: close`, HTTP/2
/// GOAWAY) with `drain`.
async fn until_drained<C: Future>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    drain: impl FnOnce(Pin<&mut C>),
) {
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopping => {
            drain(conn.as_mut());
            let _ = conn.await;
        }
    }
}

/// The local rate limit filter, before faults: the route's bucket (else the
/// filter's) has no token left: the answer.
fn rate_limited(
    route: &Route,
    manager: &HttpManager,
    shared: &Shared,
) -> Option<Response<ProxyBody>> {
    let limit = route.rate_limit.as_ref().or(manager.rate_limit.as_ref())?;
    if limit.admit() {
        return None;
    }
    let counter = &shared.stats.local_rate_limited;
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut r = text(limit.status, "local_rate_limited");
    for (name, value) in &limit.headers {
        r.headers_mut().insert(name.clone(), value.clone());
    }
    Some(flagged(r, Flag::RateLimited))
}

/// The fault filter, before the router: a share of requests waits, a
/// share is answered with a status (the answer, when this one is).
async fn inject_fault(
    route: &Route,
    manager: &HttpManager,
    tally: Option<&Tally>,
) -> Option<Response<ProxyBody>> {
    let fault = route.fault.as_deref().or(manager.fault.as_deref())?;
    if let Some(d) = &fault.delay
        && d.share.pick()
    {
        if let Some(t) = tally {
            t.flag(Flag::DelayInjected);
        }
        tokio::time::sleep(d.what).await;
    }
    let a = fault.abort.as_ref().filter(|a| a.share.pick())?;
    Some(flagged(
        text(a.what, "fault filter abort"),
        Flag::FaultInjected,
    ))
}

/// A redirect's answer: its status and `location`, no body.
fn redirect(to: &Redirect, req: &Request<Incoming>, authority: &str) -> Response<ProxyBody> {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut r = text(to.status, Bytes::new());
    r.headers_mut().remove(header::CONTENT_TYPE);
    if let Ok(v) = HeaderValue::from_str(&to.location(authority, pq)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// An answer of the proxy's own, with the route's response headers.
fn local(mut r: Response<ProxyBody>, route: &Route) -> Response<ProxyBody> {
    route.response_headers.apply(r.headers_mut());
    r
}

/// Handles one request arriving on `conn`, routed by `manager`.
async fn handle(
    mut req: Request<Incoming>,
    manager: &HttpManager,
    conn: &Conn,
    shared: &Shared,
    upstreams: &Upstreams,
) -> Response<ProxyBody> {
    if manager.generate_request_id && !req.headers().contains_key("x-request-id") {
        req.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), request_id());
    }
    if !manager.access_logs.is_empty()
        && let Some(t) = tally_of(&req)
    {
        t.log(LogStart::new(&req, &manager.access_logs, conn.peer));
    }
    if let Some(r) = refuse_framing(&req, conn).or_else(|| refuse_host(&req)) {
        return flagged(r, Flag::DownstreamProtocolError);
    }
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
    let (route, refused) = {
        let view = RequestView {
            method: req.method().as_str(),
            authority: &authority,
            path: req.uri().path(),
            headers: req.headers(),
        };
        let subject = rbac::Subject {
            request: Some(&view),
            port: conn.dst_port,
            principal: conn.peer_identity.as_deref(),
        };
        let refused = rbac::decide_all(&manager.rbac, &subject).err();
        (manager.routes.route(&view), refused)
    };
    if let Some(why) = refused {
        shared
            .stats
            .rbac_denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return text(
            StatusCode::FORBIDDEN,
            format!("RBAC: access denied: {why}\n"),
        );
    }
    let Some(route) = route else {
        let r = text(
            StatusCode::NOT_FOUND,
            format!("no route for {authority}{}\n", req.uri().path()),
        );
        return flagged(r, Flag::NoRoute);
    };
    // The CORS filter, first: a preflight from an allowed origin is
    // answered here; other responses to it carry the origin.
    let cors = route
        .cors
        .as_deref()
        .and_then(|c| Some((c, c.allowed_origin(req.headers())?)));
    if let Some((c, origin)) = &cors
        && Cors::is_preflight(req.method(), req.headers())
    {
        let mut r = text(StatusCode::OK, Bytes::new());
        r.headers_mut().remove(header::CONTENT_TYPE);
        c.preflight_headers(origin.clone(), r.headers_mut());
        return r;
    }
    let mut resp = dispatch(req, manager, route, &authority, conn, shared, upstreams).await;
    if let Some((c, origin)) = cors {
        c.response_headers(origin, resp.headers_mut());
    }
    resp
}

/// Past the filters before it: faults, then the route's action.
async fn dispatch(
    mut req: Request<Incoming>,
    manager: &HttpManager,
    route: &Route,
    authority: &str,
    conn: &Conn,
    shared: &Shared,
    upstreams: &Upstreams,
) -> Response<ProxyBody> {
    // Every routed call is traced, also those the proxy answers itself
    // (rate limits, faults, direct responses): users look for them.
    let tally = tally_of(&req);
    if let Some(t) = &manager.tracing {
        trace_call(&mut req, t, manager.inbound, authority, tally.as_deref());
    }
    if let Some(limited) = rate_limited(route, manager, shared) {
        return limited;
    }
    if let Some(aborted) = inject_fault(route, manager, tally.as_deref()).await {
        return aborted;
    }
    let fwd = match &route.action {
        RouteAction::Forward(f) => f,
        RouteAction::Direct { status, body } => return local(text(*status, body.clone()), route),
        RouteAction::Redirect(to) => return local(redirect(to, &req, authority), route),
    };
    // An HTTP/1.1 upgrade (WebSocket) keeps its Upgrade/Connection headers
    // and, once the upstream agrees (101), becomes a byte tunnel.
    let upgrade = upgrade_protocol(&req);
    if let Some(proto) = &upgrade
        && !manager.allows_upgrade(proto.to_str().unwrap_or_default(), &fwd.upgrades)
    {
        // Not configured for this upgrade: refused as Envoy does.
        let mut r = text(StatusCode::FORBIDDEN, Bytes::new());
        r.headers_mut().remove(header::CONTENT_TYPE);
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let downstream_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    prepare_request(&mut req, route, fwd, authority);
    if let Some(proto) = &upgrade {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(header::UPGRADE, proto.clone());
    }
    // The caller's sidecar said who it is: taken off before the app sees
    // it, and answered with who this one is.
    let exchanged = manager.inbound && exchange_in(&mut req, tally.as_deref());
    let mut resp = forward(req, fwd, conn, shared, upstreams).await;
    if manager.inbound {
        resp.headers_mut().remove(PEER_HEADER);
        if exchanged {
            let me = shared.telemetry.local_header();
            resp.headers_mut().insert(PEER_HEADER, me);
        }
    }
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
        return resp;
    }
    strip_hop_by_hop(resp.headers_mut());
    route.response_headers.apply(resp.headers_mut());
    resp
}

/// Makes the call a span of its own, a child of the caller's (headers
/// rewritten for the app or the upstream to carry on); a sampled span with
/// a collector is recorded in the request's `tally`.
fn trace_call(
    req: &mut Request<Incoming>,
    t: &TraceConfig,
    server: bool,
    authority: &str,
    tally: Option<&Tally>,
) {
    let ids = next_span(req.headers_mut(), t.sampling);
    let Some(tally) = tally else { return };
    tally.trace_id(ids.trace);
    let (Some(collector), true) = (&t.collector, ids.sampled) else {
        return;
    };
    let method = req.method().as_str().to_owned();
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let version = match req.version() {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    };
    let path = req.uri().path().to_owned();
    let mut attributes = vec![
        KeyValue::new("http.request.method", method.clone()),
        KeyValue::new("server.address", authority.to_owned()),
        KeyValue::new("network.protocol.version", version),
        KeyValue::new(
            "guid:x-request-id",
            header("x-request-id").unwrap_or("").to_owned(),
        ),
    ];
    if let Some(agent) = header("user-agent") {
        attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
    }
    if server {
        attributes.push(KeyValue::new("url.path", path));
        attributes.push(KeyValue::new("url.scheme", "http"));
    } else {
        attributes.push(KeyValue::new(
            "url.full",
            format!("http://{authority}{path}"),
        ));
    }
    tally.trace(SpanStart {
        ids,
        collector: collector.clone(),
        server,
        started: std::time::SystemTime::now(),
        name: format!("{method} {authority}"),
        attributes,
    });
}

/// Takes the peer header off an inbound request; true when it named a
/// workload (noted in `tally`).
fn exchange_in(req: &mut Request<Incoming>, tally: Option<&Tally>) -> bool {
    let Some(peer) = req.headers_mut().remove(PEER_HEADER) else {
        return false;
    };
    match (Workload::from_header(&peer), tally) {
        (Some(w), Some(t)) => {
            t.peer(w);
            true
        }
        (w, _) => w.is_some(),
    }
}

fn prepare_request(req: &mut Request<Incoming>, route: &Route, fwd: &Forward, authority: &str) {
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
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
