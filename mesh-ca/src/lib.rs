//! The mesh's certificate authority.
//!
//! It will hold the root and intermediate keys, sign workload CSRs over gRPC
//! for callers that prove their identity (Kubernetes service-account tokens or
//! bootstrap tokens), and issue short-lived certificates carrying SPIFFE
//! identities `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//! Nothing is implemented yet: see the CA issue.
