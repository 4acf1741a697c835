//! The ADS server: one gRPC stream per proxy, State-of-the-World or Delta,
//! carrying listeners, routes, clusters and endpoints.
//!
//! Each stream translates the current [`World`] for its proxy and sends,
//! per type in [`PUSH_ORDER`], only what differs from what the proxy holds.
//! A proxy that is not affected by a change gets nothing. A NACK is logged
//! and shown in [`Status`]; what the proxy holds is rolled back to before
//! the refused response, so the refused resources are not sent again
//! until the inputs change.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use mesh_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use mesh_proto::google::protobuf::Any;
use mesh_proto::node::{
    CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, NodeMeta, PUSH_ORDER, ROUTE_TYPE, short_type,
};
use mesh_rules::registry::{Health, Workload};
use prost::{Message, Name};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Streaming};

use crate::translate::{
    Inputs, Interception, OutboundKey, ProxyNode, for_ads, outbound_key, translate_inbound,
    translate_outbound,
};
use crate::world::{Update, Updates, World};

/// One type's resources for one proxy: name → (version, resource).
type Typed = BTreeMap<String, (String, Any)>;

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
    shared: Arc<Typed>,
    own: Arc<Typed>,
}

impl Layers {
    fn get(&self, name: &str) -> Option<&(String, Any)> {
        self.own.get(name).or_else(|| self.shared.get(name))
    }

    fn get_key_value(&self, name: &str) -> Option<(&String, &(String, Any))> {
        self.own
            .get_key_value(name)
            .or_else(|| self.shared.get_key_value(name))
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &(String, Any))> {
        self.shared.iter().chain(self.own.iter())
    }

    fn len(&self) -> usize {
        self.shared.len() + self.own.len()
    }

    fn same(&self, other: &Layers) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared) && Arc::ptr_eq(&self.own, &other.own)
    }
}

fn by_type(r: crate::translate::AdsResources) -> HashMap<&'static str, Arc<Typed>> {
    HashMap::from([
        (LISTENER_TYPE, Arc::new(typed(&r.listeners, |l| &l.name))),
        (ROUTE_TYPE, Arc::new(typed(&r.routes, |r| &r.name))),
        (CLUSTER_TYPE, Arc::new(typed(&r.clusters, |c| &c.name))),
        (
            ENDPOINT_TYPE,
            Arc::new(typed(&r.endpoints, |e| &e.cluster_name)),
        ),
    ])
}

type SharedOutbound = Arc<HashMap<&'static str, Arc<Typed>>>;

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
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
struct Diff {
    changed: Vec<String>,
    removed: Vec<String>,
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
    fn diff(&self, old: &Arc<Typed>, new: &Arc<Typed>) -> Arc<Diff> {
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
    pub fn resources_for(&self, world: &World, node: &ProxyNode) -> HashMap<&'static str, Layers> {
        let inputs = Inputs {
            registry: &world.registry,
            rules: &world.rules,
            mesh: &world.mesh,
        };
        let key = outbound_key(&inputs, node);
        let shared = self.translations.get_or_build(key, world.generation, || {
            Arc::new(by_type(for_ads(translate_outbound(&inputs, node))))
        });
        let own = by_type(for_ads(translate_inbound(&inputs, node)));
        PUSH_ORDER
            .into_iter()
            .map(|t| {
                (
                    t,
                    Layers {
                        shared: shared.get(t).cloned().unwrap_or_default(),
                        own: own.get(t).cloned().unwrap_or_default(),
                    },
                )
            })
            .collect()
    }
}

/// What translation needs to know of a proxy.
pub fn proxy_node(meta: &NodeMeta) -> ProxyNode {
    ProxyNode {
        namespace: meta.namespace.clone(),
        ip: meta.ip,
        labels: meta.labels.clone(),
        interception: if meta.explicit {
            Interception::Explicit {
                app_ip: meta
                    .app_ip
                    .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
            }
        } else {
            Interception::Capture
        },
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What pilot knows of one type on one proxy's stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// Version of the last response sent.
    pub sent: String,
    /// Version the proxy last ACKed.
    pub acked: String,
    /// The proxy's reason when it refused the last response.
    pub nacked: Option<String>,
    /// Resources the proxy holds.
    pub resources: usize,
}

impl TypeStatus {
    /// `SYNCED`, `STALE` (sent, not yet ACKed), `NACKED` or `NOT SENT`.
    pub fn state(&self) -> &'static str {
        if self.nacked.is_some() {
            "NACKED"
        } else if self.sent.is_empty() {
            "NOT SENT"
        } else if self.sent == self.acked {
            "SYNCED"
        } else {
            "STALE"
        }
    }
}

