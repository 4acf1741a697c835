//! An SDS server for a local Envoy (`mesh-proxy sds`), the part Istio's
//! agent plays: the workload's certificate (`default`) and the mesh's
//! roots (`ROOTCA`) over a Unix socket in the pod, pushed again at every
//! renewal or root change. The key stays in the pod: it goes only to the
//! Envoy beside it.

use std::pin::Pin;
use std::sync::Arc;

use mesh_proto::envoy::config::core::v3 as xcore;
use mesh_proto::envoy::extensions::transport_sockets::tls::v3 as xtls;
use mesh_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use mesh_proto::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use mesh_proto::google::protobuf::Any;
use prost::{Message, Name};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::Identity;
use crate::config::tls::{OWN_CERTIFICATE, ROOTS};

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Serves `identity`'s secrets.
pub struct Sds {
    identity: Arc<Identity>,
}

impl Sds {
    /// The tonic service.
    pub fn server(identity: Arc<Identity>) -> SecretDiscoveryServiceServer<Sds> {
        SecretDiscoveryServiceServer::new(Sds { identity })
    }
}

fn inline(pem: String) -> xcore::DataSource {
    xcore::DataSource {
        specifier: Some(xcore::data_source::Specifier::InlineBytes(pem.into_bytes())),
        ..Default::default()
    }
}

/// The secret named `name`, if it is one this proxy has.
fn secret(identity: &Identity, name: &str) -> Option<xtls::Secret> {
    let (chain, key, roots) = identity.secrets()?;
    let kind = match name {
        OWN_CERTIFICATE => xtls::secret::Type::TlsCertificate(xtls::TlsCertificate {
            certificate_chain: Some(inline(chain)),
            private_key: Some(inline(key)),
            ..Default::default()
        }),
        ROOTS => xtls::secret::Type::ValidationContext(xtls::CertificateValidationContext {
            trusted_ca: Some(inline(roots)),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(xtls::Secret {
        name: name.to_owned(),
        r#type: Some(kind),
    })
}

fn response(identity: &Identity, names: &[String], version: u64, nonce: u64) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.to_string(),
        resources: names
            .iter()
            .filter_map(|n| secret(identity, n))
            .map(|s| Any {
                type_url: xtls::Secret::type_url(),
                value: s.encode_to_vec(),
            })
            .collect(),
        type_url: xtls::Secret::type_url(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = Stream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = Stream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "SDS is served State of the World (StreamSecrets)",
        ))
    }

    /// Answers each new subscription, and every change after.
    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let mut requests = request.into_inner();
        let identity = self.identity.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut changes = identity.changes();
            let (mut names, mut nonce): (Vec<String>, u64) = (Vec::new(), 0);
            loop {
                let send = tokio::select! {
                    r = requests.next() => match r {
                        Some(Ok(r)) if r.resource_names != names => {
                            names = r.resource_names;
                            true
                        }
                        Some(Ok(_)) => false, // an ACK or NACK of what was sent
                        _ => return,
                    },
                    c = changes.changed() => c.is_ok(),
                };
                if send && !names.is_empty() {
                    nonce += 1;
                    let version = *changes.borrow_and_update();
                    let answer = response(&identity, &names, version, nonce);
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let names = request.into_inner().resource_names;
        let version = *self.identity.changes().borrow();
        Ok(Response::new(response(&self.identity, &names, version, 0)))
    }
}
