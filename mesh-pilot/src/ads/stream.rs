//! One proxy's stream, whatever the wire flavour: per type the
//! subscription, what the proxy holds (name → version), the rollback
//! point of the last unanswered response, and the pushes a new world
//! needs, in make-before-break order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mesh_proto::envoy::service::discovery::v3::Resource;
use mesh_proto::google::protobuf::Any;
use mesh_proto::node::NodeMeta;
use mesh_proto::types::XdsType;

use super::cache::{Inbound, Layers, OutboundCache, Stored, any, lock};
use super::status::{ProxyStatus, PushRecord, Status, now_ms};
use super::{PERMIT_HOLD, proxy_node};
use crate::translate::ProxyNode;
use crate::world::{Changed, World};

/// A type's subscription on one stream.
#[derive(Default)]
pub(super) struct Sub {
    /// The proxy asked for this type.
    pub(super) requested: bool,
    pub(super) wildcard: bool,
    pub(super) names: BTreeSet<String>,
    /// What the proxy holds as far as pilot knows.
    pub(super) has: Held,
    /// The last nonce sent and what `has` was before it (restored on NACK).
    pending: Option<(String, Held)>,
    /// When the last response was sent.
    sent_at: Option<std::time::Instant>,
}

/// What a proxy holds of one type: exactly some resources pilot has (the
/// common case, kept without a copy), or a list of names and versions
/// (after a partial push, or what a reconnecting proxy says it has).
#[derive(Debug, Clone)]
pub(super) enum Held {
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

    pub(super) fn listed(&mut self) -> &mut BTreeMap<String, String> {
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

/// A set of resources' version: names and versions, each ended by a 0
/// byte (neither contains one), so no two sets read alike.
fn set_version(wanted: &BTreeMap<&str, &Stored>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (n, (v, _)) in wanted {
        for part in [n.as_bytes(), v.as_bytes()] {
            h.update(part);
            h.update(&[0]);
        }
    }
    format!("{:016x}", h.digest())
}

impl Sub {
    /// What of `wanted` the proxy does not hold as it is (to send), and
    /// what it holds that is not wanted any more (by name).
    fn difference(
        &self,
        kind: XdsType,
        wanted: &BTreeMap<&str, &Stored>,
    ) -> (Vec<Resource>, Vec<String>) {
        let changed = wanted
            .iter()
            .filter(|(n, (v, _))| self.has.version(n) != Some(v.as_str()))
            .map(|(n, stored)| Resource {
                name: (*n).to_owned(),
                version: stored.0.clone(),
                resource: Some(any(kind, stored)),
                ..Default::default()
            })
            .collect();
        let gone = self
            .has
            .names()
            .into_iter()
            .filter(|n| !wanted.contains_key(n))
            .map(str::to_owned)
            .collect();
        (changed, gone)
    }

    fn wanted<'a>(&self, all: &'a Layers) -> BTreeMap<&'a str, &'a Stored> {
        all.iter()
            .filter(|(n, _)| self.wildcard || self.names.contains(*n))
            .map(|(n, v)| (n.as_str(), v))
            .collect()
    }
}

/// A proxy's stream, independent of the wire flavour.
pub(super) struct Stream {
    id: u64,
    node: String,
    proxy: ProxyNode,
    pub(super) subs: HashMap<XdsType, Sub>,
    current: HashMap<XdsType, Layers>,
    /// The resources before the last refresh (for make-before-break).
    previous: HashMap<XdsType, Layers>,
    cache: Arc<OutboundCache>,
    /// This proxy's inbound part, kept while what it is made of stays.
    inbound: Inbound,
    /// Its outbound key and the places of the services its resources are
    /// made of, at the last translation.
    key: Option<crate::translate::OutboundKey>,
    reach: Vec<usize>,
    /// Held from a push until the proxy answered it (see [`PUSH_CONCURRENCY`]).
    permit: Option<(tokio::sync::OwnedSemaphorePermit, tokio::time::Instant)>,
    generation: u64,
    rules_revision: u64,
    nonce: u64,
    status: Arc<Status>,
}

/// What to send for one type.
pub(super) struct Push {
    pub(super) kind: XdsType,
    pub(super) nonce: String,
    pub(super) version: String,
    /// Everything wanted (SotW sends all of it).
    pub(super) all: Vec<Any>,
    /// Changed resources with names and versions (Delta).
    pub(super) changed: Vec<Resource>,
    pub(super) removed: Vec<String>,
}

impl Stream {
    pub(super) fn new(
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
                name: meta.name.clone(),
                workload: meta.workload.clone(),
                ip: meta.ip.map(|i| i.to_string()),
                labels: meta.labels.clone(),
                explicit: meta
                    .explicit
                    .then(|| meta.app_ip.map_or("127.0.0.1".into(), |i| i.to_string())),
                protocol,
                proxy: meta.kind,
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
            inbound: Inbound::default(),
            key: None,
            reach: Vec::new(),
            permit: None,
            generation: 0,
            rules_revision: 0,
            nonce: 0,
            status,
        }
    }

