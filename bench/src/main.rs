//! `mesh-bench`: mesh-proxy measured beside Envoy, HAProxy and a direct
//! connection, in one run on one machine, with one worker thread each.
//! See BENCHMARKS.md.

mod backend;
mod load;
mod mtls;
mod pilot_scale;
mod procfs;
mod relay;
mod targets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

use targets::{Backends, Target};

#[derive(Parser)]
#[command(
    name = "mesh-bench",
    about = "mesh-proxy beside Envoy, HAProxy and a direct connection"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every scenario against every target and write the report.
    Run {
        /// A few seconds per row, to keep the harness working (CI); numbers are not judged.
        #[arg(long)]
        smoke: bool,
        /// Seconds per measurement (default 4; 1 with --smoke).
        #[arg(long)]
        seconds: Option<u64>,
        /// Rounds: every target is measured once per round, rounds one
        /// after the other, and each row reports the round with the median
        /// throughput (default 3; 1 with --smoke). Interleaving keeps a
        /// slow minute of a shared machine from landing on one target.
        #[arg(long)]
        rounds: Option<usize>,
        /// Where to write the report (Markdown and JSON).
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Measure only these targets (comma-separated names, e.g.
        /// `mesh-proxy,envoy`); `direct` is always measured.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Serve the backends (used by `run`; prints their addresses).
    Backend,
    /// The floor target: relay bytes for each LISTEN=TO pair (used by `run`).
    Relay {
        /// `listen=to` address pairs.
        #[arg(required = true, value_parser = parse_pair)]
        pairs: Vec<(SocketAddr, SocketAddr)>,
    },
    /// Fixed-rate open-loop HTTP/1.1 load against one address (what the
    /// fixed-rate rows run), for profiling one proxy by hand.
    OpenLoop {
        /// Where to send (host:port).
        addr: SocketAddr,
        /// Requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Keep-alive connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    /// pilot at scale: N simulated proxies over M services, with and
    /// without Sidecars scoping each proxy; a rule change and endpoint
    /// changes → every affected proxy has them (p50/p99), pilot's CPU per
    /// endpoint change, peak RSS and bytes sent. One run per combination.
    PilotScale {
        /// Simulated proxies (a list runs each: `250,500,1000,2000`).
        #[arg(long, value_delimiter = ',', default_values_t = [1000])]
        proxies: Vec<usize>,
        /// Services in the registry.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Services each proxy's Sidecar lets it call; 0: no Sidecars (a
        /// list runs each: `20,0`).
        #[arg(long, value_delimiter = ',', default_values_t = [0])]
        scope: Vec<usize>,
        /// The mesh-pilot binary (default: next to mesh-bench).
        #[arg(long)]
        pilot: Option<PathBuf>,
        /// Where to write the raw result (a JSON list, one object per
        /// configuration with the command and the machine), as
        /// `pilot-scale-<unix-time>.json`.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
}

fn parse_pair(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (a, b) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: want LISTEN=TO"))?;
    let addr = |x: &str| {
        x.parse()
            .map_err(|e| format!("{x:?} is not an address: {e}"))
    };
    Ok((addr(a)?, addr(b)?))
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
struct Row {
    scenario: String,
    target: String,
    /// Requests per second (or MB/s for TCP throughput).
    throughput: f64,
    unit: String,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    errors: u64,
    /// Proxy CPU seconds per 1000 requests (per GB for TCP).
    cpu_per_1000: Option<f64>,
    /// Proxy CPU cores busy on average during the row.
    cpu_cores: Option<f64>,
    /// The most resident memory of the proxies during the row (MB).
    rss_mb: Option<f64>,
}

/// What one load achieved: throughput per second, latency percentiles
/// (p50, p90, p99, p99.9 in ms) and errors. `count` is what the per-1000
/// cost divides by (requests, or MB for TCP); `None`: throughput × time.
struct Sample {
    throughput: f64,
    latency: [Option<f64>; 4],
    errors: u64,
    count: Option<f64>,
}

impl From<load::OpenLoop> for Sample {
    fn from(r: load::OpenLoop) -> Sample {
        Sample {
            throughput: r.achieved_rps,
            latency: [
                Some(r.p50_ms),
                Some(r.p90_ms),
                Some(r.p99_ms),
                Some(r.p999_ms),
            ],
            errors: r.errors,
            count: Some(r.requests as f64),
        }
    }
}

impl Row {
    fn of(
        target: &Target,
        scenario: &str,
        unit: &str,
        s: Sample,
        cpu: Option<f64>,
        elapsed: f64,
    ) -> Row {
        let count = s.count.unwrap_or(s.throughput * elapsed);
        let [p50_ms, p90_ms, p99_ms, p999_ms] = s.latency;
        Row {
            scenario: scenario.into(),
            target: target.name.clone(),
            throughput: s.throughput,
            unit: unit.into(),
            p50_ms,
            p90_ms,
            p99_ms,
            p999_ms,
            errors: s.errors,
            cpu_per_1000: cpu.map(|c| c / (count / 1000.0)),
            cpu_cores: cpu.map(|c| c / elapsed),
            rss_mb: cpu.map(|_| target.row_rss_mb.get()),
        }
    }
}

fn run_tool(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// wrk's latency percentiles (µs) printed by a `done` hook, as
/// `PCT <percentile> <microseconds>` lines (wrk's `--latency` table stops
/// at p99).
const WRK_PERCENTILES: &str = r#"done = function(summary, latency, requests)
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("PCT %g %d\n", p, latency:percentile(p)))
  end
end
"#;

/// Runs wrk (closed loop, maximum throughput).
fn wrk(addr: SocketAddr, seconds: u64, close: bool) -> anyhow::Result<Sample> {
    let script = tempfile::Builder::new().suffix(".lua").tempfile()?;
    std::fs::write(script.path(), WRK_PERCENTILES)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", LOAD_CPU, "wrk", "-t1", "-c16"])
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(script.path());
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{addr}/"));
    let out = run_tool(&mut cmd)?;
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output:\n{out}"))?;
    let pct = |p: &str| {
        out.lines()
            .filter_map(|l| l.strip_prefix("PCT "))
            .find_map(|l| {
                let (q, us) = l.split_once(' ')?;
                (q == p).then(|| us.trim().parse::<f64>().ok().map(|us| us / 1000.0))?
            })
    };
    let errors = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(Sample {
        throughput: rps,
        latency: [pct("50"), pct("90"), pct("99"), pct("99.9")],
        errors,
        count: None,
    })
}

/// Runs h2load (HTTP/2, multiplexed) against `url`; `extra` adds
/// arguments (a request body, headers). Latency percentiles come from its
/// per-request log.
fn h2load(url: &str, seconds: u64, extra: &[&str]) -> anyhow::Result<Sample> {
    let log = tempfile::NamedTempFile::new()?;
    let out = run_tool(
        Command::new("taskset")
            .args(["-c", LOAD_CPU, "h2load", "-c", "4", "-m", "16", "-D"])
            .arg(seconds.to_string())
            .arg("--log-file")
            .arg(log.path())
            .args(extra)
            .arg(url),
    )?;
    let rps = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1)?.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no rate in h2load output:\n{out}"))?;
    let count = |what: &str| {
        out.lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| {
                l.split(',')
                    .find(|p| p.contains(what))?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    // Answers that were not 2xx count as errors too.
    let non_2xx = out
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .map(|l| {
            l.split(',')
                .filter(|p| !p.contains("2xx"))
                .filter_map(|p| p.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
                .sum::<u64>()
        })
        .unwrap_or(0);
    // Log lines: start (µs since the epoch), status, duration (µs).
    let mut durations: Vec<u64> = std::fs::read_to_string(log.path())?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    durations.sort_unstable();
    let pct = |q: f64| {
        (!durations.is_empty()).then(|| {
            let i = ((q * durations.len() as f64).ceil() as usize).clamp(1, durations.len());
            durations[i - 1] as f64 / 1000.0
        })
    };
    Ok(Sample {
        throughput: rps,
        latency: [pct(0.50), pct(0.90), pct(0.99), pct(0.999)],
        errors: count("failed") + count("errored") + non_2xx,
        count: None,
    })
}

/// One real gRPC call (tonic's health client) through `addr`: the row's
/// requests count only if the proxy carries gRPC whole (trailers, status).
fn grpc_works(addr: SocketAddr, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let mut client = HealthClient::new(channel);
        let r = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            r.status == ServingStatus::Serving as i32,
            "health says {}",
            r.status
        );
        Ok(())
    })
}

/// The CPU the proxies run on, and the one load generator and backend share.
const PROXY_CPU: &str = "1";
const LOAD_CPU: &str = "0";

fn measure<T>(
    target: &Target,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Option<f64>, f64)> {
    let pids = target.pids();
    let cpu_now = || pids.iter().map(|p| procfs::cpu_seconds(*p)).sum::<f64>();
    let before = cpu_now();
    let start = std::time::Instant::now();
    // Resident memory is sampled while the load runs: the most it reached
    // is the "under load" figure (VmHWM would also count start-up).
    let done = std::sync::atomic::AtomicBool::new(false);
    let (r, most) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut most = 0.0f64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(pids.iter().map(|p| procfs::rss_mb(*p)).sum());
                std::thread::sleep(Duration::from_millis(10));
            }
            most
        });
        let r = f();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (r, sampler.join().unwrap_or(0.0))
    });
    let r = r?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (!pids.is_empty()).then(|| cpu_now() - before);
    target.row_rss_mb.set(most);
    target
        .loaded_rss_mb
        .set(target.loaded_rss_mb.get().max(most));
    Ok((r, cpu, elapsed))
}

