//! The mTLS tunnel between agents (:15008): traffic to an endpoint on another node is encrypted
//! on the wire; the listener accepts exactly the mesh's certificates over TLS 1.3 + h2, and
//! shrugs off old TLS, plaintext and garbage without falling over.

mod common;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use mesh_tests::mesh::Mesh;
use mesh_tests::pki::{self, PemFiles, Validity};
use mesh_tests::sim::Proc;
use nix::sched::{CloneFlags, setns};

const TUNNEL: &str = "10.200.0.2:15008";
const TESTER: &str = "spiffe://cluster.local/ns/default/sa/tester";
const AGENT_ID: &str = "spiffe://cluster.local/ns/mesh-system/sa/mesh-agent";

/// Counters are updated by the connection's task, maybe just after the client gave up: poll.
fn wait_stat(mesh: &Mesh, node: &str, section: &str, name: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = mesh.stat(node, section, name).expect("stat");
        if v >= want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn marker(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

fn curl_vip(mesh: &Mesh, from: &str, url: &str, marker: &str) -> std::process::Output {
    let header = format!("X-Marker: {marker}");
    mesh.run_in(from, "curl", &["-sS", "-m", "5", "-H", &header, url])
        .expect("curl")
}

/// tshark writing every TCP packet on one interface of a node to a pcap file.
struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    /// Captures on the node's interface towards the bridge (the one holding the node address).
    fn start(mesh: &Mesh, node: &str) -> Capture {
        let place = mesh.outside(node);
        let node_ip = mesh.sim.node(node).ip.to_string();
        let out = mesh
            .sim
            .run(&place, "ip", ["-o", "-4", "addr", "show"])
            .expect("ip addr");
        let addrs = String::from_utf8_lossy(&out.stdout).into_owned();
        let iface = addrs
            .lines()
            .find(|l| l.contains(&format!(" {node_ip}/")))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no interface with {node_ip} on {node}: {addrs}"))
            .to_string();
        let file = mesh.sim.dir().join(format!("{node}-{iface}.pcap"));
        let path = file.display().to_string();
        let args = ["-i", &iface, "-f", "tcp", "-F", "pcap", "-w", &path];
        let proc = mesh
            .sim
            .spawn(&place, "tshark", args)
            .expect("tshark must be installed (apt-get install tshark)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !proc.stderr().contains("Capturing on") {
            assert!(
                Instant::now() < deadline,
                "tshark not capturing:\n{}",
                proc.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // tshark says "Capturing on" when it has started dumpcap, which may open its socket a
        // moment later: packets sent right away were seen missing (the tunnel's request, while
        // the later control request was captured).
        std::thread::sleep(Duration::from_millis(500));
        Capture { proc, file }
    }

    /// Stops tshark (SIGTERM flushes the file) and returns the raw pcap bytes: packet payloads
    /// are stored verbatim, so a plaintext marker shows up as-is.
    fn stop(mut self) -> (Vec<u8>, PathBuf) {
        // Give the last packets (FIN/ACK of the control) time to be written.
        std::thread::sleep(Duration::from_millis(500));
        self.proc.kill().expect("stopping tshark");
        let bytes = std::fs::read(&self.file).expect("reading capture");
        (bytes, self.file)
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Packets in the capture that match a tshark display filter.
fn count_packets(file: &Path, filter: &str) -> usize {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-Y", filter])
        .output()
        .expect("tshark -r");
    assert!(out.status.success(), "tshark -r: {out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn cross_node_traffic_is_encrypted_on_the_wire() {
    let mut mesh = mesh("tun-wire");
    let spec = standard_topology(&mut mesh);
    let web_reply = marker("web-reply");
    let accepts = mesh.sim.dir().join("web-accepts").display().to_string();
    let _web = mesh
        .serve(
            "web",
            &[
                "http-server",
                "--listen",
                "0.0.0.0:8080",
                "--reply",
                &web_reply,
                "--accept-count-file",
                &accepts,
            ],
        )
        .expect("web");
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");
    // Positive control: a plain HTTP server on node2 that the mesh knows nothing about.
    let plain_reply = marker("plain-reply");
    let mut plain = mesh
        .sim
        .spawn(
            &mesh.outside("node2"),
            &mesh.bins.probe,
            [
                "http-server",
                "--listen",
                "10.200.0.2:18080",
                "--reply",
                &plain_reply,
            ],
        )
        .expect("plain server");
    plain
        .wait_for_stdout("listening", Duration::from_secs(10))
        .expect("plain server listening");

    let capture = Capture::start(&mesh, "node1");
    // Through the mesh: client (node1) -> web VIP -> endpoint on node2.
    let secret = marker("mesh-secret");
    let out = curl_vip(
        &mesh,
        "client",
        &format!("http://{WEB_REMOTE_VIP}/{secret}"),
        &secret,
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains(&web_reply),
        "curl through the mesh: {body} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        mesh.agent_logs("node1")
    );
    // The same kind of request in plaintext, outside the mesh, over the same wire.
    let control = marker("plain-secret");
    let out = mesh
        .sim
        .run(
            &mesh.outside("node1"),
            "curl",
            [
                "-sS",
                "-m",
                "5",
                "-H",
                &format!("X-Marker: {control}"),
                &format!("http://10.200.0.2:18080/{control}"),
            ],
        )
        .expect("curl plain");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&plain_reply),
        "plaintext control request failed: {out:?}"
    );
    let (pcap, file) = capture.stop();

    // The capture works: the plaintext request and its answer are in it...
    assert!(
        contains(&pcap, &control) && contains(&pcap, &plain_reply),
        "control marker missing: the capture ({}) does not see the wire",
        file.display()
    );
    // ...the tunnel was used...
    assert!(
        count_packets(&file, "tcp.port == 15008 && tcp.len > 0") > 0,
        "no payload on port 15008 in {}",
        file.display()
    );
    // ...and neither the request nor the reply of the meshed exchange is readable.
    assert!(
        !contains(&pcap, &secret),
        "meshed request visible in plaintext"
    );
    assert!(
        !contains(&pcap, &web_reply),
        "meshed reply visible in plaintext"
    );

    assert!(mesh.stat("node2", "inbound", "streams").expect("stat") >= 1);
    assert!(
        mesh.stat("node1", "tunnel", "streams_opened")
            .expect("stat")
            >= 1
    );
    assert_eq!(std::fs::read_to_string(&accepts).unwrap().trim(), "1");
}

/// `openssl s_client` from node1 (outside the mesh) to node2's tunnel listener. Sends the
/// HTTP/2 preface and keeps stdin open for a second so the server's answer (SETTINGS or an
/// alert) arrives before s_client quits. Returns stdout + stderr.
fn s_client(mesh: &Mesh, args: &[&str]) -> String {
    const SCRIPT: &str = r#"(printf 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'; sleep 1) | timeout 5 openssl s_client -connect "$@" 2>&1"#;
    let mut full = vec!["-c", SCRIPT, "sh", TUNNEL];
    full.extend_from_slice(args);
    let out = mesh
        .sim
        .run(&mesh.outside("node1"), "sh", &full)
        .expect("openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cert_args(files: &PemFiles) -> [String; 4] {
    [
        "-cert".into(),
        files.cert.display().to_string(),
        "-key".into(),
        files.key.display().to_string(),
    ]
}

/// URI SANs of the first certificate in s_client's `-showcerts` output.
fn server_uri_sans(s_client_output: &str) -> String {
    let begin = s_client_output
        .find("-----BEGIN CERTIFICATE-----")
        .expect("server certificate in s_client output");
    let end_marker = "-----END CERTIFICATE-----";
    let end = s_client_output[begin..].find(end_marker).unwrap() + begin + end_marker.len();
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl x509");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&s_client_output.as_bytes()[begin..end])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tunnel_listener_accepts_only_valid_mesh_certificates() {
    let mut mesh = mesh("tun-certs");
    let spec = standard_topology(&mut mesh);
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");
    let dir = mesh.sim.dir().to_path_buf();
    let ca_pem = mesh.ca_dir().join("ca.pem").display().to_string();
    let mesh_ca = pki::read_ca(&mesh.ca_dir()).expect("mesh CA");
    let tester = pki::leaf(&mesh_ca, TESTER, Validity::current()).unwrap();
    let tester_files = tester.write(&dir, "tester").unwrap();
    let other_ca = pki::self_signed_ca("not the mesh CA").unwrap();
    let intruder = pki::leaf(
        &other_ca,
        "spiffe://cluster.local/ns/default/sa/intruder",
        Validity::current(),
    )
    .unwrap()
    .write(&dir, "intruder")
    .unwrap();
    let expired = pki::leaf(
        &mesh_ca,
        "spiffe://cluster.local/ns/default/sa/expired",
        Validity::expired(),
    )
    .unwrap()
    .write(&dir, "expired")
    .unwrap();

    // A workload certificate of the mesh CA: accepted, and the server proves itself too.
    let failed_before = mesh.stat("node2", "inbound", "tls_failed").expect("stat");
    let accepted_before = mesh.stat("node2", "inbound", "tls_accepted").expect("stat");
    // The session is saved to try a resumption without a certificate below.
    let session = dir.join("tester-session.pem").display().to_string();
    let mut args = vec![
        "-CAfile",
        &ca_pem,
        "-alpn",
        "h2",
        "-showcerts",
        "-sess_out",
        &session,
    ];
    let tester_args = cert_args(&tester_files);
    args.extend(tester_args.iter().map(String::as_str));
    let out = s_client(&mesh, &args);
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "server cert must verify against the mesh CA:\n{out}"
    );
    assert!(out.contains("TLSv1.3"), "not TLS 1.3:\n{out}");
    assert!(out.contains("ALPN protocol: h2"), "no h2 ALPN:\n{out}");
    assert!(!out.contains("alert"), "valid client cert refused:\n{out}");
    let sans = server_uri_sans(&out);
    assert!(sans.contains(AGENT_ID), "server SANs: {sans}");
    assert!(
        wait_stat(
            &mesh,
            "node2",
            "inbound",
            "tls_accepted",
            accepted_before + 1
        ) > accepted_before
    );
    let tunnels = mesh.admin("node2", "/tunnels").expect("/tunnels");
    let inbound = tunnels["inbound"].as_array().expect("inbound list");
    let entry = inbound
        .iter()
        .rev()
        .find(|t| t["peer"] == TESTER)
        .unwrap_or_else(|| panic!("no inbound session of {TESTER}: {tunnels:#}"));
    assert_eq!(entry["peer_serial"], tester.serial.as_str(), "{entry}");
    // The listener is dual-stack, so node1 may show up as ::ffff:10.200.0.1.
    let peer: SocketAddr = s(entry, "peer_address").parse().expect("peer_address");
    assert_eq!(
        peer.ip().to_canonical().to_string(),
        "10.200.0.1",
        "{entry}"
    );
    assert_eq!(
        mesh.stat("node2", "inbound", "tls_failed").expect("stat"),
        failed_before,
        "an accepted session counted as failed"
    );

    // Another CA, an expired mesh certificate, no certificate: refused with an alert.
    let intruder_args = cert_args(&intruder);
    let expired_args = cert_args(&expired);
    let mut cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "other CA",
            intruder_args.iter().map(String::as_str).collect(),
        ),
        ("expired", expired_args.iter().map(String::as_str).collect()),
        ("no certificate", Vec::new()),
    ];
    // If the server handed out a session ticket, resuming the tester's session without a
    // certificate would make the server take an identity that is neither presented nor
    // checked again (rotation, expiry): it must insist on a full handshake, which then fails
    // for want of a certificate. No ticket at all (no file) rules resumption out by itself.
    if Path::new(&session).exists() {
        cases.push((
            "resumption without a certificate",
            vec!["-sess_in", &session],
        ));
    }
    for (case, extra) in cases {
        let before = mesh.stat("node2", "inbound", "tls_failed").expect("stat");
        let mut args = vec!["-CAfile", &ca_pem, "-alpn", "h2"];
        args.extend(extra);
        let out = s_client(&mesh, &args);
        assert!(
            out.contains("alert") && !out.contains("Reused"),
            "{case}: must be refused with an alert, never resumed:\n{out}"
        );
        assert_eq!(
            wait_stat(&mesh, "node2", "inbound", "tls_failed", before + 1),
            before + 1,
            "{case}: tls_failed must count exactly this handshake\n{out}"
        );
    }
    let tunnels = mesh.admin("node2", "/tunnels").expect("/tunnels");
    let tester_sessions = tunnels["inbound"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["peer"] == TESTER)
        .count();
    assert_eq!(
        tester_sessions, 1,
        "only one session had the tester's cert: {tunnels:#}"
    );
    for refused in ["sa/intruder", "sa/expired"] {
        assert!(
            !tunnels["inbound"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| s(t, "peer").ends_with(refused)),
            "refused peer {refused} listed as a session: {tunnels:#}"
        );
    }
}

/// Writes 64 KiB of random bytes to `addr` from a thread inside `netns` (the test process's
/// cgroup, outside the mesh) and reads until the server closes. Err if it stays open.
fn send_garbage(netns: &Path, addr: SocketAddr) -> Result<String, String> {
    let ns = File::open(netns).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        let timeout = Some(Duration::from_secs(5));
        s.set_read_timeout(timeout).unwrap();
        s.set_write_timeout(timeout).unwrap();
        let garbage: Vec<u8> = (0..65536).map(|_| rand::random::<u8>()).collect();
        // The server may close (even reset) before everything is written: that is fine.
        let wrote = s.write_all(&garbage);
        let mut buf = [0u8; 4096];
        let mut got = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(format!("EOF after {got} bytes (write: {wrote:?})")),
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!("still open after 5 s (write: {wrote:?})"));
                }
                Err(e) => return Ok(format!("closed: {e} (write: {wrote:?})")),
            }
        }
    })
    .join()
    .expect("garbage thread")
}

