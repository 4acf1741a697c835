//! What the three sample services share: a small HTTP server, a client
//! that forwards the tracing headers of the request being served (as
//! Istio asks applications to), and the version every answer shows.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What svca and svcb both take on their command line.
#[derive(Debug, clap::Args)]
pub struct Service {
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Send calls through this HTTP proxy (a sidecar used explicitly).
    #[arg(long, env = "MESH_HTTP_PROXY", value_name = "HOST:PORT")]
    pub proxy: Option<SocketAddr>,
    /// Version shown in every answer.
    #[arg(long, env = "VERSION", default_value = "v0.1")]
    pub version: String,
}

/// Headers a service copies from the request it serves to the requests it
/// makes, so the mesh can join the calls into one trace.
pub const TRACE_HEADERS: &[&str] = &[
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
    "x-ot-span-context",
];

/// A plain-text answer with the service's version in `x-version`.
pub fn answer(status: StatusCode, version: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = http::HeaderValue::from_str(version) {
        r.headers_mut().insert("x-version", v);
    }
    r
}

/// The value of query parameter `key`.
pub fn query_param(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

/// GETs `url`, forwarding the trace headers found in `incoming`; returns
/// the status and body, or why the call failed. With `proxy`, the request
/// goes to that HTTP proxy (the sidecar of a workload whose traffic is not
/// redirected) in absolute form, as `curl -x` sends it.
pub async fn get(
    url: &str,
    incoming: &HeaderMap,
    proxy: Option<SocketAddr>,
) -> Result<(StatusCode, String), String> {
    let mut req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad URL {url}: {e}"))?;
    for name in TRACE_HEADERS {
        if let Some(v) = incoming.get(*name) {
            req.headers_mut().insert(*name, v.clone());
        }
    }
    if let Some(proxy) = proxy {
        return via_proxy(proxy, req, url).await;
    }
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let call = async {
        let resp = client.request(req).await.map_err(|e| {
            use std::error::Error;
            let mut msg = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            msg
        })?;
        read(resp).await
    };
    within_timeout(url, call).await
}

async fn via_proxy(
    proxy: SocketAddr,
    mut req: Request<Full<Bytes>>,
    url: &str,
) -> Result<(StatusCode, String), String> {
    let call = async {
        let stream = tokio::net::TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("proxy {proxy}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("proxy {proxy}: {e}"))?;
        tokio::spawn(conn);
        if let Some(a) = req.uri().authority()
            && let Ok(v) = http::HeaderValue::from_str(a.as_str())
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
        // The URI stays absolute: that is what tells the proxy where to.
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("proxy {proxy}: {e}"))?;
        read(resp).await
    };
    within_timeout(url, call).await
}

async fn read(resp: http::Response<Incoming>) -> Result<(StatusCode, String), String> {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A call to `url` gets 10 s; its errors are prefixed like Go's client's.
async fn within_timeout(
    url: &str,
    call: impl Future<Output = Result<(StatusCode, String), String>>,
) -> Result<(StatusCode, String), String> {
    tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .map_err(|_| format!("Get {url}: timeout"))?
        .map_err(|e| format!("Get {url}: {e}"))
}

/// Serves `handler` on `addr`; prints `listening ADDR` once bound.
pub async fn serve<F, Fut>(addr: SocketAddr, handler: F) -> anyhow::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Runs `f` on a small runtime (two threads: these are test workloads).
pub fn run(f: impl Future<Output = anyhow::Result<()>>) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(f) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
