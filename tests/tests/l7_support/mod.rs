//! Helpers of the L7 end-to-end tests (tests/l7.rs): backends, real clients (curl, h2load,
//! the Python gRPC client, raw-http) run inside pods, and the agents' /stats `http` section.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesh_tests::mesh::{Mesh, ServiceSpec, parse_last_json};
use mesh_tests::sim::Proc;
use serde_json::Value;

/// Every backend listens here; services forward their port to it.
pub const BACKEND_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 50051;
/// Debian's interpreter, which has python3-grpcio (the one on PATH may be another).
pub const PYTHON: &str = "/usr/bin/python3";

pub fn grpc_script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("grpc")
        .join(name)
        .display()
        .to_string()
}

pub fn vip(text: &str) -> Ipv4Addr {
    text.parse().expect("vip")
}

/// An L7 service: `vip:80` -> 8080 of the endpoints, with the given port protocol.
pub fn http_service(name: &str, vip_text: &str, protocol: &str, endpoints: &[&str]) -> ServiceSpec {
    ServiceSpec::new(name, vip(vip_text), 80, BACKEND_PORT, endpoints).protocol(protocol)
}

/// A running `mesh-probe http-backend` and its stats file.
pub struct Backend {
    pub name: String,
    pub stats: PathBuf,
    pub proc: Proc,
}

impl Backend {
    /// Starts `http-backend --name NAME` in pod `pod` on 0.0.0.0:8080 with a stats file.
    pub fn start(mesh: &Mesh, pod: &str, name: &str, extra: &[&str]) -> Backend {
        let stats = mesh.sim.dir().join(format!("{name}-stats.json"));
        let listen = format!("0.0.0.0:{BACKEND_PORT}");
        let stats_arg = stats.display().to_string();
        let mut args = vec![
            "http-backend",
            "--listen",
            &listen,
            "--name",
            name,
            "--stats-file",
            &stats_arg,
        ];
        args.extend_from_slice(extra);
        let proc = mesh
            .serve(pod, &args)
            .unwrap_or_else(|e| panic!("http-backend {name} in {pod}: {e:#}"));
        Backend {
            name: name.to_string(),
            stats,
            proc,
        }
    }

    pub fn stats(&self) -> Value {
        let text = std::fs::read_to_string(&self.stats)
            .unwrap_or_else(|e| panic!("{}: {e}", self.stats.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", self.name))
    }

    /// Requests received (counted on arrival, before any answer).
    pub fn requests(&self) -> u64 {
        self.stats()["requests"].as_u64().unwrap_or(0)
    }

    /// Requests answered with `status` ("200", "503", "reset").
    pub fn answered(&self, status: &str) -> u64 {
        self.stats()["by_status"][status].as_u64().unwrap_or(0)
    }
}

/// What curl saw: status, response headers (lower-case names), body.
#[derive(Debug)]
pub struct CurlReply {
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
    pub raw: String,
}

impl CurlReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// The backend that answered (`x-backend`), "" for a reply the agent made itself.
    pub fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("")
    }

    /// `x-mesh-response-flags`, "" when absent.
    pub fn flags(&self) -> &str {
        self.header("x-mesh-response-flags").unwrap_or("")
    }

    /// The JSON an http-backend /echo put after its name line.
    pub fn echo(&self) -> Value {
        let (_, json) = self
            .body
            .split_once('\n')
            .unwrap_or_else(|| panic!("not an /echo body: {:?}", self.body));
        serde_json::from_str(json.trim())
            .unwrap_or_else(|e| panic!("not an /echo body ({e}): {:?}", self.body))
    }
}

/// Written by curl after each transfer (`-w`), so responses split cleanly even when a body
/// has no length or contains "HTTP/".
const END_MARK: &str = "\n--mesh-curl-end--\n";

/// Parses `curl -i -w END_MARK` output: one reply per transfer.
pub fn parse_curl_i(out: &str) -> Vec<CurlReply> {
    let mut replies = Vec::new();
    for chunk in out.split(END_MARK) {
        // A failed transfer writes the marker without any response.
        let Some(start) = chunk.find("HTTP/") else {
            continue;
        };
        let mut rest = &chunk[start..];
        // Interim responses (100 Continue) come before the real head.
        while let Some(head_end) = rest.find("\r\n\r\n") {
            let head = &rest[..head_end];
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if (100..200).contains(&status) {
                rest = &rest[head_end + 4..];
                continue;
            }
            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for line in lines {
                if let Some((k, v)) = line.split_once(':') {
                    headers
                        .entry(k.trim().to_ascii_lowercase())
                        .or_default()
                        .push(v.trim().to_string());
                }
            }
            replies.push(CurlReply {
                status,
                headers,
                body: rest[head_end + 4..].to_string(),
                raw: rest.to_string(),
            });
            break;
        }
    }
    replies
}

