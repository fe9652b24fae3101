//! Developer tasks for the mesh workspace: `cargo xtask <setup|build|test|demo|bench>`.

mod architecture;
mod bench;
mod cmd;
mod demo;
mod fuzz;
mod layers;
mod setup;
mod tasks;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for mesh-agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks (Debian packages, eBPF toolchain, bpf-linker,
    /// kubernetes-validate, bpffs).
    Setup {
        /// Only what building the agent needs (LLVM, eBPF toolchain, bpf-linker), e.g. in
        /// the container image build.
        #[arg(long)]
        agent_only: bool,
    },
    /// Setup, then build the release binaries of the workspace (the agent embeds the eBPF code).
    Build {
        /// Set up and build only the agent (`target/release/mesh-agent`), e.g. in the
        /// container image build.
        #[arg(long)]
        agent_only: bool,
    },
    /// Setup, build, then run every test (including privileged end-to-end tests), clippy,
    /// rustfmt, a short run of each fuzz target and the bench guard's self-check (bench compare must flag a
    /// planted slowdown); fails if any of them fails.
    Test,
    /// Check that mesh-agent's imports only point down its layers and form no circle (see
    /// ARCHITECTURE.md); lists every upward import and circle with its file and line.
    Layers,
    /// Check that every module, type and function ARCHITECTURE.md names exists.
    Architecture,
    /// Run the fuzz targets (cargo-fuzz): the L7 request path, the config loader, the tunnel's
    /// CONNECT handling, the Kubernetes translation.
    Fuzz {
        /// One target (route_request, config_load, tunnel_connect, k8s_translate); all of
        /// them, one after the other, when none is named.
        #[arg(long)]
        target: Option<String>,
        /// How long to fuzz each target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Two simulated nodes with real namespaces and cgroups, agents, traffic, the flow table.
    Demo,
    /// Performance comparisons on simulated nodes (direct, kernel path only, through the agent).
    ///
    /// `cargo xtask bench SUITE` runs one suite (l4, mtls, http, metrics, config, restart or soak);
    /// `cargo xtask bench compare [SUITE...]` reruns suites (default: l4, mtls, http) and
    /// prints each ratio beside bench/baseline.json's, failing when one is more than 20 %
    /// worse.
    Bench {
        /// A suite, or `compare` followed by the suites to compare.
        #[arg(required = true, num_args = 1..)]
        suites: Vec<String>,
        /// One JSON object per result instead of a table.
        #[arg(long)]
        json: bool,
        /// The agent binary to measure instead of the workspace's release build (e.g. an
        /// older build, to profile or compare it).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Rounds per measurement instead of the suite's own count (l4, mtls, http).
        #[arg(long)]
        rounds: Option<usize>,
        /// http only: run the saturation tests once per telemetry setting, back to back,
        /// and print a table comparing them (a comma-separated list among off, access_log,
        /// istio_metrics, destination_requests, defaults, defaults+request_log; `all` for
        /// every one).
        #[arg(long)]
        telemetry: Option<String>,
        /// compare only: write the new results into the baseline instead of comparing.
        #[arg(long)]
        record: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let workspace = workspace_root();
    cmd::cargo_bin_on_path();
    match command {
        Command::Setup { agent_only } => setup::run(&workspace, scope(agent_only)),
        Command::Build { agent_only: false } => tasks::build(&workspace).map(drop),
        Command::Build { agent_only: true } => tasks::build_agent(&workspace).map(drop),
        Command::Test => tasks::test(&workspace),
        Command::Architecture => architecture::run(&workspace),
        Command::Layers => {
            layers::run(&workspace).and_then(|()| layers::planted_breaks_are_flagged(&workspace))
        }
        Command::Fuzz { target, seconds } => fuzz::run(&workspace, target.as_deref(), seconds),
        Command::Demo => {
            tasks::build(&workspace)?;
            demo::run()
        }
        Command::Bench {
            suites,
            json,
            agent,
            rounds,
            telemetry,
            record,
        } => {
            let built = tasks::build(&workspace)?;
            // mesh-probe and the other tools stay the build's, whatever agent is measured.
            if let Some(dir) = built.parent() {
                cmd::export("MESH_RELEASE_DIR", dir);
            }
            if let Some(agent) = &agent {
                let agent = std::path::absolute(agent)?;
                anyhow::ensure!(agent.exists(), "no agent binary at {}", agent.display());
                cmd::export("MESH_AGENT_BIN", &agent);
            }
            let options = bench::Options {
                json,
                rounds,
                telemetry,
                record,
            };
            bench::dispatch(&workspace, &suites, &options)
        }
    }
}

fn scope(agent_only: bool) -> setup::Scope {
    if agent_only {
        setup::Scope::AgentOnly
    } else {
        setup::Scope::Full
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
