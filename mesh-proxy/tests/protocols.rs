//! HTTP/2 on both sides, gRPC end to end (status in trailers), and
//! WebSocket upgrades, with real clients: curl, h2load, tonic, tungstenite.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{
    Backend, Process, bootstrap, bootstrap_to, curl, envoy, mesh_proxy, route_to, with_hcm,
};
use futures_util::{SinkExt, StreamExt};

/// Turns the bootstrap's cluster `name` into an HTTP/2 (prior knowledge) cluster.
fn http2_cluster(config: &str, name: &str) -> String {
    config.replace(
        &format!("  - name: {name}\n    type: STATIC\n"),
        &format!(
            "  - name: {name}\n    type: STATIC\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {{}}\n"
        ),
    )
}

#[test]
fn http2_downstream_with_many_streams_on_one_connection() {
    let a = Backend::start("v1");
    let proxy = mesh_proxy(&bootstrap(&route_to("v1"), &[("v1", &a)]));
    let url = format!("http://{}/h2", proxy.listener("http"));
    let (code, out) = curl(&[
        "-s",
        "--http2-prior-knowledge",
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    assert_eq!((code, out.as_str()), (0, "v1\n2 200"));

    // h2load: 2000 requests, 20 streams at a time on one connection.
    let out = Command::new("h2load")
        .args([
            "-n",
            "2000",
            "-c",
            "1",
            "-m",
            "20",
            &format!("http://{}/load", proxy.listener("http")),
        ])
        .output()
        .expect("h2load is installed (apt nghttp2-client; scripts/test.sh does it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
}

#[test]
fn http2_upstream_gets_the_host_as_authority_and_te_trailers() {
    let a = Backend::start("v1");
    let proxy = mesh_proxy(&http2_cluster(
        &bootstrap(&route_to("v1"), &[("v1", &a)]),
        "v1",
    ));
    let url = format!("http://{}/x", proxy.listener("http"));
    let (code, head) = curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: reviews.default:9080",
        "-H",
        "TE: trailers",
        "-H",
        "Connection: TE",
        &url,
    ]);
    assert_eq!(code, 0);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-echo-version: http/2.0"), "{head}");
    // Envoy's way: Host becomes :authority, and gRPC's `TE: trailers` stays.
    assert!(
        head.contains("x-echo-authority: reviews.default:9080"),
        "{head}"
    );
    assert!(!head.contains("x-echo-host:"), "{head}");
    assert!(head.contains("x-echo-te: trailers"), "{head}");
}

#[test]
fn codec_type_limits_the_downstream_http_versions() {
    let a = Backend::start("v1");
    let base = bootstrap(&route_to("v1"), &[("v1", &a)]);
    let get = |proxy: &common::Process, h2: bool| {
        let url = format!("http://{}/", proxy.listener("http"));
        let mut args = vec![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ];
        if h2 {
            args.push("--http2-prior-knowledge");
        }
        args.push(&url);
        curl(&args).1
    };
    let h1_only = mesh_proxy(&with_hcm(&base, "codec_type: HTTP1"));
    assert_eq!(get(&h1_only, false), "200");
    assert_ne!(get(&h1_only, true), "200", "HTTP1 refuses h2c");
    let h2_only = mesh_proxy(&with_hcm(&base, "codec_type: HTTP2"));
    assert_eq!(get(&h2_only, true), "200");
    assert_ne!(get(&h2_only, false), "200", "HTTP2 refuses HTTP/1.1");
    let auto = mesh_proxy(&with_hcm(&base, "codec_type: AUTO"));
    assert_eq!(
        (get(&auto, false), get(&auto, true)),
        ("200".into(), "200".into())
    );
    let (code, out) = validate(&with_hcm(&base, "codec_type: HTTP3"));
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("codec_type"), "{out}");
}

