//! Circuit breaking and outlier detection of one cluster, as Envoy does
//! them (`circuit_breakers.thresholds[]` with priority DEFAULT, and
//! `outlier_detection`'s consecutive-5xx ejection), so pilot's cluster
//! means the same in mesh-proxy as in Envoy.
//!
//! - Requests in flight are capped by `max_requests`; an HTTP/1.1 request
//!   also needs one of `max_connections` busy connections, and waits for
//!   one among at most `max_pending_requests` others. Past the caps a
//!   request is answered 503 at once (`x-envoy-overloaded: true`), so an
//!   overload costs no memory. (HTTP/2 multiplexes one connection per
//!   endpoint and worker: its requests never wait for a connection, as in
//!   Envoy, which always lets a pool open its first connection.)
//! - Retries in flight are capped by `max_retries` (3), or by a
//!   `retry_budget` when one is given (Envoy then ignores `max_retries`).
//! - `consecutive_5xx` failures in a row eject an endpoint for
//!   `base_ejection_time` × its ejections (at most `max_ejection_time`),
//!   back at the first `interval` tick after that; no more than
//!   `max_ejection_percent` of the endpoints are out (one always may be);
//!   with fewer than half of them usable the cluster balances over all
//!   (Envoy's panic threshold).
//!
//! The load counters live as long as the cluster's name does, carried
//! from one configuration to the next like the endpoint counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mesh_proto::envoy::config::cluster::v3 as xcluster;
use mesh_rules::FieldError;

use super::err;

/// Envoy's default for each of the four thresholds it counts in requests
/// or connections.
const DEFAULT_LIMIT: usize = 1024;
/// Envoy's default `max_retries`.
const DEFAULT_MAX_RETRIES: usize = 3;

/// The caps of one cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// HTTP/1.1 connections busy with a request (and TCP connections).
    pub max_connections: usize,
    /// HTTP/1.1 requests waiting for a connection.
    pub max_pending: usize,
    /// Requests in flight.
    pub max_requests: usize,
    /// How many retries may be in flight.
    pub retries: RetryLimit,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_LIMIT,
            max_pending: DEFAULT_LIMIT,
            max_requests: DEFAULT_LIMIT,
            retries: RetryLimit::Max(DEFAULT_MAX_RETRIES),
        }
    }
}

/// The cap on retries in flight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryLimit {
    /// At most this many.
    Max(usize),
    /// A share of the requests in flight (`retry_budget`).
    Budget(RetryBudget),
}

/// A limit on concurrent retries as a share of the requests in flight
/// (Envoy's `circuit_breakers.thresholds[].retry_budget`; the defaults,
/// 20 % and at least 3, are Envoy's). Retries then cannot multiply the load
/// on a cluster that is already failing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Percent of the requests in flight that may be retries.
    pub percent: f64,
    /// Retries always allowed, however few requests are in flight.
    pub min_concurrency: usize,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 20.0,
            min_concurrency: 3,
        }
    }
}

/// What a cluster has in flight, shared by every worker and carried across
/// configurations.
#[derive(Debug)]
pub struct Load {
    /// Requests in flight.
    pub requests: AtomicUsize,
    /// Retries in flight.
    pub retries: AtomicUsize,
    /// HTTP/1.1 (and TCP) connections busy.
    pub connections: AtomicUsize,
    /// HTTP/1.1 requests waiting for a connection.
    pub pending: AtomicUsize,
    /// Requests refused by a cap (Envoy's `upstream_rq_pending_overflow`).
    pub overflows: AtomicU64,
    /// Endpoints ejected by outlier detection (Envoy's
    /// `outlier_detection.ejections_enforced_total`).
    pub ejections: AtomicU64,
    /// A busy connection was freed: a pending request may take it.
    freed: tokio::sync::Notify,
    /// When outlier detection's interval ticks started.
    started: Instant,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            requests: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            overflows: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            freed: tokio::sync::Notify::new(),
            started: Instant::now(),
        }
    }
}

/// Takes one of `max` places counted by `counter`, if one is free.
fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// A request (or TCP connection) admitted past the caps; its places are
/// given back when it drops (with the response body, for HTTP).
#[derive(Debug)]
pub struct Admission {
    load: Arc<Load>,
    request: bool,
    connection: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.request {
            self.load.requests.fetch_sub(1, Ordering::AcqRel);
        }
        if self.connection {
            self.load.connections.fetch_sub(1, Ordering::AcqRel);
            self.load.freed.notify_one();
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A cap was reached: answer 503 at once.
    Overflow,
    /// The request's deadline passed while it waited for a connection.
    Timeout,
}

impl Load {
    fn overflow(&self) -> Refusal {
        self.overflows.fetch_add(1, Ordering::Relaxed);
        Refusal::Overflow
    }

