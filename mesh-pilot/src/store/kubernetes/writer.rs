//! The cluster's custom resources as a [`RuleStore`]: what `meshctl
//! create`, `replace`, `delete` and `get` use given a kubeconfig.
//!
//! The Kubernetes API has no multi-object transaction, so a batch is made
//! all-or-nothing in three steps: every change is checked against the
//! objects as they are (exists, missing, resourceVersion), then sent with
//! `dryRun=All` (the server's schema and admission), and only then
//! written; a write refused after that (a race with another writer) undoes
//! the batch's earlier writes before the error is returned.
//!
//! A rule goes under its own apiVersion's group when the cluster serves
//! it (an Istio 0.4 file stays under `config.istio.io` when
//! `istio-api.yaml` is installed), else under the mesh's group. A rule's
//! identity is its kind, namespace and name across groups, as pilot reads
//! them: create refuses a name taken in any group; delete removes it from
//! every group.

use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions};
use kube::{Api, Client};
use mesh_rules::{Kind, Rule, RuleKey};
use tracing::warn;

use super::{rule_value, served_kinds, watch};
use crate::store::{
    Applied, Change, Operation, RuleStore, RuleWatch, Snapshot, StoreError, StoredRule,
};

/// Rules kept as the cluster's custom resources.
pub struct KubernetesStore {
    client: Client,
    served: Vec<(Kind, ApiResource)>,
}

/// One write of a batch, with what undoes it.
enum Write {
    Create {
        resource: ApiResource,
        object: DynamicObject,
    },
    Replace {
        resource: ApiResource,
        object: DynamicObject,
        old: Box<DynamicObject>,
    },
    Delete {
        resource: ApiResource,
        old: DynamicObject,
    },
}

impl KubernetesStore {
    /// Connects: asks the server which rule kinds it serves.
    pub async fn connect(client: Client) -> Result<Self, StoreError> {
        client
            .apiserver_version()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let served = served_kinds(&client).await;
        Ok(Self { client, served })
    }

    fn api(&self, resource: &ApiResource, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, resource)
    }

    /// The kind's resources, in the order pilot ranks their groups.
    fn resources(&self, kind: Kind) -> impl Iterator<Item = &ApiResource> {
        self.served
            .iter()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, r)| r)
    }

    /// Where a new rule goes: its own group when served, else the first.
    fn target(&self, rule: &Rule) -> Result<&ApiResource, StoreError> {
        let group = rule.api_version.split_once('/').map_or("", |(g, _)| g);
        let mut all = self.resources(rule.kind()).peekable();
        let first = all.peek().copied();
        all.find(|r| r.group == group)
            .or(first)
            .ok_or(StoreError::NotServed(rule.kind()))
    }

    /// Every object holding the key, in every group that serves its kind.
    async fn find(&self, key: &RuleKey) -> Result<Vec<(ApiResource, DynamicObject)>, StoreError> {
        let mut found = vec![];
        for resource in self.resources(key.kind) {
            let object = self
                .api(resource, &key.namespace)
                .get_opt(&key.name)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            if let Some(o) = object {
                found.push((resource.clone(), o));
            }
        }
        Ok(found)
    }

    /// The writes a change needs, checked against the cluster's objects.
    async fn plan(&self, change: Change) -> Result<(RuleKey, Vec<Write>), StoreError> {
        let key = match &change {
            Change::Create(r) | Change::Replace(r) => r.key(),
            Change::Delete(k) => k.clone(),
        };
        if self.resources(key.kind).next().is_none() {
            return Err(StoreError::NotServed(key.kind));
        }
        let found = self.find(&key).await?;
        let writes = match change {
            Change::Create(rule) => {
                if !found.is_empty() {
                    return Err(StoreError::AlreadyExists(key));
                }
                let resource = self.target(&rule)?.clone();
                let object = to_object(&rule, &key, &resource, None)?;
                vec![Write::Create { resource, object }]
            }
            Change::Replace(rule) => {
                let group = rule.api_version.split_once('/').map_or("", |(g, _)| g);
                let Some((resource, old)) = found
                    .iter()
                    .find(|(r, _)| r.group == group)
                    .or(found.first())
                    .cloned()
                else {
                    return Err(StoreError::NotFound(key));
                };
                let stored = old.metadata.resource_version.clone().unwrap_or_default();
                let given = rule.metadata.resource_version.clone();
                if let Some(given) = &given
                    && *given != stored
                {
                    return Err(StoreError::Conflict {
                        key,
                        given: given.parse().unwrap_or(u64::MAX),
                        stored: revision_of(&old),
                    });
                }
                // The server checks the version again as it writes.
                let object = to_object(&rule, &key, &resource, Some(given.unwrap_or(stored)))?;
                vec![Write::Replace {
                    resource,
                    object,
                    old: Box::new(old),
                }]
            }
            Change::Delete(_) => {
                if found.is_empty() {
                    return Err(StoreError::NotFound(key));
                }
                found
                    .into_iter()
                    .map(|(resource, old)| Write::Delete { resource, old })
                    .collect()
            }
        };
        Ok((key, writes))
    }

    /// Sends one write (or only checks it, with `dry_run`); the new
    /// object's revision.
    async fn send(&self, key: &RuleKey, write: &Write, dry_run: bool) -> Result<u64, StoreError> {
        let post = PostParams {
            dry_run,
            ..Default::default()
        };
        let refused = |e: kube::Error| api_error(key, e);
        match write {
            Write::Create { resource, object } => self
                .api(resource, &key.namespace)
                .create(&post, object)
                .await
                .map(|o| revision_of(&o))
                .map_err(refused),
            Write::Replace {
                resource, object, ..
            } => self
                .api(resource, &key.namespace)
                .replace(&key.name, &post, object)
                .await
                .map(|o| revision_of(&o))
                .map_err(refused),
            Write::Delete { resource, old } => {
                let params = DeleteParams {
                    dry_run,
                    preconditions: Some(Preconditions {
                        resource_version: old.metadata.resource_version.clone(),
                        uid: old.metadata.uid.clone(),
                    }),
                    ..Default::default()
                };
                self.api(resource, &key.namespace)
                    .delete(&key.name, &params)
                    .await
                    .map(|r| r.left().map_or(revision_of(old), |o| revision_of(&o)))
                    .map_err(refused)
            }
        }
    }

    /// Puts back what a done write changed (best effort: it is logged when
    /// even that fails).
    async fn undo(&self, key: &RuleKey, write: &Write) {
        let api = |r: &ApiResource| self.api(r, &key.namespace);
        let result = match write {
            Write::Create { resource, .. } => api(resource)
                .delete(&key.name, &DeleteParams::default())
                .await
                .map(drop),
            Write::Replace { resource, old, .. } => {
                let mut old = (**old).clone();
                match api(resource).get(&key.name).await {
                    Ok(now) => {
                        old.metadata.resource_version = now.metadata.resource_version;
                        api(resource)
                            .replace(&key.name, &PostParams::default(), &old)
                            .await
                            .map(drop)
                    }
                    Err(e) => Err(e),
                }
            }
            Write::Delete { resource, old } => {
                let mut old = old.clone();
                old.metadata.resource_version = None;
                old.metadata.uid = None;
                old.metadata.creation_timestamp = None;
                old.metadata.managed_fields = None;
                api(resource)
                    .create(&PostParams::default(), &old)
                    .await
                    .map(drop)
            }
        };
        if let Err(e) = result {
            warn!(%key, "could not undo a write of a refused batch: {e}");
        }
    }
}

