//! `cargo xtask demo`: two simulated nodes with one real agent each, and a short tour of what
//! the mesh does: VIPs answered across nodes, the VIP kept as the peer address, a policy
//! denial, an intact bulk transfer, the flow table and the kernel counters.
//!
//! Everything lives in namespaces and cgroups of our own, removed when the `Mesh` drops (on
//! success and on error). Ctrl-C kills the process without running Drop; the next run (or any
//! e2e test) removes such leftovers through the simulation's stale cleanup.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, ensure};
use mesh_tests::mesh::{Mesh, MeshSpec, PolicySpec, ServiceSpec};
use mesh_tests::sim::Proc;

const WEB_LOCAL_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const WEB_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 20), 80);
const ECHO_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 30), 9000);
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 9000;
const TRANSFER_BYTES: u64 = 8 << 20;

pub fn run() -> Result<()> {
    let bins = crate::bench::release_binaries()?;
    step("creating node1 and node2 (network namespaces, veths, a bridge, cgroups)");
    let mut mesh = Mesh::new("demo", bins)?;
    let result = tour(&mut mesh);
    // Dropping the mesh stops the agents and removes namespaces, cgroups and pinned maps.
    drop(mesh);
    step("cleaned up");
    result
}

fn tour(mesh: &mut Mesh) -> Result<()> {
    let _servers = add_workloads(mesh)?;
    step("starting one mesh-agent per node");
    let spec = spec();
    mesh.start_agent("node1", &spec)?;
    mesh.start_agent("node2", &spec)?;
    curl_vips(mesh)?;
    show_denied(mesh)?;
    show_transfer(mesh)?;
    show_flows(mesh)?;
    show_kernel_counters(mesh)
}

fn step(text: &str) {
    println!("==> {text}");
}

/// Workloads first, servers listening before the agents start; the returned servers are killed
/// when dropped (the sim would kill them anyway).
fn add_workloads(mesh: &mut Mesh) -> Result<Vec<Proc>> {
    mesh.sim.add_pod("node1", "client")?;
    mesh.sim.add_host_workload("node1", "host-client")?;
    mesh.sim.add_pod("node1", "web-local")?;
    mesh.sim.add_pod("node2", "web")?;
    mesh.sim.add_pod("node2", "echo")?;
    for name in ["client", "host-client", "web-local", "web", "echo"] {
        let w = mesh.workload(name);
        let kind = if w.is_pod { "pod" } else { "host workload" };
        println!("    {:<12} {kind:<13} on {} ip {}", w.name, w.node, w.ip);
    }
    step("starting servers: http in web-local and web, echo in echo");
    let http = format!("0.0.0.0:{HTTP_PORT}");
    let echo = format!("0.0.0.0:{ECHO_PORT}");
    Ok(vec![
        mesh.serve(
            "web-local",
            &[
                "http-server",
                "--listen",
                &http,
                "--reply",
                "hello from web-local on node1",
            ],
        )?,
        mesh.serve(
            "web",
            &[
                "http-server",
                "--listen",
                &http,
                "--reply",
                "hello from web on node2",
            ],
        )?,
        mesh.serve("echo", &["echo-server", "--listen", &echo])?,
    ])
}

fn spec() -> MeshSpec {
    // The client pod may only talk to service VIPs: a direct pod connect is denied at connect().
    let client_policy = PolicySpec {
        egress: Some(vec![("10.96.0.0/16".to_string(), Vec::new())]),
        ingress: None,
    };
    MeshSpec {
        services: vec![
            service("web-local", WEB_LOCAL_VIP, HTTP_PORT),
            service("web", WEB_VIP, HTTP_PORT),
            service("echo", ECHO_VIP, ECHO_PORT),
        ],
        policies: [("client".to_string(), client_policy)].into(),
        ..MeshSpec::default()
    }
}

/// A service named after its only endpoint workload.
fn service(name: &str, vip: SocketAddrV4, target_port: u16) -> ServiceSpec {
    ServiceSpec::new(name, *vip.ip(), vip.port(), target_port, &[name])
}

fn curl_vips(mesh: &Mesh) -> Result<()> {
    step("curl to service VIPs (same node and other node), from a pod and from a host workload");
    for client in ["client", "host-client"] {
        for (vip, what) in [(WEB_LOCAL_VIP, "same node"), (WEB_VIP, "other node")] {
            curl_vip(mesh, client, vip, what)?;
        }
    }
    Ok(())
}

/// curl prints the body and then, thanks to `-w`, the peer address its socket reports: the VIP,
/// although the connection really goes to the agent (getpeername4 hides the rewrite).
fn curl_vip(mesh: &Mesh, client: &str, vip: SocketAddrV4, what: &str) -> Result<()> {
    let url = format!("http://{vip}/");
    let out = mesh.run_in(
        client,
        "curl",
        &["-sS", "-m", "5", "-w", "%{remote_ip}:%{remote_port}", &url],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "curl {url} from {client} failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    // The body ends with a newline; what follows it is the -w output.
    let (body, peer) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let seen = if peer == vip.to_string() {
        "the VIP"
    } else {
        "NOT the VIP"
    };
    println!("    {client} -> {vip} ({what}): {body:?}; curl's peer {peer} ({seen})");
    Ok(())
}

fn show_denied(mesh: &Mesh) -> Result<()> {
    let target = SocketAddrV4::new(mesh.workload("web").ip, HTTP_PORT).to_string();
    step(&format!(
        "client's egress policy allows 10.96.0.0/16 only: connect to the web pod {target} directly"
    ));
    let v = mesh.probe("client", &["connect", "--connect", &target])?;
    let error = v["error"].as_str().unwrap_or("no error: connected!");
    println!("    client -> {target}: {error}");
    ensure!(
        error.starts_with("EPERM"),
        "expected EPERM from the policy, got {v}"
    );
    Ok(())
}

fn show_transfer(mesh: &Mesh) -> Result<()> {
    step(&format!(
        "8 MiB through the echo VIP {ECHO_VIP} (node1 -> node2 and back)"
    ));
    let bytes = TRANSFER_BYTES.to_string();
    let addr = ECHO_VIP.to_string();
    let v = mesh.probe(
        "client",
        &["transfer", "--connect", &addr, "--bytes", &bytes],
    )?;
    let intact = v["intact"].as_bool().unwrap_or(false);
    let seconds = v["seconds"].as_f64().unwrap_or(f64::NAN);
    println!("    sent {bytes} bytes, echoed back intact: {intact}, in {seconds:.3} s");
    ensure!(intact, "transfer was not intact: {v}");
    Ok(())
}

/// The real CLI, as an operator would run it on the node.
fn show_flows(mesh: &Mesh) -> Result<()> {
    step("node1's flow table (`mesh-agent flows`)");
    let out = mesh
        .sim
        .exec_in_node("node1", &mesh.bins.agent, ["flows"])?;
    ensure!(
        out.status.success(),
        "mesh-agent flows failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn show_kernel_counters(mesh: &Mesh) -> Result<()> {
    step("node1's kernel counters (admin /stats)");
    let stats = mesh.admin("node1", "/stats")?;
    let kernel = stats["kernel"]
        .as_object()
        .context("/stats has no kernel counters")?;
    for (name, value) in kernel {
        println!("    {name:<24} {value}");
    }
    Ok(())
}