    /// Admits one HTTP request under `limits`; an HTTP/1.1 one (`needs_connection`)
    /// waits for a busy connection to free until `deadline`.
    pub async fn admit(
        self: &Arc<Self>,
        limits: &Limits,
        needs_connection: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Admission, Refusal> {
        if !take(&self.requests, limits.max_requests) {
            return Err(self.overflow());
        }
        let mut admitted = Admission {
            load: self.clone(),
            request: true,
            connection: false,
        };
        if !needs_connection || take(&self.connections, limits.max_connections) {
            admitted.connection = needs_connection;
            return Ok(admitted);
        }
        if !take(&self.pending, limits.max_pending) {
            return Err(self.overflow());
        }
        let waited = match deadline {
            Some(d) => tokio::time::timeout_at(d, self.wait_connection(limits.max_connections))
                .await
                .map_err(|_| Refusal::Timeout),
            None => {
                self.wait_connection(limits.max_connections).await;
                Ok(())
            }
        };
        self.pending.fetch_sub(1, Ordering::AcqRel);
        waited?;
        admitted.connection = true;
        Ok(admitted)
    }

    /// Waits until a busy connection frees and takes its place.
    async fn wait_connection(&self, max: usize) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if take(&self.connections, max) {
                return;
            }
            freed.await;
        }
    }

    /// Admits one TCP connection (no waiting: over the cap it is closed).
    pub fn admit_connection(self: &Arc<Self>, limits: &Limits) -> Option<Admission> {
        if !take(&self.connections, limits.max_connections) {
            self.overflow();
            return None;
        }
        Some(Admission {
            load: self.clone(),
            request: false,
            connection: true,
        })
    }

    /// Takes a place for one retry if the limit has one; the place is given
    /// back when the returned guard drops.
    pub fn try_retry(self: &Arc<Self>, limit: &RetryLimit) -> Option<RetryPermit> {
        let allowed = match limit {
            RetryLimit::Max(n) => *n,
            RetryLimit::Budget(b) => {
                let in_flight = self.requests.load(Ordering::Relaxed) as f64;
                ((in_flight * b.percent / 100.0) as usize).max(b.min_concurrency)
            }
        };
        take(&self.retries, allowed).then(|| RetryPermit(self.clone()))
    }
}

/// A retry in flight, counted against its cluster's retry limit.
pub struct RetryPermit(Arc<Load>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The cluster's caps (its one DEFAULT circuit-breaker threshold).
pub fn limits(c: &xcluster::Cluster, path: &str) -> Result<Limits, FieldError> {
    let mut limits = Limits::default();
    let Some(cb) = &c.circuit_breakers else {
        return Ok(limits);
    };
    let tpath = format!("{path}.circuit_breakers.thresholds");
    let t = match cb.thresholds.as_slice() {
        [] => return Ok(limits),
        [t] => t,
        _ => {
            return Err(err(
                tpath,
                "exactly one threshold (priority DEFAULT) is supported",
            ));
        }
    };
    let tpath = format!("{tpath}[0]");
    if t.priority != 0 {
        return Err(err(
            format!("{tpath}.priority"),
            "only DEFAULT is supported",
        ));
    }
    let value = |v: &Option<u32>, default: usize| v.map_or(default, |v| v as usize);
    limits.max_connections = value(&t.max_connections.map(|v| v.value), DEFAULT_LIMIT);
    limits.max_pending = value(&t.max_pending_requests.map(|v| v.value), DEFAULT_LIMIT);
    limits.max_requests = value(&t.max_requests.map(|v| v.value), DEFAULT_LIMIT);
    limits.retries = RetryLimit::Max(value(&t.max_retries.map(|v| v.value), DEFAULT_MAX_RETRIES));
    if let Some(b) = &t.retry_budget {
        let mut budget = RetryBudget::default();
        if let Some(p) = &b.budget_percent {
            if !(0.0..=100.0).contains(&p.value) {
                return Err(err(
                    format!("{tpath}.retry_budget.budget_percent"),
                    format!("{} is not a percentage (0 to 100)", p.value),
                ));
            }
            budget.percent = p.value;
        }
        if let Some(m) = &b.min_retry_concurrency {
            budget.min_concurrency = m.value as usize;
        }
        limits.retries = RetryLimit::Budget(budget);
    }
    Ok(limits)
}

/// Consecutive-5xx outlier detection of one cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outlier {
    /// Failures in a row that eject.
    pub consecutive_5xx: u32,
    /// Percent chance that a detected outlier is ejected.
    pub enforcing: u32,
    /// The ejection sweep's period: ejected endpoints return on its ticks.
    pub interval: Duration,
    /// Ejection time per ejection so far.
    pub base_ejection_time: Duration,
    /// Longest ejection.
    pub max_ejection_time: Duration,
    /// Percent of the endpoints that may be out at once.
    pub max_ejection_percent: u32,
}

