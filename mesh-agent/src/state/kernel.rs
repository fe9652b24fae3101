//! The model as the kernel programs need it: what connect4 redirects (every meshed
//! destination and the service it belongs to) and what the cgroup programs enforce for each
//! workload (its egress and ingress rules, STRICT mode). The kernel side (`ebpf`) writes it
//! into the maps and knows nothing of the model.

use crate::{
    config::PeerAuthMode,
    ebpf::{Direction, MapContents, WorkloadFlags},
};

use super::State;

impl State {
    pub fn kernel_maps(&self) -> MapContents {
        let mut maps = MapContents::default();
        for (addr, dest) in &self.destinations {
            maps.service(*addr, dest.service_id);
        }
        for w in &self.workloads {
            if let Some(rules) = &w.egress {
                for (i, r) in rules.iter().enumerate() {
                    maps.rule(Direction::Egress, w.cgroup_id, &r.ports, r.to, i as u32);
                }
            }
            if let Some(rules) = &w.ingress {
                for (i, r) in rules.iter().enumerate() {
                    maps.rule(Direction::Ingress, w.cgroup_id, &r.ports, r.from, i as u32);
                }
            }
            let flags = WorkloadFlags {
                egress_policy: w.egress.is_some(),
                ingress_policy: w.ingress.is_some(),
                strict: w.mode == PeerAuthMode::Strict,
            };
            maps.workload(w.cgroup_id, w.id, flags);
        }
        maps
    }
}
