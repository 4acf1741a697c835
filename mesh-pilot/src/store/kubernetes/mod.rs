//! Rules from the Kubernetes API: the custom resources of every rule kind
//! the cluster serves (the mesh's group from `mesh.yaml`; Istio's and
//! Gateway API's groups when their CRDs are installed), each kept by a
//! kube-rs reflector. Every change rebuilds the snapshot; each object is
//! checked as `meshctl validate` checks a file, and its verdict is written
//! back as its `Accepted` condition (a refused rule keeps no effect, and
//! its status says why, field by field).
//!
//! The kinds are found at start and again whenever a CRD of one of the
//! rule kinds' groups comes or goes (Istio's bundle applied after the
//! mesh's is read at once). Several pilots serve at once; the one holding the
//! leader Lease ([`lease`]) writes the verdicts, and only where the status
//! differs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use mesh_rules::rules::{Condition, Kind, RuleStatus};
use mesh_rules::{Rule, RuleKey};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

pub mod lease;
mod writer;

pub use writer::KubernetesStore;

use super::{RuleWatch, Snapshot, StoredRule};

/// Why the rules could not be followed.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesRulesError {
    /// No rule kind is served: the CRDs are not installed.
    #[error("the cluster serves no rule kind: apply install/kubernetes/mesh.yaml (the CRDs) first")]
    NoKinds,
    /// The watches ended before their first list.
    #[error("the rule watches ended before their first list")]
    NotStarted,
}

/// One served kind and the reflector of its objects (stopped when it
/// goes).
struct Served {
    kind: Kind,
    resource: ApiResource,
    store: Store<DynamicObject>,
    _reflector: AbortOnDrop,
}

/// Reflectors for `kinds`, keeping those of `old` still served.
fn follow(
    client: &Client,
    kinds: Vec<(Kind, ApiResource)>,
    mut old: Vec<Served>,
    changed: &Arc<Notify>,
) -> Vec<Served> {
    kinds
        .into_iter()
        .map(|(kind, resource)| {
            match old
                .iter()
                .position(|s| s.kind == kind && s.resource.api_version == resource.api_version)
            {
                Some(i) => old.swap_remove(i),
                None => {
                    info!(api_version = %resource.api_version, kind = kind.as_str(), "rules from the cluster");
                    let (store, reflector) = reflect(client.clone(), resource.clone(), changed);
                    Served {
                        kind,
                        store,
                        resource,
                        _reflector: reflector,
                    }
                }
            }
        })
        .collect()
}

/// The API groups rule kinds are served under.
fn rule_groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = Kind::ALL
        .iter()
        .flat_map(|k| k.api_versions())
        .map(|v| v.split_once('/').map_or("", |(g, _)| g))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Notifies `kinds_changed` whenever a CRD of a rule kind's group is
/// added, changed (established) or removed.
fn watch_definitions(client: Client, kinds_changed: Arc<Notify>) -> AbortOnDrop {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let groups = rule_groups();
    let api = Api::<CustomResourceDefinition>::all(client);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    AbortOnDrop(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let ours = |d: &CustomResourceDefinition| groups.contains(&d.spec.group.as_str());
            match event {
                Ok(Event::Apply(d) | Event::Delete(d)) if ours(&d) => kinds_changed.notify_one(),
                Ok(_) => {}
                Err(e) => warn!("CRD watch failed, retrying: {e}"),
            }
        }
    }))
}

/// Every rule kind the cluster serves, with its resource: one per group
/// (each group serves the same objects under all its versions; the first
/// version the kind lists is used), in the order [`Kind::api_versions`]
/// lists the groups.
pub async fn served_kinds(client: &Client) -> Vec<(Kind, ApiResource)> {
    let mut served = vec![];
    for kind in Kind::ALL {
        let mut groups_seen = vec![];
        for api_version in kind.api_versions() {
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            if groups_seen.contains(&group) {
                continue;
            }
            let gvk = GroupVersionKind::gvk(group, version, kind.as_str());
            match kube::discovery::pinned_kind(client, &gvk).await {
                Ok((resource, _)) => {
                    groups_seen.push(group);
                    served.push((kind, resource));
                }
                Err(e) => debug!(%api_version, kind = kind.as_str(), "not served: {e}"),
            }
        }
    }
    served
}

/// Follows the rules the cluster holds; the watch starts at the first
/// full list of every kind. Verdicts are written while `leader` says this
/// pilot leads (at once when it starts to).
pub async fn watch(
    client: Client,
    mut leader: watch::Receiver<bool>,
) -> Result<RuleWatch, KubernetesRulesError> {
    let changed = Arc::new(Notify::new());
    let kinds_changed = Arc::new(Notify::new());
    let definitions = watch_definitions(client.clone(), kinds_changed.clone());
    let mut served = follow(&client, served_kinds(&client).await, Vec::new(), &changed);
    if served.is_empty() {
        return Err(KubernetesRulesError::NoKinds);
    }
    for s in &served {
        s.store
            .wait_until_ready()
            .await
            .map_err(|_| KubernetesRulesError::NotStarted)?;
    }
    let mut revision = 1;
    let (first, _) = snapshot(&served, revision);
    let (publish, receiver) = watch::channel(Arc::new(first));
    let task = tokio::spawn(async move {
        let _definitions = definitions;
        loop {
            let (next, verdicts) = snapshot(&served, revision + 1);
            if next.rules != publish.borrow().rules {
                revision += 1;
                info!(
                    revision,
                    rules = next.rules.len(),
                    "rules changed in the cluster"
                );
                publish.send_replace(Arc::new(next));
            }
            if *leader.borrow_and_update() {
                write_statuses(&client, &served, verdicts).await;
            }
            tokio::select! {
                () = changed.notified() => {}
                // Leading now: write what the last leader may not have.
                Ok(()) = leader.changed() => {}
                () = kinds_changed.notified() => {
                    let kinds = served_kinds(&client).await;
                    served = follow(&client, kinds, std::mem::take(&mut served), &changed);
                    for s in &served {
                        // A new kind's first list, before the next snapshot.
                        let ready = s.store.wait_until_ready();
                        if tokio::time::timeout(Duration::from_secs(10), ready).await.is_err() {
                            warn!(kind = %s.resource.kind, "no first list of the new rule kind yet");
                        }
                    }
                }
            }
        }
    });
    Ok(RuleWatch::new(receiver, Box::new(AbortOnDrop(task))))
}

