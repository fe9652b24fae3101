//! The node's current certificates: issued on first use, rotated before expiry.
//!
//! TLS configs ask [`IdentityManager::svid`] on every handshake, so replacing an entry is all a
//! rotation takes: new handshakes get the new certificate, established connections keep
//! theirs (a TLS session never re-authenticates), nothing is dropped.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use rustls::RootCertStore;
use serde::Serialize;
use tracing::{debug, error, info, warn};

use super::{Ca, RootInfo, SpiffeId, Svid, agent_id, rfc3339};
use crate::config::IdentityConfig;

/// The rotation task looks at the certificates at least this often, so certificates issued
/// meanwhile, wall-clock jumps and failed attempts are picked up without a wake-up channel.
const MAX_TICK: Duration = Duration::from_secs(1);
/// ... and never more often than this, so a certificate that is already due cannot spin it.
const MIN_TICK: Duration = Duration::from_millis(50);

/// One current certificate, as shown by the admin `/certs` endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub spiffe_id: String,
    /// Lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// Negative once expired.
    pub expires_in_seconds: i64,
    /// Negative when rotation is overdue.
    pub rotate_in_seconds: i64,
}

/// Issues, caches and rotates the certificates of this node's identities (its workloads and
/// the agent itself). Shared through `Arc`.
pub struct IdentityManager {
    ca: Ca,
    trust_domain: String,
    lifetime: Duration,
    certs: RwLock<HashMap<SpiffeId, Arc<Svid>>>,
    rotations: AtomicU64,
}

impl std::fmt::Debug for IdentityManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityManager")
            .field("trust_domain", &self.trust_domain)
            .field("lifetime", &self.lifetime)
            .field("certs", &self.read().len())
            .finish_non_exhaustive()
    }
}

impl IdentityManager {
    pub fn new(ca: Ca, trust_domain: String, lifetime: Duration) -> IdentityManager {
        IdentityManager {
            ca,
            trust_domain,
            lifetime,
            certs: RwLock::new(HashMap::new()),
            rotations: AtomicU64::new(0),
        }
    }