/// One connected proxy, as `meshctl proxy-status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    /// The xDS node id.
    pub node: String,
    /// Namespace.
    pub namespace: String,
    /// Workload name.
    pub workload: String,
    /// Workload IP.
    pub ip: Option<String>,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the proxy is used explicitly (no capture), and where its app listens.
    pub explicit: Option<String>,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// The rule store revision of the last inputs this proxy's
    /// configuration was computed from (and sent, when it changed).
    pub rules_revision: u64,
    /// The generation of those inputs.
    pub generation: u64,
    /// When the stream started (ms since the epoch).
    pub connected_ms: u64,
    /// Per type (`CDS`, `EDS`, `LDS`, `RDS`).
    pub types: BTreeMap<String, TypeStatus>,
    /// Each type's state, for people and scripts.
    pub states: BTreeMap<String, &'static str>,
}

/// One push, for `/debug/push_history`.
#[derive(Debug, Clone, Serialize)]
pub struct PushRecord {
    /// When (ms since the epoch).
    pub time_ms: u64,
    /// To which proxy.
    pub node: String,
    /// Which type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Version sent.
    pub version: String,
    /// Resources sent (Delta: changed ones only).
    pub resources: usize,
    /// Resources removed (Delta).
    pub removed: usize,
    /// The world generation it came from.
    pub generation: u64,
}

const HISTORY: usize = 200;

/// Proxies with an unanswered subscription answer at the same time: a
/// thousand proxies connecting together get their (full) configuration in
/// waves. Changes, which are small, are not gated.
const PUSH_CONCURRENCY: usize = 32;

/// How long a stream waits for a push permit before pushing anyway.
const PERMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Connected proxies and recent pushes.
#[derive(Default)]
pub struct Status {
    proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
    history: Mutex<VecDeque<PushRecord>>,
}

impl Status {
    /// Every connected proxy, by node id.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let mut v: Vec<_> = lock(&self.proxies).values().cloned().collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }

    /// Recent pushes, oldest first.
    pub fn history(&self) -> Vec<PushRecord> {
        lock(&self.history).iter().cloned().collect()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(p) = lock(&self.proxies).get_mut(&id) {
            f(p);
            p.states = p
                .types
                .iter()
                .map(|(k, t)| (k.clone(), t.state()))
                .collect();
        }
    }

    fn record(&self, r: PushRecord) {
        let mut h = lock(&self.history);
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(r);
    }
}

/// The discovery service.
#[derive(Clone)]
pub struct Discovery {
    worlds: watch::Receiver<Arc<World>>,
    updates: Updates,
    status: Arc<Status>,
    cache: Arc<OutboundCache>,
    /// Bounds the proxies with an unanswered push ([`PUSH_CONCURRENCY`]).
    gate: Arc<tokio::sync::Semaphore>,
    next_id: Arc<AtomicU64>,
}

