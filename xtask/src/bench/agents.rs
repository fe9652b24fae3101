//! The agents of a bench's two simulated nodes: started for the mesh scenarios and stopped for
//! the direct ones, and what a bench reads from them (node1's /stats counters, their CPU time,
//! the end of their logs when a run fails).

use std::time::Duration;

use anyhow::{Context, Result};
use mesh_tests::mesh::{Mesh, MeshSpec};
use serde_json::Value;

use super::cgroup_cpu_seconds;

const NODES: [&str; 2] = ["node1", "node2"];

pub(crate) struct BenchAgents {
    spec: MeshSpec,
    up: bool,
    /// How long the nodes are left to quiet down after the agents start or stop.
    settle: Duration,
}

impl BenchAgents {
    /// Agents that run `spec` once started; they start stopped.
    pub fn new(spec: MeshSpec, settle: Duration) -> BenchAgents {
        BenchAgents {
            spec,
            up: false,
            settle,
        }
    }

    /// What the agents run; a change takes effect when they next start.
    pub fn spec_mut(&mut self) -> &mut MeshSpec {
        &mut self.spec
    }

    /// Starts or stops both agents (nothing to do when they already are).
    pub fn set(&mut self, mesh: &mut Mesh, up: bool) -> Result<()> {
        if up == self.up {
            return Ok(());
        }
        super::set_agents(mesh, &self.spec, up)?;
        self.up = up;
        std::thread::sleep(self.settle);
        Ok(())
    }

    /// node1's /stats; `None` without agents.
    pub fn node1_stats(&self, mesh: &Mesh) -> Result<Option<Stats>> {
        if !self.up {
            return Ok(None);
        }
        Ok(Some(Stats(mesh.admin("node1", "/stats")?)))
    }

    /// Both agents' CPU seconds so far; `None` without agents.
    pub fn cpu_seconds(&self, mesh: &Mesh) -> Result<Option<f64>> {
        if !self.up {
            return Ok(None);
        }
        let mut total = 0.0;
        for node in NODES {
            total += cgroup_cpu_seconds(&mesh.sim.node(node).agent_cgroup)?;
        }
        Ok(Some(total))
    }

    /// A failed mesh run is most likely an agent bug: the end of both agents' logs says more.
    pub fn with_logs(&self, mesh: &Mesh, e: anyhow::Error) -> anyhow::Error {
        if !self.up {
            return e;
        }
        let mut logs = String::new();
        for node in NODES {
            let all = mesh.agent_logs(node);
            let lines: Vec<&str> = all.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            logs += &format!("\n--- agent on {node}, last 40 lines ---\n{tail}");
        }
        e.context(format!("agent logs:{logs}"))
    }
}

/// An agent's /stats document.
pub(crate) struct Stats(Value);

impl Stats {
    /// The counter `section.field`; an error names what is missing.
    pub fn get(&self, section: &str, field: &str) -> Result<u64> {
        self.0[section][field]
            .as_u64()
            .with_context(|| format!("/stats has no {section}.{field}: {}", self.0))
    }
}
