//! Protocol definitions shared by the mesh's processes.
//!
//! - The Envoy xDS v3 types ([`envoy`], [`google`], [`xds`]) from
//!   `envoy-types`: pilot serves them and mesh-proxy applies them, so both
//!   sides use one set of generated types.
//! - [`descriptors`]: the xDS descriptor pool, for reading Envoy-style
//!   JSON/YAML (with `"@type"` Any fields) into those types ([`json`]) and
//!   for walking every field a message sets ([`fields`]).
//! - [`node`]: what a proxy tells pilot about itself.
//! - [`types`]: the xDS resource types and typed configs the mesh speaks.
//! - [`ca`]: mesh-ca's certificate-signing service (`proto/mesh/ca/v1`).

pub use envoy_types::pb::{envoy, google, xds};

/// mesh-ca's certificate-signing service, generated from `proto/mesh/ca/v1/ca.proto`.
pub mod ca {
    tonic::include_proto!("mesh.ca.v1");
}
pub mod descriptors;
pub mod fields;
pub mod json;
pub mod node;
pub mod types;