/// What outlier detection keeps per endpoint (inside its counters).
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive: AtomicU32,
    /// Ejected until this many milliseconds after [`Load`]'s start (0: not).
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl EndpointHealth {
    /// Whether the endpoint is ejected at `now` (ms since the load's start).
    pub fn ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Acquire)
    }
}

impl Outlier {
    /// Envoy's `outlier_detection`, with Envoy's defaults for what is unset.
    /// Success-rate and failure-percentage ejection are not implemented, so
    /// they must be off (`enforcing_success_rate: 0`, which is not Envoy's
    /// default and so must be written).
    pub fn from_xds(
        o: &Option<xcluster::OutlierDetection>,
        path: &str,
    ) -> Result<Option<Outlier>, FieldError> {
        let Some(o) = o else { return Ok(None) };
        let path = format!("{path}.outlier_detection");
        if o.enforcing_success_rate.map(|v| v.value) != Some(0) {
            return Err(err(
                format!("{path}.enforcing_success_rate"),
                "success-rate ejection is not supported: set enforcing_success_rate to 0",
            ));
        }
        let pct = |v: Option<u32>, default: u32, field: &str| match v {
            Some(v) if v > 100 => Err(err(
                format!("{path}.{field}"),
                format!("{v} is not a percentage (0 to 100)"),
            )),
            v => Ok(v.unwrap_or(default)),
        };
        let time = |d: &Option<mesh_proto::google::protobuf::Duration>, default: u64| {
            super::duration(d).unwrap_or(Duration::from_secs(default))
        };
        let interval = time(&o.interval, 10);
        if interval.is_zero() {
            return Err(err(format!("{path}.interval"), "must be more than 0"));
        }
        let base_ejection_time = time(&o.base_ejection_time, 30);
        Ok(Some(Outlier {
            consecutive_5xx: o.consecutive_5xx.map_or(5, |v| v.value).max(1),
            enforcing: pct(
                o.enforcing_consecutive_5xx.map(|v| v.value),
                100,
                "enforcing_consecutive_5xx",
            )?,
            interval,
            base_ejection_time,
            max_ejection_time: time(&o.max_ejection_time, 300).max(base_ejection_time),
            max_ejection_percent: pct(
                o.max_ejection_percent.map(|v| v.value),
                10,
                "max_ejection_percent",
            )?,
        }))
    }