/// Stops the follower when the watch goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn reflect(
    client: Client,
    resource: ApiResource,
    changed: &Arc<Notify>,
) -> (Store<DynamicObject>, AbortOnDrop) {
    let api = Api::<DynamicObject>::all_with(client, &resource);
    let writer = reflector::store::Writer::new(resource.clone());
    let reader = writer.as_reader();
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut DynamicObject| o.metadata.managed_fields = None)
        .reflect(writer);
    let changed = changed.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => changed.notify_one(),
                Ok(Event::Init | Event::InitApply(_)) => {}
                Err(e) => warn!(kind = %resource.kind, "rule watch failed, retrying: {e}"),
            }
        }
    });
    (reader, AbortOnDrop(task))
}

/// What pilot says of one object: accepted, or refused and why.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    resource: usize,
    namespace: String,
    name: String,
    generation: Option<i64>,
    refused: Option<String>,
    current: Option<RuleStatus>,
}

/// The snapshot of every accepted rule, and a verdict per object.
fn snapshot(served: &[Served], revision: u64) -> (Snapshot, Vec<Verdict>) {
    let mut rules: BTreeMap<RuleKey, StoredRule> = BTreeMap::new();
    let mut verdicts = vec![];
    for (i, s) in served.iter().enumerate() {
        let mut objects = s.store.state();
        objects.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        for o in objects {
            let (rule, refused) = match rule_of(&s.resource, s.kind, &o) {
                Ok(rule) => match rules.get(&rule.key()) {
                    // The same kind, namespace and name in two groups: the
                    // first group the kind lists wins.
                    Some(other) => (
                        None,
                        Some(format!(
                            "{} is also defined under {}, which wins",
                            rule.key(),
                            other.rule.api_version
                        )),
                    ),
                    None => (Some(rule), None),
                },
                Err(why) => (None, Some(why)),
            };
            if let Some(rule) = rule {
                let revision = o
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                rules.insert(rule.key(), StoredRule { rule, revision });
            }
            verdicts.push(Verdict {
                resource: i,
                namespace: o.metadata.namespace.clone().unwrap_or_default(),
                name: o.metadata.name.clone().unwrap_or_default(),
                generation: o.metadata.generation,
                refused,
                current: o
                    .data
                    .get("status")
                    .and_then(|s| serde_json::from_value(s.clone()).ok()),
            });
        }
    }
    (Snapshot { revision, rules }, verdicts)
}

/// The rule an object holds, checked as a file's would be; else every
/// problem, one per line.
fn rule_of(resource: &ApiResource, kind: Kind, o: &DynamicObject) -> Result<Rule, String> {
    Rule::admit(rule_value(resource, kind, o)).map_err(|problems| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// An object as a rule document: what a user wrote (no status, no
/// server-set metadata but the resourceVersion).
fn rule_value(resource: &ApiResource, kind: Kind, o: &DynamicObject) -> Value {
    let mut object = serde_json::to_value(o).unwrap_or_default();
    object["apiVersion"] = resource.api_version.clone().into();
    object["kind"] = kind.as_str().into();
    Rule::document_of_object(&object, None)
}

/// The status a verdict asks for, keeping the transition time while the
/// verdict holds.
fn status_of(v: &Verdict) -> RuleStatus {
    let (status, reason, message) = match &v.refused {
        None => ("True", "Valid", String::new()),
        Some(why) => ("False", "Invalid", why.clone()),
    };
    let previous = v
        .current
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"));
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now_rfc3339()),
    };
    RuleStatus {
        observed_generation: v.generation,
        conditions: vec![Condition {
            type_: "Accepted".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: v.generation,
        }],
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Gateway API's status is per parent reference, in its own shape: not
/// written yet.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Writes each verdict that differs from the object's status.
async fn write_statuses(client: &Client, served: &[Served], verdicts: Vec<Verdict>) {
    for v in verdicts {
        let resource = &served[v.resource].resource;
        let want = status_of(&v);
        if v.current.as_ref() == Some(&want) || resource.group == GATEWAY_GROUP {
            if let Some(why) = v
                .refused
                .as_ref()
                .filter(|_| resource.group == GATEWAY_GROUP)
            {
                warn!(rule = %v.name, namespace = %v.namespace, "refused: {why}");
            }
            continue;
        }
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), &v.namespace, resource);
        let patch = Patch::Merge(json!({ "status": want }));
        match api
            .patch_status(&v.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => debug!(rule = %v.name, namespace = %v.namespace, "status written"),
            Err(e) => warn!(rule = %v.name, namespace = %v.namespace, "cannot write status: {e}"),
        }
    }
}
