//! Retry budget (Linkerd's): retries may add at most `percent` of the requests seen in the
//! last [`WINDOW_SECS`] seconds, plus `min_retries_per_second` for every second of that
//! window, per backend service. A fixed number of retries per request would multiply the load
//! on a struggling service by the attempt count exactly when it can least afford it; a budget
//! proportional to the traffic keeps retries a small overhead and lets low-traffic services
//! still retry thanks to the floor.
//!
//! Also the backoff between attempts.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use rand::Rng;

/// Length of the sliding window, in one-second buckets.
pub const WINDOW_SECS: u64 = 10;

/// One second of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Seconds since the budget's origin that this bucket counts; a bucket whose second has
    /// fallen out of the window holds stale counts and is ignored (and reused).
    second: u64,
    deposits: u64,
    retries: u64,
}

/// A retry budget shared by every request to one backend service.
#[derive(Debug)]
pub struct Budget {
    percent: u64,
    min_retries_per_second: u64,
    /// Time zero of the bucket clock.
    origin: Instant,
    /// A ring indexed by `second % WINDOW_SECS`. A mutex rather than atomics because
    /// `withdraw` must check and spend atomically; the critical section is a few additions.
    buckets: Mutex<[Bucket; WINDOW_SECS as usize]>,
}

impl Budget {
    pub fn new(config: &crate::config::RetryBudget) -> Budget {
        Budget::with_origin(config, Instant::now())
    }

    /// Whether this budget was made from `config` (a changed setting means a new budget).
    pub fn has_settings(&self, config: &crate::config::RetryBudget) -> bool {
        self.percent == u64::from(config.percent)
            && self.min_retries_per_second == u64::from(config.min_retries_per_second)
    }

    fn with_origin(config: &crate::config::RetryBudget, origin: Instant) -> Budget {
        Budget {
            percent: u64::from(config.percent),
            min_retries_per_second: u64::from(config.min_retries_per_second),
            origin,
            buckets: Mutex::new([Bucket::default(); WINDOW_SECS as usize]),
        }
    }

    /// Record one original request (call once per request, not per attempt).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Try to spend one retry; false when the budget is exhausted (the caller returns the
    /// failure, flag RL).
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn deposit_at(&self, now: Instant) {
        let second = self.second(now);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = current(&mut buckets, second);
        bucket.deposits = bucket.deposits.saturating_add(1);
    }

    fn withdraw_at(&self, now: Instant) -> bool {
        let second = self.second(now);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (deposits, retries) = buckets
            .iter()
            .filter(|b| in_window(b, second))
            .fold((0u64, 0u64), |(d, r), b| {
                (d.saturating_add(b.deposits), r.saturating_add(b.retries))
            });
        // Compared in hundredths of a retry so that the percentage needs no floating point:
        // allowed = deposits × percent / 100 + min × window, spent = retries; one more retry
        // fits when (retries + 1) × 100 <= allowed × 100.
        let allowed_x100 = deposits.saturating_mul(self.percent).saturating_add(
            self.min_retries_per_second
                .saturating_mul(WINDOW_SECS)
                .saturating_mul(100),
        );
        if retries.saturating_add(1).saturating_mul(100) > allowed_x100 {
            return false;
        }
        let bucket = current(&mut buckets, second);
        bucket.retries = bucket.retries.saturating_add(1);
        true
    }
}

/// Whether `bucket` counts for the window ending in `second` (that second and the nine
/// before it).
fn in_window(bucket: &Bucket, second: u64) -> bool {
    bucket.second <= second && second - bucket.second < WINDOW_SECS
}

/// The bucket of `second`, cleared first if it still holds an older second's counts.
fn current(buckets: &mut [Bucket; WINDOW_SECS as usize], second: u64) -> &mut Bucket {
    // The modulo is below WINDOW_SECS, so the index is in bounds and fits usize.
    let bucket = &mut buckets[(second % WINDOW_SECS) as usize];
    if bucket.second != second {
        *bucket = Bucket {
            second,
            ..Bucket::default()
        };
    }
    bucket
}

/// Ceiling of the backoff, in multiples of the base: exponential growth stops here so that a
/// long retry chain does not wait for minutes.
const MAX_BACKOFF_FACTOR: u32 = 10;

