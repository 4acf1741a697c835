//! Circuit breaking, outlier ejection and requests per connection, each
//! run against mesh-proxy and against Envoy with the same bootstrap and
//! judged by what a client and the backends see.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// One answer of a burst: status, whether the proxy said it was
/// overloaded, and how long the request took.
struct Answer {
    status: u16,
    overloaded: bool,
    took: Duration,
}

/// Sends `n` requests at once over `conns` HTTP/2 (prior knowledge)
/// connections to `addr`, each asking the backend to hold it `hold`.
fn burst(addr: &str, n: usize, conns: usize, hold: Duration) -> Vec<Answer> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..conns {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            senders.push(sender);
        }
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut sender = senders[i % conns].clone();
            let req = hyper::Request::get(format!("http://svcb/{i}"))
                .header("x-delay-ms", hold.as_millis().to_string())
                .body(Empty::<Bytes>::new())
                .unwrap();
            tasks.push(tokio::spawn(async move {
                let start = Instant::now();
                let r = sender.send_request(req).await.unwrap();
                let status = r.status().as_u16();
                let overloaded = r.headers().get("x-envoy-overloaded").is_some();
                let _ = r.into_body().collect().await;
                Answer {
                    status,
                    overloaded,
                    took: start.elapsed(),
                }
            }));
        }
        let all = futures_util::future::join_all(tasks);
        let answers = tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("every request is answered: nothing hangs");
        answers.into_iter().map(Result::unwrap).collect()
    })
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const ONE_HUNDRED_REQUESTS: &str =
    "    circuit_breakers:\n      thresholds:\n      - max_requests: 100\n";

/// 2000 requests at once against `max_requests: 100`: the first 100 reach
/// the backend, every other one is answered 503 with
/// `x-envoy-overloaded` at once (long before the held ones finish), and
/// the proxy's memory stays flat.
#[test]
fn overload_past_max_requests_is_refused_at_once_like_envoy() {
    let backend = Backend::start("v1");
    let config = bootstrap(&route_to("v1"), &[]).replace(
        "  clusters:\n",
        &format!(
            "  clusters:\n{}",
            cluster(
                "v1",
                &[(backend.addr.port(), "HEALTHY")],
                ONE_HUNDRED_REQUESTS
            )
        ),
    );
    let hold = Duration::from_secs(3);
    for (name, proxy) in [
        ("mesh-proxy", mesh_proxy(&config)),
        ("envoy", envoy(&config)),
    ] {
        let before = backend.count();
        let rss_before = rss_kib(proxy.child.id());
        let answers = burst(&proxy.listener("http"), 2000, 20, hold);
        let rss_growth = rss_kib(proxy.child.id()).saturating_sub(rss_before);
        let ok = answers.iter().filter(|a| a.status == 200).count();
        let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
        assert_eq!((ok, refused.len()), (100, 1900), "{name}: 200s and 503s");
        assert_eq!(
            backend.count() - before,
            100,
            "{name}: requests at the backend"
        );
        assert!(
            refused.iter().all(|a| a.overloaded),
            "{name}: x-envoy-overloaded"
        );
        let slowest = refused.iter().map(|a| a.took).max().unwrap();
        assert!(slowest < hold / 2, "{name}: a refusal took {slowest:?}");
        eprintln!("{name}: slowest refusal {slowest:?}, RSS grew {rss_growth} KiB");
        if name == "mesh-proxy" {
            assert!(rss_growth < 32 * 1024, "mesh-proxy grew {rss_growth} KiB");
            let stats = curl(&["-s", &format!("http://{}/stats/prometheus", proxy.admin())]).1;
            let line = "mesh_proxy_upstream_rq_pending_overflow_total{cluster=\"v1\"} 1900";
            assert!(stats.contains(line), "{stats}");
        }
    }
}