#[test]
fn grpc_unary_with_trailers_end_to_end() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let grpc_addr = listener.local_addr().unwrap();
    rt.block_on(reporter.set_service_status("svcb", tonic_health::ServingStatus::Serving));
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let proxy = mesh_proxy(&http2_cluster(&bootstrap_to("grpc", grpc_addr), "grpc"));
    let endpoint = format!("http://{}", proxy.listener("http"));
    rt.block_on(async {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let channel = tonic::transport::Endpoint::from_shared(endpoint)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let ok = client
            .check(HealthCheckRequest {
                service: "svcb".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            ok.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        // The error status travels in trailers; it must arrive intact.
        let err = client
            .check(HealthCheckRequest {
                service: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    });
}

/// WebSocket upgrades as Envoy takes them: refused 403 unless the HTTP
/// connection manager names the upgrade type, tunnelled when it does, and
/// refused again on a route that turns it off.
#[test]
fn websocket_upgrades_follow_upgrade_configs_like_envoy() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let ws_addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let reply = format!("echo: {}", msg.to_text().unwrap());
                        ws.send(tokio_tungstenite::tungstenite::Message::text(reply))
                            .await
                            .unwrap();
                    }
                }
            });
        }
    });
    let plain = bootstrap_to("ws", ws_addr);
    let enabled = with_hcm(&plain, "upgrade_configs: [{upgrade_type: websocket}]");
    let route_off = enabled.replace(
        "route: {cluster: ws}",
        "route: {cluster: ws, upgrade_configs: [{upgrade_type: websocket, enabled: false}]}",
    );
    assert_ne!(route_off, enabled, "the route was found");
    for (name, start) in [
        ("mesh-proxy", mesh_proxy as fn(&str) -> Process),
        ("envoy", envoy),
    ] {
        for (config, allowed) in [(&plain, false), (&enabled, true), (&route_off, false)] {
            let proxy = start(config);
            let url = format!("ws://{}/chat", proxy.listener("http"));
            rt.block_on(async {
                let connected = tokio_tungstenite::connect_async(url).await;
                if !allowed {
                    let err = connected.map(|_| ()).unwrap_err();
                    let refused = matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 403);
                    assert!(refused, "{name}: {err:?}");
                    return;
                }
                let (mut ws, resp) = connected.unwrap();
                assert_eq!(resp.status(), 101, "{name}");
                for i in 0..3 {
                    let text = format!("hello {i}");
                    ws.send(tokio_tungstenite::tungstenite::Message::text(text))
                        .await
                        .unwrap();
                    let got = ws.next().await.unwrap().unwrap();
                    assert_eq!(got.to_text().unwrap(), format!("echo: hello {i}"), "{name}");
                }
                ws.close(None).await.unwrap();
            });
        }
    }
}

/// A server-first TCP service (it speaks first, as MySQL or SMTP do), then
/// echoes what it reads.
fn greeting_echo_server() -> SocketAddr {
    greeter("tcp")
}

/// [`greeting_echo_server`] greeting with `hello from NAME`.
fn greeter(name: &'static str) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.write_all(format!("hello from {name}\n").as_bytes());
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A listener for a port of undeclared protocol, as pilot writes it:
/// http_inspector, an HTTP chain for HTTP/1.x and h2c, a TCP chain for the
/// rest (and for connections silent past 100 ms).
fn sniffing_bootstrap(http: &Backend, tcp: SocketAddr) -> String {
    let config = bootstrap(&route_to("v1"), &[("v1", http)]);
    let config = config.replace(
        "    filter_chains:\n    - filters:\n",
        "    listener_filters:\n    - name: envoy.filters.listener.http_inspector\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector\n    listener_filters_timeout: 0.1s\n    continue_on_listener_filters_timeout: true\n    filter_chains:\n    - filter_chain_match:\n        application_protocols: [http/1.0, http/1.1, h2c]\n      filters:\n",
    );
    let tcp_chain = "    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: tcp\n          cluster: tcp\n";
    let tcp_cluster = format!(
        "  - name: tcp\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: tcp\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{address: 127.0.0.1, port_value: {}}}\n",
        tcp.port()
    );
    config.replace(
        "  clusters:\n",
        &format!("{tcp_chain}  clusters:\n{tcp_cluster}"),
    )
}

/// Connects, sends `first` (if any), and reads until `want` bytes arrived.
fn tcp_exchange(addr: &str, first: &[u8], want: usize) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    if !first.is_empty() {
        s.write_all(first).unwrap();
    }
    let mut got = vec![0u8; want];
    s.read_exact(&mut got).unwrap();
    got
}

