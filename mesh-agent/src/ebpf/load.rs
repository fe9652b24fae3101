//! Loading, attaching and detaching the node's programs.

use std::{
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, MapInfo, SockHash},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SkMsg, SockOps,
        links::FdLink,
    },
};
use mesh_common::{
    AgentConfig, AgentOrigin, AgentOriginKey, CONFIG_INDEX, ClientKey, ConnStats, OrigDst,
    PIN_LAYOUT_VERSION, PolicyKey, ServiceKey, ServiceValue, SockKey, WorkloadValue, capacity,
    map_names, program_names,
};

use super::{
    links::{self, Attached},
    maps::SharedMaps,
    probe,
};

/// The programs, compiled by build.rs from mesh-ebpf.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-ebpf"));

/// The kernel data path of one node. The cgroup programs' links are pinned (see
/// [`links`]): dropping this, or the agent dying, leaves the programs attached and the maps
/// pinned, so policy holds while no agent runs and the next agent adopts both.
pub struct DataPath {
    bpf: Ebpf,
    pub cgroup: PathBuf,
    pin_dir: PathBuf,
    /// How each cgroup program was attached, in attach order.
    pub attached: Vec<(&'static str, Attached)>,
    /// The entry of the `CONFIG` map the previous agent left (`None` on a fresh node).
    pub previous: Option<AgentConfig>,
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
    /// node-wide config and attaches everything to `cgroup`, replacing the programs of links
    /// a previous agent pinned.
    pub fn start(cgroup: &Path, pin_dir: &Path, mut config: AgentConfig) -> Result<DataPath> {
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
                     incompatible agent version: `mesh-agent uninstall --pin-dir {}` removes \
                     them)",
                    pin_dir.display(),
                    pin_dir.display()
                )
            })?;
        let previous = {
            let map = bpf
                .map_mut(map_names::CONFIG)
                .ok_or_else(|| anyhow!("map {} missing", map_names::CONFIG))?;
            let mut array: Array<_, AgentConfig> = Array::try_from(map)?;
            let previous = array.get(&CONFIG_INDEX, 0)?;
            let previous = (previous.layout_version != 0).then_some(previous);
            // The agent being replaced keeps its exemption while it drains.
            config.previous_agent_cgroup_id = match previous {
                Some(p) if p.agent_cgroup_id != config.agent_cgroup_id => p.agent_cgroup_id,
                _ => 0,
            };
            config.layout_version = PIN_LAYOUT_VERSION;
            array.set(CONFIG_INDEX, config, 0)?;
            previous
        };
        let mut path = DataPath {
            bpf,
            cgroup: cgroup.to_path_buf(),
            pin_dir: pin_dir.to_path_buf(),
            attached: Vec::new(),
            previous,
        };
        path.attach().with_context(|| {
            format!("cannot attach the programs to cgroup {}", cgroup.display())
        })?;
        Ok(path)
    }

    fn attach(&mut self) -> Result<()> {
        let cgroup = File::open(&self.cgroup)
            .with_context(|| format!("cannot open cgroup {}", self.cgroup.display()))?;
        let cgroup_id = crate::cgroup::cgroup_id(&self.cgroup)?;
        let links_dir = links::cgroup_links_dir(&self.pin_dir, cgroup_id);
        std::fs::create_dir_all(&links_dir)
            .with_context(|| format!("cannot create {}", links_dir.display()))?;
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
            let how = links::attach_pinned(
                &links_dir.join(name),
                program_fd(prog.fd()?)?.as_fd(),
                || {
                    let id = prog.attach(&cgroup, mode)?;
                    Ok(FdLink::try_from(prog.take_link(id)?)?)
                },
            )?;
            self.attached.push((name, how));
        }
        let name = program_names::SOCK_OPS;
        let sock_ops: &mut SockOps = self.program(name)?.try_into()?;
        sock_ops.load().context("verifier rejected sock_ops")?;
        let how = links::attach_pinned(
            &links_dir.join(name),
            program_fd(sock_ops.fd()?)?.as_fd(),
            || {
                let id = sock_ops.attach(&cgroup, mode)?;
                Ok(FdLink::try_from(sock_ops.take_link(id)?)?)
            },
        )?;
        self.attached.push((name, how));

        let name = program_names::INGRESS;
        let ingress: &mut CgroupSkb = self.program(name)?.try_into()?;
        ingress
            .load()
            .context("verifier rejected cgroup_skb/ingress")?;
        let how = links::attach_pinned(
            &links_dir.join(name),
            program_fd(ingress.fd()?)?.as_fd(),
            || {
                let id = ingress.attach(&cgroup, CgroupSkbAttachType::Ingress, mode)?;
                Ok(FdLink::try_from(ingress.take_link(id)?)?)
            },
        )?;
        self.attached.push((name, how));
        let stale = links::detach_other_cgroups(&self.pin_dir, cgroup_id)?;
        if stale > 0 {
            tracing::info!(
                links = stale,
                "detached the programs a previous agent attached to another cgroup"
            );
        }

        // sk_msg hangs off this agent's own sockhash, which is not pinned: the sockets in it
        // are this agent's, and the next agent's sock_ops fills its own.

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
        (map_names::STATS, 4, 8, capacity::STATS),
    ]
}

/// A descriptor of a loaded program of our own, so that the program itself stays free to
/// attach.
fn program_fd(fd: &aya::programs::ProgramFd) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd as _;
    Ok(fd.as_fd().try_clone_to_owned()?)
}

/// What to tell the operator when the pins come from an agent with another map layout.
fn incompatible(pin_dir: &Path, what: String) -> anyhow::Error {
    anyhow!(
        "{what}: the pins under {dir} come from an agent version with another map layout, \
         which this agent would misread. Stop the old agent and run `mesh-agent uninstall \
         --pin-dir {dir}` (the node has no mesh policy until this agent starts), then start \
         this agent",
        dir = pin_dir.display()
    )
}

/// The loader reuses a pinned map of the right name without comparing its definition, so a
/// map pinned by another agent version (a struct or the counter list changed) would be used
/// as is and misread. Refuse to start instead: every map must have the expected sizes, and
/// the `CONFIG` entry the layout version this agent writes.
fn check_pins(pin_dir: &Path) -> Result<()> {
    let config = pin_dir.join(map_names::CONFIG);
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
            return Err(incompatible(
                pin_dir,
                format!(
                    "pinned map {name} has key/value size and capacity {found:?}, this agent \
                     expects {:?}",
                    (key, value, entries)
                ),
            ));
        }
    }
    if config.exists() {
        let data = MapData::from_pin(&config)
            .with_context(|| format!("cannot open pinned map {}", config.display()))?;
        let array: Array<_, AgentConfig> = Array::try_from(Map::Array(data))?;
        let found = array.get(&CONFIG_INDEX, 0)?.layout_version;
        // 0: written by an agent that did not know layout versions, or never written.
        if found != PIN_LAYOUT_VERSION && found != 0 {
            return Err(incompatible(
                pin_dir,
                format!("pinned layout version {found}, this agent's is {PIN_LAYOUT_VERSION}"),
            ));
        }
    }
    Ok(())
}
