//! Logic of the `mesh-probe` test workload: small synchronous TCP servers and
//! clients whose results are JSON lines on stdout, and one async HTTP server
//! (`http-backend`, tokio + hyper) for the L7 tests.

mod bulk;
pub mod cli;
mod connect;
mod connrate;
pub mod datagen;
mod dial_loop;
mod h2_loop;
mod handlers;
mod hold;
pub mod http_backend;
pub mod output;
pub mod raw_http;
mod rr;
mod server;
pub mod stats;
mod tls_handshakes;
mod transfer;

use std::sync::Arc;

use anyhow::Result;

pub use cli::{Cli, Command};

/// Runs a subcommand. `Ok(false)` means it ran but the outcome was negative
/// (connect refused, stream corrupted, ...) and was already printed; `Err`
/// means it could not run at all. Servers only return on error.
pub fn run(cli: &Cli) -> Result<bool> {
    match &cli.command {
        Command::HttpServer(a) => {
            let body: Arc<str> = format!("{}\n", a.reply).into();
            server::serve(&a.server, move |s| handlers::http(s, &body))?;
            Ok(true)
        }
        Command::EchoServer(a) => server::serve(&a.server, handlers::echo).map(|()| true),
        Command::SinkServer(a) => server::serve(&a.server, handlers::sink).map(|()| true),
        Command::Transfer(a) => transfer::run(a),
        Command::Connect(a) => Ok(connect::run(a)),
        Command::Rr(a) => rr::run(a),
        Command::Bulk(a) => bulk::run(a),
        Command::ConnRate(a) => connrate::run(a),
        Command::TlsHandshakes(a) => tls_handshakes::run(a),
        Command::HttpBackend(a) => http_backend::run(a).map(|()| true),
        Command::BannerServer(a) => {
            let banner: Arc<str> = a.banner.as_str().into();
            server::serve(&a.server, move |s| handlers::banner(s, &banner))?;
            Ok(true)
        }
        Command::RawHttp(a) => raw_http::run(a),
        Command::DialLoop(a) => Ok(dial_loop::run(a)),
        Command::H2Loop(a) => h2_loop::run(a),
        Command::Hold(a) => hold::run(a),
    }
}
