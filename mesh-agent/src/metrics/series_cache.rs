//! The label sets a connection's requests resolved, kept for its next requests.
//!
//! Resolving a request's labels means looking up the service, the endpoint's workload (with
//! what its agent said about it) and building 25 label values; finding its series means
//! hashing all of them. Requests on one connection almost always share the outcome of the
//! previous ones (same route, backend, endpoint and status), so each client connection (and
//! each tunnel stream at the destination) keeps the few label sets it used, keyed by the
//! cheap facts they were resolved from. A key holds the model it was resolved against (the
//! `State` in force, and the generation of what destination agents said about their
//! workloads): any change of either resolves again.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
};

use super::{
    labels::{Reporter, RequestLabels, RequestProtocol, Security},
    registry::RequestSeries,
};
use crate::{routing::BackendKey, state::State};

/// Label sets kept per connection; a connection that sees more distinct outcomes than this
/// (many statuses from many backends) resolves the rarer ones each time.
const KEPT: usize = 8;

/// What a request's labels are resolved from. The service is borrowed from the request's
/// meter: looking a key up allocates nothing; only a new entry owns a copy.
#[derive(Debug, Clone)]
pub struct SeriesKey<'a> {
    pub facts: Facts,
    pub service: Option<&'a BackendKey>,
}

/// Everything of a key but the service.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The model the labels were resolved against (compared by identity, never upgraded:
    /// an old model is not kept alive by a cache).
    pub state: Weak<State>,
    /// `TunnelPool::remote_generation` when resolved.
    pub remote_generation: u64,
    pub istio: bool,
    pub reporter: Reporter,
    pub endpoint: Option<SocketAddr>,
    pub protocol: RequestProtocol,
    pub security: Security,
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub flags: Option<&'static str>,
}

impl PartialEq for Facts {
    fn eq(&self, other: &Facts) -> bool {
        Weak::ptr_eq(&self.state, &other.state)
            && self.remote_generation == other.remote_generation
            && self.istio == other.istio
            && self.reporter == other.reporter
            && self.endpoint == other.endpoint
            && self.protocol == other.protocol
            && self.security == other.security
            && self.status == other.status
            && self.grpc_status == other.grpc_status
            && self.flags == other.flags
    }
}

/// A kept key: its facts, and its own copy of the service.
struct KeptKey {
    facts: Facts,
    service: Option<BackendKey>,
}

impl KeptKey {
    fn of(key: &SeriesKey<'_>) -> KeptKey {
        KeptKey {
            facts: key.facts.clone(),
            service: key.service.cloned(),
        }
    }

    fn matches(&self, key: &SeriesKey<'_>) -> bool {
        self.facts == key.facts && self.service.as_ref() == key.service
    }
}

/// Labels and, when Istio metrics are on, the series they count in.
#[derive(Clone)]
pub struct Resolved {
    pub labels: Arc<RequestLabels>,
    pub series: Option<RequestSeries>,
}

#[derive(Default)]
pub struct SeriesCache {
    /// Most recently used first.
    entries: Mutex<Vec<(KeptKey, Resolved)>>,
}

impl SeriesCache {
    /// The entry for `key`, resolved with `resolve` when it is not kept.
    pub fn get(&self, key: &SeriesKey<'_>, resolve: impl FnOnce() -> Resolved) -> Resolved {
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(at) = entries.iter().position(|(k, _)| k.matches(key)) {
                // Kept near the front, so the common case compares one key.
                if at > 0 {
                    entries[..=at].rotate_right(1);
                }
                return entries[0].1.clone();
            }
        }
        // Resolved without the lock: it takes the state's and the registry's.
        let resolved = resolve();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.truncate(KEPT - 1);
        entries.insert(0, (KeptKey::of(key), resolved.clone()));
        resolved
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn web() -> &'static BackendKey {
        static WEB: std::sync::OnceLock<BackendKey> = std::sync::OnceLock::new();
        WEB.get_or_init(|| BackendKey {
            namespace: "shop".into(),
            name: "web".into(),
            port: 80,
        })
    }

    fn key(state: &Arc<State>, status: u16) -> SeriesKey<'static> {
        SeriesKey {
            facts: Facts {
                state: Arc::downgrade(state),
                remote_generation: 0,
                istio: true,
                reporter: Reporter::Source,
                endpoint: Some("10.1.2.3:8080".parse().unwrap()),
                protocol: RequestProtocol::Http,
                security: Security::MutualTls,
                status,
                grpc_status: None,
                flags: None,
            },
            service: Some(web()),
        }
    }

    fn resolved(code: u16) -> Resolved {
        Resolved {
            labels: Arc::new(RequestLabels {
                response_code: code,
                ..RequestLabels::default()
            }),
            series: None,
        }
    }

    /// A model of a node without workloads (each call a new one).
    fn state() -> Arc<State> {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = format!("node:\n  name: n1\n  cgroup: {}\n", dir.path().display());
        let config = crate::config::parse_str(&yaml, "t.yaml").expect("config");
        Arc::new(State::build(config, None).expect("state"))
    }

    #[test]
    fn a_kept_key_is_not_resolved_again() {
        let cache = SeriesCache::default();
        let s = state();
        let calls = Cell::new(0);
        for _ in 0..3 {
            let r = cache.get(&key(&s, 200), || {
                calls.set(calls.get() + 1);
                resolved(200)
            });
            assert_eq!(r.labels.response_code, 200);
        }
        assert_eq!(calls.get(), 1);
        let r = cache.get(&key(&s, 503), || resolved(503));
        assert_eq!(r.labels.response_code, 503);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_new_model_or_remote_generation_resolves_again() {
        let cache = SeriesCache::default();
        let old = state();
        cache.get(&key(&old, 200), || resolved(200));
        let new = state();
        let calls = Cell::new(0);
        cache.get(&key(&new, 200), || {
            calls.set(calls.get() + 1);
            resolved(200)
        });
        let mut later = key(&new, 200);
        later.facts.remote_generation = 1;
        cache.get(&later, || {
            calls.set(calls.get() + 1);
            resolved(200)
        });
        let v2 = BackendKey {
            name: "web-v2".into(),
            ..web().clone()
        };
        let mut other_backend = key(&new, 200);
        other_backend.service = Some(&v2);
        cache.get(&other_backend, || {
            calls.set(calls.get() + 1);
            resolved(200)
        });
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn at_most_a_few_entries_are_kept() {
        let cache = SeriesCache::default();
        let s = state();
        for status in 200..300 {
            cache.get(&key(&s, status), || resolved(status));
        }
        assert_eq!(cache.len(), KEPT);
        // The most recent stay.
        let calls = Cell::new(0);
        cache.get(&key(&s, 299), || {
            calls.set(1);
            resolved(299)
        });
        assert_eq!(calls.get(), 0);
    }
}
