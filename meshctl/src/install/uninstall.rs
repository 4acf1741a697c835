//! `meshctl uninstall`: removes what the bundles made, as `kubectl delete
//! -f` of each would (the addons, Istio's groups, then mesh.yaml, each
//! file's objects last first), from the same render, so `--set`s given to
//! `install` find the same names. Objects already gone are skipped; it
//! returns once the mesh's namespace is gone.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kube::api::{Api, DeleteParams, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};

/// `meshctl uninstall [--set KEY=VALUE …]`.
#[derive(clap::Args)]
pub struct Args {
    /// The values given to `install` (the namespace, above all).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Deletes every object of every bundle from the cluster `client` reaches.
pub async fn run(args: &Args, client: kube::Client) -> anyhow::Result<ExitCode> {
    let files = super::render(&args.set)?;
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .context("cannot list the cluster's API resources")?;
    let mut order: Vec<&(&str, String)> = files.iter().collect();
    // mesh.yaml last: its namespace holds the others' objects.
    order.sort_by_key(|(path, _)| *path == "mesh.yaml");
    let (mut deleted, mut namespaces) = (0, vec![]);
    for (path, text) in order {
        let mut objects = vec![];
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc)
                .with_context(|| format!("{path}: not YAML"))?;
            if !value.is_null() {
                objects.push(serde_json::from_value::<DynamicObject>(value)?);
            }
        }
        for o in objects.iter().rev() {
            let types = o.types.as_ref().context("an object without a kind")?;
            let gvk = GroupVersionKind::try_from(types)?;
            // A kind the cluster does not serve (its CRD gone first): its
            // objects went with it.
            let Some((resource, caps)) = discovery.resolve_gvk(&gvk) else {
                continue;
            };
            let name = o.metadata.name.clone().unwrap_or_default();
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Cluster => Api::all_with(client.clone(), &resource),
                Scope::Namespaced => Api::namespaced_with(
                    client.clone(),
                    o.metadata.namespace.as_deref().unwrap_or("default"),
                    &resource,
                ),
            };
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    println!("deleted {}/{name}", resource.kind);
                    deleted += 1;
                    if resource.kind == "Namespace" {
                        namespaces.push(name);
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("delete {}/{name}", gvk.kind)),
            }
        }
    }
    let api = Api::<k8s_openapi::api::core::v1::Namespace>::all(client);
    for ns in namespaces {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while api.get_opt(&ns).await?.is_some() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "namespace {ns} is still terminating after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!("the mesh is uninstalled ({deleted} objects deleted)");
    Ok(ExitCode::SUCCESS)
}
