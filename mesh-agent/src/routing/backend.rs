//! One backend service port at request time: its endpoints, how one is picked (round robin
//! or least request), passive health checking (outlier detection, Envoy/Istio semantics) and
//! its retry budget.
//!
//! Picking is lock-free (an atomic per endpoint holds its ejection deadline), since it runs
//! on every attempt; reporting takes the endpoint's own mutex for its counters, and ejecting
//! (rare) additionally takes a backend-wide mutex so that two endpoints failing at once cannot
//! both slip under `max_ejection_percent`.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rand::Rng;
use serde::Serialize;

use crate::{
    config::{LoadBalancer, OutlierDetection, RetryBudget},
    routing::{BackendKey, Upstream, budget::Budget},
};

/// The longest ejection, as Envoy's default `max_ejection_time`: without a cap an endpoint
/// that flaps for a day would be ejected for hours once it recovers.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// How one attempt to an endpoint ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this HTTP status.
    Response(u16),
    ConnectFailure,
    Reset,
    Timeout,
    /// The request was refused by policy: not the endpoint's fault.
    Refused,
}

impl Outcome {
    /// `(counts as 5xx, counts as a gateway error)`, or `None` when the outcome says nothing
    /// about the endpoint's health. Locally originated failures count as both, as in Envoy
    /// without `split_external_local_origin_errors` (a connect failure is a 503 there, a
    /// timeout a 504).
    fn classify(&self) -> Option<(bool, bool)> {
        match *self {
            Outcome::Response(status) => Some((status >= 500, matches!(status, 502..=504))),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => Some((true, true)),
            Outcome::Refused => None,
        }
    }
}

/// Outlier detection counters of one endpoint.
#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Ejections so far: the multiplier of the next ejection's duration.
    ejections: u32,
}

#[derive(Debug)]
struct Endpoint {
    upstream: Upstream,
    /// Attempts in flight (held by [`Pick`]s): the least-request load.
    active: AtomicUsize,
    /// Nanoseconds since the backend's origin until which the endpoint is ejected; an
    /// endpoint is in rotation when this is not in the future (0 = never ejected). Being a
    /// deadline, un-ejection needs no background task and no write: it simply passes.
    ejected_until: AtomicU64,
    health: Mutex<Health>,
}

#[derive(Debug)]
pub struct Backend {
    key: BackendKey,
    lb: LoadBalancer,
    outlier: Option<OutlierDetection>,
    /// In config order, which round robin follows.
    endpoints: Vec<Endpoint>,
    /// Round robin position.
    next: AtomicUsize,
    budget: Budget,
    /// Time zero of the `ejected_until` deadlines.
    origin: Instant,
    /// Serializes the "how many are ejected now" check with the ejection itself.
    eject_lock: Mutex<()>,
    ejections_total: AtomicU64,
}

/// An endpoint in use by one attempt: holds the least-request counter until dropped.
pub struct Pick {
    backend: Arc<Backend>,
    index: usize,
}

impl Pick {
    pub fn upstream(&self) -> &Upstream {
        &self.endpoint().upstream
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint().upstream.addr
    }

    fn endpoint(&self) -> &Endpoint {
        // `index` was produced by `pick` over this very (immutable) endpoint list.
        &self.backend.endpoints[self.index]
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.endpoint().active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Pick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pick")
            .field("backend", &self.backend.key)
            .field("upstream", self.upstream())
            .finish()
    }
}

/// For /stats and /config_dump.
#[derive(Debug, Serialize)]
pub struct BackendSnapshot {
    pub key: BackendKey,
    pub lb: LoadBalancer,
    pub outlier_detection: Option<OutlierDetection>,
    pub ejections_total: u64,
    pub endpoints: Vec<EndpointSnapshot>,
}

