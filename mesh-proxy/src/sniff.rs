//! What a connection speaks, from its first bytes: HTTP/1.x, HTTP/2 with
//! prior knowledge, TLS, or something else (opaque TCP).

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// A connection's protocol as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// A TLS handshake record.
    Tls,
    /// Anything else.
    Tcp,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Classifies `bytes`; `None` when more bytes are needed to tell.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    if bytes.is_empty() {
        return None;
    }
    if bytes[0] == 0x16 {
        return if bytes.len() < 3 {
            None
        } else if bytes[1] == 0x03 {
            Some(Detected::Tls)
        } else {
            Some(Detected::Tcp)
        };
    }
    let could_be = |pattern: &[u8]| {
        let n = bytes.len().min(pattern.len());
        bytes[..n] == pattern[..n]
    };
    if could_be(H2_PREFACE) {
        return (bytes.len() >= H2_PREFACE.len()).then_some(Detected::Http2);
    }
    if let Some(m) = METHODS.iter().find(|m| could_be(m)) {
        return (bytes.len() >= m.len()).then_some(Detected::Http1);
    }
    Some(Detected::Tcp)
}

/// Peeks at a connection's first bytes (without consuming them) until they
/// tell. `None` when `timeout` passes first (server-first protocols send
/// nothing); a connection closed before telling is TCP.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Option<Detected> {
    let mut buf = [0u8; 32];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Some(Detected::Tcp),
            Err(_) => return None,
        };
        if n == 0 {
            return Some(Detected::Tcp);
        }
        if let Some(d) = classify(&buf[..n]) {
            return Some(d);
        }
        if n == buf.len() {
            return Some(Detected::Tcp);
        }
        if !more_bytes(stream, deadline).await {
            return None;
        }
    }
}

/// Waits for bytes beyond those already peeked; false at `deadline`.
/// Peeking leaves the socket readable, so that readiness is cleared first
/// (only if no newer readiness came meanwhile: tokio compares event
/// ticks); otherwise a client that sends one byte and waits keeps the
/// worker spinning.
async fn more_bytes(stream: &TcpStream, deadline: tokio::time::Instant) -> bool {
    let _ = stream.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
    tokio::time::timeout_at(deadline, stream.readable())
        .await
        .is_ok()
}

/// The largest ClientHello record read to find its ALPN list (a TLS record
/// holds at most 16 KiB).
const MAX_CLIENT_HELLO: usize = 5 + 16 * 1024;

/// The protocols a TLS ClientHello offers in its ALPN extension, from a
/// whole first record; `None` while more bytes are needed. A hello without
/// the extension, or bytes that are not a well-formed ClientHello, offer
/// none.
pub fn client_hello_alpn(bytes: &[u8]) -> Option<Vec<String>> {
    let (&[0x16, _, _, hi, lo], rest) = bytes.split_first_chunk::<5>()? else {
        return Some(vec![]);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let record = rest.get(..len)?;
    Some(parse_alpn(record).unwrap_or_default())
}

/// Walks a ClientHello handshake message to its ALPN extension.
fn parse_alpn(record: &[u8]) -> Option<Vec<String>> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = tail;
            Some(head)
        }
        fn len(&mut self, bytes: usize) -> Option<usize> {
            Some(
                self.take(bytes)?
                    .iter()
                    .fold(0, |n, b| n << 8 | usize::from(*b)),
            )
        }
        fn vec(&mut self, len_bytes: usize) -> Option<&'a [u8]> {
            let n = self.len(len_bytes)?;
            self.take(n)
        }
    }
    let mut c = Cursor(record);
    if c.take(1)? != [1] {
        return None; // not a ClientHello
    }
    let mut hello = Cursor(c.vec(3)?);
    hello.take(2 + 32)?; // version, random
    hello.vec(1)?; // session id
    hello.vec(2)?; // cipher suites
    hello.vec(1)?; // compression methods
    let mut exts = Cursor(hello.vec(2)?);
    while !exts.0.is_empty() {
        let kind = exts.len(2)?;
        let data = exts.vec(2)?;
        if kind == 0x0010 {
            let mut list = Cursor(Cursor(data).vec(2)?);
            let mut out = Vec::new();
            while !list.0.is_empty() {
                out.push(String::from_utf8_lossy(list.vec(1)?).into_owned());
            }
            return Some(out);
        }
    }
    Some(vec![])
}