fn detects_protocol_per_connection(start: fn(&str) -> common::Process, who: &str) {
    let http = Backend::start("v1");
    let tcp = greeting_echo_server();
    let proxy = start(&sniffing_bootstrap(&http, tcp));
    let addr = proxy.listener("http");
    let url = format!("http://{addr}/");
    // HTTP/1.1 and HTTP/2 prior knowledge: the HTTP chain routes them.
    assert_eq!(curl(&["-s", &url]), (0, "v1\n".into()), "{who}: HTTP/1.1");
    assert_eq!(
        curl(&["-s", "--http2-prior-knowledge", &url]),
        (0, "v1\n".into()),
        "{who}: h2c"
    );
    assert_eq!(http.count(), 2, "{who}");
    // Bytes that are not HTTP: the TCP chain, both directions.
    let got = tcp_exchange(&addr, b"\x00\x01binary", 23);
    assert_eq!(
        &got[..],
        b"hello from tcp\n\x00\x01binary",
        "{who}: opaque TCP"
    );
    // A client that waits for the server to speak first: after the
    // detection timeout the connection goes to the TCP chain.
    let got = tcp_exchange(&addr, b"", 15);
    assert_eq!(&got[..], b"hello from tcp\n", "{who}: server-first");
    assert_eq!(
        http.count(),
        2,
        "{who}: nothing else reached the HTTP backend"
    );
}

#[test]
fn undeclared_protocol_is_detected_per_connection() {
    detects_protocol_per_connection(mesh_proxy, "mesh-proxy");
}

/// CPU time (user + system) a process used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces): state is the 3rd
    // field, utime and stime the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A client that sends one byte and then waits must not keep a worker
/// busy while the inspector waits for more (peeking leaves the socket
/// readable; waiting on readiness alone would spin until the timeout).
#[test]
fn a_slow_first_byte_does_not_spin_the_worker() {
    use std::io::Write;
    let http = Backend::start("v1");
    let tcp = greeting_echo_server();
    let config = sniffing_bootstrap(&http, tcp).replace(
        "listener_filters_timeout: 0.1s",
        "listener_filters_timeout: 5s",
    );
    let proxy = mesh_proxy(&config);
    let pid = proxy.child.id();
    let mut s = std::net::TcpStream::connect(proxy.listener("http")).unwrap();
    s.write_all(b"G").unwrap();
    let before = cpu_ticks(pid);
    // The scenario itself: a client silent after its first byte.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    // A tick is 10 ms; a spinning worker would use about 100 in this second.
    assert!(
        used <= 5,
        "the proxy used {used} ticks of CPU while the client waited"
    );
    // The request finishes once the rest arrives.
    s.write_all(b"ET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn envoy_detects_protocol_with_the_same_listener() {
    detects_protocol_per_connection(common::envoy, "envoy");
}

/// Runs `mesh-proxy --validate` on `config`; returns the exit code and stderr.
fn validate(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .arg("--config")
        .arg(&path)
        .arg("--validate")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE"),
    )
}

