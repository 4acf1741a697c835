//! Sidecar injection for Kubernetes workloads.
//!
//! [`inject_object`] adds the `mesh-init` init container (which runs
//! `mesh-proxy init` to program the pod's capture rules) and the
//! `mesh-proxy` sidecar to the pod template of any workload kind, as a pure
//! function over the manifest. [`inject_manifests`] does it for a
//! multi-document YAML file (`meshctl kube-inject`), and [`webhook`] serves
//! the same function as a mutating admission webhook.

pub mod certs;
/// The mesh's settings (shared with pilot).
pub use mesh_rules::mesh_config as config;

/// The version of the injection template; recorded in every injected pod so
/// an upgrade can tell which pods carry an older sidecar.
pub const TEMPLATE_VERSION: &str = "2";
mod inject;
mod manifests;
pub mod template;
pub mod webhook;

pub use config::{MeshSettings, SidecarMode};
pub use inject::{Action, Options, Report, inject_object, inject_template};
pub use manifests::{Injected, inject_manifests};
