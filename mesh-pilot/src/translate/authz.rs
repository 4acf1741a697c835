//! AuthorizationPolicy → Envoy's RBAC filters on a workload's inbound
//! chains: a DENY filter first, then an ALLOW filter (when any ALLOW
//! policy covers the workload; none covering it allows everything), and a
//! LOG filter for AUDIT policies. HTTP chains get the HTTP RBAC filter
//! before the router; TCP chains the network RBAC filter before the TCP
//! proxy, where fields only HTTP has cannot be checked: an ALLOW rule
//! with one never matches, a DENY rule drops them and matches more
//! (failing closed, as Istio does).
//!
//! Each rule is a policy named `ns[<ns>]-policy[<name>]-rule[<i>]`, so a
//! refusal names the policy that made it.

use std::collections::HashMap;

use mesh_proto::envoy::config::listener::v3::{self as xlistener, Listener};
use mesh_proto::envoy::config::rbac::v3 as xrbac;
use mesh_proto::envoy::config::route::v3 as xroute;
use mesh_proto::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_proto::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use mesh_proto::envoy::r#type::matcher::v3 as xmatch;
use mesh_rules::rules::security::{
    Action, AuthorizationPolicy, AuthorizationRule, Operation, Source,
};
use prost::Message;

use super::build::any;

/// The policies covering one workload, by action.
#[derive(Debug, Default, Clone)]
pub struct InboundAuthz {
    /// DENY policies' rules.
    pub deny: Vec<(String, AuthorizationRule)>,
    /// ALLOW policies' rules; `allow_any` is false once one covers the workload.
    pub allow: Vec<(String, AuthorizationRule)>,
    /// Whether an ALLOW policy covers the workload.
    pub allow_set: bool,
    /// AUDIT policies' rules.
    pub audit: Vec<(String, AuthorizationRule)>,
}

impl InboundAuthz {
    /// Adds policy `name` of namespace `ns`.
    pub fn add(&mut self, ns: &str, name: &str, p: &AuthorizationPolicy) {
        let list = match p.action {
            Action::Deny => &mut self.deny,
            Action::Allow => {
                self.allow_set = true;
                &mut self.allow
            }
            Action::Audit => &mut self.audit,
            Action::Custom => return, // refused at load
        };
        for (i, r) in p.rules.iter().enumerate() {
            list.push((format!("ns[{ns}]-policy[{name}]-rule[{i}]"), r.clone()));
        }
    }

    fn is_empty(&self) -> bool {
        self.deny.is_empty() && !self.allow_set && self.audit.is_empty()
    }
}

fn permission(rule: xrbac::permission::Rule) -> xrbac::Permission {
    xrbac::Permission { rule: Some(rule) }
}

fn principal(id: xrbac::principal::Identifier) -> xrbac::Principal {
    xrbac::Principal {
        identifier: Some(id),
    }
}

fn string(m: xmatch::string_matcher::MatchPattern, ignore_case: bool) -> xmatch::StringMatcher {
    xmatch::StringMatcher {
        match_pattern: Some(m),
        ignore_case,
    }
}

/// Istio's wildcards: `*` alone, `*suffix`, `prefix*`, else exact.
fn wildcard(v: &str, prefix: &str, ignore_case: bool) -> xmatch::StringMatcher {
    use xmatch::string_matcher::MatchPattern as P;
    let pattern = if v == "*" {
        P::SafeRegex(xmatch::RegexMatcher {
            regex: ".+".into(),
            ..Default::default()
        })
    } else if let Some(s) = v.strip_prefix('*') {
        P::Suffix(s.to_owned())
    } else if let Some(p) = v.strip_suffix('*') {
        P::Prefix(format!("{prefix}{p}"))
    } else {
        P::Exact(format!("{prefix}{v}"))
    };
    string(pattern, ignore_case)
}