impl Discovery {
    /// A service translating the worlds it is given; proxies' workloads are
    /// registered through `updates`.
    pub fn new(worlds: watch::Receiver<Arc<World>>, updates: Updates) -> Self {
        Discovery {
            worlds,
            updates,
            status: Arc::default(),
            cache: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(PUSH_CONCURRENCY)),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Status of connected proxies.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// The current world.
    pub fn world(&self) -> Arc<World> {
        self.worlds.borrow().clone()
    }

    /// The tonic service.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Discovery> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

/// A type's subscription on one stream.
#[derive(Default)]
struct Sub {
    /// The proxy asked for this type.
    requested: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds as far as pilot knows.
    has: Held,
    /// The last nonce sent and what `has` was before it (restored on NACK).
    pending: Option<(String, Held)>,
}

/// What a proxy holds of one type: exactly some resources pilot has (the
/// common case, kept without a copy), or a list of names and versions
/// (after a partial push, or what a reconnecting proxy says it has).
#[derive(Debug, Clone)]
enum Held {
    Exactly(Layers),
    /// Some layers plus resources kept from before them (name → version):
    /// between the two halves of a make-before-break push.
    Plus(Layers, BTreeMap<String, String>),
    Listed(BTreeMap<String, String>),
}

impl Default for Held {
    fn default() -> Self {
        Held::Listed(BTreeMap::new())
    }
}

impl Held {
    fn version(&self, name: &str) -> Option<&str> {
        match self {
            Held::Exactly(l) => l.get(name).map(|(v, _)| v.as_str()),
            Held::Plus(l, kept) => kept
                .get(name)
                .map(String::as_str)
                .or_else(|| l.get(name).map(|(v, _)| v.as_str())),
            Held::Listed(m) => m.get(name).map(String::as_str),
        }
    }

    fn names(&self) -> Vec<&str> {
        match self {
            Held::Exactly(l) => l.iter().map(|(n, _)| n.as_str()).collect(),
            Held::Plus(l, kept) => l
                .iter()
                .map(|(n, _)| n.as_str())
                .chain(
                    kept.keys()
                        .map(String::as_str)
                        .filter(|n| l.get(n).is_none()),
                )
                .collect(),
            Held::Listed(m) => m.keys().map(String::as_str).collect(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Held::Exactly(l) => l.len(),
            Held::Plus(..) => self.names().len(),
            Held::Listed(m) => m.len(),
        }
    }

    fn listed(&mut self) -> &mut BTreeMap<String, String> {
        if !matches!(self, Held::Listed(_)) {
            let all: BTreeMap<String, String> = self
                .names()
                .into_iter()
                .map(|n| (n.to_owned(), self.version(n).unwrap_or_default().to_owned()))
                .collect();
            *self = Held::Listed(all);
        }
        match self {
            Held::Listed(m) => m,
            _ => unreachable!("converted above"),
        }
    }
}

impl Sub {
    fn wanted<'a>(&self, all: &'a Layers) -> BTreeMap<&'a str, &'a (String, Any)> {
        all.iter()
            .filter(|(n, _)| self.wildcard || self.names.contains(*n))
            .map(|(n, v)| (n.as_str(), v))
            .collect()
    }
}

/// A proxy's stream, independent of the wire flavour.
struct Stream {
    id: u64,
    node: String,
    proxy: ProxyNode,
    subs: HashMap<&'static str, Sub>,
    current: HashMap<&'static str, Layers>,
    /// The resources before the last refresh (for make-before-break).
    previous: HashMap<&'static str, Layers>,
    cache: Arc<OutboundCache>,
    /// Held from a push until the proxy answered it (see [`PUSH_CONCURRENCY`]).
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    generation: u64,
    rules_revision: u64,
    nonce: u64,
    status: Arc<Status>,
}

/// What to send for one type.
struct Push {
    type_url: &'static str,
    nonce: String,
    version: String,
    /// Everything wanted (SotW sends all of it).
    all: Vec<Any>,
    /// Changed resources with names and versions (Delta).
    changed: Vec<Resource>,
    removed: Vec<String>,
}

fn known(type_url: &str) -> Option<&'static str> {
    PUSH_ORDER.into_iter().find(|t| *t == type_url)
}

impl Stream {
    fn new(
        id: u64,
        meta: &NodeMeta,
        status: Arc<Status>,
        cache: Arc<OutboundCache>,
        protocol: &'static str,
    ) -> Stream {
        lock(&status.proxies).insert(
            id,
            ProxyStatus {
                node: meta.id.clone(),
                namespace: meta.namespace.clone(),
                workload: meta.workload.clone(),
                ip: meta.ip.map(|i| i.to_string()),
                labels: meta.labels.clone(),
                explicit: meta
                    .explicit
                    .then(|| meta.app_ip.map_or("127.0.0.1".into(), |i| i.to_string())),
                protocol,
                rules_revision: 0,
                generation: 0,
                connected_ms: now_ms(),
                types: BTreeMap::new(),
                states: BTreeMap::new(),
            },
        );
        Stream {
            id,
            node: meta.id.clone(),
            proxy: proxy_node(meta),
            subs: HashMap::new(),
            current: HashMap::new(),
            previous: HashMap::new(),
            cache,
            permit: None,
            generation: 0,
            rules_revision: 0,
            nonce: 0,
            status,
        }
    }

