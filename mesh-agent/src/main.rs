//! mesh-agent: one agent per node of a sidecarless service mesh.

use std::{path::Path, process::ExitCode};

use anyhow::{Context, Result};
use clap::Parser;
use mesh_agent::{
    admin_client, cli,
    cli::{Cli, Command, ConfigCommand},
    config, ebpf, flows, runtime,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let log = mesh_agent::logging::LogControl::placeholder();
    match dispatch(cli.command, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command, log: mesh_agent::logging::LogControl) -> Result<()> {
    match command {
        Command::Run { config } => {
            let config = match config {
                Some(path) => config::load_file(&path)?,
                None if Path::new(cli::DEFAULT_CONFIG_PATH).exists() => {
                    config::load_file(Path::new(cli::DEFAULT_CONFIG_PATH))?
                }
                None => {
                    tracing::info!("no config file; running with the embedded default");
                    config::embedded_default()
                }
            };
            tokio_runtime()?.block_on(runtime::run(config, log))
        }
        Command::Flows { admin, json, state } => {
            let path = match &state {
                Some(s) => format!("/flows?state={s}"),
                None => "/flows".to_string(),
            };
            let body = tokio_runtime()?.block_on(admin_client::get(admin, &path))?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
            } else {
                let records: Vec<flows::FlowRecord> =
                    serde_json::from_slice(&body).context("unexpected /flows answer")?;
                print!("{}", flows::render_table(&records));
            }
            Ok(())
        }
        Command::Certs { admin, json } => {
            let body = tokio_runtime()?.block_on(admin_client::get(admin, "/certs"))?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
            } else {
                let certs: serde_json::Value =
                    serde_json::from_slice(&body).context("unexpected /certs answer")?;
                print!("{}", certs_table(&certs));
            }
            Ok(())
        }
        Command::Config { command } => match command {
            ConfigCommand::Check { file } => {
                let config = config::check_file(&file)?;
                println!(
                    "{}: ok (node {}, {} workloads, {} services)",
                    file.display(),
                    config.node.name,
                    config.workloads.len(),
                    config.services.len()
                );
                Ok(())
            }
            ConfigCommand::Default => {
                print!("{}", include_str!("default-config.yaml"));
                Ok(())
            }
        },
        Command::Cleanup { pin_dir } => ebpf::remove_pins(&pin_dir),
    }
}

/// `mesh-agent certs` as a table: one line per identity, then the trust bundle.
fn certs_table(certs: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = format!(
        "trust domain: {}\n{:<60} {:<34} {:<22} {:>10} {:>10}\n",
        text(&certs["trust_domain"]),
        "IDENTITY",
        "SERIAL",
        "NOT AFTER",
        "EXPIRES IN",
        "ROTATE IN"
    );
    for c in certs["certificates"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<60} {:<34} {:<22} {:>9}s {:>9}s",
            text(&c["spiffe_id"]),
            text(&c["serial"]),
            text(&c["not_after"]),
            text(&c["expires_in_seconds"]),
            text(&c["rotate_in_seconds"]),
        );
    }
    let _ = writeln!(out, "trust bundle:");
    for root in certs["trust_bundle"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {} serial {} not after {}",
            text(&root["subject"]),
            text(&root["serial"]),
            text(&root["not_after"])
        );
    }
    out
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
