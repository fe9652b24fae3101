//! Run counts and run time of the node's programs, which the kernel keeps while statistics
//! are enabled (BPF_ENABLE_STATS holds them on for as long as its fd is open).

use std::{os::fd::OwnedFd, time::Duration};

use aya::programs::loaded_programs;

/// One program of ours, as the kernel counts it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgramRuns {
    pub program: String,
    pub runs: u64,
    pub run_time: Duration,
}

/// Keeps the kernel's program statistics on while it lives.
pub struct ProgramStats {
    /// (our name, kernel program id).
    programs: Vec<(String, u32)>,
    _enabled: Option<OwnedFd>,
}

impl ProgramStats {
    /// `enable`: ask the kernel to count (a failure is logged; counts then stay 0).
    pub fn new(programs: Vec<(String, u32)>, enable: bool) -> ProgramStats {
        let enabled = if enable {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot enable BPF program statistics; program run metrics stay 0");
                    None
                }
            }
        } else {
            None
        };
        ProgramStats {
            programs,
            _enabled: enabled,
        }
    }

    pub fn enabled(&self) -> bool {
        self._enabled.is_some()
    }

    /// Current counts of our programs (one pass over the kernel's program list).
    pub fn read(&self) -> Vec<ProgramRuns> {
        let mut out: Vec<ProgramRuns> = self
            .programs
            .iter()
            .map(|(name, _)| ProgramRuns {
                program: name.clone(),
                runs: 0,
                run_time: Duration::ZERO,
            })
            .collect();
        for info in loaded_programs().flatten() {
            if let Some(i) = self.programs.iter().position(|(_, id)| *id == info.id()) {
                out[i].runs = info.run_count();
                out[i].run_time = info.run_time();
            }
        }
        out
    }
}
