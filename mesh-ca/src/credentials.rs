//! Who is asking: a caller's credential proves a namespace and service
//! account, and the CA signs for that identity only.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The audience projected tokens for the CA carry (Istio's is `istio-ca`).
pub const AUDIENCE: &str = "mesh-ca";

/// A proven namespace and service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
}

/// Why a credential was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer …` metadata.
    #[error("no credential: send `authorization: Bearer <token>`")]
    Missing,
    /// The token is not known, not valid, or not for this CA.
    #[error("the token is refused: {0}")]
    Refused(String),
    /// The token authenticates something that is not a service account.
    #[error("the token authenticates `{0}`, not a service account")]
    NotServiceAccount(String),
    /// The check itself could not be made (the API server is unreachable).
    #[error("the token could not be checked: {0}")]
    Unavailable(String),
}

/// Turns a bearer token into the caller it proves.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync {
    /// The caller `token` proves, or why not.
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError>;
}

/// Local mode: tokens handed out with each workload, one per line in a
/// file as `token,namespace,service-account[,expires]` (expiry in RFC 3339;
/// `#` starts a comment). Only SHA-256 digests of the tokens are kept.
pub struct BootstrapTokens {
    by_digest: HashMap<Vec<u8>, (Caller, Option<OffsetDateTime>)>,
}

/// A line of the token file that is not a token.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct TokenFileError {
    /// The file.
    pub file: String,
    /// The line (from 1).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl BootstrapTokens {
    /// Reads the token file.
    pub fn read(path: &Path) -> Result<BootstrapTokens, TokenFileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TokenFileError {
            file: file.clone(),
            line: 0,
            reason: e.to_string(),
        })?;
        BootstrapTokens::parse(&text).map_err(|(line, reason)| TokenFileError {
            file,
            line,
            reason,
        })
    }

    /// Parses the file's text; an error names the line.
    pub fn parse(text: &str) -> Result<BootstrapTokens, (usize, String)> {
        let mut by_digest = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let (token, namespace, account, expires) = match fields[..] {
                [t, n, a] => (t, n, a, None),
                [t, n, a, e] => (t, n, a, Some(e)),
                _ => {
                    return Err((
                        i + 1,
                        format!(
                            "has {} fields; write token,namespace,service-account[,expires]",
                            fields.len()
                        ),
                    ));
                }
            };
            if token.len() < 16 || namespace.is_empty() || account.is_empty() {
                return Err((
                    i + 1,
                    "a token of at least 16 characters, a namespace and a service account are needed".into(),
                ));
            }
            let expires = expires
                .map(|e| {
                    OffsetDateTime::parse(e, &Rfc3339)
                        .map_err(|err| (i + 1, format!("`{e}` is not an RFC 3339 time: {err}")))
                })
                .transpose()?;
            let caller = Caller {
                namespace: namespace.to_owned(),
                service_account: account.to_owned(),
            };
            by_digest.insert(digest(token), (caller, expires));
        }
        Ok(BootstrapTokens { by_digest })
    }
}

fn digest(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

#[async_trait::async_trait]
impl Authenticator for BootstrapTokens {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let (caller, expires) = self
            .by_digest
            .get(&digest(token))
            .ok_or_else(|| AuthError::Refused("not a bootstrap token of this CA".into()))?;
        if let Some(at) = expires
            && *at <= OffsetDateTime::now_utc()
        {
            let at = at.format(&Rfc3339).unwrap_or_default();
            return Err(AuthError::Refused(format!("it expired at {at}")));
        }
        Ok(caller.clone())
    }
}

/// Bootstrap tokens from a file that is followed: workloads added to it
/// can ask at once; a file that does not parse is reported and the last
/// good tokens stay.
pub struct FollowedTokens {
    current: Arc<ArcSwap<BootstrapTokens>>,
    _watch: mesh_runtime::watch::FileWatch,
}

impl FollowedTokens {
    /// Reads `path` and follows it.
    pub fn follow(path: &Path) -> Result<FollowedTokens, TokenFileError> {
        let first = BootstrapTokens::read(path)?;
        let current = Arc::new(ArcSwap::from_pointee(first));
        let last = std::fs::read(path).unwrap_or_default();
        let (swap, shown) = (current.clone(), path.display().to_string());
        let watch = mesh_runtime::watch::follow(path, last, move |bytes| {
            match BootstrapTokens::parse(&String::from_utf8_lossy(bytes)) {
                Ok(tokens) => {
                    tracing::info!(file = %shown, tokens = tokens.by_digest.len(), "bootstrap tokens reloaded");
                    swap.store(Arc::new(tokens));
                }
                Err((line, reason)) => {
                    tracing::warn!("{shown}:{line}: {reason}; keeping the last good tokens");
                }
            }
        })
        .map_err(|e| TokenFileError {
            file: path.display().to_string(),
            line: 0,
            reason: format!("cannot follow it: {e}"),
        })?;
        Ok(FollowedTokens {
            current,
            _watch: watch,
        })
    }
}

#[async_trait::async_trait]
impl Authenticator for FollowedTokens {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let tokens = self.current.load_full();
        tokens.authenticate(token).await
    }
}

/// In a cluster: service-account tokens checked by the API server
/// (TokenReview), which must say the token is valid for [`AUDIENCE`].
pub struct KubernetesTokens {
    reviews: Api<TokenReview>,
    audience: String,
}

impl KubernetesTokens {
    /// Checks tokens through `client`, for `audience`.
    pub fn new(client: kube::Client, audience: &str) -> KubernetesTokens {
        KubernetesTokens {
            reviews: Api::all(client),
            audience: audience.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl Authenticator for KubernetesTokens {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = self
            .reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err(AuthError::Refused(why));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .contains(&self.audience)
        {
            return Err(AuthError::Refused(format!(
                "it is not for audience `{}`",
                self.audience
            )));
        }
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account(&user).ok_or(AuthError::NotServiceAccount(user))
    }
}

/// `system:serviceaccount:<ns>:<sa>` → the caller.
fn service_account(username: &str) -> Option<Caller> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, account) = rest.split_once(':')?;
    (!namespace.is_empty() && !account.is_empty() && !account.contains(':')).then(|| Caller {
        namespace: namespace.to_owned(),
        service_account: account.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bootstrap_tokens_prove_their_caller_until_they_expire() {
        let tokens = BootstrapTokens::parse(
            "# local mode\n\
             0123456789abcdef0123,default,svca\n\
             fedcba9876543210fedc,default,svcb,2020-01-01T00:00:00Z\n",
        )
        .unwrap();
        let caller = tokens.authenticate("0123456789abcdef0123").await.unwrap();
        assert_eq!(caller.service_account, "svca");
        assert_eq!(
            tokens.authenticate("fedcba9876543210fedc").await,
            Err(AuthError::Refused(
                "it expired at 2020-01-01T00:00:00Z".into()
            ))
        );
        assert!(matches!(
            tokens.authenticate("0123456789abcdef0124").await,
            Err(AuthError::Refused(_))
        ));
        let err = BootstrapTokens::parse("\nshort,default,svca\n")
            .err()
            .unwrap();
        assert_eq!(err.0, 2);
    }

    #[test]
    fn only_service_accounts_are_callers() {
        assert_eq!(
            service_account("system:serviceaccount:default:svca"),
            Some(Caller {
                namespace: "default".into(),
                service_account: "svca".into()
            })
        );
        assert_eq!(service_account("kubernetes-admin"), None);
        assert_eq!(service_account("system:serviceaccount:default"), None);
    }
}
