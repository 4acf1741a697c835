//! Connecting to an upstream endpoint: TCP within the cluster's connect
//! timeout, then the HTTP/1.1 or HTTP/2 handshake; the connection task is
//! spawned on the worker's runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{Connecting, UpstreamBody, UpstreamError};
use crate::identity::Identity;
use crate::transport::Stream;

/// Upstream HTTP connections opened since the start, and open now (the
/// pools' size, for the proxy's metrics).
pub static OPENED: AtomicU64 = AtomicU64::new(0);
/// See [`OPENED`].
pub static OPEN: AtomicU64 = AtomicU64::new(0);

/// Counts a connection open until dropped.
struct Open;

impl Open {
    fn new() -> Open {
        OPENED.fetch_add(1, Ordering::Relaxed);
        OPEN.fetch_add(1, Ordering::Relaxed);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connect(
    addr: SocketAddr,
    how: Connecting<'_>,
    identity: Option<&Arc<Identity>>,
) -> Result<TokioIo<Stream>, UpstreamError> {
    let stream = tokio::time::timeout(how.timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(how.timeout))?
        .map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    let stream = match how.tls {
        None => Stream::Plain(stream),
        Some(tls) => crate::transport::connect(stream, tls, identity)
            .await
            .map_err(UpstreamError::Tls)?,
    };
    Ok(TokioIo::new(stream))
}

pub(super) async fn connect_h1(
    addr: SocketAddr,
    how: Connecting<'_>,
    identity: Option<&Arc<Identity>>,
) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
    let io = connect(addr, how, identity).await?;
    let (sender, conn) = http1::handshake(io).await.map_err(UpstreamError::Http)?;
    let open = Open::new();
    tokio::spawn(async move {
        let _open = open;
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

pub(super) async fn connect_h2(
    addr: SocketAddr,
    how: Connecting<'_>,
    identity: Option<&Arc<Identity>>,
) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
    let io = connect(addr, how, identity).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(UpstreamError::Http)?;
    let open = Open::new();
    tokio::spawn(async move {
        let _open = open;
        let _ = conn.await;
    });
    Ok(sender)
}
