//! Routing tables, built once per configuration: virtual hosts by
//! authority, routes in order, and weighted cluster schedules that split
//! traffic exactly, per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use hyper::body::Bytes;
use mesh_proto::envoy::config::core::v3 as xcore;
use mesh_proto::envoy::config::route::v3 as xroute;
use mesh_proto::envoy::r#type::matcher::v3 as xmatch;

use super::{Cluster, FieldError, RetryPolicy, err};

/// Virtual hosts of one listener, with the domain index Envoy's rules imply:
/// exact names first, then the longest `*.suffix`, then the longest
/// `prefix.*`, then `*`.
#[derive(Debug)]
pub struct RouteTable {
    /// Name of the route configuration.
    pub name: String,
    /// Virtual hosts, in configuration order.
    pub virtual_hosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    suffixes: Vec<(String, usize)>,
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

/// A virtual host: domains and the routes to try in order.
#[derive(Debug)]
pub struct VirtualHost {
    /// Name.
    pub name: String,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
}

/// How a path must match.
#[derive(Debug)]
pub enum PathMatch {
    /// Starts with.
    Prefix(String),
    /// Equals.
    Exact(String),
    /// Matches the whole path.
    Regex(regex::Regex),
}

/// How a string must match.
#[derive(Debug)]
pub enum StringMatch {
    /// Equals.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// Matches entirely.
    Regex(regex::Regex),
    /// The inner match on the lowercased value (its pattern lowercased).
    IgnoreCase(Box<StringMatch>),
}

impl StringMatch {
    pub(super) fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::IgnoreCase(m) => m.matches(&v.to_ascii_lowercase()),
            StringMatch::Exact(s) => v == s,
            StringMatch::Prefix(s) => v.starts_with(s.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Contains(s) => v.contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// A header condition.
#[derive(Debug)]
pub struct HeaderMatch {
    /// Header name; `:method`, `:authority` and `:path` are the pseudo-headers.
    pub name: String,
    /// `None`: the header must be present.
    pub value: Option<StringMatch>,
    /// Negate the result.
    pub invert: bool,
}

/// Where a matched request goes.
#[derive(Debug)]
pub enum RouteAction {
    /// To upstream clusters.
    Forward(Box<Forward>),
    /// Answered by the proxy.
    Direct {
        /// Status.
        status: StatusCode,
        /// Body.
        body: Bytes,
    },
    /// Answered with a redirect to the same request elsewhere.
    Redirect(Redirect),
}

/// A redirect (`route.redirect`): the request's URL with its host and or
/// path replaced.
#[derive(Debug)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
    /// The new host (`host_redirect`), else the request's.
    pub host: Option<String>,
    /// The new path (`path_redirect`), else the request's; without a query
    /// of its own the request's query is kept.
    pub path: Option<String>,
}

impl Redirect {
    /// The `location` of the redirect for a request to `authority` and
    /// `path_and_query`.
    pub fn location(&self, authority: &str, path_and_query: &str) -> String {
        let host = self.host.as_deref().unwrap_or(authority);
        let path = match &self.path {
            Some(p) if p.contains('?') => p.clone(),
            Some(p) => match path_and_query.split_once('?') {
                Some((_, query)) => format!("{p}?{query}"),
                None => p.clone(),
            },
            None => path_and_query.to_owned(),
        };
        format!("http://{host}{path}")
    }
}

fn build_redirect(r: &xroute::RedirectAction, path: &str) -> Result<Redirect, FieldError> {
    use xroute::redirect_action::{PathRewriteSpecifier, RedirectResponseCode as Code};
    let status = match Code::try_from(r.response_code) {
        Ok(Code::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
        Ok(Code::Found) => StatusCode::FOUND,
        Ok(Code::SeeOther) => StatusCode::SEE_OTHER,
        Ok(Code::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
        Ok(Code::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
        Err(_) => return Err(err(format!("{path}.response_code"), "not a redirect code")),
    };
    let path_redirect = match &r.path_rewrite_specifier {
        None => None,
        Some(PathRewriteSpecifier::PathRedirect(p)) if p.starts_with('/') => Some(p.clone()),
        Some(PathRewriteSpecifier::PathRedirect(_)) => {
            return Err(err(
                format!("{path}.path_redirect"),
                "a path starts with `/`",
            ));
        }
        Some(_) => {
            return Err(err(
                path,
                "only path_redirect is supported of the path rewrites",
            ));
        }
    };
    Ok(Redirect {
        status,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        path: path_redirect,
    })
}

/// Forwarding settings of a route.
#[derive(Debug)]
pub struct Forward {
    /// Target clusters, chosen per request.
    pub clusters: WeightedSchedule,
    /// Whole-request timeout (Envoy's default is 15 s; 0 disables).
    pub timeout: Option<Duration>,
    /// Replacement for the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Replacement authority.
    pub host_rewrite: Option<HeaderValue>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Clusters that get a copy of the request (Envoy's
    /// `request_mirror_policies`).
    pub mirrors: Vec<Mirror>,
    /// Where a `RING_HASH` cluster's key comes from.
    pub hash_policy: Vec<super::hash::HashPolicy>,
    /// Upgrade types this route turns on or off (`upgrade_configs`).
    pub upgrades: Vec<(String, bool)>,
}

/// Where a copy of a share of the route's requests goes: fire and forget,
/// the answer dropped, the original never waiting for it.
#[derive(Debug)]
pub struct Mirror {
    /// The cluster (`None`: named but not configured; no copy is sent, as
    /// in Envoy).
    pub cluster: Option<Arc<Cluster>>,
    /// Which requests are copied.
    pub share: super::fault::Share,
    /// Whether the copy's host gets Envoy's `-shadow` suffix.
    pub shadow_suffix: bool,
}

impl Mirror {
    fn build(
        m: &xroute::route_action::RequestMirrorPolicy,
        path: &str,
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Result<Mirror, FieldError> {
        if m.cluster.is_empty() {
            return Err(err(format!("{path}.cluster"), "a mirror needs a cluster"));
        }
        let fraction = m.runtime_fraction.as_ref().and_then(|f| f.default_value);
        Ok(Mirror {
            cluster: clusters.get(&m.cluster).cloned(),
            share: super::fault::Share::new(
                &fraction,
                &format!("{path}.runtime_fraction.default_value"),
            )?,
            shadow_suffix: !m.disable_shadow_host_suffix_append,
        })
    }

    /// The copy's host: `-shadow` added to the name (before any port).
    pub fn host(&self, host: &HeaderValue) -> HeaderValue {
        if !self.shadow_suffix {
            return host.clone();
        }
        let text = host.to_str().unwrap_or_default();
        // A port follows the last `:` unless that is inside an IPv6 literal.
        let split = match text.rfind(':') {
            Some(i) if !text[..i].contains(':') || text[..i].ends_with(']') => i,
            _ => text.len(),
        };
        let (name, port) = text.split_at(split);
        HeaderValue::from_str(&format!("{name}-shadow{port}")).unwrap_or_else(|_| host.clone())
    }
}

/// One route.
#[derive(Debug)]
pub struct Route {
    /// Name.
    pub name: String,
    /// Path condition.
    pub path: PathMatch,
    /// Header conditions, all must hold.
    pub headers: Vec<HeaderMatch>,
    /// What to do.
    pub action: RouteAction,
    /// Changes to the forwarded request's headers.
    pub request_headers: HeaderOps,
    /// Changes to the response's headers.
    pub response_headers: HeaderOps,
    /// Faults injected on this route (its `typed_per_filter_config` for
    /// the fault filter), replacing the filter's own.
    pub fault: Option<Arc<super::fault::Fault>>,
    /// Its CORS policy (`typed_per_filter_config` for the CORS filter).
    pub cors: Option<Arc<super::cors::Cors>>,
    /// Its rate limit (`typed_per_filter_config` for the local rate limit
    /// filter), replacing the filter's own.
    pub rate_limit: Option<Arc<super::ratelimit::RateLimit>>,
}

/// How a header is added (Envoy's `HeaderAppendAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddAction {
    /// `APPEND_IF_EXISTS_OR_ADD`: another value beside any there.
    Append,
    /// `ADD_IF_ABSENT`: only when the header is not there.
    AddIfAbsent,
    /// `OVERWRITE_IF_EXISTS_OR_ADD`: this value only.
    Overwrite,
    /// `OVERWRITE_IF_EXISTS`: replace a header that is there, else nothing.
    OverwriteIfExists,
}

/// One header to add.
#[derive(Debug)]
pub struct HeaderAdd {
    /// The header.
    pub name: HeaderName,
    /// Its value.
    pub value: HeaderValue,
    /// How.
    pub action: AddAction,
}

/// Header changes: removals first, then additions.
#[derive(Debug, Default)]
pub struct HeaderOps {
    /// Headers to add, in order.
    pub add: Vec<HeaderAdd>,
    /// Headers to remove.
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Applies the changes.
    pub fn apply(&self, h: &mut http::HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for a in &self.add {
            let present = h.contains_key(&a.name);
            match a.action {
                AddAction::Append => {
                    h.append(a.name.clone(), a.value.clone());
                }
                AddAction::AddIfAbsent if !present => {
                    h.insert(a.name.clone(), a.value.clone());
                }
                AddAction::Overwrite => {
                    h.insert(a.name.clone(), a.value.clone());
                }
                AddAction::OverwriteIfExists if present => {
                    h.insert(a.name.clone(), a.value.clone());
                }
                AddAction::AddIfAbsent | AddAction::OverwriteIfExists => {}
            }
        }
    }
}

/// A request as routing sees it.
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a str,
    /// Authority (host[:port]).
    pub authority: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Headers.
    pub headers: &'a http::HeaderMap,
}

impl HeaderMatch {
    /// Whether a header's value (`None`: absent) satisfies this match.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let ok = match (&self.value, value) {
            (None, v) => v.is_some(),
            (Some(m), Some(v)) => m.matches(v),
            (Some(_), None) => false,
        };
        ok != self.invert
    }
}

/// Reads an Envoy HeaderMatcher (`string_match` or `present_match`).
pub(super) fn header_match(h: &xroute::HeaderMatcher, hp: &str) -> Result<HeaderMatch, FieldError> {
    use xroute::header_matcher::HeaderMatchSpecifier as H;
    let value = match &h.header_match_specifier {
        Some(H::StringMatch(s)) => Some(string_match(s, &format!("{hp}.string_match"))?),
        Some(H::PresentMatch(true)) => None,
        _ => return Err(err(hp, "use string_match or present_match: true")),
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        value,
        invert: h.invert_match,
    })
}

impl Route {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Regex(r) => r.is_match(req.path),
        };
        path_ok
            && self.headers.iter().all(|h| {
                let value = match h.name.as_str() {
                    ":method" => Some(req.method),
                    ":authority" => Some(req.authority),
                    ":path" => Some(req.path),
                    name => req.headers.get(name).and_then(|v| v.to_str().ok()),
                };
                h.matches(value)
            })
    }
}