    /// The CA of `config` (see [`Ca::load`]) and a manager issuing with its lifetime.
    pub fn load(config: &IdentityConfig) -> Result<IdentityManager> {
        let ca = Ca::load(config)?;
        Ok(IdentityManager::new(
            ca,
            config.trust_domain.clone(),
            config.cert_lifetime,
        ))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Lifetime of the certificates this manager issues.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The roots peers' certificates must chain to.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.ca.roots()
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// How many certificates the rotation task has replaced since start.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }

    /// The current certificate of `id`, issued now if there is none yet (or if the one held
    /// has expired, e.g. when no rotation task runs). Only identities of this trust domain.
    pub fn svid(&self, id: &SpiffeId) -> Result<Arc<Svid>> {
        if id.trust_domain != self.trust_domain {
            bail!(
                "cannot issue a certificate for {id}: not in trust domain {}",
                self.trust_domain
            );
        }
        let now = SystemTime::now();
        if let Some(svid) = self.read().get(id)
            && !svid.expired_at(now)
        {
            return Ok(svid.clone());
        }
        let issued = Arc::new(self.ca.issue(id, self.lifetime)?);
        let mut certs = self.write();
        // Another caller may have issued one meanwhile: keep theirs, so everyone agrees.
        if let Some(svid) = certs.get(id)
            && !svid.expired_at(now)
        {
            return Ok(svid.clone());
        }
        debug!(spiffe_id = %id, serial = %issued.serial, "issued certificate");
        certs.insert(id.clone(), issued.clone());
        Ok(issued)
    }

    /// Issues the certificates of `ids` now (at start: the local workloads and the agent), so
    /// that a CA problem shows at start rather than at the first connection.
    pub fn ensure(&self, ids: &[SpiffeId]) -> Result<()> {
        for id in ids {
            self.svid(id)?;
        }
        Ok(())
    }

    /// Drops the certificates of identities not in `ids` (workloads that left the node). The
    /// agent's own identity is always kept: the inbound listener presents it.
    pub fn retain(&self, ids: &[SpiffeId]) {
        let agent = agent_id(&self.trust_domain);
        self.write()
            .retain(|id, _| *id == agent || ids.contains(id));
    }

    /// Starts the task that re-issues each certificate once it reaches
    /// [`Svid::rotate_at`]. It ends when the manager is dropped.
    pub fn spawn_rotation(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let manager = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(manager) = manager.upgrade() else {
                    return;
                };
                let wait = manager.rotate_due();
                drop(manager);
                tokio::time::sleep(wait).await;
            }
        })
    }

    /// Rotates every certificate that is due; returns how long to wait before looking again.
    fn rotate_due(&self) -> Duration {
        let now = SystemTime::now();
        let due: Vec<Arc<Svid>> = self
            .read()
            .values()
            .filter(|svid| now >= svid.rotate_at())
            .cloned()
            .collect();
        let mut failed = false;
        for old in due {
            if let Err(e) = self.rotate(&old) {
                failed = true;
                if old.expired_at(SystemTime::now()) {
                    error!(spiffe_id = %old.id, serial = %old.serial, "certificate expired and could not be rotated: {e:#}");
                } else {
                    warn!(spiffe_id = %old.id, serial = %old.serial, "could not rotate certificate, will retry: {e:#}");
                }
            }
        }
        if failed {
            return MAX_TICK;
        }
        let next = self.read().values().map(|svid| svid.rotate_at()).min();
        next.map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
        .unwrap_or(MAX_TICK)
        .clamp(MIN_TICK, MAX_TICK)
    }

    /// Replaces `old` with a freshly issued certificate, unless it was dropped or replaced
    /// meanwhile.
    pub(crate) fn rotate(&self, old: &Arc<Svid>) -> Result<()> {
        let new = Arc::new(self.ca.issue(&old.id, self.lifetime)?);
        let mut certs = self.write();
        match certs.get_mut(&old.id) {
            Some(current) if Arc::ptr_eq(current, old) => {
                *current = new.clone();
                drop(certs);
                self.rotations.fetch_add(1, Ordering::Relaxed);
                info!(
                    spiffe_id = %old.id,
                    old_serial = %old.serial,
                    new_serial = %new.serial,
                    "rotated certificate"
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// The current certificates, sorted by SPIFFE ID, for `/certs`.
    pub fn snapshot(&self) -> Vec<CertInfo> {
        let now = SystemTime::now();
        let secs_until = |t: SystemTime| match t.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let mut certs: Vec<CertInfo> = self
            .read()
            .values()
            .map(|svid| CertInfo {
                spiffe_id: svid.id.to_string(),
                serial: svid.serial.clone(),
                not_before: rfc3339(svid.not_before),
                not_after: rfc3339(svid.not_after),
                expires_in_seconds: secs_until(svid.not_after),
                rotate_in_seconds: secs_until(svid.rotate_at()),
            })
            .collect();
        certs.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id));
        certs
    }

    /// The trust bundle's roots, for `/certs`.
    pub fn bundle_info(&self) -> Vec<RootInfo> {
        self.ca.bundle_info()
    }

    /// The trust bundle as PEM.
    pub fn bundle_pem(&self) -> String {
        self.ca.bundle_pem()
    }

    /// A poisoned lock only means a panic elsewhere while holding it; the map itself is
    /// always consistent (single inserts/replaces), so keep serving.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<SpiffeId, Arc<Svid>>> {
        self.certs.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<SpiffeId, Arc<Svid>>> {
        self.certs.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        config::CaSource,
        identity::ca::tests::{TD, config},
    };

    fn manager(lifetime: Duration) -> (tempfile::TempDir, Arc<IdentityManager>) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(CaSource::Generate {
            dir: dir.path().join("ca"),
        });
        config.cert_lifetime = lifetime;
        let mgr = IdentityManager::load(&config).unwrap();
        assert_eq!(mgr.lifetime(), lifetime);
        assert_eq!(mgr.trust_domain(), TD);
        (dir, Arc::new(mgr))
    }

    #[test]
    fn svid_is_issued_once_and_cached() {
        let (_dir, mgr) = manager(Duration::from_secs(3600));
        let id = SpiffeId::new(TD, "default", "web");
        let first = mgr.svid(&id).unwrap();
        let second = mgr.svid(&id).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(first.id, id);

        let other = mgr.svid(&SpiffeId::new(TD, "default", "db")).unwrap();
        assert_ne!(other.serial, first.serial);

        let err = mgr
            .svid(&SpiffeId::new("elsewhere", "default", "web"))
            .unwrap_err();
        assert!(
            err.to_string().contains("not in trust domain mesh.test"),
            "{err}"
        );
    }

    #[test]
    fn ensure_retain_and_snapshot() {
        let (_dir, mgr) = manager(Duration::from_secs(3600));
        let web = SpiffeId::new(TD, "default", "web");
        let db = SpiffeId::new(TD, "default", "db");
        let agent = agent_id(TD);
        mgr.ensure(&[web.clone(), db.clone(), agent.clone()])
            .unwrap();
        assert!(mgr.ensure(&[SpiffeId::new("x", "a", "b")]).is_err());

        let snapshot = mgr.snapshot();
        let ids: Vec<&str> = snapshot.iter().map(|c| c.spiffe_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "spiffe://mesh.test/ns/default/sa/db",
                "spiffe://mesh.test/ns/default/sa/web",
                "spiffe://mesh.test/ns/mesh-system/sa/mesh-agent",
            ]
        );
        let web_info = &snapshot[1];
        assert_eq!(web_info.serial, mgr.svid(&web).unwrap().serial);
        assert!(
            (3590..=3600).contains(&web_info.expires_in_seconds),
            "{web_info:?}"
        );
        assert!(
            (2390..=2400).contains(&web_info.rotate_in_seconds),
            "{web_info:?}"
        );
        assert!(web_info.not_before.ends_with('Z') && web_info.not_after.ends_with('Z'));
        let json = serde_json::to_value(web_info).unwrap();
        for key in [
            "spiffe_id",
            "serial",
            "not_before",
            "not_after",
            "expires_in_seconds",
            "rotate_in_seconds",
        ] {
            assert!(json.get(key).is_some(), "{key} missing in {json}");
        }

        let roots = mgr.bundle_info();
        assert_eq!(roots.len(), 1);
        assert_eq!(roots[0].subject, "CN=mesh-agent CA mesh.test");
        assert!(
            mgr.bundle_pem()
                .starts_with("-----BEGIN CERTIFICATE-----\n")
        );

        let old_web = mgr.svid(&web).unwrap();
        mgr.retain(std::slice::from_ref(&web));
        let ids: Vec<String> = mgr.snapshot().into_iter().map(|c| c.spiffe_id).collect();
        assert_eq!(
            ids,
            [web.to_string(), agent.to_string()],
            "agent identity is kept"
        );
        assert!(Arc::ptr_eq(&old_web, &mgr.svid(&web).unwrap()));
        // A dropped identity gets a new certificate on demand.
        mgr.svid(&db).unwrap();
    }

    #[test]
    fn expired_certificate_is_replaced_on_demand() {
        let (_dir, mgr) = manager(Duration::from_secs(3600));
        let id = SpiffeId::new(TD, "default", "web");
        let now = SystemTime::now();
        let stale = Arc::new(
            mgr.ca
                .issue_window(
                    &id,
                    now - Duration::from_secs(7200),
                    now - Duration::from_secs(1),
                    now - Duration::from_secs(7200),
                )
                .unwrap(),
        );
        mgr.write().insert(id.clone(), stale.clone());
        let fresh = mgr.svid(&id).unwrap();
        assert_ne!(fresh.serial, stale.serial);
        assert!(fresh.not_after > now);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotation_task_replaces_certificates_before_expiry() {
        let (_dir, mgr) = manager(Duration::from_secs(3));
        let id = SpiffeId::new(TD, "default", "web");
        let start = Instant::now();
        let first = mgr.svid(&id).unwrap();
        let agent_first = mgr.svid(&agent_id(TD)).unwrap();
        let task = mgr.spawn_rotation();

        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            mgr.svid(&id).unwrap().serial,
            first.serial,
            "rotated too early"
        );
        assert_eq!(mgr.rotations(), 0);

        // rotate_at is at most 2 s after issuance (2/3 of a <=3 s life); generous deadline.
        let deadline = Instant::now() + Duration::from_secs(15);
        let rotated = loop {
            let current = mgr.svid(&id).unwrap();
            if current.serial != first.serial {
                break current;
            }
            assert!(
                Instant::now() < deadline,
                "no rotation after {:?}",
                start.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "rotated after {:?}",
            start.elapsed()
        );
        assert!(
            SystemTime::now() < first.not_after,
            "rotated only after expiry"
        );
        assert!(rotated.not_after > first.not_after);
        assert!(mgr.rotations() >= 1);

        // The agent's certificate is rotated too, and rotation keeps going.
        while mgr.svid(&agent_id(TD)).unwrap().serial == agent_first.serial {
            assert!(Instant::now() < deadline, "agent certificate not rotated");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while mgr.svid(&id).unwrap().serial == rotated.serial {
            assert!(
                Instant::now() < deadline + Duration::from_secs(5),
                "no second rotation"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(mgr.rotations() >= 3, "rotations {}", mgr.rotations());

        // The task stops once the manager is gone.
        drop(mgr);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("rotation task did not stop")
            .unwrap();
    }
}
