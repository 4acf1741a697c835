//! The mesh's end-to-end test world: [`mesh_local`] (network-namespace
//! pods with real capture, pilot, sidecars, the seed's walk — the same
//! world `meshctl demo` runs), plus what only tests need:
//!
//! - [`kube`]: a namespace of a test's own on a real cluster
//!   ([`mesh_cluster`]): apply, readiness, rollouts, exec, logs, and every
//!   pod's logs when the test fails.
//! - [`kubelet`]: pods started from injected Kubernetes pod templates
//!   with exactly the arguments and environment the template gives.
//! - [`eventually`]: polling that fails the test with what it waited for.
//!
//! Everything a world starts or creates is removed when it is dropped,
//! also when a test fails.

pub mod kube;
pub mod kubelet;

pub use mesh_local::{
    Error, LOG_ENV, Lines, binary, envoy_binary, log_message, mesh, netns, read_message, walk,
};

use std::time::Duration;

/// Polls `check` until it returns `Some`, for conditions that have no
/// readiness signal of their own (e.g. what a remote proxy serves);
/// fails the test naming `what` after `within`.
pub fn eventually<T>(what: &str, within: Duration, check: impl FnMut() -> Option<T>) -> T {
    mesh_local::poll(what, within, check).unwrap_or_else(|e| panic!("{e}"))
}

/// Fails the test with a clear reason when it cannot build namespaces.
pub fn require_root() {
    assert!(
        netns::is_root(),
        "capture tests build network namespaces and iptables rules: run them as root (CI does)"
    );
}