impl RouteTable {
    /// The virtual host for an authority (port tried with, then without).
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let lower = authority.to_ascii_lowercase();
        let host_only = strip_port(&lower);
        let find = |name: &str| {
            self.exact
                .get(name)
                .or_else(|| {
                    self.suffixes
                        .iter()
                        .find(|(s, _)| name.ends_with(s.as_str()) && name.len() > s.len())
                        .map(|(_, i)| i)
                })
                .or_else(|| {
                    self.prefixes
                        .iter()
                        .find(|(p, _)| name.starts_with(p.as_str()) && name.len() > p.len())
                        .map(|(_, i)| i)
                })
                .copied()
        };
        find(&lower)
            .or_else(|| (host_only != lower).then(|| find(host_only)).flatten())
            .or(self.any)
            .map(|i| &self.virtual_hosts[i])
    }

    /// The first route of the matching virtual host that matches.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.virtual_host(req.authority)?
            .routes
            .iter()
            .find(|r| r.matches(req))
    }

    /// Builds the table from a RouteConfiguration.
    pub fn build(
        rc: &xroute::RouteConfiguration,
        path: &str,
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Result<RouteTable, FieldError> {
        let mut t = RouteTable {
            name: rc.name.clone(),
            virtual_hosts: Vec::new(),
            exact: HashMap::new(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            any: None,
        };
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let vpath = format!("{path}.virtual_hosts[{i}]");
            for (j, d) in vh.domains.iter().enumerate() {
                let d = d.to_ascii_lowercase();
                let dup = if d == "*" {
                    t.any.replace(i).is_some()
                } else if let Some(s) = d.strip_prefix('*') {
                    t.suffixes.push((s.to_owned(), i));
                    false
                } else if let Some(p) = d.strip_suffix('*') {
                    t.prefixes.push((p.to_owned(), i));
                    false
                } else {
                    t.exact.insert(d.clone(), i).is_some()
                };
                if dup {
                    return Err(err(
                        format!("{vpath}.domains[{j}]"),
                        format!("domain `{d}` appears in two virtual hosts"),
                    ));
                }
            }
            let routes = vh
                .routes
                .iter()
                .enumerate()
                .map(|(k, r)| build_route(r, &format!("{vpath}.routes[{k}]"), clusters))
                .collect::<Result<_, _>>()?;
            t.virtual_hosts.push(VirtualHost {
                name: vh.name.clone(),
                routes,
            });
        }
        // Longest wildcard wins.
        t.suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        t.prefixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(t)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; anything else unchanged.
fn strip_port(a: &str) -> &str {
    if a.starts_with('[') {
        return a.find(']').map_or(a, |i| &a[..=i]);
    }
    match a.rsplit_once(':') {
        Some((h, p))
            if !h.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            h
        }
        _ => a,
    }
}

fn regex(re: &xmatch::RegexMatcher, path: &str) -> Result<regex::Regex, FieldError> {
    regex::Regex::new(&format!("^(?:{})$", re.regex)).map_err(|e| {
        err(
            format!("{path}.regex"),
            format!("invalid regular expression: {e}"),
        )
    })
}

pub(super) fn string_match(
    m: &xmatch::StringMatcher,
    path: &str,
) -> Result<StringMatch, FieldError> {
    use xmatch::string_matcher::MatchPattern as P;
    let fold = |s: &String| {
        if m.ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.clone()
        }
    };
    let matched = match &m.match_pattern {
        Some(P::Exact(s)) => StringMatch::Exact(fold(s)),
        Some(P::Prefix(s)) => StringMatch::Prefix(fold(s)),
        Some(P::Suffix(s)) => StringMatch::Suffix(fold(s)),
        Some(P::Contains(s)) => StringMatch::Contains(fold(s)),
        Some(P::SafeRegex(_)) if m.ignore_case => {
            return Err(err(
                format!("{path}.ignore_case"),
                "ignore_case with safe_regex is not supported (write (?i) in the regex)",
            ));
        }
        Some(P::SafeRegex(r)) => StringMatch::Regex(regex(r, &format!("{path}.safe_regex"))?),
        _ => {
            return Err(err(
                path,
                "use exact, prefix, suffix, contains or safe_regex",
            ));
        }
    };
    Ok(if m.ignore_case {
        StringMatch::IgnoreCase(Box::new(matched))
    } else {
        matched
    })
}

