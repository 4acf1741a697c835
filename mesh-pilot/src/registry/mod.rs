//! Registries: where pilot learns what runs where, all into one model
//! (`mesh_rules::registry::Registry`):
//!
//! - the file registry (that model in YAML; an example is
//!   `samples/registries/istio-0.4-walk.yaml`), for VMs and outside
//!   services;
//! - [`kubernetes`]: Services, EndpointSlices and Pods of a cluster,
//!   watched through its API server;
//! - self-registration of connected proxies (`world.rs`).

pub mod kubernetes;

use mesh_rules::Diagnostic;
use mesh_rules::registry::Registry;

/// Reads a registry file, naming file, line:column and field of any problem.
pub fn from_yaml(name: &str, text: &str) -> Result<Registry, Diagnostic> {
    mesh_rules::yaml::read_file(name, text)
}
