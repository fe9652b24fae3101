//! mesh-agent: one agent per node of a sidecarless service mesh.

use std::{path::Path, process::ExitCode};

use anyhow::{Context, Result};
use clap::Parser;
use mesh_agent::{
    admin_client, cli,
    cli::{Cli, Command, ConfigCommand, DebugCommand},
    config, ebpf, flows, logging, runtime, status,
};

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = logging::init(&cli.log, cli.log_format);
    match dispatch(cli.command, log) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command, log: logging::LogControl) -> Result<ExitCode> {
    match command {
        Command::Status { admin, json } => {
            let body = tokio_runtime()?.block_on(admin_client::get(admin, "/status"))?;
            let status: serde_json::Value =
                serde_json::from_slice(&body).context("unexpected /status answer")?;
            if json {
                println!("{}", String::from_utf8_lossy(&body).trim_end());
            } else {
                print!("{}", status::render(&status));
            }
            Ok(if status::healthy(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::LogLevel { filter, admin } => {
            let path = match &filter {
                Some(f) => format!(
                    "/logging?level={}",
                    form_urlencoded::byte_serialize(f.as_bytes()).collect::<String>()
                ),
                None => "/logging".to_string(),
            };
            let rt = tokio_runtime()?;
            let body = match filter {
                Some(_) => rt.block_on(admin_client::post(admin, &path))?,
                None => rt.block_on(admin_client::get(admin, &path))?,
            };
            let answer: serde_json::Value =
                serde_json::from_slice(&body).context("unexpected /logging answer")?;
            println!("{}", answer["filter"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Command::Flows {
            admin,
            json,
            follow: true,
            ..
        } => {
            follow_flows(admin, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let (config, source, path) = load_config(config)?;
            tokio_runtime()?.block_on(runtime::run(config, source, path, log))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Flows {
            admin, json, state, ..
        } => {
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
            Ok(ExitCode::SUCCESS)
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command } => match command {
            ConfigCommand::Check { file } => {
                let config = match config::check_file(&file) {
                    Ok(config) => config,
                    Err(errors) => {
                        // One `FILE:LINE:COL: reason` line per error, in file
                        // order, so editors and grep can jump to each.
                        for e in errors.all() {
                            eprintln!("{e}");
                        }
                        if errors.stopped_early() && errors.line().is_some() {
                            eprintln!(
                                "mesh-agent: checking stopped at this error; fix it and run `config check` again to see any others"
                            );
                        } else if !errors.stopped_early() {
                            let n = errors.len();
                            eprintln!(
                                "mesh-agent: {}: {n} error{}",
                                file.display(),
                                if n == 1 { "" } else { "s" }
                            );
                        }
                        return Ok(ExitCode::FAILURE);
                    }
                };
                println!(
                    "{}: ok (node {}, {} workloads, {} services)",
                    file.display(),
                    config.node.name,
                    config.workloads.len(),
                    config.services.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            ConfigCommand::Default => {
                print!("{}", include_str!("default-config.yaml"));
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Crds => {
            print!("{}", mesh_agent::k8s::crd::crds_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug {
            command:
                DebugCommand::MetricsEncode {
                    series,
                    rounds,
                    format,
                },
        } => {
            let openmetrics = match format.as_str() {
                "openmetrics" => true,
                "prometheus" => false,
                other => anyhow::bail!("unknown format {other:?}: use openmetrics or prometheus"),
            };
            let run = mesh_agent::metrics::bench::encode_run(series, rounds, openmetrics);
            println!("{}", serde_json::to_string(&run)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall { pin_dir, config } | Command::Cleanup { pin_dir, config } => {
            let pin_dir = match pin_dir {
                Some(dir) => dir,
                None => load_config(config)?.0.node.pin_dir(),
            };
            ebpf::require_root()?;
            let removed = ebpf::uninstall(&pin_dir)?;
            println!(
                "{}: detached {} program links, removed {} pinned maps",
                pin_dir.display(),
                removed.links,
                removed.maps
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The config `run` uses: the file given, else the default path when it exists, else the
/// embedded default; with a description of where it came from and the file's path.
fn load_config(
    config: Option<std::path::PathBuf>,
) -> Result<(config::Config, String, Option<std::path::PathBuf>)> {
    let path = match config {
        Some(path) => Some(path),
        None if Path::new(cli::DEFAULT_CONFIG_PATH).exists() => {
            Some(cli::DEFAULT_CONFIG_PATH.into())
        }
        None => None,
    };
    Ok(match path {
        Some(path) => (
            config::load_file(&path)?,
            path.display().to_string(),
            Some(path),
        ),
        None => {
            tracing::info!("no config file; using the embedded default");
            (
                config::embedded_default(),
                "embedded default".to_owned(),
                None,
            )
        }
    })
}

/// `mesh-agent flows --follow`: events from /flows/stream as table lines (header once) or as
/// the JSON lines the agent sends. The stream only ends when the agent goes away.
fn follow_flows(admin: std::net::SocketAddr, json: bool) -> Result<()> {
    use std::io::Write as _;
    let rt = tokio_runtime()?;
    let body = rt.block_on(admin_client::open_stream(admin, "/flows/stream"))?;
    let mut out = std::io::stdout().lock();
    if !json {
        write!(out, "{}", flows::render_event_header())?;
        out.flush()?;
    }
    let streamed = rt.block_on(admin_client::read_lines(body, |line| {
        if json {
            writeln!(out, "{line}")?;
        } else {
            match serde_json::from_str::<flows::FlowEvent>(line) {
                Ok(event) => write!(out, "{}", flows::render_event(&event))?,
                Err(_) => {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .with_context(|| format!("unexpected /flows/stream line: {line}"))?;
                    if v["event"] == "lost" {
                        eprintln!(
                            "mesh-agent: {} events lost (this reader fell behind)",
                            v["count"]
                        );
                    }
                }
            }
        }
        // Line by line, also into a pipe or a file.
        out.flush()?;
        Ok(())
    }));
    match streamed {
        Ok(()) => anyhow::bail!("the agent ended the flow stream (it stopped or restarted)"),
        // The reader went away (`mesh-agent flows -f | head`): not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(())
        }
        Err(e) => {
            Err(e.context("the agent went away (stopped or restarted) during the flow stream"))
        }
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
