//! Watching HTTP/1 message framing as the bytes arrive, for the one
//! smuggling shape hyper hides: a request with both `Content-Length` and
//! `Transfer-Encoding`. hyper follows RFC 9112 (chunked wins, the length is
//! dropped, the connection closes after the answer), so the service never
//! sees that both were sent; an intermediary should refuse such a request
//! outright (400), as Envoy does, because the next hop may frame it the
//! other way.
//!
//! [`Watched`] wraps the downstream socket and follows the framing of each
//! request it reads: heads are parsed (httparse, as hyper does), bodies are
//! skipped by length or chunk by chunk. Once a head carries both headers
//! the connection is marked; the HTTP path then answers 400 and closes.
//! Anything it cannot follow (HTTP/2, an upgrade, a head hyper will refuse
//! anyway) ends the watch: hyper's own checks still apply.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Largest head followed; longer ones are refused by hyper (431).
const MAX_HEAD: usize = 64 * 1024;

/// Where in the request stream the watcher is.
#[derive(Debug)]
enum State {
    /// Collecting a request head (in `Framing::buf`).
    Head,
    /// Skipping `n` more body bytes.
    Body(u64),
    /// Collecting a chunk-size line (in `Framing::buf`).
    ChunkSize,
    /// Skipping `n` chunk bytes, then the CRLF after them.
    ChunkData(u64),
    /// Collecting trailer lines up to the empty line (in `Framing::buf`,
    /// which starts with the CRLF that ended the last chunk's size line).
    Trailers,
    /// Not HTTP/1 framing any more (HTTP/2, upgrade, or lost): bytes pass.
    Off,
}

/// Follows request framing over a byte stream.
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// The head, chunk-size line or trailers being collected (reused).
    buf: Vec<u8>,
    /// Set once a request carried both Content-Length and Transfer-Encoding.
    ambiguous: Arc<AtomicBool>,
}

impl Framing {
    /// A watcher that raises `ambiguous` when a request is framed both ways.
    pub fn new(ambiguous: Arc<AtomicBool>) -> Self {
        Framing {
            state: State::Head,
            buf: Vec::new(),
            ambiguous,
        }
    }

    /// Takes the next bytes read from the client.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head => {
                    // The head ends at the first empty line (leading CRLFs
                    // between requests are allowed and skipped).
                    if self.buf.is_empty() {
                        let skip = bytes.iter().take_while(|b| **b == b'\r' || **b == b'\n');
                        bytes = &bytes[skip.count()..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    let Some(n) = self.collect(bytes, b"\r\n\r\n", MAX_HEAD) else {
                        return;
                    };
                    bytes = &bytes[n..];
                    self.state = self.after_head();
                    self.buf.clear();
                }
                State::Body(left) => {
                    if skip(left, &mut bytes) {
                        self.state = State::Head;
                    }
                }
                State::ChunkSize => {
                    let Some(n) = self.collect(bytes, b"\r\n", 1024) else {
                        return;
                    };
                    bytes = &bytes[n..];
                    let line = &self.buf[..self.buf.len() - 2];
                    let text = std::str::from_utf8(line).unwrap_or("");
                    let hex = text.split(';').next().unwrap_or("").trim();
                    self.state = match u64::from_str_radix(hex, 16) {
                        Ok(0) => State::Trailers,
                        // The data, then its CRLF.
                        Ok(size) => size.checked_add(2).map_or(State::Off, State::ChunkData),
                        Err(_) => State::Off,
                    };
                    self.buf.clear();
                    if matches!(self.state, State::Trailers) {
                        self.buf.extend_from_slice(b"\r\n");
                    }
                }
                State::ChunkData(left) => {
                    if skip(left, &mut bytes) {
                        self.state = State::ChunkSize;
                    }
                }
                State::Trailers => {
                    // Ends at an empty line: right away, or after trailers.
                    let Some(n) = self.collect(bytes, b"\r\n\r\n", MAX_HEAD) else {
                        return;
                    };
                    bytes = &bytes[n..];
                    self.buf.clear();
                    self.state = State::Head;
                }
            }
        }
    }

    /// Appends `bytes` to the buffer up to and including `end`; returns how
    /// many bytes were used, or `None` if `end` is not there yet (all
    /// taken, or the watch ends when the buffer passes `limit`).
    fn collect(&mut self, bytes: &[u8], end: &[u8], limit: usize) -> Option<usize> {
        let found = find_end(&self.buf, bytes, end);
        self.buf
            .extend_from_slice(&bytes[..found.unwrap_or(bytes.len())]);
        if found.is_none() && self.buf.len() > limit {
            self.state = State::Off;
            self.buf = Vec::new();
        }
        found
    }

    /// Whether part of a request head has arrived but not all of it.
    pub fn mid_head(&self) -> bool {
        matches!(self.state, State::Head) && !self.buf.is_empty()
    }

    /// The state after a complete head.
    fn after_head(&self) -> State {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(&self.buf) else {
            return State::Off;
        };
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut has_te = false;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(n) => length = Some(n),
                    None => return State::Off,
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                has_te = true;
                chunked = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if has_te && length.is_some() {
            self.ambiguous.store(true, Ordering::Release);
            return State::Off;
        }
        if upgrade {
            return State::Off;
        }
        match (has_te, chunked, length) {
            (true, true, _) => State::ChunkSize,
            (true, false, _) => State::Off,
            (false, _, Some(n)) if n > 0 => State::Body(n),
            _ => State::Head,
        }
    }
}