fn header_ops(
    add: &[xcore::HeaderValueOption],
    remove: &[String],
    path: &str,
    what: &str,
) -> Result<HeaderOps, FieldError> {
    let mut adds = Vec::new();
    for (i, h) in add.iter().enumerate() {
        let p = format!("{path}.{what}_headers_to_add[{i}]");
        let hv = h
            .header
            .as_ref()
            .ok_or_else(|| err(&p, "a header is required"))?;
        let name = HeaderName::from_bytes(hv.key.as_bytes()).map_err(|_| {
            err(
                format!("{p}.header.key"),
                format!("`{}` is not a header name", hv.key),
            )
        })?;
        let value = HeaderValue::from_str(&hv.value)
            .map_err(|_| err(format!("{p}.header.value"), "not a valid header value"))?;
        // (The deprecated `append` is not in the allowlist: refused.)
        let action = match h.append_action {
            0 => AddAction::Append,
            1 => AddAction::AddIfAbsent,
            2 => AddAction::Overwrite,
            3 => AddAction::OverwriteIfExists,
            n => {
                return Err(err(
                    format!("{p}.append_action"),
                    format!("unknown action {n}"),
                ));
            }
        };
        adds.push(HeaderAdd {
            name,
            value,
            action,
        });
    }
    let mut removes = Vec::new();
    for (i, r) in remove.iter().enumerate() {
        removes.push(HeaderName::from_bytes(r.as_bytes()).map_err(|_| {
            err(
                format!("{path}.{what}_headers_to_remove[{i}]"),
                format!("`{r}` is not a header name"),
            )
        })?);
    }
    Ok(HeaderOps {
        add: adds,
        remove: removes,
    })
}

