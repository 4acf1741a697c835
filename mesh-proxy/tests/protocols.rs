//! HTTP/2 on both sides, gRPC end to end (status in trailers), and
//! WebSocket upgrades, with real clients: curl, h2load, tonic, tungstenite.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{Backend, bootstrap, curl, mesh_proxy, route_to};
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

/// A bootstrap routing everything to `cluster` at `addr`.
fn single(cluster: &str, addr: SocketAddr) -> String {
    let backend_cfg = format!(
        "  - name: {cluster}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {cluster}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{address: 127.0.0.1, port_value: {}}}\n",
        addr.port()
    );
    bootstrap(&route_to(cluster), &[])
        .replace("  clusters:\n", &format!("  clusters:\n{backend_cfg}"))
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
    let proxy = mesh_proxy(&http2_cluster(&single("grpc", grpc_addr), "grpc"));
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

#[test]
fn websocket_upgrade_is_tunnelled() {
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
    let proxy = mesh_proxy(&single("ws", ws_addr));
    let url = format!("ws://{}/chat", proxy.listener("http"));
    rt.block_on(async {
        let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..3 {
            ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
                "hello {i}"
            )))
            .await
            .unwrap();
            let got = ws.next().await.unwrap().unwrap();
            assert_eq!(got.to_text().unwrap(), format!("echo: hello {i}"));
        }
        ws.close(None).await.unwrap();
    });
}
