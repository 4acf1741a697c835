//! The mesh's certificate authority.
//!
//! - [`authority`]: the signing key and certificate, the chain handed out
//!   with every certificate and the trust bundle; generated on first start
//!   or read from the files of Istio's `cacerts` Secret.
//! - [`credentials`]: who the caller is — a bootstrap token in local mode,
//!   a Kubernetes service-account token (TokenReview) in a cluster.
//! - [`service`]: the gRPC `CertificateService` (proto/mesh/ca/v1) that
//!   signs a CSR for exactly the identity its caller proved.
//!
//! Identities are SPIFFE IDs, [`mesh_rules::identity::Identity`].

pub mod authority;
pub mod credentials;
pub mod service;

pub use authority::{Authority, SignError};
pub use credentials::{AuthError, Authenticator, BootstrapTokens, KubernetesTokens};
pub use service::CertificateService;