/// A route's `direct_response`: a status and an inline body.
fn direct_response(
    d: &xroute::DirectResponseAction,
    path: &str,
) -> Result<RouteAction, FieldError> {
    let status = u16::try_from(d.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            err(
                format!("{path}.direct_response.status"),
                "not an HTTP status",
            )
        })?;
    use xcore::data_source::Specifier;
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        Some(Specifier::InlineString(s)) => Bytes::from(s.clone()),
        None => Bytes::new(),
        Some(_) => {
            return Err(err(
                format!("{path}.direct_response.body"),
                "only inline_string is supported",
            ));
        }
    };
    Ok(RouteAction::Direct { status, body })
}

/// A route's faults: its `typed_per_filter_config` for the fault filter
/// (the only filter configured per route).
fn route_filters(r: &xroute::Route, path: &str) -> Result<Filters, FieldError> {
    let mut filters = Filters::default();
    for (filter, any) in &r.typed_per_filter_config {
        let fpath = format!("{path}.typed_per_filter_config[{filter}]");
        let ty = any.type_url.rsplit('/').next().unwrap_or_default();
        match (filter.as_str(), ty) {
            (super::fault::FILTER, super::fault::TYPE) => {
                let config = super::unpack(any, &fpath)?;
                filters.fault = Some(Arc::new(super::fault::build(&config, &fpath)?));
            }
            (super::cors::FILTER, super::cors::POLICY_TYPE) => {
                let config = super::unpack(any, &fpath)?;
                filters.cors = Some(Arc::new(super::cors::build(&config, &fpath)?));
            }
            (super::ratelimit::FILTER, super::ratelimit::TYPE) => {
                let config = super::unpack(any, &fpath)?;
                filters.rate_limit = super::ratelimit::build(&config, &fpath)?.map(Arc::new);
            }
            _ => {
                return Err(err(
                    fpath,
                    format!(
                        "only {} ({}), {} ({}) and {} ({}) are supported here",
                        super::fault::FILTER,
                        super::fault::TYPE,
                        super::cors::FILTER,
                        super::cors::POLICY_TYPE,
                        super::ratelimit::FILTER,
                        super::ratelimit::TYPE,
                    ),
                ));
            }
        }
    }
    Ok(filters)
}

