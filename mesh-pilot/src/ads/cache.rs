//! What pilot sends, kept once: each type's resources by name with their
//! versions, an outbound part shared by every proxy of the same
//! [`OutboundKey`] (translated once per key, and again only when its
//! digest changes), and the difference between two generations of a
//! shared part, computed once for every Delta stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_proto::google::protobuf::Any;
use mesh_proto::types::XdsType;
use prost::Message;

use crate::translate::{
    Inputs, OutboundKey, ProxyNode, inbound_digest, outbound_digest, outbound_key,
    own_service_places, reachable_services, translate_inbound, translate_outbound,
};
use crate::world::World;

/// A resource as pilot keeps it: its version and its encoding (the type
/// URL is the type's, added when it is sent: one string less per resource
/// kept).
pub(super) type Stored = (String, Vec<u8>);

/// The `Any` a stored resource of `kind` is sent as.
pub(super) fn any(kind: XdsType, (_, value): &Stored) -> Any {
    Any {
        type_url: kind.type_url().to_owned(),
        value: value.clone(),
    }
}

/// One type's resources for one proxy: name → (version, resource), in
/// name order. A sorted slice, not a `BTreeMap`: every proxy keeps a few
/// of these for its inbound part, mostly of one or two resources, where a
/// B-tree leaf alone takes a kilobyte (17 MB at 2000 proxies).
#[derive(Debug, Default)]
pub(super) struct Typed(Box<[(String, Stored)]>);

