//! What goes wrong in production meshes, provoked on purpose: config swaps
//! under load, bad config, servers closing keep-alive connections, request
//! smuggling, shutdown with requests in flight.

mod common;

use std::time::{Duration, Instant};

use common::{
    Backend, ClosingBackend, CountingBackend, bootstrap, bootstrap_to, curl, mesh_proxy, raw_http,
    route_to, weighted, with_hcm,
};
use mesh_proxy::upstream::UPSTREAM_IDLE_TIMEOUT;

#[test]
fn config_swaps_under_load_drop_no_request() {
    let (a, b) = (Backend::start("v1"), Backend::start("v2"));
    let mut proxy = mesh_proxy(&bootstrap(&weighted(50, 50), &[("v1", &a), ("v2", &b)]));
    let url = format!("http://{}/pay/[1-3000]", proxy.listener("http"));
    let load =
        std::thread::spawn(move || curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}\n", &url]));
    for (w1, w2) in [(0, 100), (100, 0), (20, 80), (0, 100)] {
        proxy.rewrite_config(&bootstrap(&weighted(w1, w2), &[("v1", &a), ("v2", &b)]));
        let line = proxy.wait_line("config ");
        assert!(line.starts_with("config applied version"), "{line}");
    }
    let (code, statuses) = load.join().unwrap();
    assert_eq!(code, 0);
    let total = statuses.lines().count();
    let ok = statuses.lines().filter(|s| *s == "200").count();
    assert_eq!(
        (total, ok),
        (3000, 3000),
        "every request during the swaps must succeed"
    );
    // The last version (0/100) is in force: 200 of 200 to v2.
    let (_, out) = curl(&[
        "-s",
        &format!("http://{}/after/[1-200]", proxy.listener("http")),
    ]);
    assert_eq!(out.lines().filter(|l| *l == "v2").count(), 200);
}

#[test]
fn bad_config_is_refused_and_the_last_good_one_keeps_serving() {
    let (a, b) = (Backend::start("v1"), Backend::start("v2"));
    let good = bootstrap(&weighted(0, 100), &[("v1", &a), ("v2", &b)]);
    let mut proxy = mesh_proxy(&good);
    proxy.rewrite_config(&good.replace("weight: 0}", "weight: 0, unknown_knob: 1}"));
    let line = proxy.wait_line("config ");
    assert!(line.starts_with("config rejected: "), "{line}");
    assert!(
        line.contains("unknown_knob"),
        "the reason names the field: {line}"
    );
    proxy.rewrite_config(&good.replace(
        "connect_timeout: 1s",
        "connect_timeout: 1s\n    lb_policy: MAGLEV",
    ));
    let line = proxy.wait_line("config ");
    assert!(line.contains("lb_policy"), "{line}");
    let (_, out) = curl(&["-s", &format!("http://{}/[1-20]", proxy.listener("http"))]);
    assert_eq!(
        out.lines().filter(|l| *l == "v2").count(),
        20,
        "still on the good config"
    );
    let (_, dump) = curl(&["-s", &format!("http://{}/config_dump", proxy.admin())]);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["configs"][0]["version_info"], "1");
    let (_, stats) = curl(&["-s", &format!("http://{}/stats/prometheus", proxy.admin())]);
    assert!(
        stats.contains("mesh_proxy_config_rejected_total 2"),
        "{stats}"
    );
}

#[test]
fn servers_closing_keepalive_connections_cause_no_failures() {
    let backend = ClosingBackend::start();
    let config = bootstrap_to("v1", backend.addr);
    let proxy = mesh_proxy(&config);
    let url = format!("http://{}/[1-1000]", proxy.listener("http"));
    let (_, statuses) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}\n", &url]);
    let failed: Vec<_> = statuses.lines().filter(|s| *s != "200").collect();
    assert!(
        failed.is_empty(),
        "{} of 1000 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        1000
    );
}

#[test]
fn upstream_connections_are_reused_then_closed_by_the_proxy_when_idle() {
    let backend = CountingBackend::start();
    let proxy = mesh_proxy(&bootstrap_to("v1", backend.addr));
    let url = format!("http://{}/[1-200]", proxy.listener("http"));
    // Two clients one after the other, 200 requests each.
    for _ in 0..2 {
        let (_, statuses) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}\n", &url]);
        assert_eq!(statuses.lines().filter(|s| *s == "200").count(), 200);
    }
    let last = Instant::now();
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "400 sequential requests take one pooled upstream connection"
    );
    // The proxy, not the server, ends the idle connection, a little after
    // its idle timeout (checked once a second).
    let closed = backend
        .closed
        .recv_timeout(UPSTREAM_IDLE_TIMEOUT + Duration::from_secs(5))
        .expect("the proxy closes an idle upstream connection");
    let idle = closed - last;
    assert!(
        idle >= UPSTREAM_IDLE_TIMEOUT - Duration::from_millis(500)
            && idle <= UPSTREAM_IDLE_TIMEOUT + Duration::from_secs(2),
        "closed after {idle:?} idle"
    );
}

