//! What translation reads, kept current: the rule store, the file registry
//! and the workloads of connected proxies (self-registration). Changes
//! arriving close together are folded into one new generation (debounce),
//! so a `meshctl create` of five rules is one push, not five.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mesh_rules::Rule;
use mesh_rules::registry::{Registry, Workload};
use tokio::sync::{mpsc, watch};

use crate::store;
use crate::translate::MeshConfig;

/// Everything translation reads, at one generation.
#[derive(Debug, Default)]
pub struct World {
    /// Counts publications; every proxy stream recomputes on a new one.
    pub generation: u64,
    /// Rule store revision the rules were read at.
    pub rules_revision: u64,
    /// Services and workloads (file registry plus registered proxies).
    pub registry: Registry,
    /// The rules.
    pub rules: Vec<Rule>,
    /// Mesh settings.
    pub mesh: MeshConfig,
}

/// A change of an input.
#[derive(Debug)]
pub enum Update {
    /// The rule store moved on.
    Rules(Arc<store::Snapshot>),
    /// The file registry was reloaded.
    Registry(Registry),
    /// A proxy connected with its workload (keyed by its connection).
    Register(u64, Workload),
    /// That proxy's stream ended.
    Unregister(u64),
}

/// Where updates go.
#[derive(Clone)]
pub struct Updates(mpsc::UnboundedSender<Update>);

impl Updates {
    /// Sends an update (ignored once pilot shuts down).
    pub fn send(&self, u: Update) {
        let _ = self.0.send(u);
    }
}

/// Quiet time that ends a burst of changes.
const QUIET: Duration = Duration::from_millis(30);
/// Longest a burst may delay a push.
const MAX_DELAY: Duration = Duration::from_millis(200);

struct Inputs {
    mesh: MeshConfig,
    file: Registry,
    rules: Arc<store::Snapshot>,
    registered: BTreeMap<u64, Workload>,
}

impl Inputs {
    fn apply(&mut self, u: Update) {
        match u {
            Update::Rules(s) => self.rules = s,
            Update::Registry(r) => self.file = r,
            Update::Register(id, w) => {
                self.registered.insert(id, w);
            }
            Update::Unregister(id) => {
                self.registered.remove(&id);
            }
        }
    }

    fn world(&self, generation: u64) -> World {
        let mut registry = self.file.clone();
        for w in self.registered.values() {
            // The file registry's description of the same instance wins.
            let known = registry
                .workloads
                .iter()
                .any(|k| k.address == w.address && k.namespace == w.namespace);
            if !known {
                registry.workloads.push(w.clone());
            }
        }
        World {
            generation,
            rules_revision: self.rules.revision,
            registry,
            rules: self.rules.rules.values().map(|s| s.rule.clone()).collect(),
            mesh: self.mesh.clone(),
        }
    }
}

/// Starts the task that folds updates into worlds. Returns where to send
/// updates and where new worlds appear.
pub fn spawn(
    mesh: MeshConfig,
    file: Registry,
    rules: Arc<store::Snapshot>,
) -> (Updates, watch::Receiver<Arc<World>>) {
    let mut inputs = Inputs {
        mesh,
        file,
        rules,
        registered: BTreeMap::new(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (publish, worlds) = watch::channel(Arc::new(inputs.world(1)));
    tokio::spawn(async move {
        let mut generation = 1;
        while let Some(first) = rx.recv().await {
            inputs.apply(first);
            let deadline = tokio::time::Instant::now() + MAX_DELAY;
            loop {
                let quiet = (tokio::time::Instant::now() + QUIET).min(deadline);
                match tokio::time::timeout_at(quiet, rx.recv()).await {
                    Ok(Some(u)) => inputs.apply(u),
                    Ok(None) | Err(_) => break,
                }
            }
            generation += 1;
            publish.send_replace(Arc::new(inputs.world(generation)));
        }
    });
    (Updates(tx), worlds)
}