#[test]
fn listener_filters_and_chains_it_cannot_apply_are_refused() {
    let http = Backend::start("v1");
    let good = sniffing_bootstrap(&http, "127.0.0.1:9".parse().unwrap());
    assert_eq!(validate(&good), (Some(0), String::new()));
    // A listener filter other than the two inspectors.
    let other = good.replace(
        "http_inspector.v3.HttpInspector",
        "original_src.v3.OriginalSrc",
    );
    let (code, err) = validate(&other);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(
            "Error: FILE:11:7: static_resources.listeners[0].listener_filters[0].typed_config: typed config envoy.extensions.filters.listener.original_src.v3.OriginalSrc is not supported"
        ),
        "{err}"
    );
    // Two chains that both take every connection: which one runs is
    // undefined, so the listener is refused (Envoy refuses it too).
    let twice = good.replace(
        "    - filter_chain_match:\n        application_protocols: [http/1.0, http/1.1, h2c]\n      filters:\n",
        "    - filters:\n",
    );
    let (code, err) = validate(&twice);
    assert_eq!(code, Some(1), "{twice}");
    assert!(
        err.contains("static_resources.listeners[0].filter_chains: more than one filter chain matches every connection"),
        "{err}"
    );
}

/// The first TLS record a real client (openssl s_client) sends: its
/// ClientHello, offering `alpn` (none when empty).
fn client_hello(alpn: &[&str]) -> Vec<u8> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = std::process::Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &listener.local_addr().unwrap().to_string(),
    ]);
    if !alpn.is_empty() {
        cmd.args(["-alpn", &alpn.join(",")]);
    }
    let mut client = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl (scripts/test.sh installs it)");
    let (mut s, _) = listener.accept().unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let mut record = head.to_vec();
    record.resize(5 + usize::from(u16::from_be_bytes([head[3], head[4]])), 0);
    s.read_exact(&mut record[5..]).unwrap();
    let _ = client.kill();
    let _ = client.wait();
    record
}

/// tls_inspector reads the ClientHello's ALPN list and transport: chains
/// matching `application_protocols` and `transport_protocol` take their
/// connections (passed through as TCP), the same in mesh-proxy and Envoy.
#[test]
fn tls_chains_are_chosen_by_alpn_and_transport_as_in_envoy() {
    let backends = [
        ("h2", greeter("h2")),
        ("h1", greeter("h1")),
        ("tls", greeter("tls")),
        ("plain", greeter("plain")),
    ];
    let chain = |matcher: &str, cluster: &str| {
        format!(
            "    - {matcher}filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: {cluster}\n          cluster: {cluster}\n"
        )
    };
    let mut config = String::from(
        "admin:\n  address:\n    socket_address: {address: 127.0.0.1, port_value: 0}\nstatic_resources:\n  listeners:\n  - name: tls\n    address:\n      socket_address: {address: 127.0.0.1, port_value: 0}\n    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector\n    listener_filters_timeout: 1s\n    continue_on_listener_filters_timeout: true\n    filter_chains:\n",
    );
    // Envoy matches level by level: the chains naming the transport
    // exactly first, then among them by ALPN; anything that is not TLS
    // takes the chain naming no transport.
    config += &chain(
        "filter_chain_match: {transport_protocol: tls, application_protocols: [h2]}\n      ",
        "h2",
    );
    config += &chain(
        "filter_chain_match: {transport_protocol: tls, application_protocols: [http/1.1]}\n      ",
        "h1",
    );
    config += &chain(
        "filter_chain_match: {transport_protocol: tls}\n      ",
        "tls",
    );
    config += &chain("", "plain");
    config += "  clusters:\n";
    for (name, addr) in &backends {
        config += &format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{address: 127.0.0.1, port_value: {}}}\n",
            addr.port()
        );
    }
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "ALPN h2",
            client_hello(&["h2", "http/1.1"]),
            "hello from h2\n",
        ),
        (
            "ALPN http/1.1",
            client_hello(&["http/1.1"]),
            "hello from h1\n",
        ),
        (
            "ALPN of no chain",
            client_hello(&["imap"]),
            "hello from tls\n",
        ),
        ("no ALPN", client_hello(&[]), "hello from tls\n"),
        ("not TLS", b"\x00\x01binary".to_vec(), "hello from plain\n"),
    ];
    for (who, proxy) in [
        ("mesh-proxy", mesh_proxy(&config)),
        ("envoy", common::envoy(&config)),
    ] {
        for (what, first, greeting) in &cases {
            let got = tcp_exchange(&proxy.listener("tls"), first, greeting.len());
            assert_eq!(String::from_utf8_lossy(&got), *greeting, "{who}: {what}");
        }
    }
}