    fn refresh(&mut self, world: &World) {
        if world.generation != self.generation {
            let next = self.cache.resources_for(world, &self.proxy);
            self.previous = std::mem::replace(&mut self.current, next);
            self.generation = world.generation;
            self.rules_revision = world.rules_revision;
        }
    }

    /// Marks the inputs of the last refresh as handled (after their pushes
    /// were queued), so status readers see sent-and-not-yet-ACKed as STALE.
    fn handled(&mut self) {
        if !self.awaiting() {
            self.permit = None;
        }
        // Make-before-break is done: let the old generation go.
        self.previous.clear();
        let (g, r) = (self.generation, self.rules_revision);
        self.status.update(self.id, |p| {
            p.generation = g;
            p.rules_revision = r;
        });
    }

    /// Whether a response is still unanswered.
    fn awaiting(&self) -> bool {
        self.subs.values().any(|s| s.pending.is_some())
    }

    /// Takes a push permit unless the stream holds one. A proxy that does
    /// not answer within the wait does not block the others for longer.
    async fn take_permit(&mut self, gate: &Arc<tokio::sync::Semaphore>) {
        if self.permit.is_none() {
            let wait = tokio::time::timeout(PERMIT_WAIT, gate.clone().acquire_owned());
            self.permit = wait.await.ok().and_then(Result::ok);
        }
    }

    /// ACK/NACK bookkeeping for a request answering `nonce`. Returns false
    /// for a stale nonce (an answer to a response superseded since).
    fn answer(&mut self, type_url: &'static str, nonce: &str, error: Option<&str>) -> bool {
        let sub = self.subs.entry(type_url).or_default();
        let Some((pending, before)) = sub.pending.take() else {
            return false;
        };
        if pending != nonce {
            sub.pending = Some((pending, before));
            return false;
        }
        let short = short_type(type_url).to_owned();
        match error {
            Some(reason) => {
                tracing::warn!(
                    "NACK from {} for {short} (nonce {nonce}): {reason}",
                    self.node
                );
                sub.has = before;
                let held = sub.has.len();
                self.status.update(self.id, |p| {
                    let t = p.types.entry(short).or_default();
                    t.nacked = Some(reason.to_owned());
                    t.resources = held;
                });
            }
            None => {
                let held = sub.has.len();
                self.status.update(self.id, |p| {
                    let t = p.types.entry(short).or_default();
                    t.acked = t.sent.clone();
                    t.nacked = None;
                    t.resources = held;
                });
            }
        }
        true
    }

