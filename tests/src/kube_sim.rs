//! Kubernetes-style pods on simulated nodes (filled in below).
