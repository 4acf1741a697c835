//! What translation reads, kept current: the rule store, the file registry,
//! the Kubernetes registry and the workloads of connected proxies
//! (self-registration). Changes
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
    /// What changed from the generation before (`generation - 1`).
    pub changed: Changed,
    /// Rule store revision the rules were read at.
    pub rules_revision: u64,
    /// Services and workloads (file registry, Kubernetes registry, then
    /// registered proxies).
    pub registry: Registry,
    /// The registry indexed for translation (built once, read by every
    /// proxy's).
    pub index: crate::translate::Index,
    /// The rules (shared with the generations before while the store did
    /// not move).
    pub rules: Arc<Vec<Rule>>,
    /// The workloads (namespace, address) with a connected sidecar; the
    /// registry's others take plaintext only.
    pub sidecars: std::collections::BTreeSet<(String, std::net::IpAddr)>,
    /// Mesh settings.
    pub mesh: MeshConfig,
    /// False during the warm-up after pilot starts, while proxies that were
    /// connected to a previous pilot come back and register their
    /// workloads: nothing is sent before, so no proxy is told a workload
    /// is gone just because it has not reconnected yet.
    pub warm: bool,
}

/// What changed between two generations, as far as translation reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Anything may have (rules, services, settings).
    #[default]
    Anything,
    /// Only the endpoints of these services (by place in the registry,
    /// which did not change): a proxy that reaches none of them holds
    /// what it should.
    Endpoints(Vec<usize>),
}

/// A change of an input.
#[derive(Debug)]
pub enum Update {
    /// The rule store moved on.
    Rules(Arc<store::Snapshot>),
    /// The file registry was reloaded.
    Registry(Registry),
    /// The Kubernetes registry moved on (services, pods, endpoint
    /// conditions).
    Kubernetes(Registry),
    /// A proxy connected with its workload (keyed by its connection).
    Register(u64, Workload),
    /// That proxy's stream ended; its workload goes after a grace period
    /// unless a new stream registers it again (a reconnect is no churn).
    Unregister(u64),
    /// The grace period of a registration ended.
    Expire(u64),
    /// The warm-up ended.
    Warm,
    /// The mesh's settings changed (its settings file).
    Mesh(MeshConfig),
}

/// Where updates go.
#[derive(Clone)]
pub struct Updates(mpsc::UnboundedSender<Update>);

/// How long a disconnected proxy's workload stays registered.
pub const REGISTRATION_GRACE: Duration = Duration::from_secs(3);

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
    kubernetes: Registry,
    rules: Arc<store::Snapshot>,
    /// Registered workloads by (namespace, address): the connection that
    /// registered it last, and the workload.
    registered: BTreeMap<(String, std::net::IpAddr), (u64, Workload)>,
    warm: bool,
    /// The rules of the store snapshot read last, expanded and indexed
    /// (most generations change endpoints, not rules).
    expanded: Option<Expanded>,
}

struct Expanded {
    from: Arc<store::Snapshot>,
    rules: Arc<Vec<Rule>>,
    index: Arc<crate::translate::RuleIndex>,
}