/// gRPC unary load: grpc.health.v1.Health/Check with an empty request (a
/// 5-byte frame), 4 connections × 16 streams.
struct GrpcLoad {
    request: tempfile::NamedTempFile,
    url: String,
}

impl GrpcLoad {
    /// Checks one real call through `target` first.
    fn new(target: &Target, rt: &tokio::runtime::Runtime) -> anyhow::Result<GrpcLoad> {
        grpc_works(target.addrs.grpc, rt)
            .with_context(|| format!("{}: a gRPC call through it failed", target.name))?;
        let request = tempfile::NamedTempFile::new()?;
        std::fs::write(request.path(), [0u8; 5])?;
        let url = format!("http://{}/grpc.health.v1.Health/Check", target.addrs.grpc);
        Ok(GrpcLoad { request, url })
    }

    fn run(&self, seconds: u64) -> anyhow::Result<Sample> {
        let body = self.request.path().to_string_lossy().into_owned();
        let headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"];
        let mut args = vec!["-d", &body];
        args.extend(headers);
        h2load(&self.url, seconds, &args)
    }
}

type Load<'a> = &'a mut dyn FnMut() -> anyhow::Result<Sample>;

fn scenarios(
    target: &Target,
    seconds: u64,
    smoke: bool,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut add = |scenario: &str, unit: &str, load: Load| {
        let (sample, cpu, elapsed) = measure(target, load)?;
        rows.push(Row::of(target, scenario, unit, sample, cpu, elapsed));
        anyhow::Ok(())
    };
    let (small, large) = (target.addrs.small, target.addrs.large);
    let h2 = format!("http://{small}/");
    let grpc = GrpcLoad::new(target, rt)?;
    let max: [(&str, Load); 5] = [
        ("HTTP/1.1 keep-alive, small body (max)", &mut || {
            wrk(small, seconds, false)
        }),
        ("HTTP/1.1 keep-alive, 16 KiB body (max)", &mut || {
            wrk(large, seconds, false)
        }),
        ("HTTP/2, 4 connections × 16 streams (max)", &mut || {
            h2load(&h2, seconds, &[])
        }),
        ("gRPC unary, 4 connections × 16 streams (max)", &mut || {
            grpc.run(seconds)
        }),
        ("HTTP/1.1 new connection per request (max)", &mut || {
            wrk(small, seconds, true)
        }),
    ];
    for (scenario, load) in max {
        add(scenario, "req/s", load)?;
    }
    // Under mutual TLS: a new connection between the sidecars per request,
    // so a TLS handshake each (sessions resumed where the proxy does).
    if let Some(handshake) = target.addrs.handshake {
        add(
            "mTLS: new connection between the sidecars per request (TCP, HTTP/1.1 inside) (max)",
            "req/s",
            &mut || wrk(handshake, seconds, true),
        )?;
    }
    let rates: &[u64] = if smoke { &[200] } else { &[1000, 5000] };
    for &rate in rates {
        let scenario = format!("HTTP/1.1 fixed rate {rate} req/s (open loop)");
        let time = Duration::from_secs(seconds);
        add(&scenario, "req/s", &mut || {
            load::open_loop(small, &small.to_string(), rate, time, 16).map(Sample::from)
        })?;
        // The cost of a mirror to the original: the same load at the first
        // rate, right after it, each request also copied to the backend
        // (mirroring proxies only).
        if let Some(mirrored) = target.addrs.mirrored.filter(|_| rate == rates[0]) {
            let scenario = format!("HTTP/1.1 fixed rate {rate} req/s, every request mirrored");
            add(&scenario, "req/s", &mut || {
                load::open_loop(mirrored, &mirrored.to_string(), rate, time, 16).map(Sample::from)
            })?;
        }
    }
    // For TCP, "per 1000" is per GB moved (1000 MB).
    let tcp = target.addrs.tcp.to_string();
    add("TCP stream throughput", "MB/s", &mut || {
        let mbs = rt.block_on(load::tcp_throughput(&tcp, Duration::from_secs(seconds)))?;
        Ok(Sample {
            throughput: mbs,
            latency: [None; 4],
            errors: 0,
            count: None,
        })
    })?;
    Ok(rows)
}

