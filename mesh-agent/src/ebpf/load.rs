//! Loading, attaching and detaching the node's programs.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapInfo, SockHash},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SkMsg, SockOps},
};
use mesh_common::{
    AgentConfig, AgentOrigin, AgentOriginKey, CONFIG_INDEX, ClientKey, ConnStats, OrigDst,
    PolicyKey, ServiceKey, ServiceValue, SockKey, WorkloadValue, capacity, map_names,
    program_names, stat,
};

use super::{maps::SharedMaps, probe};

/// The programs, compiled by build.rs from mesh-ebpf.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-ebpf"));

/// The kernel data path of one node. Dropping it detaches every program (the links are owned
/// by `bpf`); pinned maps stay so that a restarted agent keeps policy and connection state.
pub struct DataPath {
    bpf: Ebpf,
    pub cgroup: PathBuf,
}

/// Where bpffs is mounted for a pin directory: /sys/fs/bpf for anything below it.
fn bpffs_root(pin_dir: &Path) -> PathBuf {
    let default = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(default) {
        default.to_path_buf()
    } else {
        pin_dir.parent().unwrap_or(pin_dir).to_path_buf()
    }
}

impl DataPath {
    /// Probes the kernel, loads the programs with maps pinned under `pin_dir`, writes the
    /// node-wide config and attaches everything to `cgroup`.
    pub fn start(cgroup: &Path, pin_dir: &Path, config: AgentConfig) -> Result<DataPath> {
        probe::require_root()?;
        anyhow::ensure!(
            !PROGRAMS.is_empty(),
            "this mesh-agent was built without its eBPF programs (MESH_EBPF_SKIP=1, meant for \
             fuzz builds); rebuild it without that variable"
        );
        let root = bpffs_root(pin_dir);
        probe::ensure_bpffs(&root)?;
        probe::check(cgroup, &root)?;
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("cannot create pin directory {}", pin_dir.display()))?;
        check_pins(pin_dir)?;
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(PROGRAMS)
            .with_context(|| {
                format!(
                    "cannot load the eBPF programs (maps pinned in {} may come from an \
                     incompatible agent version: `mesh-agent cleanup --pin-dir {}` removes them)",
                    pin_dir.display(),
                    pin_dir.display()
                )
            })?;
        {
            let map = bpf
                .map_mut(map_names::CONFIG)
                .ok_or_else(|| anyhow!("map {} missing", map_names::CONFIG))?;
            let mut array: Array<_, AgentConfig> = Array::try_from(map)?;
            array.set(CONFIG_INDEX, config, 0)?;
        }
        let mut path = DataPath {
            bpf,
            cgroup: cgroup.to_path_buf(),
        };
        path.attach().with_context(|| {
            format!("cannot attach the programs to cgroup {}", cgroup.display())
        })?;
        Ok(path)
    }

    fn attach(&mut self) -> Result<()> {
        let cgroup = File::open(&self.cgroup)
            .with_context(|| format!("cannot open cgroup {}", self.cgroup.display()))?;
        // Link-based attachment (Linux 5.7+) takes no flags and always coexists with other
        // programs on the cgroup (a CNI, systemd); `Single` is how aya spells "no flags".
        let mode = CgroupAttachMode::Single;
        for name in [
            program_names::CONNECT4,
            program_names::CONNECT6,
            program_names::GETPEERNAME4,
            program_names::GETPEERNAME6,
        ] {
            let prog: &mut CgroupSockAddr = self.program(name)?.try_into()?;
            prog.load()
                .with_context(|| format!("verifier rejected {name}"))?;
            prog.attach(&cgroup, mode)?;
        }
        let sock_ops: &mut SockOps = self.program(program_names::SOCK_OPS)?.try_into()?;
        sock_ops.load().context("verifier rejected sock_ops")?;
        sock_ops.attach(&cgroup, mode)?;

        let ingress: &mut CgroupSkb = self.program(program_names::INGRESS)?.try_into()?;
        ingress
            .load()
            .context("verifier rejected cgroup_skb/ingress")?;
        ingress.attach(&cgroup, CgroupSkbAttachType::Ingress, mode)?;

        let socks_fd = {
            let map = self
                .bpf
                .map(map_names::SOCKS)
                .ok_or_else(|| anyhow!("map {} missing", map_names::SOCKS))?;
            let socks: SockHash<_, SockKey> = SockHash::try_from(map)?;
            socks.fd().try_clone()?
        };
        let sk_msg: &mut SkMsg = self.program(program_names::SK_MSG)?.try_into()?;
        sk_msg.load().context("verifier rejected sk_msg")?;
        sk_msg.attach(&socks_fd)?;
        Ok(())
    }

    fn program(&mut self, name: &str) -> Result<&mut aya::programs::Program> {
        self.bpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))
    }

    /// Takes the maps the agent reads and writes while running.
    pub fn shared_maps(&mut self) -> Result<SharedMaps> {
        SharedMaps::take(&mut self.bpf)
    }

    /// (name, kernel id) of every loaded program, for run statistics.
    pub fn program_ids(&self) -> Vec<(String, u32)> {
        self.bpf
            .programs()
            .filter_map(|(name, program)| Some((name.to_string(), program.info().ok()?.id())))
            .collect()
    }

    /// Names of the programs, for status output.
    pub fn program_names(&self) -> Vec<String> {
        self.bpf.programs().map(|(n, _)| n.to_string()).collect()
    }
}

