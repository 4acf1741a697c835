//! Workload identities: SPIFFE IDs `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! The CA signs them, proxies present and check them, policies name them;
//! one type keeps the three agreeing on the text.

use std::fmt;
use std::str::FromStr;

/// The trust domain when none is configured (Istio's and Kubernetes' default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload's identity: its namespace and service account in a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The trust domain (`cluster.local`).
    pub trust_domain: String,
    /// The Kubernetes namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
}

/// Why a string is not a mesh SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{uri}` is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>: {reason}"
)]
pub struct IdentityError {
    /// The text given.
    pub uri: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Identity {
    /// The identity of `service_account` in `namespace`.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Identity {
        Identity {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// pilot's identity in `trust_domain` (service account `mesh-pilot` in
    /// `mesh-system`, as the install bundle runs it): what proxies expect
    /// of their xDS server over TLS unless told otherwise.
    pub fn pilot(trust_domain: &str) -> Identity {
        Identity::new(trust_domain, "mesh-system", "mesh-pilot")
    }

    /// The `spiffe://…` URI.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// The principal as authorization policies write it (the URI without
    /// `spiffe://`, as Istio's `principals`).
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(uri: &str) -> Result<Identity, IdentityError> {
        let fail = |reason| IdentityError {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| fail("it does not start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [domain, "ns", namespace, "sa", account] = parts[..] else {
            return Err(fail("the path is not /ns/<namespace>/sa/<service-account>"));
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        if !valid(domain) || !valid(namespace) || !valid(account) {
            return Err(fail(
                "a part is empty or has characters other than letters, digits, `-`, `.`, `_`",
            ));
        }
        Ok(Identity::new(domain, namespace, account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_shapes() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/svca".parse().unwrap();
        assert_eq!(id, Identity::new("cluster.local", "default", "svca"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/svca");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/svca");
        for bad in [
            "https://cluster.local/ns/default/sa/svca",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa/svca/extra",
            "spiffe://cluster.local/ns//sa/svca",
            "spiffe://cluster.local/ns/a b/sa/svca",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad} accepted");
        }
    }
}