fn start_backend() -> anyhow::Result<(std::process::Child, Backends)> {
    use std::io::BufRead;
    let mut child = Command::new("taskset")
        .args(["-c", LOAD_CPU])
        .arg(std::env::current_exe()?)
        .arg("backend")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next = |what: &str| -> anyhow::Result<SocketAddr> {
        let l = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("backend exited"))??;
        l.strip_prefix(what)
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unexpected backend line {l:?}"))
    };
    let b = Backends {
        small: next("small")?,
        large: next("large")?,
        tcp: next("tcp")?,
        grpc: next("grpc")?,
        mirrored: None,
        handshake: None,
    };
    Ok((child, b))
}

fn serve_backend() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (small, large, tcp, grpc) =
            (bind().await?, bind().await?, bind().await?, bind().await?);
        println!("small {}", small.local_addr()?);
        println!("large {}", large.local_addr()?);
        println!("tcp {}", tcp.local_addr()?);
        println!("grpc {}", grpc.local_addr()?);
        tokio::join!(
            backend::http(small, 64),
            backend::http(large, 16 * 1024),
            backend::tcp_sink(tcp),
            backend::grpc(grpc),
        );
        anyhow::Ok(())
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} × {cpu}, Linux {}", kernel.trim())
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

/// One scenario's table: every target's row, compared with Envoy and a
/// direct connection (at a fixed rate: the latency each adds).
fn scenario_table(s: &mut String, sc: &str, rows: &[Row]) {
    use std::fmt::Write;
    let f = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.3}"));
    let in_sc: Vec<&Row> = rows.iter().filter(|r| r.scenario == sc).collect();
    let get = |t: &str| in_sc.iter().find(|r| r.target == t).map(|r| r.throughput);
    let direct = in_sc.iter().find(|r| r.target == "direct");
    // At a fixed rate what a proxy costs is the latency it adds.
    let added = |r: &Row, p: fn(&Row) -> Option<f64>| match (p(r), direct.and_then(|d| p(d))) {
        (Some(v), Some(d)) if r.target != "direct" => format!("{:+.3}", v - d),
        _ => "—".into(),
    };
    let fixed = fixed_rate(sc);
    let _ = writeln!(s, "## {sc}\n");
    let _ = writeln!(
        s,
        "| target | {} | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | CPU s / 1000 | CPU cores | RSS MB | {} |",
        in_sc[0].unit,
        if fixed {
            "added p50 ms | added p99 ms"
        } else {
            "vs Envoy | vs direct"
        }
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &in_sc {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.throughput,
            f(r.p50_ms),
            f(r.p90_ms),
            f(r.p99_ms),
            f(r.p999_ms),
            r.errors,
            f(r.cpu_per_1000),
            f(r.cpu_cores),
            r.rss_mb.map_or("—".into(), |v| format!("{v:.1}")),
            if fixed {
                added(r, |r| r.p50_ms)
            } else {
                // A chain compares with Envoy's chain.
                ratio(r.throughput, get(envoy_peer(&r.target)))
            },
            if fixed {
                added(r, |r| r.p99_ms)
            } else {
                ratio(r.throughput, get("direct"))
            },
        );
    }
    s.push('\n');
}

