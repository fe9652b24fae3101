//! Test workload for mesh tests; see `mesh_tests::probe`.

use std::process::ExitCode;

use clap::Parser;
use mesh_tests::probe::{self, Cli, output::emit};
use serde_json::json;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match probe::run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            // Still one JSON line, so tests parse failures the same way.
            emit(&json!({ "ok": false, "error": format!("{e:#}") }));
            eprintln!("mesh-probe: {e:#}");
            ExitCode::from(2)
        }
    }
}
