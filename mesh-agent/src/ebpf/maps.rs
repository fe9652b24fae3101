//! The maps the agent owns while running, and how the model is written into them.
//!
//! Sync is a diff: the desired entries are computed from the model, stale keys are removed and
//! new or changed ones written, so a config change never empties a map that the kernel is
//! reading at the same moment.

use std::{
    collections::HashMap as StdHashMap,
    hash::Hash,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, Pod,
    maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
};
use ipnet::IpNet;
use mesh_common::{
    AgentOrigin, AgentOriginKey, ClientKey, ConnStats, OrigDst, POLICY_FIXED_BITS, PolicyKey,
    ServiceKey, ServiceValue, SockKey, WORKLOAD_EGRESS_POLICY, WORKLOAD_INGRESS_POLICY,
    WORKLOAD_STRICT, WorkloadValue, map_names, stat,
};

use super::addr::ip_to_bytes;

/// What the maps that the model decides hold: services, workloads and their L4 policies.
/// The model fills it (`state::kernel_maps`); the kernel side only knows these entries.
#[derive(Debug, Default)]
pub struct MapContents {
    services: StdHashMap<ServiceKey, ServiceValue>,
    workloads: StdHashMap<u64, WorkloadValue>,
    egress: StdHashMap<(PolicyKey, u32), u32>,
    ingress: StdHashMap<(PolicyKey, u32), u32>,
}

/// A workload's kernel-enforced settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkloadFlags {
    /// Egress is limited to its rules (connects elsewhere get EPERM).
    pub egress_policy: bool,
    /// Ingress is limited to its rules (other connections are dropped).
    pub ingress_policy: bool,
    /// Only mTLS traffic through the agent may reach it.
    pub strict: bool,
}

/// Which direction an L4 rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Egress,
    Ingress,
}

impl MapContents {
    /// A meshed service address (a VIP:port or an endpoint) and the service it belongs to.
    pub fn service(&mut self, addr: SocketAddr, service_id: u32) {
        let key = ServiceKey {
            ip: ip_to_bytes(addr.ip()),
            port: addr.port(),
            _pad: 0,
        };
        self.services.insert(
            key,
            ServiceValue {
                service_id,
                flags: 0,
            },
        );
    }

    /// A workload, by the cgroup its processes run in.
    pub fn workload(&mut self, cgroup_id: u64, workload_id: u32, flags: WorkloadFlags) {
        let mut bits = 0;
        if flags.egress_policy {
            bits |= WORKLOAD_EGRESS_POLICY;
        }
        if flags.ingress_policy {
            bits |= WORKLOAD_INGRESS_POLICY;
        }
        if flags.strict {
            bits |= WORKLOAD_STRICT;
        }
        self.workloads.insert(
            cgroup_id,
            WorkloadValue {
                workload_id,
                flags: bits,
            },
        );
    }

    /// Rule number `rule` of a workload's egress or ingress policy: `net` on `ports` (all
    /// ports when empty).
    pub fn rule(
        &mut self,
        direction: Direction,
        cgroup_id: u64,
        ports: &[u16],
        net: IpNet,
        rule: u32,
    ) {
        let out = match direction {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        };
        add_rule(out, cgroup_id, ports, net, rule);
    }
}

pub struct SharedMaps {
    services: Mutex<HashMap<MapData, ServiceKey, ServiceValue>>,
    workloads: Mutex<HashMap<MapData, u64, WorkloadValue>>,
    listeners: Mutex<HashMap<MapData, u64, u32>>,
    egress: Mutex<LpmTrie<MapData, PolicyKey, u32>>,
    ingress: Mutex<LpmTrie<MapData, PolicyKey, u32>>,
    orig_by_client: Mutex<HashMap<MapData, ClientKey, OrigDst>>,
    agent_origins: Mutex<HashMap<MapData, AgentOriginKey, AgentOrigin>>,
    pending_origins: Mutex<HashMap<MapData, u64, AgentOrigin>>,
    conns: Mutex<HashMap<MapData, SockKey, ConnStats>>,
    stats: Mutex<PerCpuArray<MapData, u64>>,
    events: Mutex<Option<RingBuf<MapData>>>,
}

