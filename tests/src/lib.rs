//! Test support for the mesh: simulated nodes built from network namespaces
//! and cgroups (`sim`), and the logic behind the `mesh-probe` workload binary
//! (`probe`).
//!
//! The probe logic lives in the library (not in the binary) so that argument
//! parsing, statistics and the data generator can be unit-tested without root.

pub mod dashboard;
pub mod fake_kube;
pub mod h2load;
pub mod kube_sim;
pub mod mesh;
pub mod pki;
pub mod probe;
pub mod prometheus;
pub mod sim;
pub mod soak;