fn report(rows: &[Row], memory: &[Memory], plan: &Plan) -> String {
    use std::fmt::Write;
    let (seconds, smoke, rounds) = (plan.seconds, plan.smoke, plan.rounds);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# mesh-proxy benchmark{}\n",
        if smoke {
            " (smoke run: numbers not meaningful)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "Machine: {}. {seconds} s per row; {rounds} round(s), targets interleaved, each row the round with the median throughput. One worker thread per proxy, pinned to CPU {PROXY_CPU}; load generator and backend on CPU {LOAD_CPU}. `envoy` has a file access log (to /dev/null) as a sidecar would; mesh-proxy and HAProxy log nothing. mesh-proxy always keeps its standard per-call metrics (Istio's labels), Envoy its own stats; the `1 % traced` pair both trace 1 % of the calls with Zipkin (spans to the backend), and each is compared with the other.\n",
        machine()
    );
    let mut scenarios: Vec<&str> = Vec::new();
    for r in rows {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    for sc in scenarios {
        scenario_table(&mut s, sc, rows);
    }
    let _ = writeln!(
        s,
        "## Memory\n\nResident memory of the proxy processes (a chain: both summed): idle (3 s after the last one started, no load), the start-up peak (the high-water mark the kernel recorded then, VmHWM: starting and reading the configuration), the most seen while the rows ran (sampled every 10 ms), VmHWM at the end, and the growth over requests to distinct paths after the rows (one keep-alive connection; what a proxy keeps per path).\n\n| target | idle RSS MB | start-up peak MB | RSS under load MB | VmHWM MB | growth over distinct paths MB |\n|---|---:|---:|---:|---:|---:|"
    );
    for m in memory {
        let growth = m
            .paths_growth
            .map_or("—".into(), |g| format!("{g:+.1} ({} paths)", m.paths));
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {growth} |",
            m.target, m.idle, m.startup_peak, m.loaded, m.peak
        );
    }
    s
}

/// How long and how often to measure.
struct Plan {
    smoke: bool,
    seconds: u64,
    rounds: usize,
}

/// Whether a scenario holds the request rate fixed (latency is its result).
fn fixed_rate(scenario: &str) -> bool {
    scenario.contains("fixed rate")
}

/// Of rows measured in several rounds, the one with the median throughput
/// (at a fixed rate: the median p50) per scenario and target, in
/// first-seen order.
fn medians(rows: Vec<Row>) -> Vec<Row> {
    let mut groups: Vec<Vec<Row>> = Vec::new();
    for r in rows {
        match groups
            .iter_mut()
            .find(|g| g[0].scenario == r.scenario && g[0].target == r.target)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|mut g| {
            if fixed_rate(&g[0].scenario) {
                let p50 = |r: &Row| r.p50_ms.unwrap_or(f64::MAX);
                g.sort_by(|a, b| p50(a).total_cmp(&p50(b)));
            } else {
                g.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
            }
            let mid = (g.len() - 1) / 2;
            g.swap_remove(mid)
        })
        .collect()
}

fn run(
    smoke: bool,
    seconds: Option<u64>,
    rounds: Option<usize>,
    out: PathBuf,
    only: Vec<String>,
) -> anyhow::Result<()> {
    let plan = Plan {
        smoke,
        seconds: seconds.unwrap_or(if smoke { 1 } else { 4 }),
        rounds: rounds.unwrap_or(if smoke { 1 } else { 3 }).max(1),
    };
    let seconds = plan.seconds;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mesh_proxy_bin = std::env::current_exe()?.with_file_name("mesh-proxy");
    anyhow::ensure!(
        mesh_proxy_bin.exists(),
        "{} is missing: build it with the harness (bench/run does)",
        mesh_proxy_bin.display()
    );
    for tool in ["wrk", "h2load", "envoy", "haproxy", "taskset"] {
        targets::which(tool)?;
    }
    let (mut backend, b) = start_backend()?;
    let result = (|| {
        let targets = start_targets(&mesh_proxy_bin, b, &only)?;
        // Idle means settled: a sidecar lets its xDS checking memory go
        // after 2 s without a config push.
        std::thread::sleep(Duration::from_secs(3));
        let mut memory = memory_at_rest(&targets);
        let mut rows = Vec::new();
        for round in 1..=plan.rounds {
            for t in &targets {
                eprintln!("round {round}/{}: measuring {} …", plan.rounds, t.name);
                rows.extend(scenarios(t, seconds, smoke, &rt)?);
            }
        }
        let rows = medians(rows);
        memory_after_load(&mut memory, &targets);
        memory_over_paths(&mut memory, &targets, if smoke { 1000 } else { 10_000 })?;
        anyhow::Ok((rows, memory))
    })();
    let _ = backend.kill();
    let _ = backend.wait();
    let (rows, memory) = result?;
    write_results(&out, &plan, &rows, &memory)
}

/// Starts the targets: a direct connection and those named in `only` (all
/// when empty).
fn start_targets(
    mesh_proxy_bin: &std::path::Path,
    b: Backends,
    only: &[String],
) -> anyhow::Result<Vec<Target>> {
    type Start<'a> = Box<dyn Fn() -> anyhow::Result<Target> + 'a>;
    let proxy = |to| targets::mesh_proxy(mesh_proxy_bin, to, PROXY_CPU);
    let all: Vec<(&str, Start)> = vec![
        ("direct", Box::new(|| Ok(Target::direct(b)))),
        ("mesh-proxy", Box::new(|| proxy(b))),
        (
            "mesh-proxy (via pilot)",
            Box::new(|| {
                let pilot = mesh_proxy_bin.with_file_name("mesh-pilot");
                targets::mesh_proxy_via_pilot(mesh_proxy_bin, &pilot, b, PROXY_CPU, LOAD_CPU)
            }),
        ),
        ("envoy", Box::new(|| targets::envoy(b, PROXY_CPU))),
        // What a sidecar does besides proxying: mesh-proxy's standard
        // metrics, Envoy's own stats, both tracing 1 % of the calls.
        (
            TRACED_MESH_PROXY,
            Box::new(|| {
                let extras = targets::Extras {
                    tracing: true,
                    ..Default::default()
                };
                targets::mesh_proxy_with(mesh_proxy_bin, b, PROXY_CPU, &extras, TRACED_MESH_PROXY)
            }),
        ),
        (
            TRACED_ENVOY,
            Box::new(|| {
                let extras = targets::Extras {
                    tracing: true,
                    ..Default::default()
                };
                targets::envoy_with(b, PROXY_CPU, &extras, TRACED_ENVOY)
            }),
        ),
        ("haproxy", Box::new(|| targets::haproxy(b, PROXY_CPU))),
        (
            "floor (byte relay)",
            Box::new(|| targets::relay(b, PROXY_CPU)),
        ),
        // A call in a mesh crosses two sidecars: client side, server side.
        (
            "mesh-proxy → mesh-proxy",
            Box::new(|| targets::chain("mesh-proxy → mesh-proxy", proxy, b)),
        ),
        (
            "envoy → envoy",
            Box::new(|| targets::chain("envoy → envoy", |to| targets::envoy(to, PROXY_CPU), b)),
        ),
        // The same with STRICT mutual TLS between the two sidecars.
        (
            MTLS_MESH_PROXY,
            Box::new(|| {
                let sidecar = targets::Sidecar::MeshProxy(mesh_proxy_bin);
                let ca = mesh_proxy_bin.with_file_name("mesh-ca");
                targets::mtls_chain(MTLS_MESH_PROXY, sidecar, &ca, b, PROXY_CPU, LOAD_CPU)
            }),
        ),
        (
            MTLS_ENVOY,
            Box::new(|| {
                let sidecar = targets::Sidecar::Envoy(mesh_proxy_bin);
                let ca = mesh_proxy_bin.with_file_name("mesh-ca");
                targets::mtls_chain(MTLS_ENVOY, sidecar, &ca, b, PROXY_CPU, LOAD_CPU)
            }),
        ),
    ];
    all.iter()
        .filter(|(name, _)| *name == "direct" || only.is_empty() || only.iter().any(|o| o == name))
        .map(|(_, start)| start())
        .collect()
}

/// Two mesh-proxy sidecars with mutual TLS between them.
const MTLS_MESH_PROXY: &str = "mesh-proxy → mesh-proxy (mTLS)";
/// Two Envoy sidecars with mutual TLS between them.
const MTLS_ENVOY: &str = "envoy → envoy (mTLS)";

/// mesh-proxy with its standard metrics and 1 % of calls traced.
const TRACED_MESH_PROXY: &str = "mesh-proxy (metrics + 1 % traced)";
/// Envoy with its own stats and 1 % of calls traced.
const TRACED_ENVOY: &str = "envoy (stats + 1 % traced)";

/// The Envoy row a target's throughput is compared with: Envoy's chain
/// for a chain, Envoy doing the same extras for a target doing extras.
fn envoy_peer(target: &str) -> &'static str {
    if target.contains("(mTLS)") {
        MTLS_ENVOY
    } else if target.contains('→') {
        "envoy → envoy"
    } else if target.contains("traced") {
        TRACED_ENVOY
    } else {
        "envoy"
    }
}

