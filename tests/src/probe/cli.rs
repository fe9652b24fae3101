//! Command line of `mesh-probe`. Lives in the library so parsing can be
//! unit-tested.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Test workload for mesh tests; prints one JSON object per line on stdout.
#[derive(Parser, Debug)]
#[command(name = "mesh-probe", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Tiny HTTP/1.1 server answering every request with the same body.
    HttpServer(HttpServerArgs),
    /// Echoes every byte back until the peer half-closes.
    EchoServer(EchoServerArgs),
    /// Discards input; on EOF replies with the byte count (8 bytes, big endian).
    SinkServer(SinkServerArgs),
    /// Sends seeded pseudo-random bytes to an echo server and verifies them.
    Transfer(TransferArgs),
    /// One TCP connect attempt, optionally sending a request.
    Connect(ConnectArgs),
    /// Request/response latency on one persistent connection (echo server).
    Rr(RrArgs),
    /// Throughput against a sink server.
    Bulk(BulkArgs),
    /// New connections per second against an echo server: connect, echo, close, repeat.
    ConnRate(ConnRateArgs),
    /// Full TLS 1.3 mutual-auth handshakes per second with rustls alone, in process over
    /// loopback TCP (no network, no mesh): the baseline for the mesh's session setup.
    TlsHandshakes(TlsHandshakesArgs),
}

#[derive(Args, Debug)]
pub struct ServerCommon {
    #[arg(long)]
    pub listen: SocketAddr,
    /// Number of accepted connections, rewritten atomically on every accept.
    #[arg(long)]
    pub accept_count_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct HttpServerArgs {
    #[command(flatten)]
    pub server: ServerCommon,
    /// Response body (a newline is appended).
    #[arg(long)]
    pub reply: String,
}

#[derive(Args, Debug)]
pub struct EchoServerArgs {
    #[command(flatten)]
    pub server: ServerCommon,
}

#[derive(Args, Debug)]
pub struct SinkServerArgs {
    #[command(flatten)]
    pub server: ServerCommon,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    #[arg(long)]
    pub bytes: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Connect timeout.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Give up when no progress is made for this long.
    #[arg(long, default_value_t = 30000)]
    pub idle_timeout_ms: u64,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    /// Connect timeout, also used for sending and reading the reply.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Text to send after connecting; the reply is read until EOF.
    #[arg(long)]
    pub send: Option<String>,
}

#[derive(Args, Debug)]
pub struct RrArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    /// Bytes per request (and per response).
    #[arg(long)]
    pub size: usize,
    /// Measured round trips.
    #[arg(long)]
    pub count: usize,
    /// Unmeasured round trips first.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

#[derive(Args, Debug)]
pub struct BulkArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    #[arg(long)]
    pub seconds: f64,
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

#[derive(Args, Debug)]
pub struct ConnRateArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    /// Run for this long (or until --count connections are done).
    #[arg(long)]
    pub seconds: f64,
    /// Connections in flight at once, one thread each.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Stop after this many connections in total.
    #[arg(long)]
    pub count: Option<u64>,
    /// Bytes sent (and echoed) per connection.
    #[arg(long, default_value_t = 1)]
    pub size: usize,
    /// Per connection: connect, send and receive timeout.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

#[derive(Args, Debug)]
pub struct TlsHandshakesArgs {
    #[arg(long)]
    pub seconds: f64,
    /// Client/server thread pairs handshaking at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mesh-probe").chain(args.iter().copied()))
    }

    #[test]
    fn parses_http_server() {
        let cli = parse(&[
            "http-server",
            "--listen",
            "0.0.0.0:8080",
            "--reply",
            "hello",
            "--accept-count-file",
            "/tmp/c",
        ])
        .unwrap();
        let Command::HttpServer(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.server.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(a.reply, "hello");
        assert_eq!(a.server.accept_count_file, Some(PathBuf::from("/tmp/c")));
    }

    #[test]
    fn parses_clients_with_defaults() {
        let cli = parse(&["transfer", "--connect", "10.1.1.2:9", "--bytes", "1048576"]).unwrap();
        let Command::Transfer(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!((a.bytes, a.seed), (1 << 20, 1));

        let cli = parse(&["connect", "--connect", "10.1.1.2:80", "--send", "x"]).unwrap();
        let Command::Connect(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!((a.timeout_ms, a.send.as_deref()), (2000, Some("x")));

        let cli = parse(&[
            "rr",
            "--connect",
            "1.2.3.4:5",
            "--size",
            "64",
            "--count",
            "100",
        ]);
        assert!(matches!(
            cli.unwrap().command,
            Command::Rr(RrArgs { warmup: 10, .. })
        ));

        let cli = parse(&["bulk", "--connect", "1.2.3.4:5", "--seconds", "0.5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Bulk(BulkArgs { seconds: 0.5, .. })
        ));
    }

    #[test]
    fn parses_rate_commands() {
        let cli = parse(&["conn-rate", "--connect", "1.2.3.4:5", "--seconds", "2"]).unwrap();
        let Command::ConnRate(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!((a.concurrency, a.count, a.size), (1, None, 1));

        let cli = parse(&[
            "conn-rate",
            "--connect",
            "1.2.3.4:5",
            "--seconds",
            "2",
            "--concurrency",
            "4",
            "--count",
            "50",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::ConnRate(ConnRateArgs {
                concurrency: 4,
                count: Some(50),
                ..
            })
        ));

        let cli = parse(&["tls-handshakes", "--seconds", "1", "--concurrency", "2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::TlsHandshakes(TlsHandshakesArgs { concurrency: 2, .. })
        ));
        assert!(parse(&["conn-rate", "--seconds", "1"]).is_err());
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(parse(&["connect", "--connect", "not-an-addr"]).is_err());
        assert!(parse(&["transfer", "--connect", "1.2.3.4:5"]).is_err());
        assert!(parse(&["echo-server"]).is_err());
        assert!(parse(&["nope"]).is_err());
    }
}