/// A route's configs of the HTTP filters (`typed_per_filter_config`).
#[derive(Default)]
struct Filters {
    fault: Option<Arc<super::fault::Fault>>,
    cors: Option<Arc<super::cors::Cors>>,
    rate_limit: Option<Arc<super::ratelimit::RateLimit>>,
}

fn build_route(
    r: &xroute::Route,
    path: &str,
    clusters: &HashMap<String, Arc<Cluster>>,
) -> Result<Route, FieldError> {
    use xroute::route::Action;
    use xroute::route_match::PathSpecifier;
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| err(path, "a match is required"))?;
    let mpath = format!("{path}.match");
    let path_match = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(re)) => {
            PathMatch::Regex(regex(re, &format!("{mpath}.safe_regex"))?)
        }
        _ => return Err(err(&mpath, "use prefix, path or safe_regex")),
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_match(h, &format!("{mpath}.headers[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let action = match &r.action {
        Some(Action::Route(ra)) => RouteAction::Forward(Box::new(build_forward(
            ra,
            &format!("{path}.route"),
            clusters,
            &path_match,
        )?)),
        Some(Action::DirectResponse(d)) => direct_response(d, path)?,
        Some(Action::Redirect(ra)) => {
            RouteAction::Redirect(build_redirect(ra, &format!("{path}.redirect"))?)
        }
        _ => return Err(err(path, "use route, redirect or direct_response")),
    };
    let request_headers = header_ops(
        &r.request_headers_to_add,
        &r.request_headers_to_remove,
        path,
        "request",
    )?;
    let response_headers = header_ops(
        &r.response_headers_to_add,
        &r.response_headers_to_remove,
        path,
        "response",
    )?;
    let Filters {
        fault,
        cors,
        rate_limit,
    } = route_filters(r, path)?;
    Ok(Route {
        name: r.name.clone(),
        path: path_match,
        headers,
        action,
        request_headers,
        response_headers,
        fault,
        cors,
        rate_limit,
    })
}

