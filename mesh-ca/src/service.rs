//! The gRPC certificate-signing service.

use std::sync::Arc;

use mesh_proto::ca::certificate_service_server::{self, CertificateServiceServer};
use mesh_proto::ca::{CertificateRequest, CertificateResponse};
use mesh_rules::identity::Identity;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::authority::{self, Authority, SignError};
use crate::credentials::{AuthError, Authenticator};

/// Signs CSRs for the identity each caller proves.
pub struct CertificateService {
    authority: Arc<Authority>,
    authenticator: Arc<dyn Authenticator>,
}

impl CertificateService {
    /// A service signing with `authority` for callers `authenticator` accepts.
    pub fn new(authority: Arc<Authority>, authenticator: Arc<dyn Authenticator>) -> Self {
        CertificateService {
            authority,
            authenticator,
        }
    }

    /// The tonic server for it.
    pub fn into_server(self) -> CertificateServiceServer<Self> {
        CertificateServiceServer::new(self)
    }

    /// Authenticates, then signs; the error is what the caller is told.
    async fn create(
        &self,
        token: Option<&str>,
        request: &CertificateRequest,
    ) -> Result<(Identity, Vec<String>), Status> {
        let token = token.ok_or(AuthError::Missing).map_err(unauthenticated)?;
        let caller = self
            .authenticator
            .authenticate(token)
            .await
            .map_err(unauthenticated)?;
        let identity = Identity::new(
            self.authority.trust_domain(),
            &caller.namespace,
            &caller.service_account,
        );
        let chain = self
            .authority
            .sign(&request.csr, &identity, request.validity_seconds)
            .map_err(|e| {
                let status = match e {
                    SignError::NotYourIdentity { .. } | SignError::AsksForCa => {
                        Status::permission_denied(e.to_string())
                    }
                    SignError::BadCsr(_) | SignError::Validity { .. } => {
                        Status::invalid_argument(e.to_string())
                    }
                    SignError::Signing(_) => Status::internal(e.to_string()),
                };
                warn!(%identity, reason = %e, "refused a CSR");
                status
            })?;
        Ok((identity, chain))
    }
}

fn unauthenticated(e: AuthError) -> Status {
    warn!(reason = %e, "refused a caller");
    match e {
        AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer<T>(request: &Request<T>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[tonic::async_trait]
impl certificate_service_server::CertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let (identity, cert_chain) = self.create(bearer(&request), request.get_ref()).await?;
        let expires =
            authority::not_after(&cert_chain[0]).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        info!(%identity, %expires, "issued a certificate");
        Ok(Response::new(CertificateResponse { cert_chain }))
    }
}
