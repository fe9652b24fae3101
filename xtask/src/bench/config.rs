//! The `config` suite: how fast a config change reaches new connections, by source and by
//! model size, and what reloads cost a running transfer.
//!
//! Client pod "client" on node1, server pod "server" on node2 (echo server on port 9000). A
//! change adds or removes the service `probe` (a VIP of its own -> server:9000); its effect is
//! seen when a new connection to the VIP does (or no longer does) echo "ping". The time is
//! taken from the change (file renamed into place, SIGHUP sent, objects written to the API) to
//! the end of the first probe connect that sees the effect, polling every `POLL`; rounds
//! alternate add and remove. Only node1's config changes (node2 keeps the service: the
//! destination side does not need it). A removal is seen when a connect to the VIP fails,
//! which takes the poll's 100 ms connect timeout (nothing answers a VIP without a service
//! here): removals read about 100 ms later than they happen, so adds and removes are also
//! reported apart.
//!
//! - file: the config file rewritten and renamed over (the agent watches its directory and
//!   debounces events by 200 ms).
//! - sighup: the file rewritten where the watcher does not see it (node1.yaml is a symlink
//!   into a subdirectory), then SIGHUP.
//! - kube: agents with a `kubernetes:` section reading the fake API server; a Service and its
//!   EndpointSlice are created, then deleted.
//! - scale: the file source with 10, 1000 and 5000 extra services in the model (VIP + one
//!   endpoint each); node1's agent CPU (cgroup cpu.stat) per reload.
//! - traffic: a 1 GiB echo transfer through the mesh (`transfer`, integrity checked by
//!   SHA-256) with no reloads vs with node1's config swapped between two valid versions every
//!   250 ms, interleaved rounds.
//!
//! Absolute times on a shared 2-core VM are noise: every comparison is a ratio of numbers
//! taken in the same run. Nothing is asserted about times.
//! `MESH_BENCH_CONFIG_PARTS` (comma list of file,sighup,traffic,scale,kube) runs a subset.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mesh_tests::fake_kube;
use mesh_tests::kube_sim::KubeMesh;
use mesh_tests::mesh::{Mesh, MeshSpec, ServiceSpec};
use mesh_tests::sim::{Placement, Proc};
use serde_json::json;

use super::{cgroup_cpu_seconds, median, number, round3, service};

const ROUNDS: usize = 20;
const SCALE_ROUNDS: usize = 10;
const SCALES: [usize; 3] = [10, 1000, 5000];
const TRAFFIC_ROUNDS: usize = 5;
const TRANSFER_BYTES: u64 = 1 << 30;
const RELOAD_EVERY: Duration = Duration::from_millis(250);
const POLL: Duration = Duration::from_millis(10);
/// Connect timeout of one poll: a VIP without service does not answer at all here.
const POLL_TIMEOUT_MS: &str = "100";
const LIMIT: Duration = Duration::from_secs(30);
/// Pause after each round: past the agent's 200 ms debounce, so rounds do not overlap.
const SETTLE: Duration = Duration::from_millis(400);

const PORT: u16 = 9000;
const ECHO_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 40), PORT);
const PROBE_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 41), PORT);
const KUBE_NS: &str = "bench";

pub fn run(json: bool) -> Result<()> {
    let parts = std::env::var("MESH_BENCH_CONFIG_PARTS")
        .unwrap_or_else(|_| "file,sighup,traffic,scale,kube".into());
    let want = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let mut results = Results::default();
    if want("file") || want("sighup") || want("traffic") || want("scale") {
        let mut bench = FileBench::setup()?;
        if want("file") {
            results.latency.push(bench.file_rounds("file", 0, ROUNDS)?);
        }
        if want("sighup") {
            results.latency.push(bench.sighup_rounds()?);
        }
        if want("traffic") {
            results.traffic = Some(bench.traffic()?);
        }
        if want("scale") {
            for n in SCALES {
                let name = format!("file+{n}svc");
                results
                    .scale
                    .push(bench.file_rounds(&name, n, SCALE_ROUNDS)?);
            }
        }
    }
    if want("kube") {
        results.latency.push(kube_rounds()?);
    }
    if json {
        results.print_json();
    } else {
        print!("{}", results.table());
    }
    Ok(())
}