/// The standard metrics count what a user's traffic did, under Istio's
/// names with `--metrics-naming istio`: HTTP requests by code, and a TCP
/// connection's bytes each way once it closes.
#[test]
fn standard_metrics_count_http_requests_and_tcp_bytes() {
    let http = Backend::start("v1");
    let tcp = greeting_echo_server();
    let proxy = common::mesh_proxy_with(
        &sniffing_bootstrap(&http, tcp),
        &["--metrics-naming", "istio"],
    );
    let addr = proxy.listener("http");
    for _ in 0..3 {
        assert_eq!(
            curl(&["-s", &format!("http://{addr}/")]),
            (0, "v1\n".into())
        );
    }
    // 8 bytes up; the greeting (15) and the echo (8) down; then closed.
    let got = tcp_exchange(&addr, b"\x00\x01binary", 23);
    assert_eq!(got.len(), 23);
    let metrics = || curl(&["-s", &format!("http://{}/stats/prometheus", proxy.admin())]).1;
    let sample = |text: &str, name: &str| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .map(str::to_owned)
    };
    mesh_testbed::eventually(
        "the TCP connection counted as closed",
        std::time::Duration::from_secs(10),
        || sample(&metrics(), "istio_tcp_connections_closed_total"),
    );
    let text = metrics();
    let requests = sample(&text, "istio_requests_total").unwrap();
    for label in [
        "reporter=\"source\"",
        "destination_service=\"v1\"",
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "response_flags=\"-\"",
    ] {
        assert!(requests.contains(label), "{label}: {requests}");
    }
    assert!(requests.ends_with("} 3"), "{requests}");
    let tcp_sample = |name| sample(&text, name).unwrap();
    assert!(tcp_sample("istio_tcp_received_bytes_total").ends_with("} 8"));
    assert!(tcp_sample("istio_tcp_sent_bytes_total").ends_with("} 23"));
    assert!(tcp_sample("istio_tcp_connections_opened_total").ends_with("} 1"));
    let closed = tcp_sample("istio_tcp_connections_closed_total");
    assert!(
        closed.contains("destination_service=\"tcp\"")
            && closed.contains("request_protocol=\"tcp\""),
        "{closed}"
    );
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
}

/// A Zipkin tracer (every call recorded) sending to the cluster `zipkin`.
const ZIPKIN_TRACING: &str = r#"tracing: {random_sampling: {value: 100}, provider: {name: envoy.tracers.zipkin, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: zipkin, collector_endpoint: /api/v2/spans, collector_endpoint_version: HTTP_JSON, shared_span_context: false}}}"#;

/// A bootstrap whose connection manager traces with `tracing`, spans going
/// to the cluster `zipkin` at `collector_port`.
fn traced_bootstrap(http: &Backend, tracing: &str, collector_port: u16) -> String {
    with_hcm(&bootstrap(&route_to("v1"), &[("v1", http)]), tracing)
        + &common::cluster("zipkin", &[(collector_port, "HEALTHY")], "")
}

