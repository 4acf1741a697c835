//! A connection as the protocols see it: plain TCP, or TLS over it (mutual
//! TLS between sidecars). One type for both directions keeps the HTTP and
//! TCP paths free of generics.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::tls::{DownstreamTls, UpstreamTls};
use crate::identity::{ClientShape, Identity, verify};

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection, in the clear or in TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (either side).
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The ALPN protocol agreed, if TLS agreed one.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => t.get_ref().1.alpn_protocol(),
        }
    }

    /// The plain TCP stream, when not TLS.
    pub fn as_plain(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) => None,
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The proxy has no certificate (started without a CA).
    #[error("no workload certificate: start mesh-proxy with --ca-address")]
    NoIdentity,
    /// The configuration could not be built.
    #[error("{0}")]
    Config(String),
    /// The handshake failed or timed out.
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
}

/// Terminates TLS on an accepted connection; returns the stream and the
/// client's SPIFFE ID when it presented a certificate.
pub async fn accept(
    stream: TcpStream,
    tls: &DownstreamTls,
    identity: Option<&Arc<Identity>>,
) -> Result<(Stream, Option<Arc<str>>), TlsError> {
    let identity = identity.ok_or(TlsError::NoIdentity)?;
    let config = identity
        .server_config(&tls.alpn, tls.require_client_certificate)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
        .await
        .map_err(|_| TlsError::Handshake(io::ErrorKind::TimedOut.into()))?
        .map_err(TlsError::Handshake)?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(verify::peer_identity)
        .map(Arc::from);
    Ok((Stream::Tls(Box::new(tls.into())), peer))
}

/// Starts TLS on a connection to an upstream endpoint.
pub async fn connect(
    stream: TcpStream,
    tls: &UpstreamTls,
    identity: Option<&Arc<Identity>>,
) -> Result<Stream, TlsError> {
    let identity = identity.ok_or(TlsError::NoIdentity)?;
    let config = identity
        .client_config(&ClientShape {
            key: tls.pool_key,
            alpn: &tls.alpn,
            expected: &tls.expected,
            client_certificate: tls.client_certificate,
        })
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let name = match &tls.sni {
        Some(sni) => rustls::pki_types::ServerName::try_from(sni.clone())
            .map_err(|e| TlsError::Config(format!("SNI {sni}: {e}")))?,
        // No SNI: name the peer by address (rustls sends no SNI for one).
        None => {
            let ip = stream.peer_addr().map_err(TlsError::Handshake)?.ip();
            rustls::pki_types::ServerName::IpAddress(ip.into())
        }
    };
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, stream);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
        .await
        .map_err(|_| TlsError::Handshake(io::ErrorKind::TimedOut.into()))?
        .map_err(TlsError::Handshake)?;
    Ok(Stream::Tls(Box::new(tls.into())))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
