//! Command-line interface of the single `mesh-agent` binary.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

/// Default config file on a bare host; when it does not exist the embedded default is used.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mesh-agent/config.yaml";

#[derive(Parser, Debug)]
#[command(
    name = "mesh-agent",
    version,
    about = "Sidecarless service mesh node agent"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "mesh_agent=debug";
    /// "info,access=off" drops the access log. A running agent's filter can be changed with
    /// `mesh-agent log-level`.
    #[arg(long, global = true, default_value = "info", env = "MESH_LOG")]
    pub log: String,
    /// Log line format on stderr: "text" for people, "json" for log collectors (one object
    /// per line with timestamp, level, target, message and the event's fields).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "MESH_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and attach the eBPF programs and run the node agent until SIGTERM.
    Run {
        /// Config file (default: /etc/mesh-agent/config.yaml, else the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the connections of this node (live and recently closed) with their counters.
    ///
    /// With --follow, print connection events as they happen instead: "open" when the agent
    /// first sees a live connection (it looks every 500 ms, so connections shorter than that
    /// may only show "close") and "close" with the final counters. Runs until interrupted;
    /// exits with an error when the agent goes away.
    Flows {
        /// Admin address of the agent.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// Print JSON instead of a table (with --follow: one JSON object per line, as the
        /// agent sends them, including {"event":"lost","count":N} when events were dropped
        /// because the reader fell behind).
        #[arg(long)]
        json: bool,
        /// Only "open" or "closed" connections.
        #[arg(long, conflicts_with = "follow")]
        state: Option<String>,
        /// Stream connection events (open/close) as they happen.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Summarise the running agent: node, version, readiness, programs, workloads,
    /// certificates, counters, and anything that looks wrong.
    ///
    /// Exit status: 0 when the agent is ready and reports no problems other than informational
    /// ones (such as policy denials); 1 when it is not ready, reports a problem, or cannot be
    /// reached.
    Status {
        /// Admin address of the agent.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// Print the agent's /status JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Print the running agent's log filter, or replace it.
    ///
    /// FILTER uses EnvFilter syntax, e.g. "debug" or "info,mesh_agent::proxy=trace,access=off".
    /// An invalid filter is refused and the old one stays. The change lasts until the agent
    /// restarts (then --log / MESH_LOG apply again).
    LogLevel {
        /// The new filter; without it, the current one is printed.
        filter: Option<String>,
        /// Admin address of the agent.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
    /// Print the workload identities this node's agent holds: SPIFFE ID, serial, expiry and
    /// next rotation, and the trust bundle.
    Certs {
        /// Admin address of the agent.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Config file tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the CustomResourceDefinitions the agent reads (MeshAuthorizationPolicy) as YAML,
    /// for `kubectl apply -f -`; deploy/kubernetes/base/crds holds the same text.
    Crds,
    /// Detach the node's programs and remove its pinned maps, for good.
    ///
    /// The programs stay attached, and the policy enforced, when the agent stops or crashes;
    /// this is how to take the mesh off a node. Stop the agent first: a running agent keeps
    /// its programs until it exits.
    Uninstall {
        /// The node's pin directory (<bpffs>/<node name>); default: the one of the config.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Config file that names the node (default: as for `run`).
        #[arg(long, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
    },
    /// The former name of `uninstall`.
    #[command(hide = true)]
    Cleanup {
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        #[arg(long, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
    },
    /// Developer tools (used by `cargo xtask bench`).
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Time the encoding of the istio_* exposition holding SERIES series; prints JSON.
    MetricsEncode {
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// openmetrics or prometheus (text 0.0.4).
        #[arg(long, default_value = "openmetrics")]
        format: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file; prints every error as FILE:LINE:COLUMN: reason, in file order
    /// (a YAML syntax error, unknown key or wrong value type stops the check there).
    Check { file: PathBuf },
    /// Print the embedded default config.
    Default,
}