    /// Moves to `world`; false when the proxy's resources stay as they
    /// are (nothing to push).
    pub(super) fn refresh(&mut self, world: &World) -> bool {
        if world.generation == self.generation {
            return false;
        }
        if self.unaffected(world) {
            self.generation = world.generation;
            return false;
        }
        let next = self
            .cache
            .resources_for(world, &self.proxy, &mut self.inbound);
        self.previous = std::mem::replace(&mut self.current, next.layers);
        self.key = Some(next.key);
        self.reach = next.reach;
        self.generation = world.generation;
        self.rules_revision = world.rules_revision;
        true
    }

    /// Whether `world` follows the generation this proxy holds with new
    /// endpoints of services it does not reach only (most endpoint changes,
    /// for most proxies, once Sidecars scope them): then nothing is
    /// translated or compared.
    fn unaffected(&self, world: &World) -> bool {
        let Changed::Endpoints(changed) = &world.changed else {
            return false;
        };
        let Some(key) = &self.key else { return false };
        world.generation == self.generation + 1
            && !changed.iter().any(|i| self.reach.binary_search(i).is_ok())
            && self.cache.touch(key, world.generation)
    }

    /// Marks the inputs of the last refresh as handled (after their pushes
    /// were queued), so status readers see sent-and-not-yet-ACKed as STALE.
    pub(super) fn handled(&mut self) {
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

    /// Takes a push permit unless the stream holds one (waiting for one
    /// as long as it takes: holders give theirs back when answered, or
    /// after [`PERMIT_HOLD`]).
    pub(super) async fn take_permit(&mut self, gate: &Arc<tokio::sync::Semaphore>) {
        if self.permit.is_none()
            && let Ok(p) = gate.clone().acquire_owned().await
        {
            self.permit = Some((p, tokio::time::Instant::now() + PERMIT_HOLD));
        }
    }

    /// Whether the stream holds a push permit.
    pub(super) fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }

    /// When the permit goes back unanswered.
    pub(super) fn permit_deadline(&self) -> tokio::time::Instant {
        self.permit
            .as_ref()
            .map_or_else(tokio::time::Instant::now, |(_, at)| *at)
    }

    /// Gives the permit back (the proxy did not answer in time).
    pub(super) fn release_permit(&mut self) {
        self.permit = None;
    }