#[async_trait::async_trait]
impl RuleStore for KubernetesStore {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        for (kind, resource) in &self.served {
            let list = Api::<DynamicObject>::all_with(self.client.clone(), resource)
                .list(&ListParams::default())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let list_revision = list
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            snap.revision = snap.revision.max(list_revision);
            for o in &list.items {
                match Rule::from_value(rule_value(resource, *kind, o)) {
                    // The first group holding a key wins, as in pilot.
                    Ok(rule) => {
                        let revision = revision_of(o);
                        snap.rules
                            .entry(rule.key())
                            .or_insert(StoredRule { rule, revision });
                    }
                    Err(problems) => warn!(
                        kind = kind.as_str(),
                        name = ?o.metadata.name,
                        "not a valid rule: {}",
                        problems.first().map(ToString::to_string).unwrap_or_default()
                    ),
                }
            }
        }
        Ok(snap)
    }

    async fn apply(&self, changes: Vec<Change>) -> Result<Vec<Applied>, StoreError> {
        let mut planned = vec![];
        let mut keys = std::collections::HashSet::new();
        for change in changes {
            let (key, writes) = self.plan(change).await?;
            if !keys.insert(key.clone()) {
                return Err(StoreError::Duplicate(key));
            }
            planned.push((key, writes));
        }
        for (key, writes) in &planned {
            for w in writes {
                self.send(key, w, true).await?;
            }
        }
        let mut done: Vec<(&RuleKey, &Write)> = vec![];
        let mut applied = vec![];
        for (key, writes) in &planned {
            let mut revision = 0;
            for w in writes {
                match self.send(key, w, false).await {
                    Ok(r) => {
                        revision = revision.max(r);
                        done.push((key, w));
                    }
                    Err(e) => {
                        for (key, w) in done.iter().rev() {
                            self.undo(key, w).await;
                        }
                        return Err(e);
                    }
                }
            }
            let operation = match writes.first() {
                Some(Write::Create { .. }) => Operation::Created,
                Some(Write::Replace { .. }) => Operation::Updated,
                Some(Write::Delete { .. }) | None => Operation::Deleted,
            };
            applied.push(Applied {
                key: key.clone(),
                operation,
                revision,
            });
        }
        Ok(applied)
    }

    async fn watch(&self) -> Result<RuleWatch, StoreError> {
        // A reader, not a pilot: it never writes status.
        let (_, never_leads) = tokio::sync::watch::channel(false);
        watch(self.client.clone(), never_leads)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

/// The object a rule becomes under `resource`.
fn to_object(
    rule: &Rule,
    key: &RuleKey,
    resource: &ApiResource,
    resource_version: Option<String>,
) -> Result<DynamicObject, StoreError> {
    let mut v = rule.to_value();
    v["apiVersion"] = resource.api_version.clone().into();
    v["metadata"]["namespace"] = key.namespace.clone().into();
    match resource_version {
        Some(rv) => v["metadata"]["resourceVersion"] = rv.into(),
        None => {
            if let Some(m) = v["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
        }
    }
    serde_json::from_value(v).map_err(|e| StoreError::Refused {
        key: key.clone(),
        reason: e.to_string(),
    })
}

/// An object's resourceVersion as a revision (etcd's are numbers).
fn revision_of(o: &DynamicObject) -> u64 {
    o.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The store's error for the API server's answer: the local store's words
/// where the meaning is the same.
fn api_error(key: &RuleKey, e: kube::Error) -> StoreError {
    match e {
        kube::Error::Api(status) => match status.code {
            404 => StoreError::NotFound(key.clone()),
            409 if status.reason == "AlreadyExists" => StoreError::AlreadyExists(key.clone()),
            409 => StoreError::Refused {
                key: key.clone(),
                reason: format!(
                    "{}: it was changed by someone else; get it again and retry",
                    status.message
                ),
            },
            _ => StoreError::Refused {
                key: key.clone(),
                reason: status.message,
            },
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}
