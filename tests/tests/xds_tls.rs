//! pilot's xDS over mutual TLS (Istio's 15012), on loopback: the proxy
//! presents its workload's certificate and checks pilot's identity;
//! pilot lets a proxy speak only for its own namespace and service
//! account, refuses clients without a mesh certificate, and keeps no
//! plaintext port once it has a CA.

use std::sync::Arc;
use std::time::Duration;

use mesh_identity::Identity;
use mesh_identity::ca::CaSettings;
use mesh_proto::envoy::service::discovery::v3::DiscoveryRequest;
use mesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_proto::node::NodeMeta;
use mesh_rules::identity::Identity as Spiffe;
use mesh_testbed::mesh::{Mesh, Mtls, Sidecar};
use mesh_testbed::walk;
use tokio_stream::StreamExt;

const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// The first answer pilot gives a State-of-the-World stream opened with
/// `identity`'s certificate, announcing `node`, expecting pilot to be
/// `pilot_id`: the number of clusters, or the gRPC status.
async fn first_answer(
    identity: &Arc<Identity>,
    address: &str,
    pilot_id: &str,
    node: NodeMeta,
) -> Result<usize, tonic::Status> {
    let channel = mesh_identity::grpc::channel(identity.clone(), address, pilot_id.to_owned())
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let request = DiscoveryRequest {
        node: Some(node.to_node()),
        type_url: CLUSTERS.into(),
        ..Default::default()
    };
    let call = async {
        let mut answers = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(
                tokio_stream::iter([request]).chain(tokio_stream::pending()),
            )
            .await?
            .into_inner();
        match answers.message().await? {
            Some(a) => Ok(a.resources.len()),
            None => Err(tonic::Status::aborted("the stream ended with no answer")),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no answer in 20 s"))?
}

fn node(namespace: &str, account: &str) -> NodeMeta {
    NodeMeta {
        id: format!("sidecar~127.10.0.99~probe.{namespace}~{namespace}.svc.cluster.local"),
        namespace: namespace.into(),
        service_account: account.into(),
        ..Default::default()
    }
}

/// Every status's text, its sources included (a TLS refusal is a few
/// errors deep).
fn explain(status: &tonic::Status) -> String {
    let mut text = format!("{status}");
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

#[test]
fn xds_over_mutual_tls_authenticates_both_ends() {
    let mut mesh = Mesh::loopback().unwrap();
    mesh.mtls = Some(Mtls::Strict);
    mesh.write_registry(walk::REGISTRY).unwrap();
    mesh.start_pilot().unwrap();
    let pilot = mesh.xds_address();
    assert!(pilot.ends_with(":15012"), "{pilot}");
    // A mesh-proxy sidecar gets its configuration over TLS (it is ready
    // only once configured).
    let pod = mesh
        .pod("client", &[("app", "client")], Some(Sidecar::MeshProxy))
        .unwrap();
    let clusters = mesh.admin(&pod, "/clusters");
    assert!(
        clusters.contains("outbound|80||svca.default.svc.cluster.local"),
        "{clusters}"
    );
    // With a CA, pilot keeps no plaintext port.
    let plaintext = pilot.replace(":15012", ":15010");
    assert!(
        std::net::TcpStream::connect(&plaintext).is_err(),
        "{plaintext} answers in plaintext"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca_address = mesh.ca_address();
    let settings = |token| CaSettings {
        server_name: ca_address.rsplit_once(':').unwrap().0.to_owned(),
        address: ca_address.clone(),
        roots_file: mesh.roots_file(),
        token_file: token,
        validity: None,
    };
    let token = mesh.ca_token("probe", "default", "probe").unwrap();
    let probe = Arc::new(Identity::new(Spiffe::new(
        "cluster.local",
        "default",
        "probe",
    )));
    rt.block_on(mesh_identity::ca::renew(&probe, &settings(token)))
        .unwrap();
    let pilot_id = Spiffe::pilot("cluster.local").uri();

    // Its own workload: configuration.
    let clusters = rt
        .block_on(first_answer(
            &probe,
            &pilot,
            &pilot_id,
            node("default", "probe"),
        ))
        .unwrap_or_else(|s| panic!("{}", explain(&s)));
    assert!(clusters >= 2, "svca's and svcb's clusters, got {clusters}");

    // Another service account, another namespace: refused.
    for (ns, sa) in [("default", "svca"), ("prod", "probe")] {
        let refused = rt
            .block_on(first_answer(&probe, &pilot, &pilot_id, node(ns, sa)))
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
        assert!(
            refused
                .message()
                .contains("the certificate is spiffe://cluster.local/ns/default/sa/probe"),
            "{refused}"
        );
    }

    // pilot is not who the proxy expects: the proxy refuses it.
    let impostor = Spiffe::new("cluster.local", "mesh-system", "someone-else").uri();
    let refused = rt
        .block_on(first_answer(
            &probe,
            &pilot,
            &impostor,
            node("default", "probe"),
        ))
        .unwrap_err();
    let why = explain(&refused);
    assert!(
        why.contains("invalid peer certificate")
            && why.contains(&pilot_id)
            && why.contains(&impostor),
        "{why}"
    );

    // No certificate (the mesh's roots trusted, nothing presented).
    let anonymous = Arc::new(Identity::new(Spiffe::new(
        "cluster.local",
        "default",
        "anon",
    )));
    let roots = std::fs::read_to_string(mesh.roots_file()).unwrap();
    anonymous
        .trust(&mesh_identity::ca::pem_blocks(&roots))
        .unwrap();
    let refused = rt
        .block_on(first_answer(
            &anonymous,
            &pilot,
            &pilot_id,
            node("default", "anon"),
        ))
        .unwrap_err();
    assert_ne!(refused.code(), tonic::Code::PermissionDenied);
    // In TLS 1.3 the client's side of the handshake is done before the
    // server has read (and refused) its empty certificate, so the client
    // sees the server's alert, or the connection closed (or its pipe
    // broken) under its first request: a transport error, never an answer
    // from pilot.
    let why = explain(&refused).to_lowercase();
    assert!(
        why.contains("certificate") || why.contains("transport error"),
        "refused in the handshake (no certificate): {why}"
    );
}
