//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks to build and test the
//! mesh. Idempotent: every step checks first and only acts when something is missing.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, Cmd};

/// Debian packages the build, the tests, the demo and the benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "curl",
    "bpftool",
    "llvm-22-dev",
    "libpolly-22-dev",
    "openssl",
    "procps",
    "psmisc",
    "iperf3",
    "sockperf",
    // Packet captures in the tunnel test (no plaintext on the wire).
    "tshark",
    // L7 tests: h2load (h2c load with exact request counts) and Debian's gRPC for Python
    // (tests/grpc/*.py run with /usr/bin/python3, no protoc needed).
    "nghttp2-client",
    "python3-grpcio",
    // Observability tests: a real Prometheus server and promtool (check metrics/rules, rule
    // unit tests), and Python's strict OpenMetrics parser for the exposition.
    "prometheus",
    "python3-prometheus-client",
    // Deploy checks: the venv for kubernetes-validate (Debian's python3 has no ensurepip
    // without it).
    "python3-venv",
];

/// What building the agent alone needs (the container image build): LLVM for bpf-linker.
const APT_PACKAGES_AGENT: &[&str] = &["llvm-22-dev", "libpolly-22-dev"];

/// Nightly used for the eBPF crate when `nightly` is missing or not on LLVM 22 (bpf-linker 0.13
/// is built against LLVM 22; a nightly on another LLVM makes it fail with "Invalid record").
pub const PINNED_NIGHTLY: &str = "nightly-2026-05-19";
const LLVM_MAJOR: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const BPFFS: &str = "/sys/fs/bpf";
/// Strict offline schema check of Kubernetes manifests (tests/tests/deploy.rs), from PyPI.
const KUBE_VALIDATE_VERSION: &str = "1.37.0";
/// Environment variable the agent's build.rs reads to pick the eBPF toolchain.
pub const TOOLCHAIN_ENV: &str = "MESH_EBPF_TOOLCHAIN";

/// How much `setup` installs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything the build, the tests, the demo and the benchmarks use.
    Full,
    /// Only what building the agent needs (LLVM, the eBPF toolchain, bpf-linker): for the
    /// container image build, which has no use for test tools and cannot mount bpffs.
    AgentOnly,
}

/// Runs every step of `scope`, exports the eBPF toolchain for child processes and prints a
/// summary.
pub fn run(workspace: &Path, scope: Scope) -> Result<()> {
    let mut changed = Vec::new();
    let packages = match scope {
        Scope::Full => APT_PACKAGES,
        Scope::AgentOnly => APT_PACKAGES_AGENT,
    };
    apt_packages(packages, &mut changed).context("installing Debian packages")?;
    if scope == Scope::Full {
        rust_components(&mut changed).context("installing clippy and rustfmt")?;
    }
    let (toolchain, llvm) =
        ebpf_toolchain(&mut changed).context("setting up the eBPF toolchain")?;
    remember_toolchain(workspace, &toolchain)?;
    let linker = bpf_linker(&mut changed).context("installing bpf-linker")?;
    if scope == Scope::AgentOnly {
        let did = summary(&changed);
        println!(
            "xtask setup --agent-only: ok ({did}); eBPF toolchain {toolchain} (LLVM {llvm}), \
             {linker}"
        );
        return Ok(());
    }
    cargo_fuzz(&mut changed).context("installing cargo-fuzz")?;
    let validate = kube_validate(workspace, &mut changed)
        .context("installing kubernetes-validate in a venv")?;
    kubectl_hint();
    bpffs(&mut changed).context("mounting bpffs")?;

    let did = summary(&changed);
    println!(
        "xtask setup: ok ({did}); eBPF toolchain {toolchain} (LLVM {llvm}), {linker}, \
         kubernetes-validate {KUBE_VALIDATE_VERSION} at {}, bpffs at {BPFFS}",
        validate.display()
    );
    Ok(())
}

fn summary(changed: &[String]) -> String {
    if changed.is_empty() {
        "nothing to do".to_string()
    } else {
        format!("did: {}", changed.join("; "))
    }
}

