//! The TCP path: one cluster per connection (by weight), one endpoint by the
//! cluster's policy, bytes copied both ways with half-close preserved.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use crate::config::TcpProxy;
use crate::server::Shared;

/// Proxies one accepted connection.
pub async fn proxy(mut downstream: TcpStream, cfg: &TcpProxy, shared: Arc<Shared>) {
    let Some(cluster) = &cfg.clusters.pick().1 else {
        return;
    };
    let Some(endpoint) = cluster.pick() else {
        return;
    };
    endpoint.active.fetch_add(1, Ordering::Relaxed);
    endpoint.requests.fetch_add(1, Ordering::Relaxed);
    let connect = tokio::time::timeout(
        cluster.connect_timeout,
        TcpStream::connect(endpoint.address),
    )
    .await;
    match connect {
        Ok(Ok(mut upstream)) => {
            let _ = upstream.set_nodelay(true);
            // copy_bidirectional shuts each direction down when its reader ends.
            let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
        }
        _ => {
            shared
                .stats
                .upstream_cx_fail
                .fetch_add(1, Ordering::Relaxed);
            endpoint.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    endpoint.active.fetch_sub(1, Ordering::Relaxed);
}