fn take(bpf: &mut Ebpf, name: &str) -> Result<Map> {
    bpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

/// Counts of entries per map, for status and health.
#[derive(Debug, Default, serde::Serialize)]
pub struct MapUsage {
    pub services: usize,
    pub workloads: usize,
    pub listeners: usize,
    pub egress_rules: usize,
    pub ingress_rules: usize,
    pub live_connections: usize,
    /// Agent connections to local workloads in flight (entries outlive connect() only when
    /// the agent failed to remove them).
    pub agent_origins: usize,
    /// Agent sockets whose origin sock_ops has not yet published (entries outlive connect()
    /// only when the agent failed to remove them).
    pub pending_origins: usize,
}

impl SharedMaps {
    pub fn take(bpf: &mut Ebpf) -> Result<SharedMaps> {
        Ok(SharedMaps {
            services: Mutex::new(HashMap::try_from(take(bpf, map_names::SERVICES)?)?),
            workloads: Mutex::new(HashMap::try_from(take(bpf, map_names::WORKLOADS)?)?),
            listeners: Mutex::new(HashMap::try_from(take(bpf, map_names::LISTENERS)?)?),
            egress: Mutex::new(LpmTrie::try_from(take(bpf, map_names::EGRESS_POLICY)?)?),
            ingress: Mutex::new(LpmTrie::try_from(take(bpf, map_names::INGRESS_POLICY)?)?),
            orig_by_client: Mutex::new(HashMap::try_from(take(
                bpf,
                map_names::ORIG_DST_BY_CLIENT,
            )?)?),
            agent_origins: Mutex::new(HashMap::try_from(take(bpf, map_names::AGENT_ORIGINS)?)?),
            pending_origins: Mutex::new(HashMap::try_from(take(bpf, map_names::PENDING_ORIGINS)?)?),
            conns: Mutex::new(HashMap::try_from(take(bpf, map_names::CONNS)?)?),
            stats: Mutex::new(PerCpuArray::try_from(take(bpf, map_names::STATS)?)?),
            events: Mutex::new(Some(RingBuf::try_from(take(bpf, map_names::EVENTS)?)?)),
        })
    }

    pub fn take_events(&self) -> Option<RingBuf<MapData>> {
        self.events.lock().ok()?.take()
    }

    /// Writes what the model asks for (`contents`) and the agent's listeners into the maps,
    /// removing every entry that is no longer asked for.
    pub fn sync(&self, contents: MapContents, listeners: &[(u64, u16)]) -> Result<()> {
        let MapContents {
            services,
            workloads,
            egress,
            ingress,
        } = contents;
        let listeners: StdHashMap<u64, u32> =
            listeners.iter().map(|(c, p)| (*c, u32::from(*p))).collect();
        // Order matters for a consistent kernel view: policy before the workloads that point to
        // it, listeners before the services that make connect4 redirect to them.
        sync_lpm(&self.egress, egress).context("egress policy map")?;
        sync_lpm(&self.ingress, ingress).context("ingress policy map")?;
        sync_hash(&self.workloads, workloads).context("workload map")?;
        sync_hash(&self.listeners, listeners).context("listener map")?;
        sync_hash(&self.services, services).context("service map")?;
        Ok(())
    }

    /// The original destination of a connection the agent accepted, consumed on read.
    pub fn take_orig_dst(&self, key: &ClientKey) -> Option<OrigDst> {
        let mut map = self.orig_by_client.lock().ok()?;
        let value = map.get(key, 0).ok()?;
        let _ = map.remove(key);
        Some(value)
    }

    /// Records that the agent's socket with cookie `cookie` (SO_COOKIE) is about to connect to
    /// a local workload on behalf of a client at `origin`. The agent does not bind first (a
    /// bind to port 0 scans the port space when many sockets sit in TIME_WAIT), so the source
    /// port is unknown here: sock_ops at TCP_CONNECT, once the kernel has picked the port and
    /// before the SYN leaves, moves the entry to the agent-origins map keyed by (agent port,
    /// workload address), where the ingress program judges the SYN by `origin` (and lets it
    /// through a STRICT workload). Call it before connect(); once connect() returns call
    /// [`SharedMaps::remove_pending_origin`] and [`SharedMaps::remove_agent_origin`].
    pub fn register_pending_origin(&self, cookie: u64, origin: IpAddr) -> Result<()> {
        let value = AgentOrigin {
            src_ip: ip_to_bytes(origin),
            flags: 0,
            _pad: 0,
        };
        let mut map = self
            .pending_origins
            .lock()
            .map_err(|_| anyhow!("pending origin map lock poisoned"))?;
        map.insert(cookie, value, 0)
            .with_context(|| format!("cannot record the origin of socket {cookie}"))
    }

    /// Forgets the entry of [`SharedMaps::register_pending_origin`] if sock_ops did not
    /// consume it (connect() failed before the SYN); a missing entry is the normal case.
    pub fn remove_pending_origin(&self, cookie: u64) {
        if let Ok(mut map) = self.pending_origins.lock()
            && let Err(e) = ignore_missing(map.remove(&cookie))
        {
            tracing::debug!("cannot remove the pending origin of socket {cookie}: {e:#}");
        }
    }

    /// Forgets the entry sock_ops wrote for the agent's socket with local port `agent_port`
    /// connecting to `workload` (see [`SharedMaps::register_pending_origin`]); a missing entry
    /// (evicted, or never written) is fine.
    pub fn remove_agent_origin(&self, agent_port: u16, workload: SocketAddr) {
        let key = agent_origin_key(agent_port, workload);
        if let Ok(mut map) = self.agent_origins.lock()
            && let Err(e) = ignore_missing(map.remove(&key))
        {
            tracing::debug!("cannot remove agent origin {agent_port} -> {workload}: {e:#}");
        }
    }

    /// Live connections with their current counters.
    pub fn live_connections(&self) -> Vec<(SockKey, ConnStats)> {
        let Ok(map) = self.conns.lock() else {
            return Vec::new();
        };
        map.iter().filter_map(|r| r.ok()).collect()
    }

    /// Node-wide counters summed over CPUs, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let Ok(map) = self.stats.lock() else {
            return Vec::new();
        };
        (0..stat::COUNT)
            .map(|i| {
                let total = map
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum::<u64>())
                    .unwrap_or(0);
                (stat::NAMES[i as usize], total)
            })
            .collect()
    }

    pub fn usage(&self) -> MapUsage {
        fn count<K: Pod, V: Pod>(m: &Mutex<HashMap<MapData, K, V>>) -> usize {
            m.lock().map(|m| m.keys().count()).unwrap_or(0)
        }
        fn count_lpm(m: &Mutex<LpmTrie<MapData, PolicyKey, u32>>) -> usize {
            m.lock().map(|m| m.keys().count()).unwrap_or(0)
        }
        MapUsage {
            services: count(&self.services),
            workloads: count(&self.workloads),
            listeners: count(&self.listeners),
            egress_rules: count_lpm(&self.egress),
            ingress_rules: count_lpm(&self.ingress),
            live_connections: count(&self.conns),
            agent_origins: count(&self.agent_origins),
            pending_origins: count(&self.pending_origins),
        }
    }
}

