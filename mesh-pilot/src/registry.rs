//! Registries: where pilot learns what runs where. Today the file registry
//! (the format is `mesh_rules::registry::Registry` in YAML; an example is
//! `samples/registries/istio-0.4-walk.yaml`); the Kubernetes registry and
//! self-registration of proxies will feed the same model.

use mesh_rules::Diagnostic;
use mesh_rules::registry::Registry;

/// Reads a registry file, naming file, line:column and field of any problem.
pub fn from_yaml(name: &str, text: &str) -> Result<Registry, Diagnostic> {
    mesh_rules::yaml::read_file(name, text)
}