/// Skips up to `left` of `bytes`; true once all `left` bytes are skipped.
fn skip(left: &mut u64, bytes: &mut &[u8]) -> bool {
    let n = (*left).min(bytes.len() as u64);
    *left -= n;
    *bytes = &bytes[n as usize..];
    *left == 0
}

/// Where `end` finishes in `seen ++ more`, as an index into `more` just
/// past it; `None` if it does not finish within `more`.
fn find_end(seen: &[u8], more: &[u8], end: &[u8]) -> Option<usize> {
    // A match that started in `seen`: the earliest possible ends.
    for k in (1..end.len()).rev() {
        if seen.ends_with(&end[..k]) && more.starts_with(&end[k..]) {
            return Some(end.len() - k);
        }
    }
    more.windows(end.len())
        .position(|w| w == end)
        .map(|p| p + end.len())
}

/// A downstream socket whose reads are followed by [`Framing`], and which
/// ends the connection when a request head, once begun, is not complete
/// within the request headers timeout (as Envoy's `request_headers_timeout`:
/// the clock starts at a head's first byte, so idle keep-alive connections
/// are not cut; a head that arrives in one read never starts it).
pub struct Watched<S> {
    inner: S,
    framing: Framing,
    headers_timeout: Option<Duration>,
    /// The head's deadline, made once per connection and reset.
    deadline: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Bytes already read (and followed), to be read again first.
    replay: Bytes,
}

impl<S> Watched<S> {
    /// Wraps `inner`; `ambiguous` is raised when a request is framed both
    /// ways; a begun head must be complete within `headers_timeout`.
    pub fn new(inner: S, ambiguous: Arc<AtomicBool>, headers_timeout: Option<Duration>) -> Self {
        Watched {
            inner,
            framing: Framing::new(ambiguous),
            headers_timeout,
            deadline: None,
            armed: false,
            replay: Bytes::new(),
        }
    }

    /// Has `first`, read from this stream earlier, read again before the
    /// rest (the bytes that told the HTTP version go to the HTTP server).
    pub fn replay(&mut self, first: Bytes) {
        self.replay = first;
    }

    /// Starts or stops the head's clock as a head begins or completes.
    fn follow_head_clock(&mut self) {
        let mid = self.framing.mid_head();
        match (mid, self.armed, self.headers_timeout) {
            (true, false, Some(t)) => {
                let at = Instant::now() + t;
                match &mut self.deadline {
                    Some(d) => d.as_mut().reset(at),
                    None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
                }
                self.armed = true;
            }
            (false, true, _) => self.armed = false,
            _ => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            let first = self.replay.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        if self.armed
            && let Some(d) = &mut self.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request headers timeout",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r
            && !matches!(self.framing.state, State::Off)
        {
            let new = &buf.filled()[before..];
            self.framing.feed(new);
            self.follow_head_clock();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of every size from 1 to its length and
    /// says whether the framing was found ambiguous (the same each way).
    fn ambiguous(stream: &[u8]) -> bool {
        let mut seen = None;
        for piece in 1..=stream.len() {
            let flag = Arc::new(AtomicBool::new(false));
            let mut f = Framing::new(flag.clone());
            for chunk in stream.chunks(piece) {
                f.feed(chunk);
            }
            let now = flag.load(Ordering::Acquire);
            assert!(
                seen.is_none_or(|s| s == now),
                "piece size {piece} disagrees"
            );
            seen = Some(now);
        }
        seen.unwrap_or(false)
    }

    #[test]
    fn content_length_beside_transfer_encoding_in_either_order() {
        assert!(ambiguous(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ));
        assert!(ambiguous(
            b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n"
        ));
    }

    #[test]
    fn follows_bodies_to_the_next_request() {
        // A body that looks like a smuggled request is skipped by length…
        let inner =
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n";
        let by_length = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{inner}GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            inner.len()
        );
        assert!(!ambiguous(by_length.as_bytes()));
        // …and chunk by chunk, with extensions and trailers.
        let chunk = "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunked = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n{:x}\r\n{chunk}\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            chunk.len()
        );
        assert!(!ambiguous(chunked.as_bytes()));
        // Without trailers, and the second request is followed too.
        let two = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        );
        assert!(ambiguous(two.as_bytes()));
        // A body cut short mid-way: still inside it, nothing flagged.
        assert!(!ambiguous(&by_length.as_bytes()[..60]));
    }

    #[test]
    fn plain_requests_and_other_protocols_pass() {
        assert!(!ambiguous(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"
        ));
        // HTTP/2 and upgrades are not followed further.
        assert!(!ambiguous(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!ambiguous(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }
}