    /// What to send for `type_url`, if anything (always something when
    /// `force`). With `keep`, nothing the proxy holds is removed (what is
    /// no longer wanted is sent as it was, for SotW): the first half of
    /// make-before-break, so routes never name a cluster the proxy has
    /// already dropped.
    fn push(
        &mut self,
        type_url: &'static str,
        force: bool,
        sotw: bool,
        keep: bool,
    ) -> Option<Push> {
        let empty = Layers::default();
        let all = self.current.get(type_url).unwrap_or(&empty);
        let old = self.previous.get(type_url).unwrap_or(&empty);
        let sub = self.subs.get_mut(type_url)?;
        if !sub.requested {
            return None;
        }
        // The common case of a change that does not concern this proxy.
        if !force && sub.wildcard && matches!(&sub.has, Held::Exactly(h) if h.same(all)) {
            return None;
        }
        if !sotw && sub.wildcard {
            let base = match &sub.has {
                Held::Exactly(h) | Held::Plus(h, _) => Some(h.clone()),
                Held::Listed(_) => None,
            };
            if let Some(base) = base
                && Arc::ptr_eq(&base.own, &all.own)
            {
                let all = all.clone();
                return self.fast_push(type_url, force, keep, base, all);
            }
        }
        let mut wanted = sub.wanted(all);
        let changed: Vec<Resource> = wanted
            .iter()
            .filter(|(n, (v, _))| sub.has.version(n) != Some(v.as_str()))
            .map(|(n, (v, any))| Resource {
                name: (*n).to_owned(),
                version: v.clone(),
                resource: Some(any.clone()),
                ..Default::default()
            })
            .collect();
        let gone: Vec<String> = sub
            .has
            .names()
            .into_iter()
            .filter(|n| !wanted.contains_key(n))
            .map(str::to_owned)
            .collect();
        let mut kept = BTreeMap::new();
        let removed = if keep {
            for n in &gone {
                if let Some((name, v)) = old.get_key_value(n) {
                    wanted.insert(name.as_str(), v);
                }
                if let Some(v) = sub.has.version(n) {
                    kept.insert(n.clone(), v.to_owned());
                }
            }
            vec![]
        } else {
            gone
        };
        if !force && changed.is_empty() && removed.is_empty() {
            if sub.wildcard && kept.is_empty() {
                // Same content, new layers: remember them for the fast path.
                sub.has = Held::Exactly(all.clone());
            }
            return None;
        }
        // The set's version: names and versions, each ended by a 0 byte
        // (neither contains one), so no two sets read alike.
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (n, (v, _)) in &wanted {
            for part in [n.as_bytes(), v.as_bytes()] {
                h.update(part);
                h.update(&[0]);
            }
        }
        let version = format!("{:016x}", h.digest());
        let has = if sub.wildcard && kept.is_empty() {
            Held::Exactly(all.clone())
        } else {
            let mut listed: BTreeMap<String, String> = wanted
                .iter()
                .map(|(n, (v, _))| ((*n).to_owned(), v.clone()))
                .collect();
            listed.extend(kept);
            Held::Listed(listed)
        };
        let all_resources = if sotw {
            wanted.values().map(|(_, a)| a.clone()).collect()
        } else {
            vec![]
        };
        let count = if sotw { wanted.len() } else { changed.len() };
        Some(self.record(
            type_url,
            has,
            version,
            changed,
            removed,
            all_resources,
            count,
        ))
    }

    /// Delta, wildcard, inbound part unchanged: the change of the shared
    /// part was computed once for every proxy ([`OutboundCache::diff`]).
    fn fast_push(
        &mut self,
        type_url: &'static str,
        force: bool,
        keep: bool,
        base: Layers,
        all: Layers,
    ) -> Option<Push> {
        let d = self.cache.diff(&base.shared, &all.shared);
        let sub = self.subs.get_mut(type_url)?;
        let mut kept = match &sub.has {
            Held::Plus(_, k) => k.clone(),
            _ => BTreeMap::new(),
        };
        let changed: Vec<Resource> = d
            .changed
            .iter()
            .filter_map(|n| {
                let (v, any) = all.shared.get(n)?;
                (kept.get(n) != Some(v)).then(|| Resource {
                    name: n.clone(),
                    version: v.clone(),
                    resource: Some(any.clone()),
                    ..Default::default()
                })
            })
            .collect();
        // Kept entries that are wanted again are simply held again.
        kept.retain(|n, _| all.get(n).is_none());
        let mut removed = Vec::new();
        if keep {
            for n in &d.removed {
                if let Some((v, _)) = base.shared.get(n) {
                    kept.insert(n.clone(), v.clone());
                }
            }
        } else {
            removed.extend(d.removed.iter().cloned());
            removed.extend(kept.keys().filter(|n| !d.removed.contains(n)).cloned());
            kept.clear();
        }
        let has = if kept.is_empty() {
            Held::Exactly(all)
        } else {
            Held::Plus(all, kept)
        };
        if !force && changed.is_empty() && removed.is_empty() {
            sub.has = has;
            return None;
        }
        let version = format!("g{}-{}", self.generation, self.nonce + 1);
        let count = changed.len();
        Some(self.record(type_url, has, version, changed, removed, vec![], count))
    }