/// Resident memory of one target's proxies (a chain: both summed), MB.
#[derive(Debug, Clone, Serialize)]
struct Memory {
    target: String,
    /// At rest, 3 s after the last target started.
    idle: f64,
    /// The high-water mark at rest: what starting and reading the
    /// configuration took.
    startup_peak: f64,
    /// The most seen while the rows ran (sampled every 10 ms).
    loaded: f64,
    /// The high-water mark at the end (start-up or load, whichever was
    /// more).
    peak: f64,
    /// RSS growth over requests to as many distinct paths as `paths`
    /// (HTTP/1.1, one keep-alive connection, after the rows).
    paths_growth: Option<f64>,
    /// How many distinct paths.
    paths: usize,
}

/// Each target's memory at rest (`loaded` and `peak` filled in later).
fn memory_at_rest(targets: &[Target]) -> Vec<Memory> {
    targets
        .iter()
        .filter(|t| !t.pids().is_empty())
        .map(|t| Memory {
            target: t.name.clone(),
            idle: t.pids().into_iter().map(procfs::rss_mb).sum(),
            startup_peak: t.pids().into_iter().map(procfs::peak_rss_mb).sum(),
            loaded: 0.0,
            peak: 0.0,
            paths_growth: None,
            paths: 0,
        })
        .collect()
}