fn header(name: &str, m: xmatch::StringMatcher) -> xroute::HeaderMatcher {
    xroute::HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(xroute::header_matcher::HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

fn or_permissions(rules: Vec<xrbac::Permission>) -> xrbac::Permission {
    permission(xrbac::permission::Rule::OrRules(xrbac::permission::Set {
        rules,
    }))
}

fn not_permission(p: xrbac::Permission) -> xrbac::Permission {
    permission(xrbac::permission::Rule::NotRule(Box::new(p)))
}

fn or_principals(ids: Vec<xrbac::Principal>) -> xrbac::Principal {
    principal(xrbac::principal::Identifier::OrIds(xrbac::principal::Set {
        ids,
    }))
}

fn not_principal(p: xrbac::Principal) -> xrbac::Principal {
    principal(xrbac::principal::Identifier::NotId(Box::new(p)))
}

/// Lists (`values` any of, `not_values` none of) as conditions.
fn listed<T>(
    values: &[String],
    not_values: &[String],
    one: impl Fn(&str) -> T,
    or: impl Fn(Vec<T>) -> T,
    not: impl Fn(T) -> T,
) -> Vec<T> {
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(or(values.iter().map(|v| one(v)).collect()));
    }
    if !not_values.is_empty() {
        out.push(not(or(not_values.iter().map(|v| one(v)).collect())));
    }
    out
}

fn authenticated(m: xmatch::StringMatcher) -> xrbac::Principal {
    principal(xrbac::principal::Identifier::Authenticated(
        xrbac::principal::Authenticated {
            principal_name: Some(m),
        },
    ))
}

fn principal_id(v: &str) -> xrbac::Principal {
    authenticated(wildcard(v, "spiffe://", false))
}

fn namespace_id(ns: &str) -> xrbac::Principal {
    use xmatch::string_matcher::MatchPattern as P;
    authenticated(string(
        P::SafeRegex(xmatch::RegexMatcher {
            regex: format!(".*/ns/{}/.*", regex_escape(ns)),
            ..Default::default()
        }),
        false,
    ))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

fn source_ids(s: &Source) -> Vec<xrbac::Principal> {
    let mut ids = listed(
        &s.principals,
        &s.not_principals,
        principal_id,
        or_principals,
        not_principal,
    );
    ids.extend(listed(
        &s.namespaces,
        &s.not_namespaces,
        namespace_id,
        or_principals,
        not_principal,
    ));
    ids
}

fn path_permission(p: &str) -> xrbac::Permission {
    use xmatch::string_matcher::MatchPattern as P;
    let m = match p {
        "*" => string(P::Prefix("/".into()), false),
        _ => wildcard(p, "", false),
    };
    permission(xrbac::permission::Rule::UrlPath(xmatch::PathMatcher {
        rule: Some(xmatch::path_matcher::Rule::Path(m)),
    }))
}

fn port_permission(p: &str) -> xrbac::Permission {
    permission(xrbac::permission::Rule::DestinationPort(
        p.parse().unwrap_or(0),
    ))
}

fn host_permission(h: &str) -> xrbac::Permission {
    permission(xrbac::permission::Rule::Header(header(
        ":authority",
        wildcard(h, "", true),
    )))
}

fn method_permission(m: &str) -> xrbac::Permission {
    use xmatch::string_matcher::MatchPattern as P;
    permission(xrbac::permission::Rule::Header(header(
        ":method",
        string(P::Exact(m.to_owned()), false),
    )))
}

/// An operation's conditions; `http`: whether HTTP-only fields can be
/// read (on TCP chains they are left out, and `http_only` set).
fn operation(op: &Operation, http: bool, http_only: &mut bool) -> Vec<xrbac::Permission> {
    let mut out = listed(
        &op.ports,
        &op.not_ports,
        port_permission,
        or_permissions,
        not_permission,
    );
    let http_fields = [
        (
            &op.hosts,
            &op.not_hosts,
            host_permission as fn(&str) -> xrbac::Permission,
        ),
        (&op.methods, &op.not_methods, method_permission),
        (&op.paths, &op.not_paths, path_permission),
    ];
    for (values, not_values, one) in http_fields {
        if values.is_empty() && not_values.is_empty() {
            continue;
        }
        if !http {
            *http_only = true;
            continue;
        }
        out.extend(listed(
            values,
            not_values,
            one,
            or_permissions,
            not_permission,
        ));
    }
    out
}

fn and_permissions(rules: Vec<xrbac::Permission>) -> xrbac::Permission {
    match rules.len() {
        0 => permission(xrbac::permission::Rule::Any(true)),
        _ => permission(xrbac::permission::Rule::AndRules(xrbac::permission::Set {
            rules,
        })),
    }
}

fn and_principals(ids: Vec<xrbac::Principal>) -> xrbac::Principal {
    match ids.len() {
        0 => principal(xrbac::principal::Identifier::Any(true)),
        _ => principal(xrbac::principal::Identifier::AndIds(
            xrbac::principal::Set { ids },
        )),
    }
}

/// One rule as an RBAC policy; `None` when it can never match here (an
/// ALLOW rule with HTTP-only fields on a TCP chain).
fn policy(rule: &AuthorizationRule, http: bool, action: Action) -> Option<xrbac::Policy> {
    let mut http_only = false;
    // One `to` of the list, and one `from`.
    let tos: Vec<xrbac::Permission> = rule
        .to
        .iter()
        .map(|t| and_permissions(operation(&t.operation, http, &mut http_only)))
        .collect();
    let froms: Vec<xrbac::Principal> = rule
        .from
        .iter()
        .map(|f| and_principals(source_ids(&f.source)))
        .collect();
    let mut permissions = Vec::new();
    if !tos.is_empty() {
        permissions.push(or_permissions(tos));
    }
    let mut principals = Vec::new();
    if !froms.is_empty() {
        principals.push(or_principals(froms));
    }
    for w in &rule.when {
        match (w.key.as_str(), w.header()) {
            (_, Some(h)) if http => {
                let one = |v: &str| {
                    permission(xrbac::permission::Rule::Header(header(
                        h,
                        wildcard(v, "", false),
                    )))
                };
                permissions.extend(listed(
                    &w.values,
                    &w.not_values,
                    one,
                    or_permissions,
                    not_permission,
                ));
            }
            (_, Some(_)) => http_only = true,
            ("source.principal", _) => principals.extend(listed(
                &w.values,
                &w.not_values,
                principal_id,
                or_principals,
                not_principal,
            )),
            ("source.namespace", _) => principals.extend(listed(
                &w.values,
                &w.not_values,
                namespace_id,
                or_principals,
                not_principal,
            )),
            ("destination.port", _) => permissions.extend(listed(
                &w.values,
                &w.not_values,
                port_permission,
                or_permissions,
                not_permission,
            )),
            _ => {} // refused at load
        }
    }
    if http_only && action == Action::Allow {
        return None;
    }
    Some(xrbac::Policy {
        permissions: vec![and_permissions(permissions)],
        principals: vec![and_principals(principals)],
        ..Default::default()
    })
}

fn rbac(rules: &[(String, AuthorizationRule)], http: bool, action: Action) -> xrbac::Rbac {
    let policies: HashMap<String, xrbac::Policy> = super::stable_map(
        rules
            .iter()
            .filter_map(|(name, r)| Some((name.clone(), policy(r, http, action)?))),
    );
    let envoy_action = match action {
        Action::Deny => xrbac::rbac::Action::Deny,
        Action::Audit => xrbac::rbac::Action::Log,
        _ => xrbac::rbac::Action::Allow,
    };
    xrbac::Rbac {
        action: envoy_action as i32,
        policies,
        ..Default::default()
    }
}

/// The RBAC configurations of a chain, in evaluation order.
fn filters(a: &InboundAuthz, http: bool) -> Vec<xrbac::Rbac> {
    let mut out = Vec::new();
    if !a.deny.is_empty() {
        out.push(rbac(&a.deny, http, Action::Deny));
    }
    if a.allow_set {
        out.push(rbac(&a.allow, http, Action::Allow));
    }
    if !a.audit.is_empty() {
        out.push(rbac(&a.audit, http, Action::Audit));
    }
    out
}

const HCM: &str = "envoy.filters.network.http_connection_manager";

/// Puts the workload's policies on every chain of its inbound listener.
pub fn secure_inbound(l: &mut Listener, a: &InboundAuthz) {
    if a.is_empty() {
        return;
    }
    for chain in &mut l.filter_chains {
        let http = chain.filters.iter().any(|f| f.name == HCM);
        if http {
            for f in chain.filters.iter_mut().filter(|f| f.name == HCM) {
                add_http_filters(f, &filters(a, true));
            }
        } else {
            let network: Vec<xlistener::Filter> = filters(a, false)
                .into_iter()
                .map(|rules| xlistener::Filter {
                    name: "envoy.filters.network.rbac".into(),
                    config_type: Some(xlistener::filter::ConfigType::TypedConfig(any(
                        &net_rbac::Rbac {
                            rules: Some(rules),
                            stat_prefix: "tcp.".into(),
                            ..Default::default()
                        },
                    ))),
                })
                .collect();
            chain.filters.splice(0..0, network);
        }
    }
}

/// Inserts the HTTP RBAC filters before the router of a connection manager.
fn add_http_filters(f: &mut xlistener::Filter, rbacs: &[xrbac::Rbac]) {
    let Some(xlistener::filter::ConfigType::TypedConfig(config)) = &mut f.config_type else {
        return;
    };
    let Ok(mut manager) = hcm::HttpConnectionManager::decode(config.value.as_slice()) else {
        return;
    };
    let at = manager.http_filters.len().saturating_sub(1);
    let added = rbacs.iter().map(|rules| hcm::HttpFilter {
        name: "envoy.filters.http.rbac".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
            &http_rbac::Rbac {
                rules: Some(rules.clone()),
                ..Default::default()
            },
        ))),
        ..Default::default()
    });
    manager.http_filters.splice(at..at, added);
    *config = any(&manager);
}
