//! The workload's identity (crate `mesh-identity`: the certificate from
//! mesh-ca, the roots, the rustls configurations) and the SDS agent that
//! hands it to an Envoy sidecar.

pub mod sds;

pub use mesh_identity::{ClientShape, Identity, IdentityError, Summary, ca, grpc, verify};