    /// Bookkeeping of a push: the nonce, what the proxy will hold (and the
    /// rollback point for a NACK), status and history.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        type_url: &'static str,
        has: Held,
        version: String,
        changed: Vec<Resource>,
        removed: Vec<String>,
        all: Vec<Any>,
        count: usize,
    ) -> Push {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let sub = self.subs.entry(type_url).or_default();
        let before = std::mem::replace(&mut sub.has, has);
        // An unanswered earlier response is superseded; its rollback point stays.
        let before = match sub.pending.take() {
            Some((_, older)) => older,
            None => before,
        };
        sub.pending = Some((nonce.clone(), before));
        let short = short_type(type_url).to_owned();
        let sent_version = version.clone();
        self.status.update(self.id, |p| {
            p.types.entry(short).or_default().sent = sent_version;
        });
        self.status.record(PushRecord {
            time_ms: now_ms(),
            node: self.node.clone(),
            type_: short_type(type_url).to_owned(),
            version: version.clone(),
            resources: count,
            removed: removed.len(),
            generation: self.generation,
        });
        Push {
            type_url,
            nonce,
            version,
            all,
            changed,
            removed,
        }
    }

    /// The pushes for a new world, make-before-break: clusters and
    /// endpoints are added first (nothing removed), then listeners and
    /// routes switch, then what nothing uses any more goes.
    fn pushes(&mut self, sotw: bool) -> Vec<Push> {
        let steps = [
            (CLUSTER_TYPE, true),
            (ENDPOINT_TYPE, true),
            (LISTENER_TYPE, false),
            (ROUTE_TYPE, false),
            (CLUSTER_TYPE, false),
            (ENDPOINT_TYPE, false),
        ];
        steps
            .into_iter()
            .filter_map(|(t, keep)| self.push(t, false, sotw, keep))
            .collect()
    }
}

type ResponseStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

impl Discovery {
    fn register(&self, id: u64, meta: &NodeMeta) {
        if let (false, Some(ip)) = (meta.workload.is_empty(), meta.ip) {
            self.updates.send(Update::Register(
                id,
                Workload {
                    name: meta.workload.clone(),
                    namespace: meta.namespace.clone(),
                    address: ip,
                    labels: meta.labels.clone(),
                    service_account: if meta.service_account.is_empty() {
                        "default".into()
                    } else {
                        meta.service_account.clone()
                    },
                    health: Health::default(),
                },
            ));
        }
    }

    fn disconnect(&self, id: u64) {
        self.updates.send(Update::Unregister(id));
        lock(&self.status.proxies).remove(&id);
    }
}

/// What differs between the two ADS flavours; [`Discovery::drive`] does
/// the rest for both.
trait Flavor: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// `sotw` or `delta`.
    const NAME: &'static str;
    /// SotW sends every wanted resource in each response; Delta only changes.
    const SOTW: bool;
    fn node(r: &Self::Request) -> Option<&mesh_proto::envoy::config::core::v3::Node>;
    fn type_url(r: &Self::Request) -> &str;
    fn nonce(r: &Self::Request) -> &str;
    fn error(r: &Self::Request) -> Option<&str>;
    /// Applies the request's subscription; returns (changed, force a
    /// response even when nothing differs).
    fn subscribe(sub: &mut Sub, r: &Self::Request) -> (bool, bool);
    fn response(p: Push) -> Self::Response;
}

struct Sotw;

impl Flavor for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";
    const SOTW: bool = true;
    fn node(r: &DiscoveryRequest) -> Option<&mesh_proto::envoy::config::core::v3::Node> {
        r.node.as_ref()
    }
    fn type_url(r: &DiscoveryRequest) -> &str {
        &r.type_url
    }
    fn nonce(r: &DiscoveryRequest) -> &str {
        &r.response_nonce
    }
    fn error(r: &DiscoveryRequest) -> Option<&str> {
        r.error_detail.as_ref().map(|e| e.message.as_str())
    }
    fn subscribe(sub: &mut Sub, r: &DiscoveryRequest) -> (bool, bool) {
        // The request names the whole subscription (none: wildcard).
        let names: BTreeSet<String> = r.resource_names.iter().cloned().collect();
        let wildcard = names.is_empty() || names.contains("*");
        let changed = !sub.requested || sub.wildcard != wildcard || sub.names != names;
        sub.requested = true;
        sub.wildcard = wildcard;
        sub.names = names;
        (changed, true)
    }
    fn response(p: Push) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: p.version,
            resources: p.all,
            type_url: p.type_url.to_owned(),
            nonce: p.nonce,
            ..Default::default()
        }
    }
}

