//! Load generators the packaged tools do not cover: fixed-rate open-loop
//! HTTP/1.1 (latency measured from when each request was due, so a stall
//! counts against every request it delays — no coordinated omission), and
//! TCP stream throughput.

use std::time::{Duration, Instant};

use std::io::{Read, Write};
use std::net::SocketAddr;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

/// Latency distribution of a fixed-rate run.
#[derive(Debug, Clone, Serialize)]
pub struct OpenLoop {
    /// Requests per second asked for.
    pub target_rps: u64,
    /// Requests completed per second.
    pub achieved_rps: f64,
    /// Requests completed.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
}

/// Sends `rate` requests per second for `duration` to `addr` over
/// `connections` keep-alive HTTP/1.1 connections, `host` as the Host header.
///
/// Each connection is a thread with a blocking socket that sends requests
/// c, c+N, c+2N, … at their due times (sleeping with a 1 µs timer slack, so
/// the generator's own jitter stays in the microseconds), and reads each
/// answer whole before the next. Latency counts from when a request was
/// due, so a stall counts against every request it delays.
pub fn open_loop(
    addr: SocketAddr,
    host: &str,
    rate: u64,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<OpenLoop> {
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let request = request.clone();
            std::thread::spawn(move || -> anyhow::Result<(Histogram<u64>, u64)> {
                // SAFETY: prctl with PR_SET_TIMERSLACK only sets this
                // thread's timer slack.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1) };
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut errors = 0u64;
                let mut stream = std::net::TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                let mut buf = vec![0u8; 64 * 1024];
                let mut i = c as u64;
                while i < total {
                    let due = start + interval * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    stream.write_all(&request)?;
                    match read_response(&mut stream, &mut buf)? {
                        200..=299 => {
                            let us = due.elapsed().as_micros().max(1) as u64;
                            hist.record(us)?;
                        }
                        _ => errors += 1,
                    }
                    i += connections as u64;
                }
                Ok((hist, errors))
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in threads {
        let (h, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        hist.add(h)?;
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(OpenLoop {
        target_rps: rate,
        achieved_rps: hist.len() as f64 / elapsed,
        requests: hist.len(),
        errors,
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
    })
}

/// Sends `n` GETs, each to a path of its own (`/paths/<i>`), one after the
/// other on one keep-alive HTTP/1.1 connection; returns how many failed.
pub fn distinct_paths(addr: SocketAddr, n: usize) -> anyhow::Result<u64> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut errors = 0;
    for i in 0..n {
        let request = format!("GET /paths/{i} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes())?;
        if !(200..300).contains(&read_response(&mut stream, &mut buf)?) {
            errors += 1;
        }
    }
    Ok(errors)
}

/// Reads one HTTP/1.1 response framed by Content-Length (every target
/// answers so) and returns its status.
fn read_response(stream: &mut std::net::TcpStream, buf: &mut [u8]) -> anyhow::Result<u16> {
    let mut have = 0;
    loop {
        let n = stream.read(&mut buf[have..])?;
        anyhow::ensure!(n > 0, "connection closed mid-response");
        have += n;
        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            anyhow::ensure!(have < buf.len(), "response head too large");
            continue;
        };
        let head = std::str::from_utf8(&buf[..end])?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line in {head:?}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| anyhow::anyhow!("response without Content-Length: {head:?}"))?;
        let mut body = have - (end + 4);
        while body < length {
            let n = stream.read(buf)?;
            anyhow::ensure!(n > 0, "connection closed mid-body");
            body += n;
        }
        return Ok(status);
    }
}

/// Writes as fast as possible to `addr` for `duration`; returns MB/s.
pub async fn tcp_throughput(addr: &str, duration: Duration) -> anyhow::Result<f64> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![b'x'; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        stream.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    stream.shutdown().await?;
    Ok(sent as f64 / start.elapsed().as_secs_f64() / 1e6)
}
