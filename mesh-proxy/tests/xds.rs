//! mesh-proxy as an ADS client of a scripted management server: it applies
//! what it is sent, ACKs it, and NACKs a resource it cannot apply (a field
//! it does not support) with the reason, serving on with the last good
//! configuration.

mod common;

use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{Backend, Process, curl, free_port};
use mesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use mesh_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use mesh_proto::google::protobuf::Any;
use mesh_proto::types::XdsType;

const CLUSTER_TYPE: &str = XdsType::Cluster.type_url();
const ENDPOINT_TYPE: &str = XdsType::Endpoint.type_url();
const LISTENER_TYPE: &str = XdsType::Listener.type_url();
const ROUTE_TYPE: &str = XdsType::Route.type_url();
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Hands the one Delta stream's two directions to the test.
struct Scripted {
    requests: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    responses: Mutex<Option<mpsc::Receiver<DeltaDiscoveryResponse>>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream = Stream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Stream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("Delta only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = incoming.message().await {
                let _ = requests.send(r);
            }
        });
        let rx = self.responses.lock().unwrap().take().expect("one stream");
        let out = ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            out, Ok,
        ))))
    }
}

fn resource<M: Message + prost::Name>(name: &str, m: &M) -> Resource {
    Resource {
        name: name.to_owned(),
        version: "1".into(),
        resource: Some(Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn listener_yaml(port: u16, extra: &str) -> String {
    format!(
        r#"name: web
address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
{extra}filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: web
      rds: {{route_config_name: web, config_source: {{ads: {{}}, resource_api_version: V3}}}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

#[test]
fn applies_acks_and_nacks_what_it_cannot_apply() {
    mesh_proto::descriptors::keep_loaded(mesh_proto::descriptors::Schema::Xds);
    let backend = Backend::start("v1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (req_tx, mut requests) = mpsc::unbounded_channel();
    let (resp_tx, resp_rx) = mpsc::channel(8);
    let server = AggregatedDiscoveryServiceServer::new(Scripted {
        requests: req_tx,
        responses: Mutex::new(Some(resp_rx)),
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let xds = listener.local_addr().unwrap();
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args(["sidecar", "--xds-address", &xds.to_string()])
        .args([
            "--admin-address",
            "127.0.0.1:0",
            "--metrics-address",
            "127.0.0.1:0",
        ])
        .args(["--health-address", "127.0.0.1:0", "--concurrency", "1"])
        .args(["--workload", "web-1", "--labels", "app=web"])
        .env(mesh_testbed::LOG_ENV.0, mesh_testbed::LOG_ENV.1)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut proxy = Process {
        child,
        lines: Default::default(),
        stdout: Some(stdout),
        config_path: None,
        _dir: None,
    };

    let next = |requests: &mut mpsc::UnboundedReceiver<DeltaDiscoveryRequest>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), requests.recv())
                .await
                .expect("the proxy answers")
                .expect("stream open")
        })
    };
    // The proxy subscribes to the four types (wildcard), telling who it is.
    let mut subscribed = vec![];
    for _ in 0..4 {
        let r = next(&mut requests);
        assert!(r.resource_names_subscribe.is_empty(), "wildcard: {r:?}");
        subscribed.push(r.type_url.clone());
        if let Some(node) = &r.node {
            let meta = mesh_proto::node::NodeMeta::from_node(node);
            assert_eq!(meta.workload, "web-1");
            assert_eq!(meta.labels["app"], "web");
        }
    }
    assert_eq!(
        subscribed,
        [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    );

    let port = free_port();
    let cluster: mesh_proto::envoy::config::cluster::v3::Cluster = mesh_proto::json::from_yaml(mesh_proto::descriptors::Schema::Xds,
        "name: web\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}, resource_api_version: V3}}\nconnect_timeout: 1s\n",
    )
    .unwrap();
    let endpoints: mesh_proto::envoy::config::endpoint::v3::ClusterLoadAssignment =
        mesh_proto::json::from_yaml(mesh_proto::descriptors::Schema::Xds, &format!(
            "cluster_name: web\nendpoints:\n- lb_endpoints:\n  - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n",
            backend.addr.port()
        ))
        .unwrap();
    let route: mesh_proto::envoy::config::route::v3::RouteConfiguration =
        mesh_proto::json::from_yaml(mesh_proto::descriptors::Schema::Xds,
            "name: web\nvirtual_hosts:\n- name: web\n  domains: ['*']\n  routes:\n  - match: {prefix: /}\n    route: {cluster: web}\n",
        )
        .unwrap();
    let good: mesh_proto::envoy::config::listener::v3::Listener = mesh_proto::json::from_yaml(
        mesh_proto::descriptors::Schema::Xds,
        &listener_yaml(port, ""),
    )
    .unwrap();
    let send = |type_url: &str, nonce: &str, resources: Vec<Resource>| {
        rt.block_on(resp_tx.send(DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            nonce: nonce.to_owned(),
            system_version_info: nonce.to_owned(),
            resources,
            ..Default::default()
        }))
        .unwrap();
    };
    send(CLUSTER_TYPE, "1", vec![resource("web", &cluster)]);
    send(ENDPOINT_TYPE, "2", vec![resource("web", &endpoints)]);
    send(LISTENER_TYPE, "3", vec![resource("web", &good)]);
    send(ROUTE_TYPE, "4", vec![resource("web", &route)]);
    for nonce in ["1", "2", "3", "4"] {
        let ack = next(&mut requests);
        assert_eq!(ack.response_nonce, nonce);
        assert!(ack.error_detail.is_none(), "{ack:?}");
    }
    proxy.wait_line("ready");
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(curl(&["-s", &url]), (0, "v1\n".to_owned()));

    // A listener with a field mesh-proxy does not apply: NACK naming it.
    let bad: mesh_proto::envoy::config::listener::v3::Listener = mesh_proto::json::from_yaml(
        mesh_proto::descriptors::Schema::Xds,
        &listener_yaml(port, "per_connection_buffer_limit_bytes: 1024\n"),
    )
    .unwrap();
    send(LISTENER_TYPE, "5", vec![resource("web", &bad)]);
    let nack = next(&mut requests);
    assert_eq!(nack.response_nonce, "5");
    let reason = nack.error_detail.expect("a NACK").message;
    assert!(
        reason.contains("LDS[web]") && reason.contains("per_connection_buffer_limit_bytes"),
        "{reason}"
    );
    let line = proxy.wait_line("config rejected");
    assert!(line.contains("per_connection_buffer_limit_bytes"), "{line}");
    // The last good configuration serves on.
    assert_eq!(curl(&["-s", &url]), (0, "v1\n".to_owned()));

    // A route to a cluster that is not there is not an error (Envoy
    // answers 503 too), but an endpoint with no address is: NACK.
    let broken: mesh_proto::envoy::config::endpoint::v3::ClusterLoadAssignment =
        mesh_proto::json::from_yaml(
            mesh_proto::descriptors::Schema::Xds,
            "cluster_name: web\nendpoints:\n- lb_endpoints:\n  - endpoint: {}\n",
        )
        .unwrap();
    send(ENDPOINT_TYPE, "6", vec![resource("web", &broken)]);
    let nack = next(&mut requests);
    assert_eq!(nack.response_nonce, "6");
    assert!(nack.error_detail.is_some(), "{nack:?}");
    assert_eq!(curl(&["-s", &url]), (0, "v1\n".to_owned()));
    assert_eq!(backend.count(), 3);
}
