//! The `nodes:` section: the other nodes of the mesh, by the names that endpoints refer to,
//! with the address where each one's tunnel listener is reached.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::NodeConfig;
use super::checker::{Checker, ConfigError};
use super::raw::Text;
use super::scalars::{is_node_name, line_of, quote};

/// Another node of the mesh (top-level `nodes:` list), by the name endpoints refer to.
///
/// The list may also name this node, with this node's address, so that one
/// list can be shared by every node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerNode {
    /// `[a-z0-9-]{1,63}`, unique in the list.
    pub name: String,
    /// Where that node's tunnel listener is reached (on `node.tunnel_port`);
    /// unique in the list.
    pub address: IpAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeerNode {
    pub(super) name: Text,
    address: Text,
}

impl Checker<'_> {
    /// `node` is None when `node:` has errors: then peers are not compared
    /// with it. Each peer is checked on its own; the valid ones are returned.
    pub(super) fn peer_nodes(
        &self,
        raws: Vec<RawPeerNode>,
        node: Option<&NodeConfig>,
    ) -> Result<Vec<PeerNode>, ConfigError> {
        let mut names: HashMap<String, u64> = HashMap::new();
        let mut addresses: HashMap<IpAddr, (String, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let peer = self.peer_node(&raw, node, &mut names, &mut addresses);
            out.extend(self.keep(peer));
        }
        Ok(out)
    }

    fn peer_node(
        &self,
        raw: &RawPeerNode,
        node: Option<&NodeConfig>,
        names: &mut HashMap<String, u64>,
        addresses: &mut HashMap<IpAddr, (String, u64)>,
    ) -> Result<PeerNode, ConfigError> {
        let name = raw.name.value.clone();
        if !is_node_name(&name) {
            return Err(self.err(
                raw.name.referenced,
                format!(
                    "invalid node name {}: use 1 to 63 characters among a-z, 0-9 and '-'",
                    quote(&name)
                ),
            ));
        }
        if let Some(first) = names.insert(name.clone(), line_of(&raw.name)) {
            return Err(self.err(
                raw.name.referenced,
                format!(
                    "duplicate node {} (first defined at line {first})",
                    quote(&name)
                ),
            ));
        }
        let address = self.node_address(&raw.address)?;
        if let Some(node) = node {
            // Listing this node is allowed, so that every node can share one
            // list, but only with this node's own address: anything else
            // would send this node's endpoints somewhere else.
            if name == node.name && node.address != Some(address) {
                let why = match node.address {
                    Some(own) => format!("node.address is {own}"),
                    None => "node.address is not set".to_owned(),
                };
                return Err(self.err(
                    raw.name.referenced,
                    format!(
                        "node {} is this node; it may be listed under nodes only with this node's address ({why})",
                        quote(&name)
                    ),
                ));
            }
            if name != node.name && node.address == Some(address) {
                return Err(self.err(
                    raw.address.referenced,
                    format!(
                        "address {address} of node {} is this node's address (node.address)",
                        quote(&name)
                    ),
                ));
            }
        }
        if let Some((other, line)) = addresses.get(&address) {
            return Err(self.err(
                raw.address.referenced,
                format!(
                    "address {address} is already used by node {} (line {line})",
                    quote(other)
                ),
            ));
        }
        addresses.insert(address, (name.clone(), line_of(&raw.address)));
        Ok(PeerNode { name, address })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::fixture::{Fixture, with_node};

    #[test]
    fn peer_nodes() {
        let fx = Fixture::new();
        let with_address = "node:\n  name: node1\n  cgroup: $D/node\n  address: 10.0.0.1\n";
        fx.fails(
            &with_node(
                "nodes:\n  - name: node2\n    address: 10.0.0.2\n  - name: node2\n    address: 10.0.0.3\n",
            ),
            7,
            "duplicate node `node2` (first defined at line 5)",
        );
        fx.fails(
            &with_node(
                "nodes:\n  - name: node2\n    address: 10.0.0.2\n  - name: node3\n    address: 10.0.0.2\n",
            ),
            8,
            "address 10.0.0.2 is already used by node `node2` (line 6)",
        );
        fx.fails(
            &with_node("nodes:\n  - name: Node2\n    address: 10.0.0.2\n"),
            5,
            "invalid node name `Node2`",
        );
        fx.fails(
            &with_node("nodes:\n  - name: node2\n    address: node2.local\n"),
            6,
            "invalid IP address `node2.local`",
        );
        fx.fails(
            &with_node("nodes:\n  - name: node2\n    address: 0.0.0.0\n"),
            6,
            "node address 0.0.0.0 cannot be connected to",
        );
        fx.fails(
            &with_node("nodes:\n  - name: node2\n"),
            5,
            "missing field `address`",
        );
        // This node may be listed, with its own address only.
        fx.fails(
            &with_node("nodes:\n  - name: node1\n    address: 10.0.0.1\n"),
            5,
            "node `node1` is this node; it may be listed under nodes only with this node's address (node.address is not set)",
        );
        fx.fails(
            &format!("{with_address}nodes:\n  - name: node1\n    address: 10.0.0.9\n"),
            6,
            "(node.address is 10.0.0.1)",
        );
        fx.fails(
            &format!("{with_address}nodes:\n  - name: node2\n    address: 10.0.0.1\n"),
            7,
            "address 10.0.0.1 of node `node2` is this node's address",
        );
        let cfg = fx
            .parse(&format!(
                "{with_address}nodes:\n  - name: node1\n    address: 10.0.0.1\n"
            ))
            .expect("this node with its own address");
        assert_eq!(cfg.nodes.len(), 1);
        fx.fails(
            "node:\n  name: n\n  cgroup: $D/node\n  address: 10.0.0.256\n",
            4,
            "invalid IP address `10.0.0.256`",
        );
    }
}
