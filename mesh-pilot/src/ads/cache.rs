//! What pilot sends, kept once: each type's resources by name with their
//! versions, an outbound part shared by every proxy of the same
//! [`OutboundKey`] (translated once per key and generation), and the
//! difference between two generations of a shared part, computed once for
//! every Delta stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use mesh_proto::google::protobuf::Any;
use mesh_proto::types::XdsType;
use prost::{Message, Name};

use crate::translate::{
    Inputs, OutboundKey, ProxyNode, outbound_key, translate_inbound, translate_outbound,
};
use crate::world::World;

/// One type's resources for one proxy: name → (version, resource).
pub(super) type Typed = BTreeMap<String, (String, Any)>;

/// A resource's version: XXH3-64 of its encoding. XXH3 is specified, so
/// the same bytes give the same version in every pilot process, whatever
/// toolchain built it (std's `DefaultHasher` promises neither), and a
/// restarted or upgraded pilot recognises what proxies hold.
fn version_of(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

fn typed<M: Message + Name>(items: &[M], name: impl Fn(&M) -> &str) -> Typed {
    items
        .iter()
        .map(|m| {
            let value = m.encode_to_vec();
            (
                name(m).to_owned(),
                (
                    version_of(&value),
                    Any {
                        type_url: M::type_url(),
                        value,
                    },
                ),
            )
        })
        .collect()
}

/// One type's resources for one proxy: the outbound part it shares with
/// every proxy of the same [`OutboundKey`], and its own inbound part.
/// Cloning is two reference counts; nothing is copied per proxy.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    pub(super) shared: Arc<Typed>,
    pub(super) own: Arc<Typed>,
}

impl Layers {
    pub(super) fn get(&self, name: &str) -> Option<&(String, Any)> {
        self.own.get(name).or_else(|| self.shared.get(name))
    }

    pub(super) fn get_key_value(&self, name: &str) -> Option<(&String, &(String, Any))> {
        self.own
            .get_key_value(name)
            .or_else(|| self.shared.get_key_value(name))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &(String, Any))> {
        self.shared.iter().chain(self.own.iter())
    }

    pub(super) fn len(&self) -> usize {
        self.shared.len() + self.own.len()
    }

    pub(super) fn same(&self, other: &Layers) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared) && Arc::ptr_eq(&self.own, &other.own)
    }
}

pub(super) fn by_type(r: crate::translate::Resources) -> HashMap<XdsType, Arc<Typed>> {
    HashMap::from([
        (
            XdsType::Listener,
            Arc::new(typed(&r.listeners, |l| &l.name)),
        ),
        (XdsType::Route, Arc::new(typed(&r.routes, |r| &r.name))),
        (XdsType::Cluster, Arc::new(typed(&r.clusters, |c| &c.name))),
        (
            XdsType::Endpoint,
            Arc::new(typed(&r.endpoints, |e| &e.cluster_name)),
        ),
    ])
}

type SharedOutbound = Arc<HashMap<XdsType, Arc<Typed>>>;

/// Outbound translations of the current generation, by key, and the
/// differences between successive shared maps (the same for every proxy
/// that holds one and is moving to the other).
#[derive(Default)]
pub struct OutboundCache {
    translations: PerGeneration<OutboundKey, SharedOutbound>,
    diffs: Mutex<Vec<DiffEntry>>,
}

/// Locks `m`; a panic elsewhere while it was held (which poisons it) does
/// not stop every other stream. Callers keep what they guard consistent
/// at every step that can fail.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Values built once per key and generation and shared by every stream
/// that asks. The map's lock is held only to find the key's cell; the
/// building happens outside it, so the streams of one generation wait for
/// the first of them rather than all building, and a build that fails
/// (panics) leaves the cell empty for the next caller and no lock poisoned.
struct PerGeneration<K, V> {
    cells: Mutex<HashMap<K, (u64, Cell<V>)>>,
}

/// A value some stream builds and every other waits for.
type Cell<V> = Arc<std::sync::OnceLock<V>>;

impl<K, V> Default for PerGeneration<K, V> {
    fn default() -> Self {
        PerGeneration {
            cells: Mutex::default(),
        }
    }
}