/// Installs the missing packages among `packages` that apt knows about.
fn apt_packages(packages: &[&str], changed: &mut Vec<String>) -> Result<()> {
    if Cmd::new("dpkg-query").arg("--version").probe().is_none() {
        eprintln!(
            "xtask: dpkg-query not found (not Debian?): make sure these are installed: {}",
            packages.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|pkg| !is_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: missing Debian packages: {}", missing.join(" "));
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    Cmd::privileged("apt-get", &env).arg("update").run()?;
    let (available, unknown): (Vec<&str>, Vec<&str>) =
        missing.into_iter().partition(|pkg| apt_has(pkg));
    if !unknown.is_empty() {
        eprintln!(
            "xtask: not offered by the configured apt sources, skipped: {}",
            unknown.join(" ")
        );
    }
    if available.is_empty() {
        return Ok(());
    }
    Cmd::privileged("apt-get", &env)
        .args(["install", "-y"])
        .args(&available)
        .run()?;
    changed.push(format!("apt-get install {}", available.join(" ")));
    Ok(())
}

fn is_installed(pkg: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .probe()
        .is_some_and(|status| status.trim() == "install ok installed")
}

/// Whether apt has an installation candidate for `pkg`.
fn apt_has(pkg: &str) -> bool {
    Cmd::new("apt-cache")
        .args(["policy", pkg])
        .probe()
        .and_then(|out| {
            out.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("Candidate:")
                    .map(|c| c.trim() != "(none)")
            })
        })
        .unwrap_or(false)
}

/// clippy and rustfmt for the toolchain that runs xtask (`cargo xtask test` uses them).
fn rust_components(changed: &mut Vec<String>) -> Result<()> {
    let has = |sub: &str| Cmd::cargo().args([sub, "--version"]).probe().is_some();
    let missing: Vec<&str> = [("clippy", "clippy"), ("fmt", "rustfmt")]
        .into_iter()
        .filter(|(sub, _)| !has(sub))
        .map(|(_, component)| component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut add = Cmd::new("rustup").args(["component", "add"]).args(&missing);
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        add = add.args(["--toolchain", &toolchain]);
    }
    add.run()?;
    changed.push(format!("rustup component add {}", missing.join(" ")));
    Ok(())
}

/// Picks the eBPF toolchain (`nightly` when it is on LLVM 22, else PINNED_NIGHTLY, installed
/// if needed), makes sure it has rust-src, and returns its name and LLVM version.
fn ebpf_toolchain(changed: &mut Vec<String>) -> Result<(String, String)> {
    let host = rustc_field(None, "host")?;
    let listed = Cmd::new("rustup")
        .args(["toolchain", "list"])
        .read()
        .context("rustup is needed to install the eBPF toolchain")?;
    let installed = |name: &str| {
        let full = format!("{name}-{host}");
        listed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .any(|t| t == name || t == full)
    };

    let mut chosen = None;
    if installed("nightly") {
        match rustc_field(Some("nightly"), "LLVM version") {
            Ok(llvm) if llvm_major(&llvm) == Some(LLVM_MAJOR) => {
                chosen = Some(("nightly".to_string(), llvm))
            }
            Ok(llvm) => eprintln!(
                "xtask: toolchain nightly uses LLVM {llvm}, bpf-linker needs LLVM {LLVM_MAJOR}: \
                 using {PINNED_NIGHTLY}"
            ),
            Err(e) => {
                eprintln!("xtask: toolchain nightly unusable ({e:#}): using {PINNED_NIGHTLY}")
            }
        }
    } else {
        eprintln!("xtask: no nightly toolchain: using {PINNED_NIGHTLY}");
    }
    let (toolchain, llvm) = match chosen {
        Some(found) => found,
        None => {
            if !installed(PINNED_NIGHTLY) {
                Cmd::new("rustup")
                    .args(["toolchain", "install", PINNED_NIGHTLY])
                    .args(["--profile", "minimal", "--component", "rust-src"])
                    .run()?;
                changed.push(format!("rustup toolchain install {PINNED_NIGHTLY}"));
            }
            let llvm = rustc_field(Some(PINNED_NIGHTLY), "LLVM version")?;
            if llvm_major(&llvm) != Some(LLVM_MAJOR) {
                bail!("{PINNED_NIGHTLY} uses LLVM {llvm}, expected LLVM {LLVM_MAJOR}");
            }
            (PINNED_NIGHTLY.to_string(), llvm)
        }
    };

    let components = Cmd::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            &toolchain,
        ])
        .read()?;
    if !components.lines().any(|c| c.trim().starts_with("rust-src")) {
        Cmd::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", &toolchain])
            .run()?;
        changed.push(format!(
            "rustup component add rust-src --toolchain {toolchain}"
        ));
    }
    Ok((toolchain, llvm))
}

/// A field of `rustc [+toolchain] -vV`, e.g. "host" or "LLVM version".
fn rustc_field(toolchain: Option<&str>, field: &str) -> Result<String> {
    let mut rustc = Cmd::new("rustc");
    if let Some(t) = toolchain {
        rustc = rustc.arg(format!("+{t}"));
    }
    let out = rustc.arg("-vV").read()?;
    out.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')
                .map(|v| v.trim().to_string())
        })
        .with_context(|| format!("no `{field}` in rustc -vV output"))
}

