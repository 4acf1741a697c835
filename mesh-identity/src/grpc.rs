//! gRPC over mutual TLS on the workload's identity: pilot's xDS listener
//! (clients must present a mesh certificate) and the proxy's channel to it
//! (pilot must be the identity the proxy expects). Both read the identity
//! at each handshake, so a renewed certificate or a rotated root is used
//! by the next connection without restarting anything.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tonic::transport::{Channel, Endpoint};
use tracing::debug;

use crate::{ClientShape, Identity};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS connections accepted on `listener` whose clients presented a
/// certificate of the mesh's roots (ALPN `h2`), for tonic's
/// `serve_with_incoming`; the peer's chain is then in each request
/// (`Request::peer_certs`). Handshakes run side by side: a slow client
/// holds up no one; a failed one is logged and dropped.
pub fn incoming(
    listener: TcpListener,
    identity: Arc<Identity>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let alpn = ["h2".to_owned()];
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let config = match identity.server_config(&alpn, true) {
                Ok(c) => c,
                Err(e) => {
                    debug!(%peer, "no TLS configuration: {e}");
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let tx = tx.clone();
            tokio::spawn(async move {
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// How a proxy's channel to pilot notices a pilot that went away without
/// a word (its pod deleted, the connection neither closed nor answered):
/// connects time out, and an idle stream is pinged.
pub fn with_timeouts(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
}

/// A lazily connecting channel to `address` (`host:port`) over mutual
/// TLS: the workload presents its certificate and the server must be
/// `expected` (a SPIFFE ID). Reconnections handshake again with the
/// certificate and roots in force then.
pub fn channel(
    identity: Arc<Identity>,
    address: &str,
    expected: String,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = with_timeouts(Endpoint::from_shared(format!("http://{address}"))?);
    let address = address.to_owned();
    let host = address
        .rsplit_once(':')
        .map_or(address.as_str(), |(h, _)| h)
        .trim_matches(['[', ']'])
        .to_owned();
    // Keyed by the server expected; even, so never a cluster's key (odd).
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        ("grpc", &expected).hash(&mut h);
        h.finish() & !1
    };
    let connector = tower::service_fn(move |_: http::Uri| {
        let (identity, address, host, expected) = (
            identity.clone(),
            address.clone(),
            host.clone(),
            expected.clone(),
        );
        async move {
            let alpn = ["h2".to_owned()];
            let shape = ClientShape {
                key,
                alpn: &alpn,
                expected: std::slice::from_ref(&expected),
                client_certificate: true,
            };
            let config = identity
                .client_config(&shape)
                .map_err(std::io::Error::other)?;
            let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