struct Delta;

impl Flavor for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";
    const SOTW: bool = false;
    fn node(r: &DeltaDiscoveryRequest) -> Option<&mesh_proto::envoy::config::core::v3::Node> {
        r.node.as_ref()
    }
    fn type_url(r: &DeltaDiscoveryRequest) -> &str {
        &r.type_url
    }
    fn nonce(r: &DeltaDiscoveryRequest) -> &str {
        &r.response_nonce
    }
    fn error(r: &DeltaDiscoveryRequest) -> Option<&str> {
        r.error_detail.as_ref().map(|e| e.message.as_str())
    }
    fn subscribe(sub: &mut Sub, r: &DeltaDiscoveryRequest) -> (bool, bool) {
        // Requests change the subscription; the first may say what the
        // proxy already holds (a reconnect).
        let first = !sub.requested;
        let mut changed = first;
        if first {
            sub.requested = true;
            sub.wildcard = r.resource_names_subscribe.is_empty()
                || r.resource_names_subscribe.iter().any(|n| n == "*");
            sub.has = Held::Listed(r.initial_resource_versions.clone().into_iter().collect());
        }
        for n in &r.resource_names_subscribe {
            if n != "*" && sub.names.insert(n.clone()) {
                changed = true;
            }
        }
        for n in &r.resource_names_unsubscribe {
            if n == "*" {
                sub.wildcard = false;
            }
            sub.names.remove(n);
            sub.has.listed().remove(n);
        }
        (changed, first)
    }
    fn response(p: Push) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: p.version,
            resources: p.changed,
            removed_resources: p.removed,
            type_url: p.type_url.to_owned(),
            nonce: p.nonce,
            ..Default::default()
        }
    }
}

impl Discovery {
    /// Serves one proxy's stream until it ends: requests (subscriptions,
    /// ACKs, NACKs) and new worlds, each answered with what changed.
    fn drive<F: Flavor>(&self, mut requests: Streaming<F::Request>) -> ResponseStream<F::Response>
    where
        Streaming<F::Request>: Send,
        F::Request: prost::Message + Default,
    {
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(Some(first)) = requests.message().await else {
                return;
            };
            let meta = NodeMeta::from_node(&F::node(&first).cloned().unwrap_or_default());
            let id = this.next_id.fetch_add(1, Ordering::Relaxed);
            let mut s = Stream::new(id, &meta, this.status.clone(), this.cache.clone(), F::NAME);
            this.register(id, &meta);
            let mut worlds = this.worlds.clone();
            if worlds.wait_for(|w| w.warm).await.is_err() {
                return;
            }
            let mut next = Some(first);
            'stream: loop {
                if let Some(req) = next.take() {
                    let Some(type_url) = known(F::type_url(&req)) else {
                        continue;
                    };
                    s.refresh(&worlds.borrow_and_update().clone());
                    if !F::nonce(&req).is_empty() {
                        s.answer(type_url, F::nonce(&req), F::error(&req));
                    }
                    let (changed, force) = F::subscribe(s.subs.entry(type_url).or_default(), &req);
                    if changed {
                        s.take_permit(&this.gate).await;
                        if let Some(p) = s.push(type_url, force, F::SOTW, false)
                            && tx.send(Ok(F::response(p))).await.is_err()
                        {
                            break 'stream;
                        }
                    }
                    s.handled();
                }
                tokio::select! {
                    r = requests.message() => match r {
                        Ok(Some(req)) => next = Some(req),
                        _ => break 'stream,
                    },
                    c = worlds.changed() => {
                        if c.is_err() { break 'stream; }
                        let world = worlds.borrow_and_update().clone();
                        s.refresh(&world);
                        for p in s.pushes(F::SOTW) {
                            if tx.send(Ok(F::response(p))).await.is_err() {
                                break 'stream;
                            }
                        }
                        s.handled();
                    }
                }
            }
            this.disconnect(id);
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Discovery {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        Ok(Response::new(self.drive::<Sotw>(request.into_inner())))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        Ok(Response::new(self.drive::<Delta>(request.into_inner())))
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