/// (name, key size, value size, max entries) of every pinned map, as mesh-ebpf defines it.
fn pinned_layouts() -> [(&'static str, usize, usize, u32); 12] {
    use std::mem::size_of;
    let lpm_key = size_of::<u32>() + size_of::<PolicyKey>();
    [
        (map_names::CONFIG, 4, size_of::<AgentConfig>(), 1),
        (
            map_names::SERVICES,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
            capacity::SERVICES,
        ),
        (
            map_names::WORKLOADS,
            8,
            size_of::<WorkloadValue>(),
            capacity::WORKLOADS,
        ),
        (map_names::LISTENERS, 8, 4, capacity::LISTENERS),
        (map_names::EGRESS_POLICY, lpm_key, 4, capacity::POLICY),
        (map_names::INGRESS_POLICY, lpm_key, 4, capacity::POLICY),
        (
            map_names::ORIG_DST_BY_COOKIE,
            8,
            size_of::<OrigDst>(),
            capacity::ORIG_DST,
        ),
        (
            map_names::ORIG_DST_BY_CLIENT,
            size_of::<ClientKey>(),
            size_of::<OrigDst>(),
            capacity::ORIG_DST,
        ),
        (
            map_names::AGENT_ORIGINS,
            size_of::<AgentOriginKey>(),
            size_of::<AgentOrigin>(),
            capacity::AGENT_ORIGINS,
        ),
        (
            map_names::PENDING_ORIGINS,
            8,
            size_of::<AgentOrigin>(),
            capacity::PENDING_ORIGINS,
        ),
        (
            map_names::CONNS,
            size_of::<SockKey>(),
            size_of::<ConnStats>(),
            capacity::CONNS,
        ),
        (map_names::STATS, 4, 8, stat::COUNT),
    ]
}

/// The loader reuses a pinned map of the right name without comparing its definition, so a
/// map pinned by another agent version (a struct or the counter list changed) would be used
/// as is and misread. Refuse to start instead.
fn check_pins(pin_dir: &Path) -> Result<()> {
    for (name, key, value, entries) in pinned_layouts() {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("cannot open pinned map {}", path.display()))?;
        let found = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        if found != (key, value, entries) {
            return Err(anyhow!(
                "pinned map {} has key/value size and capacity {found:?}, this agent expects \
                 {:?}: it comes from an incompatible agent version (`mesh-agent cleanup \
                 --pin-dir {}` removes the node's pinned maps)",
                path.display(),
                (key, value, entries),
                pin_dir.display()
            ));
        }
    }
    Ok(())
}

/// Removes a node's pinned maps (after the agent has stopped for good).
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    if pin_dir.exists() {
        std::fs::remove_dir_all(pin_dir)
            .with_context(|| format!("cannot remove {}", pin_dir.display()))?;
    }
    Ok(())
}
