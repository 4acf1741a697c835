//! Reaching pilot's debug endpoint and a sidecar's admin endpoint in a
//! cluster: through the API server's port-forward (as `kubectl
//! port-forward` does), behind a local address the inspection commands
//! use as they use any other.

use std::net::SocketAddr;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// pilot's debug port.
pub const PILOT_DEBUG_PORT: u16 = 15014;
/// A sidecar's admin port (loopback in its pod).
pub const ADMIN_PORT: u16 = 15000;

/// A local address whose connections reach `port` of pod `name` in
/// `namespace`, each through a port-forward of its own; served while the
/// process runs.
pub async fn forward(
    client: kube::Client,
    namespace: &str,
    name: &str,
    port: u16,
) -> anyhow::Result<SocketAddr> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    pods.get(name)
        .await
        .with_context(|| format!("no pod {name} in namespace {namespace}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let name = name.to_owned();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (pods, name) = (pods.clone(), name.clone());
            tokio::spawn(async move {
                let mut pf = match pods.portforward(&name, &[port]).await {
                    Ok(pf) => pf,
                    Err(e) => return eprintln!("meshctl: port-forward to {name}:{port}: {e}"),
                };
                if let Some(mut upstream) = pf.take_stream(port) {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                }
                pf.abort();
            });
        }
    });
    Ok(local)
}

/// The name of a ready pilot pod (label `app=mesh-pilot`) in `namespace`.
pub async fn pilot_pod(client: kube::Client, namespace: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let list = pods
        .list(&ListParams::default().labels("app=mesh-pilot"))
        .await
        .context("cannot list pilot's pods")?;
    let ready = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    list.items
        .iter()
        .find(|p| ready(p))
        .and_then(|p| p.metadata.name.clone())
        .ok_or_else(|| {
            anyhow::anyhow!("no ready pilot pod (app=mesh-pilot) in namespace {namespace}")
        })
}

/// `pod` or `pod.namespace`, as istioctl names a proxy.
pub fn pod_and_namespace(target: &str) -> (&str, &str) {
    target.split_once('.').unwrap_or((target, "default"))
}