fn build_forward(
    ra: &xroute::RouteAction,
    path: &str,
    clusters: &HashMap<String, Arc<Cluster>>,
    path_match: &PathMatch,
) -> Result<Forward, FieldError> {
    use xroute::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    let entries: Vec<(String, u32)> = match &ra.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
        Some(ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
            .collect(),
        _ => {
            return Err(err(
                format!("{path}.cluster"),
                "use cluster or weighted_clusters",
            ));
        }
    };
    if !ra.prefix_rewrite.is_empty() && !matches!(path_match, PathMatch::Prefix(_)) {
        return Err(err(
            format!("{path}.prefix_rewrite"),
            "prefix_rewrite needs a prefix match",
        ));
    }
    let host_rewrite = match &ra.host_rewrite_specifier {
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(
            HeaderValue::from_str(h)
                .map_err(|_| err(format!("{path}.host_rewrite_literal"), "not a valid host"))?,
        ),
        None => None,
        Some(_) => return Err(err(path, "only host_rewrite_literal is supported")),
    };
    let retry = match &ra.retry_policy {
        None => RetryPolicy::default(),
        Some(rp) => RetryPolicy::build(rp, &format!("{path}.retry_policy"))?,
    };
    Ok(Forward {
        clusters: WeightedSchedule::new(&entries, clusters, &format!("{path}.weighted_clusters"))?,
        timeout: match super::duration(&ra.timeout) {
            None => Some(Duration::from_secs(15)),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        },
        prefix_rewrite: (!ra.prefix_rewrite.is_empty()).then(|| ra.prefix_rewrite.clone()),
        host_rewrite,
        retry,
        hash_policy: super::hash::HashPolicy::build(&ra.hash_policy, path)?,
        upgrades: super::upgrade_types(
            ra.upgrade_configs
                .iter()
                .map(|u| (u.upgrade_type.as_str(), u.enabled.map(|b| b.value))),
        ),
        mirrors: ra
            .request_mirror_policies
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Mirror::build(m, &format!("{path}.request_mirror_policies[{i}]"), clusters)
            })
            .collect::<Result<_, _>>()?,
    })
}

/// Clusters with weights, picked per request in a fixed interleaved order,
/// so any window of `total` consecutive picks has each cluster exactly its
/// weight's share (a 50/50 split alternates).
#[derive(Debug)]
pub struct WeightedSchedule {
    /// The clusters it picks from, in the order written.
    pub clusters: Vec<Target>,
    order: Vec<u16>,
    next: AtomicUsize,
}

/// A cluster a route or TCP proxy names.
#[derive(Debug)]
pub struct Target {
    /// The name written.
    pub name: String,
    /// The cluster, resolved when the configuration was built (`None`:
    /// named but not configured; requests get 503, as in Envoy).
    pub cluster: Option<Arc<Cluster>>,
}

/// Longest schedule kept; weights are reduced by their common divisor first.
const MAX_SCHEDULE: u64 = 10_000;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl WeightedSchedule {
    /// Builds the schedule of `(cluster, weight)` entries.
    pub fn new(
        entries: &[(String, u32)],
        clusters: &HashMap<String, Arc<Cluster>>,
        path: &str,
    ) -> Result<WeightedSchedule, FieldError> {
        if entries.is_empty() || entries.len() > u16::MAX as usize {
            return Err(err(path, "between 1 and 65535 clusters are required"));
        }
        let g = entries.iter().fold(0u64, |g, (_, w)| gcd(g, u64::from(*w)));
        if g == 0 {
            return Err(err(path, "at least one cluster needs a weight above 0"));
        }
        let weights: Vec<u64> = entries.iter().map(|(_, w)| u64::from(*w) / g).collect();
        let total: u64 = weights.iter().sum();
        if total > MAX_SCHEDULE {
            return Err(err(
                path,
                format!(
                    "weights reduce to a total of {total}; at most {MAX_SCHEDULE} is supported"
                ),
            ));
        }
        // Smooth weighted round robin: exact shares, evenly spread.
        let mut current = vec![0i64; weights.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += *w as i64;
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
                .expect("non-empty");
            current[best] -= total as i64;
            order.push(best as u16);
        }
        Ok(WeightedSchedule {
            clusters: entries
                .iter()
                .map(|(n, _)| Target {
                    name: n.clone(),
                    cluster: clusters.get(n).cloned(),
                })
                .collect(),
            order,
            next: AtomicUsize::new(0),
        })
    }

    /// The next cluster.
    pub fn pick(&self) -> &Target {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.order.len();
        &self.clusters[self.order[i] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &WeightedSchedule, n: usize) -> Vec<String> {
        (0..n).map(|_| s.pick().name.clone()).collect()
    }

    #[test]
    fn schedules_are_exact_and_interleaved() {
        let none = HashMap::new();
        let s = WeightedSchedule::new(&[("a".into(), 50), ("b".into(), 50)], &none, "p").unwrap();
        assert_eq!(names(&s, 4), ["a", "b", "a", "b"]);
        let s = WeightedSchedule::new(&[("a".into(), 90), ("b".into(), 10)], &none, "p").unwrap();
        let picks = names(&s, 1000);
        assert_eq!(picks.iter().filter(|n| *n == "b").count(), 100);
        let s = WeightedSchedule::new(&[("a".into(), 0), ("b".into(), 100)], &none, "p").unwrap();
        assert!(names(&s, 10).iter().all(|n| n == "b"));
        assert!(WeightedSchedule::new(&[("a".into(), 0)], &none, "p").is_err());
    }
}
