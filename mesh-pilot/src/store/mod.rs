//! Where rules live: a trait, [`LocalStore`] (the embedded default, a
//! folder `meshctl create` writes), and the cluster's custom resources
//! ([`kubernetes`], which pilot follows; kubectl and meshctl write them).
//!
//! Every change gets the next store revision (a counter shared by all rules,
//! never reused), and a batch of changes is applied all-or-nothing.

pub mod kubernetes;
mod local;

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_rules::{Rule, RuleKey};
use tokio::sync::watch;

pub use local::LocalStore;

/// A rule as stored, with the revision of its last change.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRule {
    /// The rule.
    pub rule: Rule,
    /// The store revision at which the rule was last created or replaced.
    pub revision: u64,
}

/// The whole store at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The revision of the last change (0 for an empty, never-written store).
    pub revision: u64,
    /// Every rule, ordered by kind, namespace and name.
    pub rules: BTreeMap<RuleKey, StoredRule>,
}

/// One requested change.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add a rule that must not exist yet.
    Create(Rule),
    /// Replace a rule that must exist. When the rule's
    /// `metadata.resourceVersion` is set, it must equal the stored revision
    /// (optimistic concurrency: the writer saw the latest version).
    Replace(Rule),
    /// Remove a rule that must exist.
    Delete(RuleKey),
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A rule was added.
    Created,
    /// A rule was replaced.
    Updated,
    /// A rule was removed.
    Deleted,
}

/// The outcome of one applied change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Which rule.
    pub key: RuleKey,
    /// What happened.
    pub operation: Operation,
    /// The store revision of this change.
    pub revision: u64,
}

/// Why a batch was refused. Nothing of a refused batch is written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create of a rule that exists.
    #[error("{0} already exists: use `replace` to change it")]
    AlreadyExists(RuleKey),
    /// Replace or delete of a rule that does not exist.
    #[error("{0} does not exist: use `create` to add it")]
    NotFound(RuleKey),
    /// Replace with a stale resourceVersion.
    #[error(
        "{key} was changed by someone else: you gave resourceVersion {given}, the store has {stored}; get it again and retry"
    )]
    Conflict {
        /// Which rule.
        key: RuleKey,
        /// The resourceVersion the writer gave.
        given: u64,
        /// The stored revision.
        stored: u64,
    },
    /// The same rule twice in one batch.
    #[error("{0} appears twice in one request")]
    Duplicate(RuleKey),
    /// The cluster has no CRD for the kind.
    #[error("the cluster serves no {0}: apply install/kubernetes/mesh.yaml (its CRDs) first")]
    NotServed(mesh_rules::Kind),
    /// The API server refused a change (its schema or an admission check).
    #[error("the cluster refused {key}: {reason}")]
    Refused {
        /// Which rule.
        key: RuleKey,
        /// The API server's message.
        reason: String,
    },
    /// The API server could not be reached, or failed.
    #[error("the Kubernetes API: {0}")]
    Unavailable(String),
    /// The store's data cannot be read.
    #[error("the rule store at {path} is unreadable: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file system refused.
    #[error("rule store I/O on {path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Changes of the store as they happen.
pub struct RuleWatch {
    receiver: watch::Receiver<Arc<Snapshot>>,
    // Keeps whatever feeds the receiver (e.g. a file watcher) alive.
    _feed: Box<dyn Send + Sync>,
}

impl RuleWatch {
    /// Wraps a receiver and the thing that feeds it.
    pub fn new(receiver: watch::Receiver<Arc<Snapshot>>, feed: Box<dyn Send + Sync>) -> Self {
        Self {
            receiver,
            _feed: feed,
        }
    }

    /// The latest snapshot seen.
    pub fn current(&self) -> Arc<Snapshot> {
        self.receiver.borrow().clone()
    }

    /// Waits for a snapshot newer than the last one returned. Intermediate
    /// revisions may be skipped: a watcher always gets the latest state.
    pub async fn changed(&mut self) -> Option<Arc<Snapshot>> {
        self.receiver.changed().await.ok()?;
        Some(self.receiver.borrow_and_update().clone())
    }
}

/// A home for rules.
#[async_trait::async_trait]
pub trait RuleStore: Send + Sync {
    /// The current rules.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// Applies a batch of changes atomically, in order, each with its own
    /// revision; any refused change refuses the whole batch.
    async fn apply(&self, changes: Vec<Change>) -> Result<Vec<Applied>, StoreError>;

    /// Follows the store: the receiver starts at the current snapshot.
    async fn watch(&self) -> Result<RuleWatch, StoreError>;
}

/// Applies `changes` to a copy of `snap`, returning the new snapshot and
/// what each change did; `snap` is untouched when any change is refused.
pub fn plan(snap: &Snapshot, changes: Vec<Change>) -> Result<(Snapshot, Vec<Applied>), StoreError> {
    let mut next = snap.clone();
    let mut applied = Vec::with_capacity(changes.len());
    let mut touched = std::collections::HashSet::new();
    for change in changes {
        let key = match &change {
            Change::Create(r) | Change::Replace(r) => r.key(),
            Change::Delete(k) => k.clone(),
        };
        if !touched.insert(key.clone()) {
            return Err(StoreError::Duplicate(key));
        }
        let revision = next.revision + 1;
        let operation = match change {
            Change::Create(mut rule) => {
                if next.rules.contains_key(&key) {
                    return Err(StoreError::AlreadyExists(key));
                }
                rule.metadata.resource_version = None;
                next.rules
                    .insert(key.clone(), StoredRule { rule, revision });
                Operation::Created
            }
            Change::Replace(mut rule) => {
                let stored = next
                    .rules
                    .get(&key)
                    .ok_or_else(|| StoreError::NotFound(key.clone()))?;
                if let Some(given) = rule.metadata.resource_version.as_deref() {
                    let given: u64 = given.parse().unwrap_or(u64::MAX);
                    if given != stored.revision {
                        return Err(StoreError::Conflict {
                            key,
                            given,
                            stored: stored.revision,
                        });
                    }
                }
                rule.metadata.resource_version = None;
                next.rules
                    .insert(key.clone(), StoredRule { rule, revision });
                Operation::Updated
            }
            Change::Delete(_) => {
                next.rules
                    .remove(&key)
                    .ok_or_else(|| StoreError::NotFound(key.clone()))?;
                Operation::Deleted
            }
        };
        next.revision = revision;
        applied.push(Applied {
            key,
            operation,
            revision,
        });
    }
    Ok((next, applied))
}