/// Backoff before retry number `retry` (1-based): full jitter, random in
/// [0, min(base × 2^(retry-1), 10 × base)]. Full jitter (AWS architecture blog, "Exponential
/// Backoff And Jitter") spreads the retries of many clients that failed together instead of
/// having them hit the backend again in lockstep. `retry` 0 is treated as 1.
pub fn backoff(base: Duration, retry: u32) -> Duration {
    let doublings = retry.saturating_sub(1);
    // 2^4 = 16 is already past the cap, so larger exponents need not (and must not, to avoid
    // overflowing the shift) be computed.
    let factor = if doublings >= 4 {
        MAX_BACKOFF_FACTOR
    } else {
        (1u32 << doublings).min(MAX_BACKOFF_FACTOR)
    };
    let cap = base.saturating_mul(factor);
    let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    if cap_nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::rng().random_range(0..=cap_nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryBudget;

    fn budget(percent: u32, min_retries_per_second: u32) -> Budget {
        Budget::with_origin(
            &RetryBudget {
                percent,
                min_retries_per_second,
            },
            Instant::now(),
        )
    }

    /// Withdraws until refused (bounded so a bug cannot loop forever); returns the count.
    fn drain(budget: &Budget, now: Instant) -> u32 {
        let mut n = 0;
        while n < 100_000 && budget.withdraw_at(now) {
            n += 1;
        }
        n
    }

    #[test]
    fn percent_of_requests_plus_minimum() {
        let b = budget(20, 1);
        let now = b.origin + Duration::from_millis(500);
        for _ in 0..100 {
            b.deposit_at(now);
        }
        // 20% of 100 + 1/s over the 10 s window.
        assert_eq!(drain(&b, now), 20 + 10);
        assert!(!b.withdraw_at(now));
    }

    #[test]
    fn percent_only() {
        let b = budget(20, 0);
        let now = b.origin;
        for _ in 0..100 {
            b.deposit_at(now);
        }
        assert_eq!(drain(&b, now), 20);
    }

    #[test]
    fn fractional_allowance_rounds_down() {
        let b = budget(20, 0);
        let now = b.origin;
        for _ in 0..9 {
            b.deposit_at(now);
        }
        // 1.8 retries earned: one.
        assert_eq!(drain(&b, now), 1);
        b.deposit_at(now);
        // 2.0 earned, one spent.
        assert_eq!(drain(&b, now), 1);
    }

    #[test]
    fn empty_budget_refuses() {
        let b = budget(0, 0);
        for _ in 0..100 {
            b.deposit_at(b.origin);
        }
        assert!(!b.withdraw_at(b.origin));
    }

    #[test]
    fn deposits_spread_over_the_window_count() {
        let b = budget(50, 0);
        for s in 0..10 {
            for _ in 0..2 {
                b.deposit_at(b.origin + Duration::from_secs(s));
            }
        }
        // 20 requests in the last 10 s, 50%.
        assert_eq!(drain(&b, b.origin + Duration::from_secs(9)), 10);
    }

    #[test]
    fn window_expiry_restores_budget() {
        let b = budget(20, 0);
        let t0 = b.origin + Duration::from_millis(100);
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        assert_eq!(drain(&b, t0), 20);
        // Still inside the window: spent.
        assert!(!b.withdraw_at(t0 + Duration::from_secs(9)));
        // The deposits and the retries both left the window: nothing earned, nothing spent.
        let t1 = t0 + Duration::from_secs(10);
        assert!(!b.withdraw_at(t1));
        for _ in 0..100 {
            b.deposit_at(t1);
        }
        assert_eq!(drain(&b, t1), 20);
    }

    #[test]
    fn old_retries_expire_before_deposits() {
        let b = budget(10, 0);
        let t0 = b.origin;
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        assert_eq!(drain(&b, t0), 10);
        let t1 = t0 + Duration::from_secs(5);
        for _ in 0..100 {
            b.deposit_at(t1);
        }
        // 200 requests, 10 retries spent: 10 more.
        assert_eq!(drain(&b, t1), 10);
        // t0's bucket expired: 100 requests (t1), 10 retries (t1) spent.
        assert!(!b.withdraw_at(t0 + Duration::from_secs(10)));
        // The minimum is per second of window, granted again once retries expire.
        let b = budget(0, 2);
        let t0 = b.origin;
        assert_eq!(drain(&b, t0), 20);
        assert!(!b.withdraw_at(t0 + Duration::from_secs(9)));
        assert_eq!(drain(&b, t0 + Duration::from_secs(10)), 20);
    }

    #[test]
    fn clock_before_origin_does_not_panic() {
        let b = Budget::with_origin(
            &RetryBudget {
                percent: 100,
                min_retries_per_second: 0,
            },
            Instant::now() + Duration::from_secs(60),
        );
        b.deposit();
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }

    #[test]
    fn backoff_within_bounds() {
        let base = Duration::from_millis(25);
        for retry in 0..40 {
            let cap = match retry {
                0 | 1 => base,
                2 => base * 2,
                3 => base * 4,
                4 => base * 8,
                _ => base * 10,
            };
            let mut max = Duration::ZERO;
            for _ in 0..500 {
                let d = backoff(base, retry);
                assert!(d <= cap, "retry {retry}: {d:?} > {cap:?}");
                max = max.max(d);
            }
            // Jitter actually spreads: 500 samples all in the lower tenth has probability 1e-500.
            assert!(max > cap / 10, "retry {retry}: max {max:?}");
        }
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
        assert!(backoff(Duration::MAX, u32::MAX) <= Duration::MAX);
    }
}