impl<K: Eq + std::hash::Hash, V: Clone> PerGeneration<K, V> {
    fn get_or_build(&self, key: K, generation: u64, build: impl FnOnce() -> V) -> V {
        let cell = {
            let mut cells = lock(&self.cells);
            match cells.get(&key) {
                Some((g, cell)) if *g == generation => cell.clone(),
                _ => {
                    cells.retain(|_, (g, _)| *g == generation);
                    let cell = Arc::new(std::sync::OnceLock::new());
                    cells.insert(key, (generation, cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_init(build).clone()
    }
}

type DiffEntry = (std::sync::Weak<Typed>, std::sync::Weak<Typed>, Arc<Diff>);

/// What changed between two maps of one type, by name.
#[derive(Debug, Default)]
pub(super) struct Diff {
    pub(super) changed: Vec<String>,
    pub(super) removed: Vec<String>,
}

/// Walks two name-ordered maps side by side.
fn diff(old: &Typed, new: &Typed) -> Diff {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let mut d = Diff::default();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let step = match (a.peek(), b.peek()) {
            (None, None) => return d,
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (Some((na, _)), Some((nb, _))) => na.cmp(nb),
        };
        match step {
            Less => d.removed.push(a.next().expect("peeked").0.clone()),
            Greater => d.changed.push(b.next().expect("peeked").0.clone()),
            Equal => {
                let ((_, (va, _)), (nb, (vb, _))) =
                    (a.next().expect("peeked"), b.next().expect("peeked"));
                if va != vb {
                    d.changed.push(nb.clone());
                }
            }
        }
    }
}

impl OutboundCache {
    /// The difference from `old` to `new`, computed once for all proxies.
    pub(super) fn diff(&self, old: &Arc<Typed>, new: &Arc<Typed>) -> Arc<Diff> {
        let mut diffs = lock(&self.diffs);
        let hit = diffs.iter().find(|(o, n, _)| {
            o.upgrade().is_some_and(|o| Arc::ptr_eq(&o, old))
                && n.upgrade().is_some_and(|n| Arc::ptr_eq(&n, new))
        });
        if let Some((_, _, d)) = hit {
            return d.clone();
        }
        let d = Arc::new(diff(old, new));
        diffs.retain(|(o, n, _)| o.strong_count() > 0 && n.strong_count() > 0);
        diffs.push((Arc::downgrade(old), Arc::downgrade(new), d.clone()));
        d
    }

    /// The resources of one proxy, by type URL: the shared outbound part
    /// (translated once per key and generation) and its inbound part.
    pub fn resources_for(&self, world: &World, node: &ProxyNode) -> HashMap<XdsType, Layers> {
        let inputs = Inputs {
            registry: &world.registry,
            rules: &world.rules,
            mesh: &world.mesh,
        };
        let key = outbound_key(&inputs, &world.index, node);
        let shared = self.translations.get_or_build(key, world.generation, || {
            Arc::new(by_type(translate_outbound(&inputs, &world.index, node)))
        });
        let own = by_type(translate_inbound(&inputs, &world.index, node));
        XdsType::PUSH_ORDER
            .into_iter()
            .map(|t| {
                (
                    t,
                    Layers {
                        shared: shared.get(&t).cloned().unwrap_or_default(),
                        own: own.get(&t).cloned().unwrap_or_default(),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    /// Versions must not depend on the build: XXH3-64 of "abc" is fixed by
    /// its specification (the reference implementation's test vector).
    /// One stream whose translation fails (panics) must not stop the
    /// others: no lock stays poisoned, and the next caller builds again.
    #[test]
    fn a_failed_build_does_not_poison_the_shared_cache() {
        let cache = std::sync::Arc::new(super::PerGeneration::<&str, u32>::default());
        let c = cache.clone();
        let failed =
            std::thread::spawn(move || c.get_or_build("k", 1, || panic!("translation failed")))
                .join();
        assert!(failed.is_err(), "the failing stream's task panics");
        assert_eq!(
            cache.get_or_build("k", 1, || 7),
            7,
            "the next stream builds"
        );
        assert_eq!(
            cache.get_or_build("k", 1, || 8),
            7,
            "built once per generation"
        );
        assert_eq!(
            cache.get_or_build("k", 2, || 9),
            9,
            "a new generation builds anew"
        );
        // A panic while holding a status lock is recovered the same way.
        let m = std::sync::Arc::new(std::sync::Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("a stream fails while it holds the lock");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*super::lock(&m), 1);
    }

    #[test]
    fn resource_versions_are_the_specified_hash() {
        assert_eq!(super::version_of(b"abc"), "78af5f94892f3950");
        assert_eq!(super::version_of(b""), "2d06800538d394c2");
    }
}
