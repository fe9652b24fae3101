//! Command-line interface of the single `mesh-agent` binary.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

/// Default config file on a bare host; when it does not exist the embedded default is used.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mesh-agent/config.yaml";

#[derive(Parser, Debug)]
#[command(
    name = "mesh-agent",
    version,
    about = "Sidecarless service mesh node agent"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "mesh_agent=debug".
    #[arg(long, global = true, default_value = "info", env = "MESH_LOG")]
    pub log: String,
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
    Flows {
        /// Admin address of the agent.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only "open" or "closed" connections.
        #[arg(long)]
        state: Option<String>,
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
    /// Remove a node's pinned maps after the agent has stopped for good.
    Cleanup {
        /// The node's pin directory (<bpffs>/<node name>).
        #[arg(long)]
        pin_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file; prints the error with file, line and column.
    Check { file: PathBuf },
    /// Print the embedded default config.
    Default,
}