/// Each target's RSS growth over `n` requests to distinct paths: what a
/// proxy keeps per path (per-path state would grow without bound).
fn memory_over_paths(memory: &mut [Memory], targets: &[Target], n: usize) -> anyhow::Result<()> {
    for (m, t) in memory
        .iter_mut()
        .zip(targets.iter().filter(|t| !t.pids().is_empty()))
    {
        let rss = || t.pids().into_iter().map(procfs::rss_mb).sum::<f64>();
        let before = rss();
        let errors = load::distinct_paths(t.addrs.small, n)?;
        anyhow::ensure!(
            errors == 0,
            "{}: {errors} of {n} distinct paths failed",
            t.name
        );
        m.paths_growth = Some(rss() - before);
        m.paths = n;
    }
    Ok(())
}

/// Adds each target's most resident memory under load, and its VmHWM.
fn memory_after_load(memory: &mut [Memory], targets: &[Target]) {
    for (m, t) in memory
        .iter_mut()
        .zip(targets.iter().filter(|t| !t.pids().is_empty()))
    {
        m.loaded = t.loaded_rss_mb.get();
        m.peak = t.pids().into_iter().map(procfs::peak_rss_mb).sum();
    }
}

/// Writes the report (Markdown and JSON) to `out` and prints it.
fn write_results(
    out: &std::path::Path,
    plan: &Plan,
    rows: &[Row],
    memory: &[Memory],
) -> anyhow::Result<()> {
    let md = report(rows, memory, plan);
    std::fs::create_dir_all(out)?;
    let stamp = if plan.smoke {
        "smoke".to_owned()
    } else {
        format!(
            "{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
        )
    };
    std::fs::write(out.join(format!("{stamp}.md")), &md)?;
    let json = serde_json::json!({"machine": machine(), "seconds": plan.seconds, "rounds": plan.rounds, "smoke": plan.smoke, "rows": rows, "memory_mb": memory});
    std::fs::write(
        out.join(format!("{stamp}.json")),
        serde_json::to_string_pretty(&json)?,
    )?;
    print!("{md}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            smoke,
            seconds,
            rounds,
            out,
            only,
        } => run(smoke, seconds, rounds, out, only),
        Cmd::Backend => serve_backend(),
        Cmd::Relay { pairs } => relay::run(&pairs),
        Cmd::OpenLoop {
            addr,
            rate,
            seconds,
            connections,
        } => {
            let r = load::open_loop(
                addr,
                &addr.to_string(),
                rate,
                Duration::from_secs(seconds),
                connections,
            )?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Cmd::PilotScale {
            proxies,
            services,
            scope,
            pilot,
            out,
        } => {
            let pilot = match pilot {
                Some(p) => p,
                None => std::env::current_exe()?
                    .parent()
                    .expect("exe folder")
                    .join("mesh-pilot"),
            };
            pilot_scale_runs(&pilot, &proxies, services, &scope, &out)?;
            Ok(())
        }
    }
}

