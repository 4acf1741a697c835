//! Protocol definitions shared by the mesh's processes.
//!
//! This crate will hold the certificate authority's CSR-signing gRPC service
//! and re-export the Envoy xDS v3 types (listeners, routes, clusters,
//! endpoints, secrets) that mesh-pilot serves and mesh-proxy consumes, so that
//! both sides use one set of generated types. It is empty until the proxy and
//! pilot issues land.
