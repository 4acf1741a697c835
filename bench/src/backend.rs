//! The benchmark's backend: as little work per request as possible, so the
//! proxies are what is measured. HTTP/1.1 and HTTP/2 (prior knowledge) on
//! one port, a fixed body; a TCP sink that discards what it reads; and
//! gRPC's health service.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Serves HTTP with a body of `body_size` bytes.
pub async fn http(listener: TcpListener, body_size: usize) {
    let body = Bytes::from(vec![b'x'; body_size]);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
        });
    }
}

/// Serves gRPC's standard health service (a unary call answering SERVING).
pub async fn grpc(listener: TcpListener) {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let _ = tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await;
}

/// Reads and discards everything, for TCP throughput.
pub async fn tcp_sink(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}