#[derive(Debug, Serialize)]
pub struct EndpointSnapshot {
    pub addr: SocketAddr,
    /// `Via`'s Debug form.
    pub via: String,
    pub active_requests: usize,
    /// Consecutive 5xx (including locally originated failures).
    pub consecutive_errors: u32,
    pub consecutive_gateway_errors: u32,
    pub ejected: bool,
    /// Time left in the current ejection (0 when in rotation).
    pub ejected_for_ms: u64,
    pub ejections_total: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data are plain counters that stay consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Backend {
    pub fn new(
        key: BackendKey,
        upstreams: Vec<Upstream>,
        lb: LoadBalancer,
        outlier: Option<OutlierDetection>,
        budget: &RetryBudget,
    ) -> Backend {
        Backend {
            key,
            lb,
            outlier,
            endpoints: upstreams
                .into_iter()
                .map(|upstream| Endpoint {
                    upstream,
                    active: AtomicUsize::new(0),
                    ejected_until: AtomicU64::new(0),
                    health: Mutex::new(Health::default()),
                })
                .collect(),
            next: AtomicUsize::new(0),
            budget: Budget::new(budget),
            origin: Instant::now(),
            eject_lock: Mutex::new(()),
            ejections_total: AtomicU64::new(0),
        }
    }

    pub fn key(&self) -> &BackendKey {
        &self.key
    }

    /// The backend for a new model, given the running model's backend of the same key: the
    /// same object when nothing about it changed (so its budget, round-robin position and
    /// outlier state simply continue), otherwise a new one that keeps what was learned about
    /// the endpoints that stay: their ejections and failure counts, as Envoy keeps host
    /// health across endpoint updates. On Kubernetes endpoints change all the time; without
    /// this, every pod restart anywhere in a service would return ejected endpoints to
    /// rotation.
    pub fn following(
        previous: Option<&Arc<Backend>>,
        key: BackendKey,
        upstreams: Vec<Upstream>,
        lb: LoadBalancer,
        outlier: Option<OutlierDetection>,
        budget: &RetryBudget,
    ) -> Arc<Backend> {
        let Some(previous) = previous else {
            return Arc::new(Backend::new(key, upstreams, lb, outlier, budget));
        };
        let same_endpoints = previous.endpoints.len() == upstreams.len()
            && previous
                .endpoints
                .iter()
                .zip(&upstreams)
                .all(|(e, u)| &e.upstream == u);
        if same_endpoints
            && previous.lb == lb
            && previous.outlier == outlier
            && previous.budget.has_settings(budget)
        {
            return previous.clone();
        }
        let mut next = Backend::new(key, upstreams, lb, outlier, budget);
        if next.outlier.is_some() {
            // Deadlines are relative to the origin: share it so they keep their meaning.
            next.origin = previous.origin;
            for endpoint in &next.endpoints {
                let Some(old) = previous
                    .endpoints
                    .iter()
                    .find(|e| e.upstream == endpoint.upstream)
                else {
                    continue;
                };
                endpoint
                    .ejected_until
                    .store(old.ejected_until.load(Ordering::Acquire), Ordering::Release);
                let old_health = old.health.lock().unwrap_or_else(|p| p.into_inner());
                *endpoint.health.lock().unwrap_or_else(|p| p.into_inner()) = Health {
                    consecutive_5xx: old_health.consecutive_5xx,
                    consecutive_gateway: old_health.consecutive_gateway,
                    ejections: old_health.ejections,
                };
            }
            next.ejections_total = AtomicU64::new(previous.ejections_total());
        }
        Arc::new(next)
    }

    /// The retry budget of this backend service.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// Picks an endpoint that is not ejected, per the load balancer. `avoid`: the endpoint of
    /// the previous attempt of this request; skipped when another healthy endpoint exists.
    /// None when there is no endpoint or all are ejected (=> 503 UH). Ejections are always
    /// honored: `max_ejection_percent` keeps some endpoints in rotation unless it allows all.
    pub fn pick(self: &Arc<Self>, avoid: Option<SocketAddr>) -> Option<Pick> {
        self.pick_at(avoid, Instant::now())
    }

    /// Feeds the outcome of an attempt to outlier detection (consecutive counters per
    /// endpoint; a success resets them). Returns true if this outcome ejected the endpoint.
    pub fn report(&self, addr: SocketAddr, outcome: &Outcome) -> bool {
        self.report_at(addr, outcome, Instant::now())
    }

    pub fn snapshot(&self) -> BackendSnapshot {
        self.snapshot_at(Instant::now())
    }

    /// `now` on the deadline clock.
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    fn is_ejected(endpoint: &Endpoint, now_nanos: u64) -> bool {
        endpoint.ejected_until.load(Ordering::Relaxed) > now_nanos
    }

    fn pick_at(self: &Arc<Self>, avoid: Option<SocketAddr>, now: Instant) -> Option<Pick> {
        let now = self.nanos(now);
        let mut candidates: Vec<usize> = (0..self.endpoints.len())
            .filter(|&i| !Self::is_ejected(&self.endpoints[i], now))
            .collect();
        if let Some(avoid) = avoid
            && candidates
                .iter()
                .any(|&i| self.endpoints[i].upstream.addr != avoid)
        {
            candidates.retain(|&i| self.endpoints[i].upstream.addr != avoid);
        }
        let index = match (self.lb, candidates.len()) {
            (_, 0) => return None,
            (_, 1) => candidates[0],
            (LoadBalancer::RoundRobin, n) => {
                candidates[self.next.fetch_add(1, Ordering::Relaxed) % n]
            }
            (LoadBalancer::LeastRequest, n) => {
                // Power of two choices: nearly as good as scanning for the least loaded
                // endpoint, without every proxy thread herding onto the same one.
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                let load_a = self.endpoints[a].active.load(Ordering::Relaxed);
                let load_b = self.endpoints[b].active.load(Ordering::Relaxed);
                match load_a.cmp(&load_b) {
                    std::cmp::Ordering::Less => a,
                    std::cmp::Ordering::Greater => b,
                    std::cmp::Ordering::Equal => {
                        if rng.random::<bool>() {
                            a
                        } else {
                            b
                        }
                    }
                }
            }
        };
        self.endpoints[index].active.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            backend: Arc::clone(self),
            index,
        })
    }

    fn report_at(&self, addr: SocketAddr, outcome: &Outcome, now: Instant) -> bool {
        let Some(outlier) = &self.outlier else {
            return false;
        };
        let Some((is_5xx, is_gateway)) = outcome.classify() else {
            return false;
        };
        let Some(endpoint) = self.endpoints.iter().find(|e| e.upstream.addr == addr) else {
            // The endpoint list was replaced while the attempt ran.
            return false;
        };
        let now_nanos = self.nanos(now);
        let mut health = lock(&endpoint.health);
        if Self::is_ejected(endpoint, now_nanos) {
            // Attempts that were in flight when it was ejected: already judged.
            return false;
        }
        if !is_5xx {
            health.consecutive_5xx = 0;
            health.consecutive_gateway = 0;
            return false;
        }
        health.consecutive_5xx = health.consecutive_5xx.saturating_add(1);
        // As in Envoy, a 5xx that is not a gateway error (500, 501, ...) ends a run of
        // gateway errors: the counter is about *consecutive* gateway errors.
        health.consecutive_gateway = if is_gateway {
            health.consecutive_gateway.saturating_add(1)
        } else {
            0
        };
        let tripped_5xx = outlier.consecutive_5xx_errors != 0
            && health.consecutive_5xx >= outlier.consecutive_5xx_errors;
        let tripped_gateway = outlier.consecutive_gateway_errors != 0
            && health.consecutive_gateway >= outlier.consecutive_gateway_errors;
        if !tripped_5xx && !tripped_gateway {
            return false;
        }
        // As in Envoy, the run is consumed whether or not the ejection is allowed: when
        // max_ejection_percent refuses it, another full run is needed to try again.
        health.consecutive_5xx = 0;
        health.consecutive_gateway = 0;
        self.eject(endpoint, &mut health, outlier, now_nanos)
    }

    /// Ejects `endpoint` unless that would put more than `max_ejection_percent` of the
    /// endpoints out of rotation (one ejection is always allowed, as in Envoy, except with
    /// percent 0).
    fn eject(
        &self,
        endpoint: &Endpoint,
        health: &mut Health,
        outlier: &OutlierDetection,
        now_nanos: u64,
    ) -> bool {
        // Lock order: endpoint health, then eject_lock; only ejected_until atomics of other
        // endpoints are read here, never their health mutex.
        let _guard = lock(&self.eject_lock);
        let total = self.endpoints.len();
        let allowed = if outlier.max_ejection_percent == 0 {
            0
        } else {
            (total.saturating_mul(outlier.max_ejection_percent.min(100) as usize) / 100).max(1)
        };
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| Self::is_ejected(e, now_nanos))
            .count();
        if ejected >= allowed {
            return false;
        }
        // Envoy lowers the multiplier again after healthy periods; here the n-th ejection
        // simply lasts n × base, capped at MAX_EJECTION_TIME (or base if that is longer).
        health.ejections = health.ejections.saturating_add(1);
        let duration = outlier
            .base_ejection_time
            .saturating_mul(health.ejections)
            .min(MAX_EJECTION_TIME.max(outlier.base_ejection_time));
        let duration = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        endpoint
            .ejected_until
            .store(now_nanos.saturating_add(duration), Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            backend = %self.key,
            endpoint = %endpoint.upstream.addr,
            ejection = health.ejections,
            for_ms = duration / 1_000_000,
            "outlier detection ejected an endpoint"
        );
        true
    }

    fn snapshot_at(&self, now: Instant) -> BackendSnapshot {
        let now_nanos = self.nanos(now);
        BackendSnapshot {
            key: self.key.clone(),
            lb: self.lb,
            outlier_detection: self.outlier.clone(),
            ejections_total: self.ejections_total(),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| {
                    let health = lock(&e.health);
                    let left = e
                        .ejected_until
                        .load(Ordering::Relaxed)
                        .saturating_sub(now_nanos);
                    EndpointSnapshot {
                        addr: e.upstream.addr,
                        via: format!("{:?}", e.upstream.via),
                        active_requests: e.active.load(Ordering::Relaxed),
                        consecutive_errors: health.consecutive_5xx,
                        consecutive_gateway_errors: health.consecutive_gateway,
                        ejected: left > 0,
                        ejected_for_ms: left.div_ceil(1_000_000),
                        ejections_total: u64::from(health.ejections),
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
