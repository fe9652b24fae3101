//! A slowdown planted on purpose, to prove that `cargo xtask bench compare` flags a regression
//! (the `mesh-agent-planted` test build turns it on; the agent itself never does).
//!
//! When on, every L7 request first burns the configured CPU time on its worker thread, as a
//! careless change on the request path would.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

static SPIN_US: AtomicU64 = AtomicU64::new(0);

/// Turns the slowdown on for this process: `us` microseconds of CPU per request.
pub fn enable(us: u64) {
    SPIN_US.store(us, Ordering::Relaxed);
}

/// Burns the planted CPU time, if any (one relaxed load when off).
#[inline]
pub fn spin() {
    let us = SPIN_US.load(Ordering::Relaxed);
    if us == 0 {
        return;
    }
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_burns_when_on() {
        let started = Instant::now();
        spin();
        let off = started.elapsed();
        enable(2_000);
        let started = Instant::now();
        spin();
        let on = started.elapsed();
        enable(0);
        assert!(on >= Duration::from_micros(2_000), "{on:?}");
        assert!(off < on, "{off:?} vs {on:?}");
    }
}