/// The collector is down: every call is still served at once, with trace
/// headers; the spans are dropped and counted (the data path never waits
/// for a collector). A caller's `x-b3-sampled: 0` records nothing.
#[test]
fn spans_for_a_collector_that_is_down_are_dropped_and_counted() {
    let http = Backend::start("v1");
    let dead = common::dead_port();
    let proxy = common::mesh_proxy(&traced_bootstrap(&http, ZIPKIN_TRACING, dead.port));
    let url = format!("http://{}/", proxy.listener("http"));
    for _ in 0..20 {
        assert_eq!(curl(&["-s", "-m", "2", &url]), (0, "v1\n".into()));
    }
    for _ in 0..5 {
        let got = curl(&["-s", "-m", "2", "-H", "x-b3-sampled: 0", &url]);
        assert_eq!(got, (0, "v1\n".into()));
    }
    let stat = |name: &str| {
        let text = curl(&["-s", &format!("http://{}/stats/prometheus", proxy.admin())]).1;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("mesh_proxy_{name}_total ")))
            .and_then(|v| v.parse::<u64>().ok())
    };
    mesh_testbed::eventually(
        "the 20 recorded spans dropped",
        std::time::Duration::from_secs(10),
        || (stat("spans_dropped") == Some(20)).then_some(()),
    );
    assert_eq!(stat("spans_exported"), Some(0));
}

/// Tracer settings mesh-proxy cannot honour are refused by path, not
/// ignored: a shared span context (Envoy's default), a collector cluster
/// that does not exist, a field it does not apply, Zipkin's protobuf
/// encoding.
#[test]
fn tracer_settings_it_cannot_apply_are_refused() {
    let http = Backend::start("v1");
    let good = traced_bootstrap(&http, ZIPKIN_TRACING, 9411);
    assert_eq!(validate(&good), (Some(0), String::new()));
    let path = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.tracing";
    for (from, to, want) in [
        (
            ", shared_span_context: false",
            "",
            format!("{path}.provider.typed_config.shared_span_context: shared span contexts are not supported"),
        ),
        (
            "collector_cluster: zipkin",
            "collector_cluster: nowhere",
            format!("{path}.provider.typed_config: the span collector's cluster `nowhere` is not defined"),
        ),
        (
            "random_sampling: {value: 100}",
            "random_sampling: {value: 100}, verbose: true",
            "field `verbose` of envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing is not supported by mesh-proxy".to_owned(),
        ),
        (
            "collector_endpoint_version: HTTP_JSON",
            "collector_endpoint_version: HTTP_PROTO",
            format!("{path}.provider.typed_config.collector_endpoint_version: only HTTP_JSON"),
        ),
    ] {
        let bad = good.replace(from, to);
        let (code, err) = validate(&bad);
        assert_eq!(code, Some(1), "{to}: {err}");
        assert!(err.contains(&want), "{want}\n{err}");
    }
}

/// A JSON access log to stdout with the fields Istio's JSON log has.
const JSON_ACCESS_LOG: &str = r#"access_log: [{name: envoy.access_loggers.stdout, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog, log_format: {json_format: {start_time: "%START_TIME%", method: "%REQ(:METHOD)%", path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", protocol: "%PROTOCOL%", response_code: "%RESPONSE_CODE%", response_flags: "%RESPONSE_FLAGS%", bytes_received: "%BYTES_RECEIVED%", bytes_sent: "%BYTES_SENT%", duration: "%DURATION%", upstream_host: "%UPSTREAM_HOST%", upstream_cluster: "%UPSTREAM_CLUSTER%", request_id: "%REQ(X-REQUEST-ID)%", authority: "%REQ(:AUTHORITY)%", user_agent: "%REQ(USER-AGENT)%", downstream: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", content_type: "%RESP(CONTENT-TYPE)%", line: "%REQ(:METHOD)% %PROTOCOL%"}}}}]"#;