/// `curl -sS -i -m 10 ARGS...` in a pod; panics unless curl got exactly one response.
pub fn curl(mesh: &Mesh, from: &str, args: &[&str]) -> CurlReply {
    let mut replies = curl_many(mesh, from, args);
    assert_eq!(replies.len(), 1, "curl {args:?}: {replies:#?}");
    replies.remove(0)
}

/// Like [`curl`] for several URLs on one connection; returns every response.
pub fn curl_many(mesh: &Mesh, from: &str, args: &[&str]) -> Vec<CurlReply> {
    let mut full = vec!["-sS", "-i", "-m", "10", "-w", END_MARK];
    full.extend_from_slice(args);
    let out = mesh.run_in(from, "curl", &full).expect("running curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let replies = parse_curl_i(&stdout);
    assert!(
        out.status.success() && !replies.is_empty(),
        "curl {args:?} from {from}: {}\nstdout: {stdout}\nstderr: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        mesh.agent_logs("node1")
    );
    replies
}

/// A GET of `http://VIP{path}`.
pub fn get(mesh: &Mesh, from: &str, vip: &str, path: &str) -> CurlReply {
    curl(mesh, from, &[&format!("http://{vip}{path}")])
}

/// A counter of the node's /stats `http` section.
pub fn http_stat(mesh: &Mesh, node: &str, name: &str) -> u64 {
    mesh.stat(node, "http", name)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Counters may be updated just after the client has its answer: polls up to 5 s until the
/// counter reaches `want`, returns its value then (the caller asserts).
pub fn wait_http_stat(mesh: &Mesh, node: &str, name: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = http_stat(mesh, node, name);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts tests/grpc/grpc_backend.py in a pod on 0.0.0.0:50051; stats in `<name>-stats.json`.
pub fn grpc_backend(mesh: &Mesh, pod: &str, name: &str) -> (Proc, PathBuf) {
    let stats = mesh.sim.dir().join(format!("{name}-stats.json"));
    let script = grpc_script("grpc_backend.py");
    let listen = format!("0.0.0.0:{GRPC_PORT}");
    let stats_arg = stats.display().to_string();
    let proc = mesh
        .serve_program(
            pod,
            PYTHON,
            &[
                &script,
                "--listen",
                &listen,
                "--name",
                name,
                "--stats-file",
                &stats_arg,
            ],
        )
        .unwrap_or_else(|e| {
            panic!("grpc backend {name} (needs python3-grpcio for {PYTHON}): {e:#}")
        });
    (proc, stats)
}

/// Runs tests/grpc/grpc_client.py in a pod; returns its JSON line.
pub fn grpc_call(
    mesh: &Mesh,
    from: &str,
    target: &str,
    method: &str,
    n: usize,
    metadata: &[&str],
) -> Value {
    let script = grpc_script("grpc_client.py");
    let n = n.to_string();
    let mut args = vec![
        script.as_str(),
        "--target",
        target,
        "--method",
        method,
        "-n",
        &n,
        "--timeout",
        "10",
    ];
    for m in metadata {
        args.extend_from_slice(&["--metadata", m]);
    }
    let out = mesh.run_in(from, PYTHON, &args).expect("grpc client");
    parse_last_json(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "grpc_client {args:?}: {e:#}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            mesh.agent_logs("node1")
        )
    })
}

/// h2load's summary: (succeeded, failed, errored, the whole output).
pub fn h2load(mesh: &Mesh, from: &str, args: &[&str]) -> (u64, u64, u64, String) {
    let out = mesh.run_in(from, "h2load", args).expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| {
            panic!(
                "no summary from h2load {args:?}: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // requests: 1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed, 0 errored, 0 timeout
    let field = |name: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(name))
            .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    (field("succeeded"), field("failed"), field("errored"), text)
}

/// Runs `mesh-probe raw-http` in a pod; returns its JSON line.
pub fn raw_http(mesh: &Mesh, from: &str, args: &[&str]) -> Value {
    let mut full = vec!["raw-http"];
    full.extend_from_slice(args);
    mesh.probe(from, &full)
        .unwrap_or_else(|e| panic!("raw-http {args:?}: {e:#}"))
}

/// Neither agent panicked anywhere (tokio catches task panics and keeps running, so a
/// panicked connection task is only visible in the log).
pub fn assert_no_panics(mesh: &Mesh) {
    for node in ["node1", "node2"] {
        let logs = mesh.agent_logs(node);
        assert!(
            !logs.contains("panicked"),
            "the agent on {node} panicked:\n{logs}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_curl_output() {
        let out = format!(
            "HTTP/1.1 200 OK\r\nx-backend: a\r\n\r\na\n{END_MARK}HTTP/2 503 \r\nx-mesh-response-flags: UH\r\n\r\nno HTTP/ upstream{END_MARK}{END_MARK}"
        );
        let r = parse_curl_i(&out);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].status, r[0].backend(), r[0].body.as_str()),
            (200, "a", "a\n")
        );
        assert_eq!((r[1].status, r[1].flags()), (503, "UH"));
        assert_eq!(r[1].body, "no HTTP/ upstream");
    }
}