/// `max_connections: 1` with `max_pending_requests: 1`: one request at the
/// backend, one waiting for the connection (served after it), the rest
/// refused.
#[test]
fn pending_requests_wait_for_a_connection_like_envoy() {
    let backend = Backend::start("v1");
    let limits = "    circuit_breakers:\n      thresholds:\n      - max_connections: 1\n        max_pending_requests: 1\n";
    let config = bootstrap(&route_to("v1"), &[]).replace(
        "  clusters:\n",
        &format!(
            "  clusters:\n{}",
            cluster("v1", &[(backend.addr.port(), "HEALTHY")], limits)
        ),
    );
    let hold = Duration::from_millis(1500);
    for (name, proxy) in [
        ("mesh-proxy", mesh_proxy(&config)),
        ("envoy", envoy(&config)),
    ] {
        // A connection up first: while Envoy connects, the request waiting
        // for it is the pending one.
        assert_eq!(status(&proxy), 200, "{name}");
        let answers = burst(&proxy.listener("http"), 10, 1, hold);
        let mut served: Vec<Duration> = answers
            .iter()
            .filter(|a| a.status == 200)
            .map(|a| a.took)
            .collect();
        served.sort();
        let refused = answers
            .iter()
            .filter(|a| a.status == 503 && a.overloaded)
            .count();
        assert_eq!((served.len(), refused), (2, 8), "{name}");
        // The pending one went after the first: about twice the hold.
        assert!(
            served[1] >= hold * 2 - Duration::from_millis(200),
            "{name}: {served:?}"
        );
    }
}

/// The health flags of `/clusters` for endpoint `addr` of cluster `c`.
fn health(admin: &str, c: &str, addr: &str) -> String {
    let text = curl(&["-s", &format!("http://{admin}/clusters")]).1;
    let key = format!("{c}::{addr}::health_flags::");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_default()
        .to_owned()
}

/// Status of one GET through the proxy.
fn status(proxy: &Process) -> u16 {
    timed_get(proxy, "/", "svcb").0
}

/// Three 500s in a row eject the failing endpoint (`/failed_outlier_check`
/// in `/clusters`); it gets no request for the base ejection time, then
/// takes traffic again.
#[test]
fn consecutive_errors_eject_for_the_sleep_window_like_envoy() {
    let good = Backend::start("good");
    let bad = CountingBackend::answering(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nbad\n",
    );
    let outlier = "    outlier_detection:\n      consecutive_5xx: 3\n      interval: 0.2s\n      base_ejection_time: 2s\n      max_ejection_percent: 50\n      enforcing_success_rate: 0\n";
    let ports = [(good.addr.port(), "HEALTHY"), (bad.addr.port(), "HEALTHY")];
    let config = bootstrap(&route_to("v1"), &[]).replace(
        "  clusters:\n",
        &format!("  clusters:\n{}", cluster("v1", &ports, outlier)),
    );
    let sleep_window = Duration::from_secs(2);
    for (name, proxy) in [
        ("mesh-proxy", mesh_proxy(&config)),
        ("envoy", envoy(&config)),
    ] {
        let bad_addr = bad.addr.to_string();
        // Round robin: every other request fails until the third failure.
        let mut failures = 0;
        while failures < 3 {
            failures += usize::from(status(&proxy) == 500);
        }
        let ejected = Instant::now();
        mesh_testbed::eventually("the endpoint ejected", Duration::from_secs(5), || {
            (health(&proxy.admin(), "v1", &bad_addr) == "/failed_outlier_check").then_some(())
        });
        let mut statuses = Vec::new();
        let back = loop {
            let s = status(&proxy);
            statuses.push(s);
            if s == 500 {
                break ejected.elapsed();
            }
            assert!(
                ejected.elapsed() < Duration::from_secs(10),
                "{name}: never back"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(statuses.len() > 10, "{name}: {statuses:?}");
        assert!(
            back >= sleep_window - Duration::from_millis(100)
                && back < sleep_window + Duration::from_millis(1500),
            "{name}: the ejected endpoint was back after {back:?}"
        );
        assert_eq!(health(&proxy.admin(), "v1", &bad_addr), "healthy", "{name}");
    }
}

/// `max_requests_per_connection: 2`: ten requests in a row open five
/// upstream connections.
#[test]
fn requests_per_connection_like_envoy() {
    let options = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: {max_requests_per_connection: 2}\n        explicit_http_config: {http_protocol_options: {}}\n";
    for name in ["mesh-proxy", "envoy"] {
        let backend = CountingBackend::start();
        let config = bootstrap(&route_to("v1"), &[]).replace(
            "  clusters:\n",
            &format!(
                "  clusters:\n{}",
                cluster("v1", &[(backend.addr.port(), "HEALTHY")], options)
            ),
        );
        let proxy = if name == "envoy" {
            envoy(&config)
        } else {
            mesh_proxy(&config)
        };
        for _ in 0..10 {
            assert_eq!(status(&proxy), 200, "{name}");
        }
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 5, "{name}");
    }
}

/// mesh-proxy's own caps (`--max-requests`, `--max-connections`): past
/// them requests are answered 503 at once and connections closed at once,
/// so an overload of any cluster costs no memory.
#[test]
fn the_proxy_sheds_past_its_own_caps() {
    use std::io::{Read, Write};
    let backend = Backend::start("v1");
    let config = bootstrap(&route_to("v1"), &[("v1", &backend)]);
    let proxy = mesh_proxy_with(
        &config,
        &["--max-requests", "50", "--max-connections", "30"],
    );
    let addr = proxy.listener("http");
    let answers = burst(&addr, 500, 5, Duration::from_secs(2));
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let shed: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == 503 && a.overloaded)
        .collect();
    assert_eq!((ok, shed.len()), (50, 450));
    let slowest = shed.iter().map(|a| a.took).max().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "shedding took {slowest:?}"
    );

    // 30 connections held open; the 31st is closed unanswered.
    let held: Vec<std::net::TcpStream> = (0..30)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: svcb\r\n\r\n")
                .unwrap();
            let mut first = [0u8; 12];
            s.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
            s
        })
        .collect();
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nhost: svcb\r\n\r\n");
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "over the cap: {}",
        String::from_utf8_lossy(&answer)
    );
    drop(held);
    // Below the cap again: served.
    mesh_testbed::eventually("a connection under the cap", Duration::from_secs(5), || {
        (status(&proxy) == 200).then_some(())
    });
    let stats = curl(&["-s", &format!("http://{}/stats/prometheus", proxy.admin())]).1;
    assert!(
        stats.contains("mesh_proxy_downstream_rq_overload_total 450"),
        "{stats}"
    );
    assert!(
        !stats.contains("mesh_proxy_downstream_cx_overflow_total 0\n"),
        "{stats}"
    );
}