fn llvm_major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// Writes the chosen toolchain to target/ebpf-toolchain and exports it for every child.
fn remember_toolchain(workspace: &Path, toolchain: &str) -> Result<()> {
    let file: PathBuf = workspace.join("target").join("ebpf-toolchain");
    fs::create_dir_all(workspace.join("target"))?;
    fs::write(&file, format!("{toolchain}\n"))
        .with_context(|| format!("writing {}", file.display()))?;
    cmd::export(TOOLCHAIN_ENV, toolchain);
    Ok(())
}

/// The toolchain `setup` chose for the eBPF crate (also the nightly the fuzz target runs on):
/// the exported variable, else the file `setup` wrote, else `nightly`.
pub fn ebpf_toolchain_name(workspace: &Path) -> String {
    std::env::var(TOOLCHAIN_ENV)
        .ok()
        .or_else(|| fs::read_to_string(workspace.join("target").join("ebpf-toolchain")).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "nightly".to_string())
}

/// cargo-fuzz, for `cargo xtask fuzz` and the fuzz step of `cargo xtask test`.
fn cargo_fuzz(changed: &mut Vec<String>) -> Result<()> {
    if Cmd::cargo().args(["fuzz", "--version"]).probe().is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    Cmd::cargo()
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .run()?;
    changed.push(format!("cargo install cargo-fuzz {CARGO_FUZZ_VERSION}"));
    Ok(())
}

/// bpf-linker 0.13.x built against LLVM 22; returns e.g. "bpf-linker 0.13.0".
fn bpf_linker(changed: &mut Vec<String>) -> Result<String> {
    let current = || {
        Cmd::new("bpf-linker")
            .arg("--version")
            .probe()
            .map(|v| v.trim().to_string())
            .filter(|v| v.starts_with("bpf-linker 0.13."))
    };
    if let Some(version) = current() {
        return Ok(version);
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR}); this takes a few minutes"
    );
    let install = |locked: bool| {
        let mut c = Cmd::cargo().env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ]);
        if locked {
            c = c.arg("--locked");
        }
        c.args(["--no-default-features", "--features", "llvm-22"])
            .run()
    };
    if let Err(e) = install(true) {
        eprintln!("xtask: {e:#}; retrying without --locked");
        install(false)?;
    }
    changed.push(format!("cargo install bpf-linker {BPF_LINKER_VERSION}"));
    current().context("bpf-linker 0.13 still not found on PATH after installing it")
}

/// The venv holding kubernetes-validate (and the jsonschema and pyyaml it brings, which
/// tests/k8s/crd_strict.py uses): `<workspace>/target/tools/venv`. tests/tests/deploy.rs looks
/// for it there.
pub fn tools_venv(workspace: &Path) -> PathBuf {
    workspace.join("target").join("tools").join("venv")
}

/// kubernetes-validate KUBE_VALIDATE_VERSION in tools_venv (created with `python3 -m venv`);
/// returns the path of its executable.
fn kube_validate(workspace: &Path, changed: &mut Vec<String>) -> Result<PathBuf> {
    let venv = tools_venv(workspace);
    let bin = venv.join("bin");
    let validate = bin.join("kubernetes-validate");
    let current = || {
        Cmd::new(&validate)
            .arg("--version")
            .probe()
            .is_some_and(|v| v.trim() == KUBE_VALIDATE_VERSION)
    };
    if current() {
        return Ok(validate);
    }
    if !bin.join("pip").exists() {
        Cmd::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .run()
            .context("python3 -m venv (on Debian: apt-get install python3-venv)")?;
    }
    Cmd::new(bin.join("pip"))
        .args(["install", "--quiet"])
        .arg(format!("kubernetes-validate=={KUBE_VALIDATE_VERSION}"))
        .run()?;
    changed.push(format!(
        "pip install kubernetes-validate=={KUBE_VALIDATE_VERSION} in {}",
        venv.display()
    ));
    if !current() {
        bail!(
            "{} --version does not print {KUBE_VALIDATE_VERSION} after installing it",
            validate.display()
        );
    }
    Ok(validate)
}

/// kubectl (for `kubectl kustomize` in the deploy checks) cannot be installed from Debian's own
/// sources in a usable version, so it is not installed here; say so when it is missing.
fn kubectl_hint() {
    if Cmd::new("kubectl")
        .args(["version", "--client"])
        .probe()
        .is_none()
    {
        eprintln!(
            "xtask: kubectl not found: the deploy checks (tests/tests/deploy.rs) need it for \
             `kubectl kustomize`; install it from https://kubernetes.io/docs/tasks/tools/ \
             (Debian's kubernetes-client is too old)"
        );
    }
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted there.
fn bpffs(changed: &mut Vec<String>) -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == BPFFS && f[2] == "bpf"
    });
    if !mounted {
        Cmd::privileged("mount", &[])
            .args(["-t", "bpf", "bpf", BPFFS])
            .run()?;
        changed.push(format!("mount -t bpf bpf {BPFFS}"));
    }
    Ok(())
}