/// Peeks at a TLS connection's ClientHello (without consuming it) for the
/// protocols it offers over ALPN, as Envoy's `tls_inspector` does; stops
/// at `deadline` with what it has (nothing).
pub async fn offered_alpn(stream: &TcpStream, deadline: tokio::time::Instant) -> Vec<String> {
    let mut buf = vec![0u8; 512];
    loop {
        let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await else {
            return vec![];
        };
        if let Some(alpn) = client_hello_alpn(&buf[..n]) {
            return alpn;
        }
        if n == 0 || buf.len() >= MAX_CLIENT_HELLO {
            return vec![];
        }
        if n == buf.len() {
            buf.resize((buf.len() * 2).min(MAX_CLIENT_HELLO), 0);
            continue;
        }
        if !more_bytes(stream, deadline).await {
            return vec![];
        }
    }
}

/// Whether an HTTP connection that has sent `first` speaks HTTP/2 with
/// prior knowledge; `None` while `first` is a short prefix of the preface.
pub fn is_h2_preface(first: &[u8]) -> Option<bool> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(false)
    } else {
        (n == H2_PREFACE.len()).then_some(true)
    }
}

/// Reads a connection's first bytes (one read, more only while they could
/// still be the HTTP/2 preface) and tells whether it speaks HTTP/2. The
/// bytes read are returned, to be replayed to the HTTP server with
/// [`crate::framing::Watched::replay`]: the one read usually holds the
/// whole first request, so it is not read twice.
pub async fn read_http_version<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<(bool, Bytes)> {
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Ok((false, buf.freeze()));
        }
        if let Some(h2) = is_h2_preface(&buf) {
            return Ok((h2, buf.freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http2)
        );
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Some(Detected::Tls));
        assert_eq!(classify(b"\x00\x00\x00\x10redis"), Some(Detected::Tcp));
        assert_eq!(classify(b"GETX"), Some(Detected::Tcp));
    }

    /// A ClientHello as clients write one, offering `alpn`.
    pub(crate) fn client_hello(alpn: &[&str]) -> Vec<u8> {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        let mut ext = vec![0x00, 0x10];
        ext.extend(((list.len() + 2) as u16).to_be_bytes());
        ext.extend((list.len() as u16).to_be_bytes());
        ext.extend(list);
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.extend([0, 0, 4, 0x13, 0x01, 0xc0, 0x2f, 1, 0]);
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn reads_alpn_from_a_client_hello() {
        let hello = client_hello(&["h2", "http/1.1"]);
        assert_eq!(client_hello_alpn(&hello).unwrap(), ["h2", "http/1.1"]);
        assert_eq!(
            client_hello_alpn(&hello[..hello.len() - 1]),
            None,
            "needs the whole record"
        );
        assert_eq!(client_hello_alpn(&client_hello(&[])).unwrap(), [""; 0]);
        assert_eq!(client_hello_alpn(b"GET / HTTP/1.1\r\n").unwrap(), [""; 0]);
    }

    #[test]
    fn tells_the_h2_preface_from_its_first_bytes() {
        assert_eq!(
            is_h2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Some(true)
        );
        assert_eq!(is_h2_preface(b"PRI * HTTP/2"), None);
        assert_eq!(is_h2_preface(b"PRI / HTTP/1.1\r\n"), Some(false));
        assert_eq!(is_h2_preface(b"GET / HTTP/1.1\r\n"), Some(false));
    }

    #[tokio::test]
    async fn first_bytes_are_replayed_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PRI * HTTP/2.0\r\n")
            .await
            .unwrap();
        let reading = tokio::spawn(async move {
            let mut watched = crate::framing::Watched::new(server, Default::default(), None);
            let (h2, first) = read_http_version(&mut watched).await.unwrap();
            watched.replay(first);
            let mut rest = Vec::new();
            watched.read_to_end(&mut rest).await.unwrap();
            (h2, rest)
        });
        tokio::io::AsyncWriteExt::write_all(&mut client, b"\r\nSM\r\n\r\nframes")
            .await
            .unwrap();
        drop(client);
        let (h2, all) = reading.await.unwrap();
        assert!(h2);
        assert_eq!(all, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nframes");
    }
}
