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
    /// Async HTTP server (HTTP/1.1 and h2c prior knowledge on one port) for L7 tests:
    /// /echo, /status/CODE, /delay/MS, /reset; optional injected failures and delays.
    HttpBackend(HttpBackendArgs),
    /// Server-first protocol: writes a banner line on accept, then echoes.
    BannerServer(BannerServerArgs),
    /// Writes raw bytes to a server and prints the HTTP response head as JSON (for requests
    /// curl refuses to send: malformed, oversized).
    RawHttp(RawHttpArgs),
    /// Short connections to an echo server, one after the other, for a while: one JSON line
    /// per attempt (wall-clock start, duration, outcome), for tests that break the path
    /// while it runs.
    DialLoop(DialLoopArgs),
    /// One long-lived HTTP/2 (h2c) connection, a GET every interval; a new connection after
    /// GOAWAY. One JSON line per request and a summary.
    H2Loop(H2LoopArgs),
    /// Opens many echo connections, holds them idle for a while, then closes them.
    Hold(HoldArgs),
}

#[derive(Args, Debug)]
pub struct HoldArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    #[arg(long)]
    pub count: usize,
    /// How long to hold them once all are open.
    #[arg(long)]
    pub seconds: f64,
    /// Connect and echo timeout of each.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

#[derive(Args, Debug)]
pub struct H2LoopArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    /// The request authority (Host), e.g. the service name.
    #[arg(long)]
    pub authority: String,
    #[arg(long, default_value = "/echo")]
    pub path: String,
    #[arg(long)]
    pub seconds: f64,
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Bound of one request, reconnecting included.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

#[derive(Args, Debug)]
pub struct DialLoopArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    /// How long to keep dialling.
    #[arg(long)]
    pub seconds: f64,
    /// Pause between two attempts.
    #[arg(long, default_value_t = 20)]
    pub interval_ms: u64,
    /// Connect, send and receive timeout of one attempt.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
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
    /// Server-first protocols: read one line (the banner) before sending anything; it is
    /// reported as "banner".
    #[arg(long)]
    pub read_first: bool,
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

#[derive(Args, Debug)]
pub struct HttpBackendArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    /// Sent in every response as `x-backend: NAME`; every body starts with NAME.
    #[arg(long)]
    pub name: String,
    /// JSON `{"requests":n,"by_status":{"200":n,..},"connections":n}`, rewritten atomically
    /// when a request arrives and when it is answered.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
    /// Every Nth request (1-based count of all requests) is answered 503.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub fail_every: Option<u64>,
    /// Requests are answered 503 while this file exists.
    #[arg(long)]
    pub fail_while_exists: Option<PathBuf>,
    /// Sleep before answering each request.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
}

#[derive(Args, Debug)]
pub struct BannerServerArgs {
    #[command(flatten)]
    pub server: ServerCommon,
    /// Sent as `TEXT\r\n` as soon as a connection is accepted.
    #[arg(long)]
    pub banner: String,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("payload").required(true).args(["send", "send_file"])))]
pub struct RawHttpArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    /// Bytes to send; `\r`, `\n`, `\t`, `\\` and `\xHH` are unescaped.
    #[arg(long)]
    pub send: Option<String>,
    /// File whose bytes are sent verbatim.
    #[arg(long)]
    pub send_file: Option<PathBuf>,
    /// Connect timeout, and how long to wait for the response.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
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
        assert!(!a.read_first);
        let cli = parse(&["connect", "--connect", "10.1.1.2:25", "--read-first"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Connect(ConnectArgs {
                read_first: true,
                ..
            })
        ));

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
    fn parses_l7_servers() {
        let cli = parse(&[
            "http-backend",
            "--listen",
            "0.0.0.0:8080",
            "--name",
            "web-v1",
            "--stats-file",
            "/tmp/s.json",
            "--fail-every",
            "2",
            "--fail-while-exists",
            "/tmp/fail",
            "--delay-ms",
            "30",
        ])
        .unwrap();
        let Command::HttpBackend(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(a.name, "web-v1");
        assert_eq!(a.stats_file, Some(PathBuf::from("/tmp/s.json")));
        assert_eq!(a.fail_every, Some(2));
        assert_eq!(a.fail_while_exists, Some(PathBuf::from("/tmp/fail")));
        assert_eq!(a.delay_ms, 30);

        let cli = parse(&["http-backend", "--listen", "0.0.0.0:80", "--name", "x"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::HttpBackend(HttpBackendArgs {
                stats_file: None,
                fail_every: None,
                fail_while_exists: None,
                delay_ms: 0,
                ..
            })
        ));
        assert!(parse(&["http-backend", "--listen", "0.0.0.0:80"]).is_err());
        let zero = ["http-backend", "--listen", "0.0.0.0:80", "--name", "x"];
        assert!(parse(&[&zero[..], &["--fail-every", "0"]].concat()).is_err());

        let cli = parse(&[
            "banner-server",
            "--listen",
            "0.0.0.0:25",
            "--banner",
            "220 hi",
        ])
        .unwrap();
        let Command::BannerServer(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(
            (a.banner.as_str(), a.server.accept_count_file),
            ("220 hi", None)
        );
    }

    #[test]
    fn raw_http_needs_exactly_one_payload() {
        let cli = parse(&["raw-http", "--connect", "1.2.3.4:80", "--send", "GET"]).unwrap();
        let Command::RawHttp(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!((a.send.as_deref(), a.timeout_ms), (Some("GET"), 5000));
        let cli = parse(&["raw-http", "--connect", "1.2.3.4:80", "--send-file", "/f"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::RawHttp(RawHttpArgs {
                send: None,
                send_file: Some(_),
                ..
            })
        ));
        assert!(parse(&["raw-http", "--connect", "1.2.3.4:80"]).is_err());
        assert!(
            parse(&[
                "raw-http",
                "--connect",
                "1.2.3.4:80",
                "--send",
                "x",
                "--send-file",
                "/f"
            ])
            .is_err()
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(parse(&["connect", "--connect", "not-an-addr"]).is_err());
        assert!(parse(&["transfer", "--connect", "1.2.3.4:5"]).is_err());
        assert!(parse(&["echo-server"]).is_err());
        assert!(parse(&["nope"]).is_err());
    }
}