/// Endpoints in two priorities (the proxy's zone first, as pilot orders
/// them by locality): while the first holds a usable endpoint nothing goes
/// to the second; once outlier detection ejects it, calls fail over.
#[test]
fn calls_fail_over_to_the_next_priority_like_envoy() {
    let bad = CountingBackend::answering(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nbad\n",
    );
    let far = Backend::start("far");
    let cluster = format!(
        "  - name: v1\n    type: STATIC\n    connect_timeout: 1s\n    outlier_detection:\n      consecutive_5xx: 3\n      interval: 0.2s\n      base_ejection_time: 30s\n      max_ejection_percent: 100\n      enforcing_success_rate: 0\n    load_assignment:\n      cluster_name: v1\n      endpoints:\n      - locality: {{region: r1, zone: z1}}\n        lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n      - locality: {{region: r1, zone: z2}}\n        priority: 1\n        lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n",
        bad.addr.port(),
        far.addr.port()
    );
    let config = bootstrap(&route_to("v1"), &[])
        .replace("  clusters:\n", &format!("  clusters:\n{cluster}"));
    for (name, proxy) in [
        ("mesh-proxy", mesh_proxy(&config)),
        ("envoy", envoy(&config)),
    ] {
        let before = far.count();
        let first: Vec<u16> = (0..3).map(|_| status(&proxy)).collect();
        assert_eq!(first, [500, 500, 500], "{name}: the near priority first");
        assert_eq!(far.count(), before, "{name}: nothing went far");
        let bad_addr = bad.addr.to_string();
        mesh_testbed::eventually("the near endpoint ejected", Duration::from_secs(5), || {
            (health(&proxy.admin(), "v1", &bad_addr) == "/failed_outlier_check").then_some(())
        });
        let after: Vec<u16> = (0..20).map(|_| status(&proxy)).collect();
        assert!(after.iter().all(|s| *s == 200), "{name}: {after:?}");
        assert_eq!(far.count() - before, 20, "{name}: failed over");
    }
}