/// The access log lines `start`'s proxy prints for a POST with a request
/// id and a GET without one, both routed to a backend, and a request no
/// route takes.
fn access_log_lines(start: fn(&str) -> Process) -> (Vec<serde_json::Value>, String) {
    let http = Backend::start("v1");
    let config = bootstrap(&route_to("v1"), &[("v1", &http)]).replace(
        "domains: [\"svcb\", \"svcb:80\", \"*\"]",
        "domains: [\"svcb\"]",
    );
    let mut proxy = start(&with_hcm(&config, JSON_ACCESS_LOG));
    let addr = proxy.listener("http");
    let url = format!("http://{addr}/pay?n=1");
    let post = [
        "-s",
        "-H",
        "host: svcb",
        "-H",
        "x-request-id: walk-1",
        "-A",
        "walker",
        "-d",
        "abc",
    ];
    assert_eq!(curl(&[&post[..], &[&url]].concat()), (0, "v1\n".into()));
    assert_eq!(
        curl(&["-s", "-H", "host: svcb", "-A", "", &url]),
        (0, "v1\n".into())
    );
    let (_, body) = curl(&["-s", "-H", "host: elsewhere", &url]);
    assert!(!body.contains("v1"), "{body}");
    let lines = (0..3)
        .map(|_| serde_json::from_str(&proxy.wait_line("{")).unwrap())
        .collect();
    (lines, http.addr.to_string())
}

/// mesh-proxy prints what Envoy prints for the same access log config:
/// field for field, typed alike (numbers, nulls), except what differs by
/// nature (times, durations, generated request ids).
#[test]
fn access_logs_print_what_envoy_prints() {
    let (ours, backend) = access_log_lines(mesh_proxy);
    let (envoys, _) = access_log_lines(envoy);
    for (i, (m, e)) in ours.iter().zip(&envoys).enumerate() {
        for key in [
            "method",
            "path",
            "protocol",
            "response_code",
            "response_flags",
            "bytes_received",
            "upstream_cluster",
            "authority",
            "user_agent",
            "downstream",
            "line",
        ] {
            assert_eq!(m[key], e[key], "line {i}, {key}: ours {m}\nEnvoy's {e}");
        }
        let stamp = m["start_time"].as_str().unwrap();
        assert!(stamp.len() == 24 && stamp.ends_with('Z'), "{stamp}");
        assert!(m["duration"].is_u64(), "{m}");
        assert_eq!(
            m["request_id"].as_str().map(str::len),
            e["request_id"].as_str().map(str::len),
            "{m}\n{e}"
        );
    }
    assert_eq!(ours[0]["request_id"], "walk-1");
    assert_eq!(ours[0]["bytes_received"], 3);
    assert_eq!(ours[0]["bytes_sent"], 3);
    assert_eq!(ours[0]["upstream_host"], backend.as_str());
    assert_eq!(ours[0]["path"], "/pay?n=1");
    assert_eq!(ours[2]["response_code"], 404);
    assert_eq!(ours[2]["response_flags"], "NR");
    assert_eq!(ours[2]["upstream_host"], serde_json::Value::Null);
}

/// Access log settings mesh-proxy cannot honour are refused by path.
#[test]
fn access_log_settings_it_cannot_apply_are_refused() {
    let http = Backend::start("v1");
    let good = with_hcm(
        &bootstrap(&route_to("v1"), &[("v1", &http)]),
        JSON_ACCESS_LOG,
    );
    assert_eq!(validate(&good), (Some(0), String::new()));
    let bad = good.replace("%DURATION%", "%UPSTREAM_TRANSPORT_FAILURE_REASON%");
    let (code, err) = validate(&bad);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("access_log[0].typed_config.log_format.json_format.duration: operator %UPSTREAM_TRANSPORT_FAILURE_REASON% is not supported yet"),
        "{err}"
    );
    let filtered = good.replace(
        "{name: envoy.access_loggers.stdout,",
        "{name: envoy.access_loggers.stdout, filter: {status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: k}}}},",
    );
    let (code, err) = validate(&filtered);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(
            "field `filter` of envoy.config.accesslog.v3.AccessLog is not supported by mesh-proxy"
        ),
        "{err}"
    );
}
