//! The Kubernetes configuration source: watches the API and feeds the same model as the
//! file (workloads, services, endpoints, policies, routes). See the contract in
//! /work/k8s-contract.md while it is being built.

pub mod crd;
pub mod gateway;
