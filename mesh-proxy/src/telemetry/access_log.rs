//! Access log lines: what a request said when it arrived (the headers its
//! logs show), completed when it ends, printed to stdout by a thread of
//! their own. A full queue (stdout not read fast enough) drops lines and
//! counts them; the data path never waits on a pipe.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::config::access_log::{AccessLog, Entry};
use crate::state::Shared;

/// Lines waiting for stdout; past this a new line is dropped.
const QUEUE: usize = 8192;

/// A request's logs, from its arrival.
#[derive(Debug)]
pub struct LogStart {
    logs: Arc<[AccessLog]>,
    start: SystemTime,
    /// Per log, its request headers' values.
    request_headers: Vec<Vec<Option<String>>>,
    protocol: &'static str,
    downstream: Option<SocketAddr>,
    /// The endpoint last tried and its cluster.
    pub upstream: Option<(SocketAddr, String)>,
    /// The request's trace.
    pub trace_id: Option<u128>,
    /// Per log, its response headers' values.
    pub response_headers: Vec<Vec<Option<String>>>,
}

/// The value of the first of `names` the request has.
fn request_header<B>(req: &http::Request<B>, names: &[String]) -> Option<String> {
    names.iter().find_map(|n| match n.as_str() {
        ":method" => Some(req.method().as_str().to_owned()),
        ":path" => req.uri().path_and_query().map(|p| p.as_str().to_owned()),
        ":authority" => req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| header(req.headers(), "host")),
        ":scheme" => Some(req.uri().scheme_str().unwrap_or("http").to_owned()),
        other => header(req.headers(), other),
    })
}

fn header(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl LogStart {
    /// A request arriving now from `downstream`, logged by `logs`.
    pub fn new<B>(
        req: &http::Request<B>,
        logs: &Arc<[AccessLog]>,
        downstream: Option<SocketAddr>,
    ) -> LogStart {
        LogStart {
            logs: logs.clone(),
            start: SystemTime::now(),
            request_headers: logs
                .iter()
                .map(|l| {
                    l.request_headers
                        .iter()
                        .map(|names| request_header(req, names))
                        .collect()
                })
                .collect(),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            downstream,
            upstream: None,
            trace_id: None,
            response_headers: Vec::new(),
        }
    }

    /// Notes the response's headers its logs show.
    pub fn response(&mut self, headers: &http::HeaderMap) {
        self.response_headers = self
            .logs
            .iter()
            .map(|l| {
                l.response_headers
                    .iter()
                    .map(|names| names.iter().find_map(|n| header(headers, n)))
                    .collect()
            })
            .collect();
    }

    /// Prints a line per log for the request that ended as `end` tells.
    pub fn finish(self, shared: &Shared, end: LogEnd) {
        for (i, log) in self.logs.iter().enumerate() {
            let entry = Entry {
                start: self.start,
                request_headers: &self.request_headers[i],
                response_headers: self.response_headers.get(i).map_or(&[], Vec::as_slice),
                protocol: self.protocol,
                code: end.code,
                flags: end.flags.clone(),
                bytes_received: end.bytes_received,
                bytes_sent: end.bytes_sent,
                duration_ms: end.duration_ms,
                upstream_host: self.upstream.as_ref().map(|(a, _)| *a),
                upstream_cluster: self.upstream.as_ref().map(|(_, c)| c.as_str()),
                downstream: self.downstream,
                trace_id: self.trace_id,
            };
            print(shared, log.line(&entry));
        }
    }
}

/// How a request ended, for its access log lines.
#[derive(Debug)]
pub struct LogEnd {
    /// The response status.
    pub code: u16,
    /// Response flags (`-` for none).
    pub flags: String,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
    /// Milliseconds from arrival to the response's end.
    pub duration_ms: u64,
}

/// Queues `line` for stdout, or drops and counts it.
fn print(shared: &Shared, line: String) {
    static STDOUT: OnceLock<SyncSender<String>> = OnceLock::new();
    let tx = STDOUT.get_or_init(|| {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                for line in rx {
                    let mut out = stdout.lock();
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.flush();
                }
            })
            .expect("start the access log thread");
        tx
    });
    if tx.try_send(line).is_err() {
        shared
            .stats
            .access_logs_dropped
            .fetch_add(1, Ordering::Relaxed);
    }
}