/// Latencies of one scenario, in milliseconds, and node1's agent CPU per reload.
struct Latency {
    name: String,
    ms: Vec<f64>,
    reloads: u64,
    cpu_ms_per_reload: Option<f64>,
}

impl Latency {
    fn p50(&self) -> f64 {
        median(&self.ms)
    }

    fn p90(&self) -> f64 {
        let mut s = self.ms.clone();
        s.sort_by(f64::total_cmp);
        // Nearest rank.
        let rank = ((0.9 * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[rank - 1]
    }

    /// Median of the adds (even rounds) and of the removes (odd rounds).
    fn p50_by_kind(&self) -> (f64, f64) {
        let pick = |r: usize| -> Vec<f64> { self.ms.iter().skip(r).step_by(2).copied().collect() };
        (median(&pick(0)), median(&pick(1)))
    }

    fn max(&self) -> f64 {
        self.ms.iter().copied().fold(f64::MIN, f64::max)
    }
}

struct Traffic {
    quiet: Vec<f64>,
    reloading: Vec<f64>,
    reloads: u64,
    all_intact: bool,
}

#[derive(Default)]
struct Results {
    latency: Vec<Latency>,
    scale: Vec<Latency>,
    traffic: Option<Traffic>,
}

impl Traffic {
    /// Median of each round's reloading / quiet ratio (the two ran back to back).
    fn paired_ratio(&self) -> f64 {
        let ratios: Vec<f64> = self
            .reloading
            .iter()
            .zip(&self.quiet)
            .map(|(r, q)| r / q)
            .collect();
        median(&ratios)
    }
}

impl Results {
    fn base(&self, name: &str) -> Option<f64> {
        self.latency
            .iter()
            .find(|l| l.name == name)
            .map(Latency::p50)
    }

    fn table(&self) -> String {
        let mut out = format!(
            "config: change -> effect on new connections (probe connect every {} ms), ms\n\
             {:<14} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>12}\n",
            POLL.as_millis(),
            "scenario",
            "rounds",
            "p50",
            "p90",
            "max",
            "add_p50",
            "rm_p50",
            "ratio",
            "vs",
            "reloads",
            "cpu_ms/rld"
        );
        let file = self.base("file");
        let ten = self.scale.first().map(Latency::p50);
        let rows = self
            .latency
            .iter()
            .map(|l| (l, file, "file"))
            .chain(self.scale.iter().map(|l| (l, ten, "file+10")));
        for (l, base, vs) in rows {
            let ratio = base.map_or("-".to_string(), |b| format!("{:.3}", l.p50() / b));
            let cpu = l
                .cpu_ms_per_reload
                .map_or("-".to_string(), |c| format!("{c:.2}"));
            let (add, rm) = l.p50_by_kind();
            out += &format!(
                "{:<14} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>9} {:>8} {:>12}\n",
                l.name,
                l.ms.len(),
                l.p50(),
                l.p90(),
                l.max(),
                add,
                rm,
                ratio,
                vs,
                l.reloads,
                cpu
            );
        }
        if let Some(t) = &self.traffic {
            let (q, r) = (median(&t.quiet), median(&t.reloading));
            out += &format!(
                "traffic: 1 GiB echo transfer via the mesh, Gbit/s (median of {TRAFFIC_ROUNDS})\n\
                 no reloads {q:.3}  reload every {} ms {r:.3}  ratio {:.3} (paired {:.3})  \
                 reloads {}  intact {}\n  rounds: quiet {:?}, reloading {:?}\n",
                RELOAD_EVERY.as_millis(),
                r / q,
                t.paired_ratio(),
                t.reloads,
                t.all_intact,
                t.quiet.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
                t.reloading.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            );
        }
        out
    }

    fn print_json(&self) {
        let file = self.base("file");
        let ten = self.scale.first().map(Latency::p50);
        for (l, base) in self
            .latency
            .iter()
            .map(|l| (l, file))
            .chain(self.scale.iter().map(|l| (l, ten)))
        {
            let line = json!({
                "scenario": l.name,
                "rounds": l.ms.len(),
                "p50_ms": round3(l.p50()),
                "p90_ms": round3(l.p90()),
                "max_ms": round3(l.max()),
                "add_p50_ms": round3(l.p50_by_kind().0),
                "remove_p50_ms": round3(l.p50_by_kind().1),
                "ratio": base.map(|b| round3(l.p50() / b)),
                "reloads": l.reloads,
                "cpu_ms_per_reload": l.cpu_ms_per_reload.map(round3),
            });
            println!("{line}");
        }
        if let Some(t) = &self.traffic {
            let (q, r) = (median(&t.quiet), median(&t.reloading));
            let line = json!({
                "scenario": "traffic",
                "quiet_gbit_per_s": round3(q),
                "reloading_gbit_per_s": round3(r),
                "ratio": round3(r / q),
                "paired_ratio": round3(t.paired_ratio()),
                "reloads": t.reloads,
                "intact": t.all_intact,
            });
            println!("{line}");
        }
    }
}

/// Polls new connections to `vip` from `at` until they echo (`want` true) or fail (`want`
/// false); returns the milliseconds since `started`.
fn wait_effect(
    mesh: &Mesh,
    at: &Placement,
    vip: SocketAddrV4,
    want: bool,
    started: Instant,
) -> Result<f64> {
    let target = vip.to_string();
    loop {
        let v = mesh.probe_at(
            at,
            &[
                "connect",
                "--connect",
                &target,
                "--timeout-ms",
                POLL_TIMEOUT_MS,
                "--send",
                "ping",
            ],
        )?;
        let elapsed = started.elapsed();
        // Served: the echo came back. Not served: the connect itself failed (no service:
        // nothing answers the VIP, so that is the poll's timeout). A later failure (a slow
        // reply on a busy machine) says neither.
        let served = if v["reply"] == "ping" {
            Some(true)
        } else if v["stage"] == "connect" {
            Some(false)
        } else {
            None
        };
        if served == Some(want) {
            return Ok(elapsed.as_secs_f64() * 1e3);
        }
        ensure!(
            elapsed < LIMIT,
            "{} of {vip} not seen within {LIMIT:?}: {v}",
            if want { "addition" } else { "removal" }
        );
        std::thread::sleep(POLL);
    }
}

fn config_reloads(mesh: &Mesh, node: &str) -> Result<u64> {
    let dump = mesh.admin(node, "/config_dump")?;
    dump["status"]["config_reloads"]
        .as_u64()
        .context("/config_dump has no status.config_reloads")
}

/// Waits until node1's successful reload count exceeds `before`.
fn wait_reload(mesh: &Mesh, before: u64) -> Result<()> {
    let started = Instant::now();
    while config_reloads(mesh, "node1")? <= before {
        ensure!(started.elapsed() < LIMIT, "no reload within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Written next to it and renamed over it, as editors and ConfigMap updates do.
fn write_renamed(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().context("config path")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.new"));
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

struct FileBench {
    mesh: Mesh,
    base: MeshSpec,
    _servers: Vec<Proc>,
}

impl FileBench {
    fn setup() -> Result<FileBench> {
        eprintln!("config bench: node1 (client pod), node2 (server pod), file source");
        let mut mesh = Mesh::new("bcfg", crate::bench::release_binaries()?)?;
        mesh.sim.add_pod("node1", "client")?;
        mesh.sim.add_pod("node2", "server")?;
        let listen = format!("0.0.0.0:{PORT}");
        let servers = vec![mesh.serve("server", &["echo-server", "--listen", &listen])?];
        let base = MeshSpec {
            services: vec![service("echo", ECHO_VIP, "server")],
            ..MeshSpec::default()
        };
        mesh.start_agent("node1", &base)?;
        let full = Self::with_probe(&base, true);
        mesh.start_agent("node2", &full)?;
        Ok(FileBench {
            mesh,
            base,
            _servers: servers,
        })
    }

    fn with_probe(base: &MeshSpec, probe: bool) -> MeshSpec {
        let mut spec = base.clone();
        if probe {
            spec.services.push(service("probe", PROBE_VIP, "server"));
        }
        spec
    }

    /// `base` plus `n` services: VIP 10.100.x.y:9000 -> server.
    fn with_extra(&self, n: usize) -> MeshSpec {
        let mut spec = self.base.clone();
        for i in 0..n {
            let vip = Ipv4Addr::new(10, 100, (i / 250) as u8, (i % 250 + 1) as u8);
            spec.services.push(ServiceSpec::new(
                &format!("extra-{i}"),
                vip,
                PORT,
                PORT,
                &["server"],
            ));
        }
        spec
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.mesh.sim.dir().join("node1.yaml")
    }

    /// Rounds of rewriting node1's file with `n` extra services, alternately with and
    /// without the probe service.
    fn file_rounds(&mut self, name: &str, n: usize, rounds: usize) -> Result<Latency> {
        let model = self.with_extra(n);
        let texts = [false, true].map(|p| {
            self.mesh
                .render_config("node1", &Self::with_probe(&model, p))
        });
        let path = self.config_path();
        // Start from the model without the probe service, in force.
        let before = config_reloads(&self.mesh, "node1")?;
        write_renamed(&path, &texts[0])?;
        wait_reload(&self.mesh, before)?;
        let client = self.mesh.placement("client");
        wait_effect(&self.mesh, &client, PROBE_VIP, false, Instant::now())?;
        std::thread::sleep(SETTLE);

        let cgroup = self.mesh.sim.node("node1").agent_cgroup.clone();
        let reloads_before = config_reloads(&self.mesh, "node1")?;
        let mut cpu = 0.0;
        let mut ms = Vec::new();
        for round in 0..rounds {
            let add = round % 2 == 0;
            let cpu_before = cgroup_cpu_seconds(&cgroup)?;
            let started = Instant::now();
            write_renamed(&path, &texts[usize::from(add)])?;
            let t = wait_effect(&self.mesh, &client, PROBE_VIP, add, started)?;
            std::thread::sleep(SETTLE);
            cpu += cgroup_cpu_seconds(&cgroup)? - cpu_before;
            eprintln!(
                "{name} round {}/{rounds}: {} {t:.1} ms",
                round + 1,
                if add { "add" } else { "remove" }
            );
            ms.push(t);
        }
        let reloads = config_reloads(&self.mesh, "node1")? - reloads_before;
        Ok(Latency {
            name: name.to_string(),
            ms,
            reloads,
            cpu_ms_per_reload: (reloads > 0).then(|| cpu * 1e3 / reloads as f64),
        })
    }

    /// The file is rewritten where the watcher does not look, then SIGHUP.
    fn sighup_rounds(&mut self) -> Result<Latency> {
        let texts = [false, true].map(|p| {
            self.mesh
                .render_config("node1", &Self::with_probe(&self.base, p))
        });
        let dir = self.mesh.sim.dir().to_path_buf();
        let hidden_dir = dir.join("hup");
        std::fs::create_dir_all(&hidden_dir)?;
        let hidden = hidden_dir.join("node1.yaml");
        std::fs::write(&hidden, &texts[0])?;
        // node1.yaml -> hup/node1.yaml: renaming the link in is seen (one reload); changes
        // inside hup/ are not (the watch is on node1.yaml's directory only).
        let link = dir.join(".node1.yaml.link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("hup/node1.yaml", &link)?;
        let before = config_reloads(&self.mesh, "node1")?;
        std::fs::rename(&link, self.config_path())?;
        wait_reload(&self.mesh, before)?;
        let client = self.mesh.placement("client");
        wait_effect(&self.mesh, &client, PROBE_VIP, false, Instant::now())?;
        std::thread::sleep(SETTLE);

        let pid = self
            .mesh
            .agent_pid("node1")
            .context("node1 agent pid")?
            .to_string();
        let reloads_before = config_reloads(&self.mesh, "node1")?;
        let mut ms = Vec::new();
        for round in 0..ROUNDS {
            let add = round % 2 == 0;
            write_renamed(&hidden, &texts[usize::from(add)])?;
            // Long enough for a reload to show if the watcher had seen the rewrite.
            std::thread::sleep(SETTLE);
            let started = Instant::now();
            let status = std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .context("kill -HUP")?;
            ensure!(status.success(), "kill -HUP {pid}: {status}");
            let t = wait_effect(&self.mesh, &client, PROBE_VIP, add, started)?;
            std::thread::sleep(SETTLE);
            eprintln!(
                "sighup round {}/{ROUNDS}: {} {t:.1} ms",
                round + 1,
                if add { "add" } else { "remove" }
            );
            ms.push(t);
        }
        let reloads = config_reloads(&self.mesh, "node1")? - reloads_before;
        ensure!(
            reloads == ROUNDS as u64,
            "{reloads} reloads for {ROUNDS} SIGHUPs: the watcher saw the hidden rewrites"
        );
        // Back to a plain file (one more reload, not counted).
        let before = config_reloads(&self.mesh, "node1")?;
        write_renamed(&self.config_path(), &texts[0])?;
        wait_reload(&self.mesh, before)?;
        Ok(Latency {
            name: "sighup".into(),
            ms,
            reloads,
            cpu_ms_per_reload: None,
        })
    }

    /// One transfer; `reload` swaps node1's config every RELOAD_EVERY while it runs.
    fn transfer(&self, reload: bool, texts: &[String; 2]) -> Result<(f64, bool, u64)> {
        let target = ECHO_VIP.to_string();
        let bytes = TRANSFER_BYTES.to_string();
        let mut proc = self.mesh.spawn_probe(
            "client",
            &[
                "transfer",
                "--connect",
                &target,
                "--bytes",
                &bytes,
                "--seed",
                "6",
            ],
        )?;
        let done = AtomicBool::new(false);
        let swaps = AtomicU64::new(0);
        let path = self.config_path();
        let reloads_before = config_reloads(&self.mesh, "node1")?;
        let status = std::thread::scope(|s| -> Result<_> {
            if reload {
                s.spawn(|| {
                    let mut i = 0usize;
                    while !done.load(Ordering::Relaxed) {
                        std::thread::sleep(RELOAD_EVERY);
                        i += 1;
                        if write_renamed(&path, &texts[i % 2]).is_ok() {
                            swaps.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            let status = proc.wait();
            done.store(true, Ordering::Relaxed);
            status
        })?;
        // Let the last reload land before counting.
        std::thread::sleep(SETTLE);
        let reloads = config_reloads(&self.mesh, "node1")? - reloads_before;
        let r = mesh_tests::mesh::parse_last_json(proc.stdout().as_bytes())
            .with_context(|| format!("transfer ({status}): {}", proc.logs()))?;
        let intact = r["intact"] == true && r["received"].as_u64() == Some(TRANSFER_BYTES);
        let gbit = number(&r, "received")? * 8.0 / number(&r, "seconds")? / 1e9;
        eprintln!(
            "traffic {}: {gbit:.3} Gbit/s, intact {intact}, {} swaps, {reloads} reloads",
            if reload { "reloading" } else { "quiet" },
            swaps.load(Ordering::Relaxed)
        );
        Ok((gbit, intact, reloads))
    }

    fn traffic(&mut self) -> Result<Traffic> {
        let texts = [false, true].map(|p| {
            self.mesh
                .render_config("node1", &Self::with_probe(&self.base, p))
        });
        let mut t = Traffic {
            quiet: Vec::new(),
            reloading: Vec::new(),
            reloads: 0,
            all_intact: true,
        };
        for _ in 0..TRAFFIC_ROUNDS {
            for reload in [false, true] {
                let (gbit, intact, reloads) = self.transfer(reload, &texts)?;
                t.all_intact &= intact;
                if reload {
                    t.reloading.push(gbit);
                    t.reloads += reloads;
                } else {
                    t.quiet.push(gbit);
                }
            }
        }
        // Leave the base config in force.
        let before = config_reloads(&self.mesh, "node1")?;
        write_renamed(&self.config_path(), &texts[0])?;
        wait_reload(&self.mesh, before)?;
        Ok(t)
    }
}

/// The Kubernetes source: a Service and its EndpointSlice created, then deleted.
fn kube_rounds() -> Result<Latency> {
    eprintln!("config bench: node1 (client pod), node2 (server pod), kubernetes source");
    let mut km = KubeMesh::new("bcfgk", crate::bench::release_binaries()?)?;
    km.namespace(KUBE_NS, true);
    km.add_pod("node1", KUBE_NS, "client", "BestEffort", &[], None)?;
    km.add_pod("node2", KUBE_NS, "server", "BestEffort", &[], None)?;
    let listen = format!("0.0.0.0:{PORT}");
    let _server = km.serve_in_pod("server", &["echo-server", "--listen", &listen])?;
    km.publish("client");
    km.publish("server");
    km.start_agent("node1")?;
    km.start_agent("node2")?;
    let client = km.pod("client").placement();
    let server = km.pod("server").clone();
    let service = fake_kube::service(
        KUBE_NS,
        "probe",
        &[IpAddr::V4(*PROBE_VIP.ip())],
        &[fake_kube::service_port(Some("tcp"), PORT, PORT).app_protocol("tcp")],
    );
    let slice = fake_kube::endpoint_slice(
        KUBE_NS,
        "probe-slice",
        "probe",
        &[(Some("tcp"), PORT)],
        &[fake_kube::endpoint(
            IpAddr::V4(server.ip),
            &server.node,
            &server.name,
        )],
    );
    // Both agents synced before the first round.
    let started = Instant::now();
    for node in ["node1", "node2"] {
        while km.config_dump(node)?["status"]["kubernetes_synced"] != true {
            if started.elapsed() > LIMIT {
                bail!("{node} not synced:\n{}", km.agent_logs(node));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_effect(&km.mesh, &client, PROBE_VIP, false, Instant::now())?;
    let mut ms = Vec::new();
    for round in 0..ROUNDS {
        let add = round % 2 == 0;
        let started = Instant::now();
        if add {
            km.api.apply(service.clone());
            km.api.apply(slice.clone());
        } else {
            km.api.delete("EndpointSlice", KUBE_NS, "probe-slice");
            km.api.delete("Service", KUBE_NS, "probe");
        }
        let t = wait_effect(&km.mesh, &client, PROBE_VIP, add, started)?;
        std::thread::sleep(SETTLE);
        eprintln!(
            "kube round {}/{ROUNDS}: {} {t:.1} ms",
            round + 1,
            if add { "add" } else { "remove" }
        );
        ms.push(t);
    }
    Ok(Latency {
        name: "kube".into(),
        ms,
        reloads: 0,
        cpu_ms_per_reload: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latency {
            name: "x".into(),
            ms: (1..=20).map(f64::from).collect(),
            reloads: 0,
            cpu_ms_per_reload: None,
        };
        assert_eq!(l.p50(), 10.5);
        assert_eq!(l.p90(), 18.0);
        assert_eq!(l.max(), 20.0);
        // Adds are 1, 3, .., 19; removes 2, 4, .., 20.
        assert_eq!(l.p50_by_kind(), (10.0, 11.0));
    }
}
