//! Load generators the packaged tools do not cover: fixed-rate open-loop
//! HTTP/1.1 (latency measured from when each request was due, so a stall
//! counts against every request it delays — no coordinated omission), and
//! TCP stream throughput.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
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

/// Sends `rate` requests per second for `duration` to `url` over
/// `connections` keep-alive HTTP/1.1 connections.
pub async fn open_loop(
    url: &str,
    rate: u64,
    duration: Duration,
    connections: usize,
) -> anyhow::Result<OpenLoop> {
    let uri: hyper::Uri = url.parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("no authority in {url}"))?
        .clone();
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (uri, authority) = (uri.clone(), authority.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("histogram");
            let mut errors = 0u64;
            let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            // Connection c sends requests c, c+N, c+2N, … at their due times.
            let mut i = c as u64;
            while i < total {
                let due = start + interval * i as u32;
                tokio::time::sleep_until(due.into()).await;
                let req = hyper::Request::get(uri.clone())
                    .header(hyper::header::HOST, authority.as_str())
                    .body(Empty::<Bytes>::new())?;
                match sender.send_request(req).await {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.into_body().collect().await;
                        let us = due.elapsed().as_micros().max(1) as u64;
                        let _ = hist.record(us);
                    }
                    _ => errors += 1,
                }
                i += connections as u64;
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
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