#[test]
fn tunnel_listener_refuses_tls12_plaintext_and_garbage_and_keeps_serving() {
    let mut mesh = mesh("tun-junk");
    let spec = standard_topology(&mut mesh);
    let _web = mesh
        .serve(
            "web",
            &[
                "http-server",
                "--listen",
                "0.0.0.0:8080",
                "--reply",
                "still-here",
            ],
        )
        .expect("web");
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");
    let ca_pem = mesh.ca_dir().join("ca.pem").display().to_string();

    // TLS 1.2: refused with a protocol_version alert.
    let before = mesh.stat("node2", "inbound", "tls_failed").expect("stat");
    let out = s_client(&mesh, &["-CAfile", &ca_pem, "-tls1_2"]);
    assert!(
        out.contains("alert protocol version"),
        "TLS 1.2 must be refused:\n{out}"
    );
    assert_eq!(
        wait_stat(&mesh, "node2", "inbound", "tls_failed", before + 1),
        before + 1
    );

    // Plain HTTP to the tunnel port: no answer but a closed connection.
    let before = mesh.stat("node2", "inbound", "tls_failed").expect("stat");
    let out = mesh
        .sim
        .run(
            &mesh.outside("node1"),
            "curl",
            ["-sS", "-m", "5", &format!("http://{TUNNEL}/")],
        )
        .expect("curl");
    assert!(!out.status.success(), "plaintext HTTP answered: {out:?}");
    assert_eq!(
        wait_stat(&mesh, "node2", "inbound", "tls_failed", before + 1),
        before + 1,
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 64 KiB of garbage: the connection is closed, the handshake counted as failed.
    let before = mesh.stat("node2", "inbound", "tls_failed").expect("stat");
    let netns = mesh.sim.node("node1").netns_path.clone();
    let result = send_garbage(&netns, TUNNEL.parse().unwrap());
    assert!(result.is_ok(), "garbage: {result:?}");
    assert_eq!(
        wait_stat(&mesh, "node2", "inbound", "tls_failed", before + 1),
        before + 1,
        "garbage: {result:?}"
    );

    // The agent is still there and the tunnel still carries traffic.
    let out = curl_vip(
        &mesh,
        "client",
        &format!("http://{WEB_REMOTE_VIP}/"),
        "after",
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("still-here"),
        "mesh curl after the abuse: {out:?}\n{}",
        mesh.agent_logs("node2")
    );
    let logs = mesh.agent_logs("node2");
    assert!(!logs.contains("panicked"), "agent panicked:\n{logs}");
}
