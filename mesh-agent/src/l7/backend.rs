//! Placeholder with the agreed API; replaced by the real load balancer.
#![allow(dead_code, unused_variables)]
use std::{net::SocketAddr, sync::Arc};
use serde::Serialize;
use crate::{config::{LoadBalancer, OutlierDetection, RetryBudget}, l7::{BackendKey, budget::Budget}, state::Upstream};
pub enum Outcome { Response(u16), ConnectFailure, Reset, Timeout, Refused }
pub struct Backend { key: BackendKey, upstreams: Vec<Upstream>, budget: Budget }
#[derive(Serialize)]
pub struct BackendSnapshot {}
impl Backend {
    pub fn new(key: BackendKey, upstreams: Vec<Upstream>, lb: LoadBalancer, outlier: Option<OutlierDetection>, budget: &RetryBudget) -> Backend {
        Backend { key, upstreams, budget: Budget::new(budget) }
    }
    pub fn key(&self) -> &BackendKey { &self.key }
    pub fn pick(self: &Arc<Self>, avoid: Option<SocketAddr>) -> Option<Pick> {
        self.upstreams.first().map(|u| Pick { upstream: u.clone() })
    }
    pub fn report(&self, addr: SocketAddr, outcome: &Outcome) -> bool { false }
    pub fn budget(&self) -> &Budget { &self.budget }
    pub fn snapshot(&self) -> BackendSnapshot { BackendSnapshot {} }
    pub fn ejections_total(&self) -> u64 { 0 }
}
pub struct Pick { upstream: Upstream }
impl Pick {
    pub fn upstream(&self) -> &Upstream { &self.upstream }
    pub fn addr(&self) -> SocketAddr { self.upstream.addr }
}