impl Inputs {
    /// Applies an update; returns whether the world changed.
    fn apply(&mut self, u: Update, updates: &Updates) -> bool {
        match u {
            Update::Rules(s) => self.rules = s,
            Update::Registry(r) => self.file = r,
            Update::Kubernetes(r) => {
                if r == self.kubernetes {
                    return false;
                }
                self.kubernetes = r;
            }
            Update::Register(id, w) => {
                let key = (w.namespace.clone(), w.address);
                let same = self.registered.get(&key).is_some_and(|(_, old)| *old == w);
                let shadowed = self.described(&key);
                self.registered.insert(key, (id, w));
                // A workload the file registry already describes changes nothing.
                return !same && !shadowed;
            }
            Update::Unregister(id) => {
                let updates = updates.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(REGISTRATION_GRACE).await;
                    updates.send(Update::Expire(id));
                });
                return false;
            }
            Update::Expire(id) => {
                let gone: Vec<_> = self
                    .registered
                    .iter()
                    .filter(|(_, (owner, _))| *owner == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &gone {
                    self.registered.remove(k);
                }
                return gone.iter().any(|k| !self.described(k));
            }
            Update::Warm => self.warm = true,
            Update::Mesh(m) => {
                if m == self.mesh {
                    return false;
                }
                self.mesh = m;
            }
        }
        true
    }

    /// Whether a registry describes the workload at this address.
    fn described(&self, (namespace, address): &(String, std::net::IpAddr)) -> bool {
        self.file
            .workloads
            .iter()
            .chain(&self.kubernetes.workloads)
            .any(|k| k.address == *address && k.namespace == *namespace)
    }

    /// The file registry, then what the Kubernetes registry adds (a
    /// service or workload both describe is the file's), then registered
    /// workloads no registry describes.
    fn registry(&self) -> Registry {
        use std::collections::HashSet;
        let mut registry = self.file.clone();
        let services: HashSet<(&str, &str)> = self
            .file
            .services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str()))
            .collect();
        let mut known: HashSet<(&str, std::net::IpAddr)> = self
            .file
            .workloads
            .iter()
            .map(|k| (k.namespace.as_str(), k.address))
            .collect();
        registry.services.extend(
            self.kubernetes
                .services
                .iter()
                .filter(|s| !services.contains(&(s.namespace.as_str(), s.name.as_str())))
                .cloned(),
        );
        for w in &self.kubernetes.workloads {
            if known.insert((w.namespace.as_str(), w.address)) {
                registry.workloads.push(w.clone());
            }
        }
        for (_, w) in self.registered.values() {
            if !known.contains(&(w.namespace.as_str(), w.address)) {
                registry.workloads.push(w.clone());
            }
        }
        registry
    }

    /// The world at `generation`, and what changed from `before` (the
    /// generation published last).
    fn world(&mut self, generation: u64, before: Option<&World>) -> World {
        let registry = self.registry();
        let expanded = match self.expanded.take() {
            Some(e) if Arc::ptr_eq(&e.from, &self.rules) => e,
            _ => {
                // Today's Istio kinds in terms of the 0.4 ones the translator reads.
                let rules = mesh_rules::convert::expand(
                    &self
                        .rules
                        .rules
                        .values()
                        .map(|s| s.rule.clone())
                        .collect::<Vec<_>>(),
                );
                Expanded {
                    from: self.rules.clone(),
                    index: Arc::new(crate::translate::RuleIndex::of(&rules)),
                    rules: Arc::new(rules),
                }
            }
        };
        let (rules, rule_index) = (expanded.rules.clone(), expanded.index.clone());
        self.expanded = Some(expanded);
        let index = crate::translate::Index::with_rules(
            &crate::translate::Inputs {
                registry: &registry,
                rules: &rules,
                mesh: &self.mesh,
            },
            rule_index,
        );
        let changed = match before {
            Some(b)
                if Arc::ptr_eq(&b.rules, &rules) && b.warm == self.warm && b.mesh == self.mesh =>
            {
                index
                    .endpoints_changed_since(&b.index)
                    .map_or(Changed::Anything, Changed::Endpoints)
            }
            _ => Changed::Anything,
        };
        World {
            generation,
            changed,
            rules_revision: self.rules.revision,
            registry,
            index,
            rules,
            sidecars: self
                .registered
                .values()
                .map(|(_, w)| (w.namespace.clone(), w.address))
                .collect(),
            mesh: self.mesh.clone(),
            warm: self.warm,
        }
    }
}

/// The registries pilot starts with: the file's (VMs and outside
/// services) and the cluster's first synced view.
#[derive(Debug, Default)]
pub struct Registries {
    /// From `--registry`.
    pub file: Registry,
    /// From `--kubernetes`, after its first sync.
    pub kubernetes: Registry,
}

/// Starts the task that folds updates into worlds; the world is warm
/// after `warmup`. Returns where to send updates and where new worlds
/// appear.
pub fn spawn(
    mesh: MeshConfig,
    Registries { file, kubernetes }: Registries,
    rules: Arc<store::Snapshot>,
    warmup: Duration,
) -> (Updates, watch::Receiver<Arc<World>>) {
    let mut inputs = Inputs {
        mesh,
        file,
        kubernetes,
        rules,
        registered: BTreeMap::new(),
        warm: warmup.is_zero(),
        expanded: None,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let updates = Updates(tx);
    let first = Arc::new(inputs.world(1, None));
    let (publish, worlds) = watch::channel(first.clone());
    if !warmup.is_zero() {
        let updates = updates.clone();
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            updates.send(Update::Warm);
        });
    }
    let own = updates.clone();
    tokio::spawn(async move {
        let mut generation = 1;
        let mut last = first;
        while let Some(first) = rx.recv().await {
            let mut changed = inputs.apply(first, &own);
            let deadline = tokio::time::Instant::now() + MAX_DELAY;
            loop {
                let quiet = (tokio::time::Instant::now() + QUIET).min(deadline);
                match tokio::time::timeout_at(quiet, rx.recv()).await {
                    Ok(Some(u)) => changed |= inputs.apply(u, &own),
                    Ok(None) | Err(_) => break,
                }
            }
            if changed {
                generation += 1;
                last = Arc::new(inputs.world(generation, Some(&last)));
                publish.send_replace(last.clone());
            }
        }
    });
    (updates, worlds)
}
