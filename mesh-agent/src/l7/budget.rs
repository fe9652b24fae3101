//! Placeholder with the agreed API; replaced by the real retry budget.
#![allow(dead_code, unused_variables)]
pub struct Budget {}
impl Budget {
    pub fn new(config: &crate::config::RetryBudget) -> Budget { Budget {} }
    pub fn deposit(&self) {}
    pub fn withdraw(&self) -> bool { true }
}
pub fn backoff(base: std::time::Duration, retry: u32) -> std::time::Duration { base }
