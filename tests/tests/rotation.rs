//! Certificate rotation without dropping connections: with 6 s certificates (rotated at 4 s) a
//! connection through the tunnel keeps exchanging round trips for ~15 s, i.e. across at least
//! two rotations and past the expiry of the certificate it was opened with. New connections
//! then present the current certificate.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use mesh_tests::mesh::{IdentitySpec, Mesh, MeshSpec};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const ROUND_TRIPS: u32 = 150;

/// One TCP connection (bash /dev/tcp, so connect() goes through the mesh like any app) to the
/// echo service, a line every 100 ms, each echo checked.
const LONG_CONNECTION: &str = r#"
exec 3<>"/dev/tcp/$1/$2" || exit 2
i=1
while [ "$i" -le "$3" ]; do
  echo "ping-$i" >&3
  read -r -t 5 line <&3 || { echo "no echo for round trip $i"; exit 3; }
  [ "$line" = "ping-$i" ] || { echo "round trip $i got: $line"; exit 4; }
  i=$((i + 1))
  sleep 0.1
done
echo "completed $3 round trips"
"#;

/// The client's current certificate serial on node1 (the last listed for its SPIFFE ID).
fn client_serial(mesh: &Mesh) -> String {
    let certs = mesh.admin("node1", "/certs").expect("/certs");
    certs["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .rfind(|c| c["spiffe_id"] == CLIENT_ID)
        .and_then(|c| c["serial"].as_str())
        .unwrap_or_else(|| panic!("no certificate for {CLIENT_ID}: {certs:#}"))
        .to_string()
}

fn rotations(mesh: &Mesh) -> u64 {
    mesh.admin("node1", "/stats").expect("/stats")["identity"]["rotations"]
        .as_u64()
        .expect("identity.rotations")
}

#[test]
fn rotation_keeps_long_connections_and_new_sessions_use_the_new_certificate() {
    let mut mesh = mesh("rotation");
    mesh.sim.add_pod("node1", "client").expect("pod");
    mesh.sim.add_pod("node2", "echo").expect("pod");
    mesh.sim.add_pod("node2", "web").expect("pod");
    let mut spec = MeshSpec {
        services: vec![
            service("echo", ECHO_VIP, 9000, 9000, &["echo"]),
            service("web", WEB_REMOTE_VIP, 80, 8080, &["web"]),
        ],
        cert_lifetime: Some("6s".into()),
        ..MeshSpec::default()
    };
    spec.identities.insert(
        "client".into(),
        IdentitySpec {
            service_account: Some("client".into()),
            ..IdentitySpec::default()
        },
    );
    let echo_accepts = mesh.sim.dir().join("echo-accepts");
    let echo_accepts_arg = echo_accepts.display().to_string();
    let _echo = mesh
        .serve(
            "echo",
            &[
                "echo-server",
                "--listen",
                "0.0.0.0:9000",
                "--accept-count-file",
                &echo_accepts_arg,
            ],
        )
        .expect("echo");
    let _web = mesh
        .serve(
            "web",
            &["http-server", "--listen", "0.0.0.0:8080", "--reply", "web"],
        )
        .expect("web");
    mesh.start_agent("node1", &spec).expect("agent node1");
    mesh.start_agent("node2", &spec).expect("agent node2");

    let rotations_before = rotations(&mesh);
    let mut serials = BTreeSet::from([client_serial(&mesh)]);
    let count = ROUND_TRIPS.to_string();
    let mut conn = mesh
        .sim
        .spawn(
            &mesh.placement("client"),
            "bash",
            ["-c", LONG_CONNECTION, "bash", ECHO_VIP, "9000", &count],
        )
        .expect("long connection");
    // Watch the client's serial while the connection runs (~15 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = conn.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "long connection hangs:\n{}",
            conn.logs()
        );
        serials.insert(client_serial(&mesh));
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        status.success()
            && conn
                .stdout()
                .contains(&format!("completed {count} round trips")),
        "long connection broke ({status}):\n{}\n{}",
        conn.logs(),
        mesh.agent_logs("node1")
    );
    assert_eq!(
        std::fs::read_to_string(&echo_accepts).unwrap().trim(),
        "1",
        "the echo server must have seen one connection, not a reconnect"
    );
    assert!(
        serials.len() >= 3,
        "client certificate must have rotated at least twice: {serials:?}"
    );
    let rotated = rotations(&mesh) - rotations_before;
    assert!(rotated >= 2, "identity.rotations grew by {rotated}");

    // A new connection opens a session with the current certificate. Rotation may strike
    // between curl and the check, so retry until the serial was stable around one attempt.
    for attempt in 1..=3 {
        let current = client_serial(&mesh);
        let url = format!("http://{WEB_REMOTE_VIP}/");
        let out = mesh
            .run_in("client", "curl", &["-sS", "-m", "5", &url])
            .expect("curl");
        assert!(
            out.status.success(),
            "curl after rotation: {out:?}\n{}",
            mesh.agent_logs("node1")
        );
        let tunnels = mesh.admin("node2", "/tunnels").expect("/tunnels");
        let newest = tunnels["inbound"]
            .as_array()
            .expect("inbound")
            .iter()
            .rfind(|t| t["peer"] == CLIENT_ID)
            .unwrap_or_else(|| panic!("no inbound session of {CLIENT_ID}: {tunnels:#}"))
            .clone();
        if client_serial(&mesh) != current && attempt < 3 {
            continue;
        }
        assert_eq!(
            s(&newest, "peer_serial"),
            current,
            "newest session must present the current certificate: {tunnels:#}"
        );
        break;
    }
}