/// Runs pilot-scale for every combination, prints a table, and writes the
/// raw list to `out/pilot-scale-<unix-time>.json`.
fn pilot_scale_runs(
    pilot: &std::path::Path,
    proxies: &[usize],
    services: usize,
    scopes: &[usize],
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let join = |v: &[usize]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let command = format!(
        "bench/run pilot-scale --proxies {} --services {services} --scope {}",
        join(proxies),
        join(scopes)
    );
    println!(
        "| proxies | services | per proxy | initial sync | route push p50 / p99 | endpoint push p50 / p99 | CPU per endpoint change (without the registry file's re-read) | pilot peak RSS | bytes sent | routes outside scope | rolling restart: writes → endpoint pushes per proxy (mean / max), zero-endpoint assignments, converged |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut raw = Vec::new();
    for &scope in scopes {
        for &n in proxies {
            let scale = pilot_scale::Scale {
                proxies: n,
                services,
                scope,
            };
            let r = pilot_scale::run(pilot, scale)?;
            println!(
                "| {} | {} | {} | {:.2} s | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {:.1} ms ({:.1} ms) | {:.0} MB | {:.0} MB | {} | {} → {:.1} / {}, {}, {:.0} ms |",
                r.proxies,
                r.services,
                r.services_per_proxy,
                r.initial_sync_s,
                r.route_push_p50_ms,
                r.route_push_p99_ms,
                r.endpoint_push_p50_ms,
                r.endpoint_push_p99_ms,
                r.cpu_ms_per_endpoint_change,
                r.cpu_ms_per_endpoint_change_without_registry_read,
                r.pilot_rss_bytes as f64 / 1048576.0,
                r.bytes_sent as f64 / 1048576.0,
                r.route_pushes_outside_scope,
                r.rolling_restart_writes,
                r.rolling_restart_pushes_per_proxy_mean,
                r.rolling_restart_pushes_per_proxy_max,
                r.rolling_restart_zero_endpoint_assignments,
                r.rolling_restart_converged_ms,
            );
            let mut value = serde_json::to_value(&r)?;
            value["command"] = command.clone().into();
            value["machine"] = machine().into();
            raw.push(value);
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    std::fs::create_dir_all(out)?;
    let path = out.join(format!("pilot-scale-{stamp}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&raw)? + "\n")?;
    println!("raw result: {}", path.display());
    Ok(())
}
