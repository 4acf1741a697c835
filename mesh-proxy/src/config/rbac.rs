//! Envoy's RBAC filters (HTTP and network): named policies, each a set of
//! permissions (what is done) and principals (who does it); a policy
//! matches when one permission and one principal match. An ALLOW filter
//! lets through what a policy matches, a DENY filter refuses it, a LOG
//! filter only records it.

use mesh_proto::envoy::config::rbac::v3 as xrbac;
use mesh_rules::FieldError;

use super::err;
use super::route::{HeaderMatch, RequestView, StringMatch, header_match, string_match};

/// The HTTP filter's type.
pub const HTTP_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
/// The network filter's type.
pub const NETWORK_TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";

/// What a filter does with requests its policies match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacAction {
    /// Only what a policy matches passes.
    Allow,
    /// What a policy matches is refused.
    Deny,
    /// Everything passes; matches are logged.
    Log,
}

/// One RBAC filter.
#[derive(Debug)]
pub struct Rbac {
    /// The action.
    pub action: RbacAction,
    /// The policies, by name (sorted, so the first match is stable).
    pub policies: Vec<(String, Policy)>,
}

/// A policy.
#[derive(Debug)]
pub struct Policy {
    permissions: Vec<Permission>,
    principals: Vec<Principal>,
}

#[derive(Debug)]
enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatch),
    Path(StringMatch),
    DestinationPort(u32),
}

#[derive(Debug)]
enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// A peer certificate (with a URI SAN matching, when given).
    Authenticated(Option<StringMatch>),
    Header(HeaderMatch),
}

/// What a decision looks at.
pub struct Subject<'a> {
    /// The request, for HTTP filters.
    pub request: Option<&'a RequestView<'a>>,
    /// The port the connection came to.
    pub port: u16,
    /// The client's SPIFFE ID, when it came over mutual TLS.
    pub principal: Option<&'a str>,
}

/// A filter's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Passes (with the policy that matched, if any).
    Pass(Option<String>),
    /// Refused: why, naming the policy.
    Refuse(String),
}

impl Rbac {
    /// The first policy (by name) that matches `s`.
    fn matching(&self, s: &Subject<'_>) -> Option<&str> {
        self.policies
            .iter()
            .find(|(_, p)| {
                p.permissions.iter().any(|x| x.matches(s))
                    && p.principals.iter().any(|x| x.matches(s))
            })
            .map(|(n, _)| n.as_str())
    }

    /// This filter's verdict on `s`.
    pub fn decide(&self, s: &Subject<'_>) -> Verdict {
        let found = self.matching(s).map(str::to_owned);
        match (self.action, found) {
            (RbacAction::Deny, Some(p)) => Verdict::Refuse(format!("denied by policy {p}")),
            (RbacAction::Allow, None) => {
                let names: Vec<&str> = self.policies.iter().map(|(n, _)| n.as_str()).collect();
                Verdict::Refuse(if names.is_empty() {
                    "no policy allows it (an ALLOW policy with no rules)".into()
                } else {
                    format!("no ALLOW policy matches (of {})", names.join(", "))
                })
            }
            (_, found) => Verdict::Pass(found),
        }
    }
}

/// The verdict of several filters in order: the first refusal wins.
pub fn decide_all(filters: &[std::sync::Arc<Rbac>], s: &Subject<'_>) -> Result<(), String> {
    for f in filters {
        match f.decide(s) {
            Verdict::Refuse(why) => return Err(why),
            Verdict::Pass(Some(p)) if f.action == RbacAction::Log => {
                tracing::info!(policy = %p, "audit: a request matched");
            }
            Verdict::Pass(_) => {}
        }
    }
    Ok(())
}

fn header_value<'a>(req: &'a RequestView<'a>, name: &str) -> Option<&'a str> {
    match name {
        ":method" => Some(req.method),
        ":authority" => Some(req.authority),
        ":path" => Some(req.path),
        n => req.headers.get(n).and_then(|v| v.to_str().ok()),
    }
}

impl Permission {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(s)),
            Permission::Or(any) => any.iter().any(|p| p.matches(s)),
            Permission::Not(p) => !p.matches(s),
            Permission::Header(h) => s
                .request
                .is_some_and(|r| h.matches(header_value(r, &h.name))),
            Permission::Path(m) => s.request.is_some_and(|r| m.matches(r.path)),
            Permission::DestinationPort(p) => u32::from(s.port) == *p,
        }
    }
}