impl Typed {
    fn find(&self, name: &str) -> Option<&(String, Stored)> {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i])
    }

    pub(super) fn get(&self, name: &str) -> Option<&Stored> {
        self.find(name).map(|(_, r)| r)
    }

    pub(super) fn get_key_value(&self, name: &str) -> Option<(&String, &Stored)> {
        self.find(name).map(|(n, r)| (n, r))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &Stored)> {
        self.0.iter().map(|(n, r)| (n, r))
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<(String, Stored)> for Typed {
    /// Sorted by name; of two resources with one name the last stays.
    fn from_iter<I: IntoIterator<Item = (String, Stored)>>(items: I) -> Self {
        let mut v: Vec<_> = items.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.reverse();
        v.dedup_by(|later, earlier| later.0 == earlier.0);
        v.reverse();
        Typed(v.into_boxed_slice())
    }
}

/// A resource's version: XXH3-64 of its encoding. XXH3 is specified, so
/// the same bytes give the same version in every pilot process, whatever
/// toolchain built it (std's `DefaultHasher` promises neither), and a
/// restarted or upgraded pilot recognises what proxies hold.
fn version_of(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

fn typed<M: Message>(items: &[M], name: impl Fn(&M) -> &str) -> Typed {
    items
        .iter()
        .map(|m| {
            let value = m.encode_to_vec();
            (name(m).to_owned(), (version_of(&value), value))
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
    pub(super) fn get(&self, name: &str) -> Option<&Stored> {
        self.own.get(name).or_else(|| self.shared.get(name))
    }

    pub(super) fn get_key_value(&self, name: &str) -> Option<(&String, &Stored)> {
        self.own
            .get_key_value(name)
            .or_else(|| self.shared.get_key_value(name))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &Stored)> {
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

/// One part's resources by type.
type ByType = HashMap<XdsType, Arc<Typed>>;

/// A key's outbound part: its resources, and the places of the services
/// they are made of.
#[derive(Debug, Default)]
pub(super) struct Outbound {
    parts: ByType,
    reach: Vec<usize>,
}

type SharedOutbound = Arc<Outbound>;

/// Whether two maps hold the same names at the same versions.
fn same_content(a: &Typed, b: &Typed) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((na, (va, _)), (nb, (vb, _)))| na == nb && va == vb)
}

/// `new`, with each type whose content equals `old`'s taken from `old`:
/// a proxy holding the old one sees at once (by pointer) that nothing
/// changed.
fn keep_unchanged(mut new: ByType, old: Option<&ByType>) -> ByType {
    if let Some(old) = old {
        for (t, typed) in new.iter_mut() {
            if let Some(o) = old.get(t)
                && same_content(o, typed)
            {
                *typed = o.clone();
            }
        }
    }
    new
}

/// Outbound translations by key (each with the digest of what it was
/// translated from), and the differences between successive shared maps
/// (the same for every proxy that holds one and is moving to the other).
#[derive(Default)]
pub struct OutboundCache {
    translations: PerGeneration<OutboundKey, SharedOutbound>,
    diffs: Mutex<Vec<DiffEntry>>,
}

/// A proxy's inbound part and the digest it was translated from (kept by
/// its stream, translated again only when the digest changes), and the
/// places of the services it is made of.
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    digest: Option<u64>,
    parts: Arc<ByType>,
    reach: Vec<usize>,
}

/// One proxy's resources at a generation, with what they were made of.
pub struct Resolved {
    /// By type: the shared outbound part and the proxy's own.
    pub layers: HashMap<XdsType, Layers>,
    /// Its outbound key.
    pub key: OutboundKey,
    /// The places of the services its resources are made of, sorted.
    pub reach: Vec<usize>,
}

/// Locks `m`; a panic elsewhere while it was held (which poisons it) does
/// not stop every other stream. Callers keep what they guard consistent
/// at every step that can fail.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Values built once per key and shared by every stream that asks, kept
/// across generations while the digest of their inputs stays the same.
/// The map's lock is held only to find the key's cell; the building
/// happens outside it, so the streams of one generation wait for the
/// first of them rather than all building, and a build that fails
/// (panics) leaves the cell empty for the next caller and no lock
/// poisoned.
struct PerGeneration<K, V> {
    cells: Mutex<Cells<K, V>>,
}

struct Cells<K, V> {
    /// The newest generation asked for.
    generation: u64,
    /// By key: the generation it was last asked for in, its digest, the
    /// value (and the value it replaced, to keep what did not change).
    entries: HashMap<K, Entry<V>>,
}

struct Entry<V> {
    seen: u64,
    digest: u64,
    cell: Cell<V>,
    before: Option<V>,
}

/// A value some stream builds and every other waits for.
type Cell<V> = Arc<std::sync::OnceLock<V>>;

impl<K, V> Default for PerGeneration<K, V> {
    fn default() -> Self {
        PerGeneration {
            cells: Mutex::new(Cells {
                generation: 0,
                entries: HashMap::new(),
            }),
        }
    }
}

impl<K: Eq + std::hash::Hash, V: Clone> PerGeneration<K, V> {
    /// The value of `key` at `generation`: the one built before if the
    /// inputs' `digest` is the same, else `build(the value before)`.
    fn get_or_build(
        &self,
        key: K,
        generation: u64,
        digest: impl FnOnce() -> u64,
        build: impl FnOnce(Option<&V>) -> V,
    ) -> V {
        let (cell, before) = {
            let mut cells = lock(&self.cells);
            if generation < cells.generation {
                // A stream behind the others: build, but do not keep it.
                drop(cells);
                return build(None);
            }
            if generation > cells.generation {
                cells.generation = generation;
                // What no stream asked for in the last two generations
                // belongs to proxies that have gone.
                cells.entries.retain(|_, e| e.seen + 1 >= generation);
            }
            match cells.entries.get_mut(&key) {
                Some(e) if e.seen == generation => {
                    if e.cell.get().is_some() {
                        // Built: what it replaced is no longer needed here.
                        e.before = None;
                    }
                    (e.cell.clone(), e.before.clone())
                }
                Some(e) => {
                    let d = digest();
                    e.seen = generation;
                    if d != e.digest {
                        e.before = e.cell.get().cloned().or(e.before.take());
                        e.digest = d;
                        e.cell = Arc::default();
                    }
                    (e.cell.clone(), e.before.clone())
                }
                None => {
                    let e = Entry {
                        seen: generation,
                        digest: digest(),
                        cell: Arc::default(),
                        before: None,
                    };
                    let cell = e.cell.clone();
                    cells.entries.insert(key, e);
                    (cell, None)
                }
            }
        };
        cell.get_or_init(|| build(before.as_ref())).clone()
    }

    /// Marks `key`'s value as current at `generation` without asking for
    /// its digest: its stream knows nothing it is made of changed. False
    /// when there is no such value any more (then the stream asks).
    fn touch(&self, key: &K, generation: u64) -> bool {
        let mut cells = lock(&self.cells);
        if generation > cells.generation {
            cells.generation = generation;
            cells.entries.retain(|_, e| e.seen + 1 >= generation);
        }
        match cells.entries.get_mut(key) {
            Some(e) if e.seen + 1 >= generation && e.cell.get().is_some() => {
                e.seen = e.seen.max(generation);
                true
            }
            _ => false,
        }
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

    /// Keeps `key`'s outbound part current at `generation` (see
    /// [`PerGeneration::touch`]).
    pub(super) fn touch(&self, key: &OutboundKey, generation: u64) -> bool {
        self.translations.touch(key, generation)
    }

    /// The resources of one proxy, by type URL: the shared outbound part
    /// (translated once per key, again when what it reaches changed) and
    /// its inbound part (`inbound`, the stream's: translated again when
    /// what it is made of changed).
    pub fn resources_for(
        &self,
        world: &World,
        node: &ProxyNode,
        inbound: &mut Inbound,
    ) -> Resolved {
        let inputs = Inputs {
            registry: &world.registry,
            rules: &world.rules,
            mesh: &world.mesh,
        };
        let index = &world.index;
        let key = outbound_key(&inputs, index, node);
        let shared = self.translations.get_or_build(
            key.clone(),
            world.generation,
            || outbound_digest(&inputs, index, node),
            |before| {
                let new = by_type(translate_outbound(&inputs, index, node));
                Arc::new(Outbound {
                    parts: keep_unchanged(new, before.map(|b| &b.parts)),
                    reach: reachable_services(&inputs, index, node),
                })
            },
        );
        #[cfg(debug_assertions)]
        {
            // The digests must cover everything translation reads: what is
            // kept equals what would be translated now.
            let fresh = by_type(translate_outbound(&inputs, index, node));
            for (t, typed) in &fresh {
                let kept = shared.parts.get(t).cloned().unwrap_or_default();
                debug_assert!(
                    same_content(&kept, typed),
                    "stale outbound {t} kept: {:?} where translation gives {:?}",
                    kept.iter().map(|(n, (v, _))| (n, v)).collect::<Vec<_>>(),
                    typed.iter().map(|(n, (v, _))| (n, v)).collect::<Vec<_>>(),
                );
            }
            debug_assert_eq!(shared.reach, reachable_services(&inputs, index, node));
        }
        let digest = inbound_digest(&inputs, index, node);
        if inbound.digest != Some(digest) {
            let new = by_type(translate_inbound(&inputs, index, node));
            *inbound = Inbound {
                digest: Some(digest),
                parts: Arc::new(keep_unchanged(new, Some(&inbound.parts))),
                reach: own_service_places(&inputs, index, node),
            };
        }
        let own = &inbound.parts;
        let layers = XdsType::PUSH_ORDER
            .into_iter()
            .map(|t| {
                (
                    t,
                    Layers {
                        shared: shared.parts.get(&t).cloned().unwrap_or_default(),
                        own: own.get(&t).cloned().unwrap_or_default(),
                    },
                )
            })
            .collect();
        let mut reach: Vec<usize> = shared.reach.iter().chain(&inbound.reach).copied().collect();
        reach.sort_unstable();
        reach.dedup();
        Resolved { layers, key, reach }
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
        let failed = std::thread::spawn(move || {
            c.get_or_build("k", 1, || 0, |_| panic!("translation failed"))
        })
        .join();
        assert!(failed.is_err(), "the failing stream's task panics");
        let get = |generation, digest, value| {
            cache.get_or_build(
                "k",
                generation,
                || digest,
                |before| value + before.copied().unwrap_or(0) * 100,
            )
        };
        assert_eq!(get(1, 0, 7), 7, "the next stream builds");
        assert_eq!(get(1, 0, 8), 7, "built once per generation");
        assert_eq!(get(2, 0, 9), 7, "kept while the digest stays");
        assert_eq!(get(3, 1, 9), 709, "built anew, from the one before");
        assert_eq!(get(2, 1, 5), 5, "a stream behind builds its own");
        assert_eq!(get(3, 1, 1), 709, "and changes nothing kept");
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

    /// A generation that changes nothing a proxy can reach hands it the
    /// very resources it holds (nothing translated, nothing to push); one
    /// that changes what it reaches changes those types only.
    #[test]
    fn only_what_a_proxy_reaches_is_translated_again() {
        use crate::translate::{Index, Inputs, MeshConfig, ProxyNode};
        use crate::world::World;
        use mesh_proto::types::XdsType;
        use std::sync::Arc;
        let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: a}\nspec:\n  workloadSelector:\n    labels: {app: a}\n  egress:\n  - hosts: [./b.default.svc.cluster.local]\n";
        let rules: Vec<mesh_rules::Rule> = mesh_rules::load(&[mesh_rules::Source {
            name: "sidecar.yaml",
            text: sidecar,
        }])
        .unwrap()
        .rules
        .into_iter()
        .map(|r| r.value)
        .collect();
        let rules = Arc::new(rules);
        let world = |generation: u64, extra: &str| {
            let yaml = format!(
                "services:\n- {{name: a, vip: 10.0.0.1, ports: [{{name: http, port: 80}}], selector: {{app: a}}}}\n- {{name: b, vip: 10.0.0.2, ports: [{{name: http, port: 80}}], selector: {{app: b}}}}\n- {{name: c, vip: 10.0.0.3, ports: [{{name: http, port: 80}}], selector: {{app: c}}}}\nworkloads:\n- {{name: a1, address: 10.1.0.1, labels: {{app: a}}}}\n- {{name: b1, address: 10.1.0.2, labels: {{app: b}}}}\n- {{name: c1, address: 10.1.0.3, labels: {{app: c}}}}\n{extra}"
            );
            let registry = crate::registry::from_yaml("r.yaml", &yaml).unwrap();
            let mesh = MeshConfig::default();
            let index = Index::of(&Inputs {
                registry: &registry,
                rules: &rules,
                mesh: &mesh,
            });
            World {
                generation,
                registry,
                index,
                rules: rules.clone(),
                mesh,
                warm: true,
                ..World::default()
            }
        };
        let node = ProxyNode {
            namespace: "default".into(),
            ip: "10.1.0.1".parse().ok(),
            labels: [("app".to_owned(), "a".to_owned())].into(),
            ..ProxyNode::default()
        };
        let cache = super::OutboundCache::default();
        let mut inbound = super::Inbound::default();
        let first = cache
            .resources_for(&world(1, ""), &node, &mut inbound)
            .layers;
        assert!(
            first[&XdsType::Endpoint]
                .get("outbound|80||b.default.svc.cluster.local")
                .is_some()
        );
        assert!(
            first[&XdsType::Endpoint]
                .get("outbound|80||c.default.svc.cluster.local")
                .is_none()
        );
        // c is out of a's scope: its new endpoint changes nothing for a.
        let c2 = "- {name: c2, address: 10.1.0.4, labels: {app: c}}\n";
        let second = cache
            .resources_for(&world(2, c2), &node, &mut inbound)
            .layers;
        for t in XdsType::PUSH_ORDER {
            assert!(second[&t].same(&first[&t]), "{t} translated again");
        }
        // b's new endpoint: new endpoints, the same clusters, listeners, routes.
        let b2 = format!("{c2}- {{name: b2, address: 10.1.0.5, labels: {{app: b}}}}\n");
        let third = cache
            .resources_for(&world(3, &b2), &node, &mut inbound)
            .layers;
        assert!(!third[&XdsType::Endpoint].same(&second[&XdsType::Endpoint]));
        for t in [XdsType::Cluster, XdsType::Listener, XdsType::Route] {
            assert!(third[&t].same(&second[&t]), "{t} is not the one held");
        }
    }

    #[test]
    fn resource_versions_are_the_specified_hash() {
        assert_eq!(super::version_of(b"abc"), "78af5f94892f3950");
        assert_eq!(super::version_of(b""), "2d06800538d394c2");
    }
}