fn agent_origin_key(agent_port: u16, workload: SocketAddr) -> AgentOriginKey {
    AgentOriginKey {
        agent_port,
        workload_port: workload.port(),
        _pad: [0; 4],
        workload_ip: ip_to_bytes(workload.ip()),
    }
}

/// One LPM entry per (port, prefix); no ports means any port (port 0 in the key).
fn add_rule(
    out: &mut StdHashMap<(PolicyKey, u32), u32>,
    cgroup_id: u64,
    ports: &[u16],
    net: IpNet,
    rule: u32,
) {
    let ip = ip_to_bytes(net.network());
    let prefix = match net {
        IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
        IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    let ports: Vec<u16> = if ports.is_empty() {
        vec![0]
    } else {
        ports.to_vec()
    };
    for port in ports {
        let key = PolicyKey {
            cgroup_id,
            port_be: port.to_be(),
            _pad: 0,
            ip,
            _tail: 0,
        };
        out.insert((key, POLICY_FIXED_BITS + prefix), rule);
    }
}

fn sync_hash<K, V>(map: &Mutex<HashMap<MapData, K, V>>, desired: StdHashMap<K, V>) -> Result<()>
where
    K: Pod + Eq + Hash,
    V: Pod + PartialEq,
{
    let mut map = map.lock().map_err(|_| anyhow!("map lock poisoned"))?;
    let existing: Vec<K> = map.keys().filter_map(|k| k.ok()).collect();
    for key in existing {
        if !desired.contains_key(&key) {
            ignore_missing(map.remove(&key))?;
        }
    }
    for (key, value) in desired {
        if map.get(&key, 0).ok().as_ref() != Some(&value) {
            map.insert(key, value, 0)?;
        }
    }
    Ok(())
}

fn sync_lpm(
    map: &Mutex<LpmTrie<MapData, PolicyKey, u32>>,
    desired: StdHashMap<(PolicyKey, u32), u32>,
) -> Result<()> {
    let mut map = map.lock().map_err(|_| anyhow!("map lock poisoned"))?;
    let existing: Vec<Key<PolicyKey>> = map.keys().filter_map(|k| k.ok()).collect();
    for key in existing {
        if !desired.contains_key(&(key.data(), key.prefix_len())) {
            ignore_missing(map.remove(&key))?;
        }
    }
    for ((data, prefix), rule) in desired {
        map.insert(&Key::new(prefix, data), rule, 0)?;
    }
    Ok(())
}

fn ignore_missing(r: Result<(), MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_origin_key_matches_the_kernel_view() {
        // The ingress program builds the key from the SYN: source port, then destination
        // port and address, all host-order ports and IPv4-mapped addresses.
        let key = agent_origin_key(40_000, "10.1.2.3:8080".parse().unwrap());
        assert_eq!(key.agent_port, 40_000);
        assert_eq!(key.workload_port, 8080);
        assert_eq!(key.workload_ip, mesh_common::v4_mapped([10, 1, 2, 3]));
        assert_eq!(key._pad, [0; 4]);
        // An IPv6 socket dialling a v4-mapped address sends IPv4 packets: same key.
        let mapped = agent_origin_key(40_000, "[::ffff:10.1.2.3]:8080".parse().unwrap());
        assert_eq!(mapped, key);
        let v6 = agent_origin_key(1, "[fd00::2]:443".parse().unwrap());
        assert_eq!(
            v6.workload_ip,
            "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
    }
}