    /// Notes the outcome of one request to `endpoint` (one of `all`);
    /// returns whether it was ejected by it.
    pub fn observe(
        &self,
        load: &Load,
        all: &[Arc<super::Endpoint>],
        endpoint: &super::Endpoint,
        failed: bool,
    ) -> bool {
        let h = &endpoint.counters.health;
        if !failed {
            h.consecutive.store(0, Ordering::Relaxed);
            return false;
        }
        if h.consecutive.fetch_add(1, Ordering::AcqRel) + 1 < self.consecutive_5xx {
            return false;
        }
        h.consecutive.store(0, Ordering::Relaxed);
        let now = millis(load.started.elapsed());
        if h.ejected(now) {
            return false;
        }
        let out = all
            .iter()
            .filter(|e| e.counters.health.ejected(now))
            .count();
        let capped = out * 100 >= all.len() * self.max_ejection_percent as usize;
        if (out > 0 && capped) || fastrand::u32(..100) >= self.enforcing {
            return false;
        }
        let interval = millis(self.interval);
        // Each interval since the last ejection ended without one takes one
        // off the multiplier, as Envoy's sweep does.
        let ended = h.ejected_until_ms.load(Ordering::Acquire);
        let decayed = now.saturating_sub(ended) / interval;
        let times = u64::from(h.ejections.load(Ordering::Acquire)).saturating_sub(decayed) + 1;
        h.ejections.store(times as u32, Ordering::Release);
        let lasts = millis(self.base_ejection_time)
            .saturating_mul(times)
            .min(millis(self.max_ejection_time));
        // Back at the first sweep after the ejection time.
        let until = (now + lasts).div_ceil(interval) * interval;
        h.ejected_until_ms.store(until, Ordering::Release);
        load.ejections.fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl Load {
    /// Milliseconds since the load's start: the clock of [`EndpointHealth`].
    pub fn now_ms(&self) -> u64 {
        millis(self.started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_is_a_share_of_requests_in_flight() {
        let load = Arc::new(Load::default());
        let budget = RetryLimit::Budget(RetryBudget::default());
        // Few requests: the minimum of 3 concurrent retries.
        load.requests.store(4, Ordering::Relaxed);
        let held: Vec<_> = (0..3)
            .map(|_| load.try_retry(&budget).expect("within 3"))
            .collect();
        assert!(
            load.try_retry(&budget).is_none(),
            "a 4th retry at once is refused"
        );
        drop(held);
        // 50 in flight: 20 % is 10.
        load.requests.store(50, Ordering::Relaxed);
        let held: Vec<_> = (0..10)
            .map(|_| load.try_retry(&budget).expect("within 10"))
            .collect();
        assert!(load.try_retry(&budget).is_none());
        // A finished retry gives its place back.
        drop(held);
        assert_eq!(load.retries.load(Ordering::Relaxed), 0);
        assert!(load.try_retry(&RetryLimit::Max(1)).is_some());
    }

    #[tokio::test]
    async fn requests_past_the_caps_overflow_and_pending_ones_wait() {
        let load = Arc::new(Load::default());
        let limits = Limits {
            max_connections: 1,
            max_pending: 1,
            max_requests: 3,
            ..Limits::default()
        };
        let first = load
            .admit(&limits, true, None)
            .await
            .expect("a free connection");
        // The second waits for the connection; the third finds the queue full.
        let second = tokio::spawn({
            let (load, limits) = (load.clone(), limits);
            async move { load.admit(&limits, true, None).await.map(|_| ()) }
        });
        while load.pending.load(Ordering::Acquire) != 1 {
            tokio::task::yield_now().await;
        }
        let third = load.admit(&limits, true, None).await;
        assert_eq!(third.unwrap_err(), Refusal::Overflow);
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(()));
        assert_eq!(load.overflows.load(Ordering::Relaxed), 1);
        // max_requests counts HTTP/2 requests, which need no connection.
        let held: Vec<_> = admit_http2(&load, &limits, 3).await;
        assert_eq!(
            load.admit(&limits, false, None).await.unwrap_err(),
            Refusal::Overflow
        );
        drop(held);
        assert_eq!(load.requests.load(Ordering::Relaxed), 0);
    }

    fn endpoints(n: u16) -> Vec<Arc<super::super::Endpoint>> {
        (0..n)
            .map(|i| {
                Arc::new(super::super::Endpoint {
                    address: std::net::SocketAddr::from(([127, 0, 0, 1], 8000 + i)),
                    healthy: true,
                    priority: 0,
                    counters: Arc::default(),
                })
            })
            .collect()
    }

    #[test]
    fn consecutive_failures_eject_within_the_percentage() {
        let o = Outlier {
            consecutive_5xx: 3,
            enforcing: 100,
            interval: Duration::from_millis(100),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        };
        let load = Load::default();
        let all = endpoints(4);
        // Two failures, a success, two more: never three in a row.
        for failed in [true, true, false, true, true] {
            assert!(!o.observe(&load, &all, &all[0], failed));
        }
        assert!(
            o.observe(&load, &all, &all[0], true),
            "the third in a row ejects"
        );
        let now = load.now_ms();
        assert!(all[0].health.ejected(now));
        let until = all[0].health.ejected_until_ms.load(Ordering::Relaxed);
        assert_eq!(until % 100, 0, "back on an interval tick");
        assert!(until >= 30_000, "for the base ejection time");
        // 10 % of 4 is less than one: the first is ejected regardless, a
        // second is not.
        for _ in 0..3 {
            o.observe(&load, &all, &all[1], true);
        }
        assert!(!all[1].health.ejected(load.now_ms()));
        assert_eq!(load.ejections.load(Ordering::Relaxed), 1);
    }

    async fn admit_http2(load: &Arc<Load>, limits: &Limits, n: usize) -> Vec<Admission> {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(
                load.admit(limits, false, None)
                    .await
                    .expect("within max_requests"),
            );
        }
        held
    }
}