#[test]
fn a_begun_request_head_must_finish_in_time_but_idle_connections_stay() {
    use std::io::{Read, Write};
    let a = Backend::start("v1");
    let proxy = mesh_proxy(&with_hcm(
        &bootstrap(&route_to("v1"), &[("v1", &a)]),
        "request_headers_timeout: 1s",
    ));
    let addr = proxy.listener("http");
    let connect = || {
        let s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    // A client that starts a head and never finishes it is cut off.
    let mut slow = connect();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: svcb\r\n").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // An idle keep-alive connection is not: the clock starts at a head's
    // first byte.
    let mut idle = connect();
    let get = b"GET / HTTP/1.1\r\nHost: svcb\r\n\r\n";
    let mut buf = [0u8; 4096];
    for _ in 0..2 {
        idle.write_all(get).unwrap();
        let n = idle.read(&mut buf).unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Idle for longer than the head timeout.
        std::thread::sleep(Duration::from_millis(1500));
    }
}

#[test]
fn request_smuggling_shapes_and_oversized_heads_are_refused() {
    let a = Backend::start("v1");
    let proxy = mesh_proxy(&bootstrap(&route_to("v1"), &[("v1", &a)]));
    let addr = proxy.listener("http");
    let cases: [(&str, &[u8], &str); 6] = [
        (
            "unknown transfer coding",
            b"POST / HTTP/1.1\r\nHost: svcb\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 501",
        ),
        (
            "two different Content-Length values",
            b"POST / HTTP/1.1\r\nHost: svcb\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            "HTTP/1.1 400",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: svcb\r\nX-Folded: a\r\n b\r\n\r\n",
            "HTTP/1.1 400",
        ),
        ("malformed request line", b"GARBAGE\r\n\r\n", "HTTP/1.1 400"),
        (
            "bad chunk size",
            b"POST / HTTP/1.1\r\nHost: svcb\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        ("oversized head", b"", "HTTP/1.1 431"),
    ];
    for (what, request, expected) in cases {
        let request = if what == "oversized head" {
            format!(
                "GET / HTTP/1.1\r\nHost: svcb\r\nX-Big: {}\r\n\r\n",
                "a".repeat(70 * 1024)
            )
            .into_bytes()
        } else {
            request.to_vec()
        };
        let answer = raw_http(&addr, &request);
        assert!(
            answer.starts_with(expected),
            "{what}: expected {expected}, got {answer:?}"
        );
    }
    assert_eq!(a.count(), 0, "nothing malformed may reach the backend");

    // Content-Length beside Transfer-Encoding, in either order: refused
    // with 400 and the connection closed, so nothing after the body can be
    // smuggled upstream (hyper alone would drop the length and forward).
    for request in [
        b"POST / HTTP/1.1\r\nHost: svcb\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: svcb\r\n\r\n".as_slice(),
        b"POST / HTTP/1.1\r\nHost: svcb\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: svcb\r\n\r\n",
        // A later request of a keep-alive connection is watched too; a
        // connection that carries an ambiguous request is not trusted, so
        // requests pipelined with it are refused as well.
        b"GET / HTTP/1.1\r\nHost: svcb\r\n\r\nPOST / HTTP/1.1\r\nHost: svcb\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let answer = raw_http(&addr, request).to_ascii_lowercase();
        let last = answer.rfind("http/1.1 ").unwrap_or(0);
        assert!(
            answer[last..].starts_with("http/1.1 400"),
            "{answer}"
        );
        assert!(
            answer.contains("content-length and transfer-encoding together are not allowed"),
            "{answer}"
        );
        assert!(answer.contains("connection: close"), "{answer}");
    }
    assert_eq!(a.count(), 0, "nothing ambiguous reaches the backend");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host, with two Host lines,
/// or with an invalid Host gets 400 and the connection is closed; nothing
/// reaches the backend. HTTP/1.0 may omit Host.
#[test]
fn http11_host_is_required_single_and_valid() {
    let a = Backend::start("v1");
    let proxy = mesh_proxy(&bootstrap(&route_to("v1"), &[("v1", &a)]));
    let addr = proxy.listener("http");
    for (what, request) in [
        ("missing", "GET / HTTP/1.1\r\n\r\n"),
        ("empty", "GET / HTTP/1.1\r\nHost:\r\n\r\n"),
        (
            "repeated",
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        ("invalid", "GET / HTTP/1.1\r\nHost: a.example b\r\n\r\n"),
        (
            "user info",
            "GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
        ),
    ] {
        let answer = raw_http(&addr, request.as_bytes()).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 400"), "{what}: {answer}");
        assert!(answer.contains("connection: close"), "{what}: {answer}");
    }
    assert_eq!(
        a.count(),
        0,
        "no request with a bad Host reaches the backend"
    );
    let answer = raw_http(&addr, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.0 200"),
        "HTTP/1.0 without Host: {answer}"
    );
    let answer = raw_http(
        &addr,
        b"GET / HTTP/1.1\r\nHost: svcb:80\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "a valid Host: {answer}");
}

#[test]
fn sigterm_drains_requests_in_flight() {
    let a = Backend::start("v1");
    let mut proxy = mesh_proxy(&bootstrap(&route_to("v1"), &[("v1", &a)]));
    let url = format!("http://{}/slow", proxy.listener("http"));
    let slow = std::thread::spawn(move || {
        curl(&["-s", "-H", "x-delay-ms: 700", "-w", "\n%{http_code}", &url])
    });
    // Signal only once the request has reached the backend.
    while a.count() == 0 {
        std::thread::yield_now();
    }
    proxy.signal("TERM");
    let (code, out) = slow.join().unwrap();
    assert_eq!((code, out.as_str()), (0, "v1\n\n200"));
    let status = proxy.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