impl Principal {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(s)),
            Principal::Or(any) => any.iter().any(|p| p.matches(s)),
            Principal::Not(p) => !p.matches(s),
            Principal::Authenticated(m) => match (m, s.principal) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(m), Some(id)) => m.matches(id),
            },
            Principal::Header(h) => s
                .request
                .is_some_and(|r| h.matches(header_value(r, &h.name))),
        }
    }
}

/// Reads an RBAC configuration (`rules` of either filter).
pub fn build(r: &xrbac::Rbac, path: &str) -> Result<Rbac, FieldError> {
    let action = match xrbac::rbac::Action::try_from(r.action) {
        Ok(xrbac::rbac::Action::Allow) => RbacAction::Allow,
        Ok(xrbac::rbac::Action::Deny) => RbacAction::Deny,
        Ok(xrbac::rbac::Action::Log) => RbacAction::Log,
        Err(_) => return Err(err(format!("{path}.action"), "use ALLOW, DENY or LOG")),
    };
    let mut policies = r
        .policies
        .iter()
        .map(|(name, p)| {
            let ppath = format!("{path}.policies[{name}]");
            let permissions = p
                .permissions
                .iter()
                .enumerate()
                .map(|(i, x)| permission(x, &format!("{ppath}.permissions[{i}]")))
                .collect::<Result<_, _>>()?;
            let principals = p
                .principals
                .iter()
                .enumerate()
                .map(|(i, x)| principal(x, &format!("{ppath}.principals[{i}]")))
                .collect::<Result<_, _>>()?;
            Ok((
                name.clone(),
                Policy {
                    permissions,
                    principals,
                },
            ))
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    policies.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Rbac { action, policies })
}

fn permission(p: &xrbac::Permission, path: &str) -> Result<Permission, FieldError> {
    use xrbac::permission::Rule as R;
    let set = |rules: &[xrbac::Permission], key: &str| {
        rules
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x, &format!("{path}.{key}.rules[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.rule {
        Some(R::Any(true)) => Permission::Any,
        Some(R::AndRules(s)) => Permission::And(set(&s.rules, "and_rules")?),
        Some(R::OrRules(s)) => Permission::Or(set(&s.rules, "or_rules")?),
        Some(R::NotRule(x)) => {
            Permission::Not(Box::new(permission(x, &format!("{path}.not_rule"))?))
        }
        Some(R::Header(h)) => Permission::Header(header_match(h, &format!("{path}.header"))?),
        Some(R::UrlPath(m)) => {
            use mesh_proto::envoy::r#type::matcher::v3::path_matcher::Rule as P;
            let mpath = format!("{path}.url_path");
            match &m.rule {
                Some(P::Path(s)) => Permission::Path(string_match(s, &format!("{mpath}.path"))?),
                None => return Err(err(mpath, "a path matcher is required")),
            }
        }
        Some(R::DestinationPort(n)) => Permission::DestinationPort(*n),
        _ => {
            return Err(err(
                path,
                "use any, and_rules, or_rules, not_rule, header, url_path or destination_port",
            ));
        }
    })
}

fn principal(p: &xrbac::Principal, path: &str) -> Result<Principal, FieldError> {
    use xrbac::principal::Identifier as I;
    let set = |ids: &[xrbac::Principal], key: &str| {
        ids.iter()
            .enumerate()
            .map(|(i, x)| principal(x, &format!("{path}.{key}.ids[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.identifier {
        Some(I::Any(true)) => Principal::Any,
        Some(I::AndIds(s)) => Principal::And(set(&s.ids, "and_ids")?),
        Some(I::OrIds(s)) => Principal::Or(set(&s.ids, "or_ids")?),
        Some(I::NotId(x)) => Principal::Not(Box::new(principal(x, &format!("{path}.not_id"))?)),
        Some(I::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(|m| string_match(m, &format!("{path}.authenticated.principal_name")))
                .transpose()?,
        ),
        Some(I::Header(h)) => Principal::Header(header_match(h, &format!("{path}.header"))?),
        _ => {
            return Err(err(
                path,
                "use any, and_ids, or_ids, not_id, authenticated or header",
            ));
        }
    })
}
