//! The TCP path: one cluster per connection (by weight), one endpoint by the
//! cluster's policy, bytes copied both ways with half-close preserved. A
//! connection that reaches a cluster with no endpoints (the black hole of
//! REGISTRY_ONLY) is refused: an HTTP/1 client gets a 502 naming the
//! destination, anything else is closed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{Cluster, TcpProxy};
use crate::sniff::{Detected, detect};
use crate::state::{Conn, Shared};
use crate::telemetry::flags::{Flag, Flags};
use crate::telemetry::metrics::{Call, Reporter};
use crate::telemetry::peer::NOBODY;
use crate::transport::Stream;

/// Copy buffer per direction.
const TCP_BUFFER: usize = 64 * 1024;

/// How long a refused connection is watched for an HTTP request line.
const SNIFF_TIMEOUT: Duration = Duration::from_millis(500);

/// Proxies one accepted connection.
pub async fn proxy(mut downstream: Stream, cfg: &TcpProxy, conn: &Conn, shared: &Shared) {
    cfg.stats
        .downstream_cx_total
        .fetch_add(1, Ordering::Relaxed);
    let Some(cluster) = &cfg.clusters.pick().cluster else {
        return;
    };
    let Some((endpoint, address)) = cluster.target(conn.original_dst, None, None) else {
        refuse(downstream, conn).await;
        return;
    };
    // Over the cluster's connection cap the connection is closed, as Envoy's
    // TCP proxy does.
    let Some(_admitted) = cluster.load.admit_connection(&cluster.limits) else {
        return;
    };
    let _busy = endpoint.start();
    // TCP carries no peer header: the other side reads `unknown` until
    // mutual TLS tells it.
    let mut call = Call {
        reporter: if cfg.inbound {
            Reporter::Destination
        } else {
            Reporter::Source
        },
        local: shared.telemetry.local(),
        peer: NOBODY.clone(),
        service: cluster.meta.service.clone(),
        protocol: "tcp",
        code: 0,
        grpc: None,
        flags: Flags::NONE,
        local_principal: shared.telemetry.principal.get().cloned(),
        peer_principal: conn.peer_identity.clone(),
    };
    let metrics = &shared.telemetry.metrics;
    match connect(address, cluster, shared).await {
        Some(mut upstream) => {
            cluster.observe(endpoint, false);
            metrics.tcp_opened(&call);
            // Each direction is shut down when its reader ends (half-close).
            // 64 KiB buffers: a few syscalls per window instead of one per 8 KiB.
            let copied = tokio::io::copy_bidirectional_with_sizes(
                &mut downstream,
                &mut upstream,
                TCP_BUFFER,
                TCP_BUFFER,
            )
            .await;
            let (received, sent) = copied.unwrap_or_default();
            metrics.tcp_closed(&call, sent, received);
        }
        None => {
            call.flags = Flag::UpstreamConnectFailure.into();
            metrics.tcp_opened(&call);
            metrics.tcp_closed(&call, 0, 0);
            shared
                .stats
                .upstream_cx_fail
                .fetch_add(1, Ordering::Relaxed);
            endpoint.failures.fetch_add(1, Ordering::Relaxed);
            cluster.observe(endpoint, true);
        }
    }
}

/// Connects to `address` within the cluster's timeout, in TLS when the
/// cluster asks for it.
async fn connect(
    address: std::net::SocketAddr,
    cluster: &Cluster,
    shared: &Shared,
) -> Option<Stream> {
    let tcp = tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(address))
        .await
        .ok()?
        .ok()?;
    let _ = tcp.set_nodelay(true);
    match &cluster.tls_opaque {
        None => Some(Stream::Plain(tcp)),
        Some(tls) => match crate::transport::connect(tcp, tls, shared.identity.get()).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(cluster = %cluster.name, "upstream TLS: {e}");
                None
            }
        },
    }
}

/// Refuses a connection the mesh does not allow.
async fn refuse(mut downstream: Stream, conn: &Conn) {
    let Some(plain) = downstream.as_plain() else {
        return;
    };
    if detect(plain, SNIFF_TIMEOUT).await == Some(Detected::Http1) {
        let dst = conn
            .original_dst
            .map_or_else(|| "this destination".to_owned(), |d| d.to_string());
        let body = format!(
            "mesh: {dst} is outside the mesh and no egress rule allows it (outbound traffic policy REGISTRY_ONLY)\n"
        );
        let response = format!(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = downstream.write_all(response.as_bytes()).await;
        let _ = downstream.shutdown().await;
    }
}