    /// ACK/NACK bookkeeping for a request answering `nonce`. Returns false
    /// for a stale nonce (an answer to a response superseded since).
    pub(super) fn answer(&mut self, kind: XdsType, nonce: &str, error: Option<&str>) -> bool {
        let sub = self.subs.entry(kind).or_default();
        let Some((pending, before)) = sub.pending.take() else {
            return false;
        };
        if pending != nonce {
            sub.pending = Some((pending, before));
            return false;
        }
        match error {
            Some(reason) => {
                tracing::warn!(
                    "NACK from {} for {kind} (nonce {nonce}): {reason}",
                    self.node
                );
                sub.has = before;
                self.status.metrics.rejected(kind);
                let held = sub.has.len();
                self.status.update(self.id, |p| {
                    let t = p.types.entry(kind).or_default();
                    t.nacked = Some(reason.to_owned());
                    t.resources = held;
                });
            }
            None => {
                if let Some(t) = sub.sent_at.take() {
                    self.status.metrics.converged(t.elapsed().as_secs_f64());
                }
                let held = sub.has.len();
                self.status.update(self.id, |p| {
                    let t = p.types.entry(kind).or_default();
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
    pub(super) fn push(
        &mut self,
        kind: XdsType,
        force: bool,
        sotw: bool,
        keep: bool,
    ) -> Option<Push> {
        let empty = Layers::default();
        let all = self.current.get(&kind).unwrap_or(&empty);
        let old = self.previous.get(&kind).unwrap_or(&empty);
        let sub = self.subs.get_mut(&kind)?;
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
                return self.fast_push(kind, force, keep, base, all);
            }
        }
        let mut wanted = sub.wanted(all);
        let (changed, gone) = sub.difference(kind, &wanted);
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
        let version = set_version(&wanted);
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
            wanted.values().map(|stored| any(kind, stored)).collect()
        } else {
            vec![]
        };
        let count = if sotw { wanted.len() } else { changed.len() };
        Some(self.record(kind, has, version, changed, removed, all_resources, count))
    }

    /// Delta, wildcard, inbound part unchanged: the change of the shared
    /// part was computed once for every proxy ([`OutboundCache::diff`]).
    fn fast_push(
        &mut self,
        kind: XdsType,
        force: bool,
        keep: bool,
        base: Layers,
        all: Layers,
    ) -> Option<Push> {
        let d = self.cache.diff(&base.shared, &all.shared);
        let sub = self.subs.get_mut(&kind)?;
        let mut kept = match &sub.has {
            Held::Plus(_, k) => k.clone(),
            _ => BTreeMap::new(),
        };
        let changed: Vec<Resource> = d
            .changed
            .iter()
            .filter_map(|n| {
                let stored = all.shared.get(n)?;
                (kept.get(n) != Some(&stored.0)).then(|| Resource {
                    name: n.clone(),
                    version: stored.0.clone(),
                    resource: Some(any(kind, stored)),
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
        Some(self.record(kind, has, version, changed, removed, vec![], count))
    }

    /// Bookkeeping of a push: the nonce, what the proxy will hold (and the
    /// rollback point for a NACK), status and history.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        kind: XdsType,
        has: Held,
        version: String,
        changed: Vec<Resource>,
        removed: Vec<String>,
        all: Vec<Any>,
        count: usize,
    ) -> Push {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let sub = self.subs.entry(kind).or_default();
        let before = std::mem::replace(&mut sub.has, has);
        // An unanswered earlier response is superseded; its rollback point stays.
        let before = match sub.pending.take() {
            Some((_, older)) => older,
            None => before,
        };
        sub.pending = Some((nonce.clone(), before));
        sub.sent_at = Some(std::time::Instant::now());
        let sent_version = version.clone();
        self.status.update(self.id, |p| {
            p.types.entry(kind).or_default().sent = sent_version;
        });
        self.status.record(PushRecord {
            time_ms: now_ms(),
            node: self.node.clone(),
            type_: kind,
            version: version.clone(),
            resources: count,
            removed: removed.len(),
            generation: self.generation,
        });
        Push {
            kind,
            nonce,
            version,
            all,
            changed,
            removed,
        }
    }

    /// Whether a type the proxy subscribed to may differ from what it
    /// holds (cheap: by pointer; [`Stream::pushes`] says for sure).
    pub(super) fn may_push(&self) -> bool {
        self.subs.iter().any(|(kind, sub)| {
            sub.requested
                && !matches!((&sub.has, self.current.get(kind)), (Held::Exactly(h), Some(all)) if h.same(all))
        })
    }

    /// The pushes for a new world, make-before-break: clusters and
    /// endpoints are added first (nothing removed), then listeners and
    /// routes switch, then what nothing uses any more goes.
    pub(super) fn pushes(&mut self, sotw: bool) -> Vec<Push> {
        let steps = [
            (XdsType::Cluster, true),
            (XdsType::Endpoint, true),
            (XdsType::Listener, false),
            (XdsType::Route, false),
            (XdsType::Cluster, false),
            (XdsType::Endpoint, false),
        ];
        steps
            .into_iter()
            .filter_map(|(t, keep)| self.push(t, false, sotw, keep))
            .collect()
    }
}
