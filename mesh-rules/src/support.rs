//! What the mesh acts on today. The rule kinds carry Istio 0.4's whole
//! schema, so every file its users wrote parses; but a field that parses
//! and then does nothing is worse than an error. [`unsupported`] names
//! every set field that translation does not act on yet: [`crate::load()`]
//! refuses a rule with one ("not supported yet", with its place), and
//! pilot warns about any in a rule stored before it was refused.
//!
//! Keep this in step with the translator: a field leaves this list in the
//! change that makes it act.

use crate::error::FieldError;
use crate::path::FieldPath;
use crate::rules::{DestinationPolicy, EgressRule, HttpFaultInjection, IstioService, RouteRule};
use crate::{Spec, registry};

/// Refuses each field of `fields` (name, whether set, what it is) that is set.
pub(crate) fn refuse_set(out: &mut Vec<FieldError>, at: &FieldPath, fields: &[(&str, bool, &str)]) {
    for (name, set, what) in fields {
        if *set {
            refuse(out, at.key(*name), what);
        }
    }
}

pub(crate) fn refuse(out: &mut Vec<FieldError>, path: FieldPath, what: &str) {
    out.push(FieldError::at_key(
        path,
        format!("not supported yet: {what}; the rule is refused rather than stored and ignored"),
    ));
}

/// Every set field of `spec` that the mesh would store and not act on, with
/// its path from the document root.
pub fn unsupported(spec: &Spec) -> Vec<FieldError> {
    let mut out = Vec::new();
    let root = FieldPath::root().key("spec");
    match spec {
        Spec::RouteRule(r) => route_rule(&mut out, &root, r),
        Spec::DestinationPolicy(p) => destination_policy(&mut out, &root, p),
        Spec::EgressRule(e) => egress_rule(&mut out, &root, e),
        Spec::VirtualService(v) => crate::support_networking::virtual_service(&mut out, &root, v),
        Spec::DestinationRule(d) => crate::support_networking::destination_rule(&mut out, &root, d),
        Spec::ServiceEntry(e) => crate::support_networking::service_entry(&mut out, &root, e),
        Spec::HttpRoute(r) => crate::support_networking::http_route_gamma(&mut out, &root, r),
        Spec::PeerAuthentication(_) => {}
        Spec::AuthorizationPolicy(a) => authorization_policy(&mut out, &root, a),
        Spec::Sidecar(s) => sidecar(&mut out, &root, s),
        Spec::Gateway(g) => gateway(&mut out, &root, g),
    }
    out
}

fn route_rule(out: &mut Vec<FieldError>, root: &FieldPath, r: &RouteRule) {
    if r.l4_fault.is_some() {
        refuse(out, root.key("l4Fault"), "TCP fault injection");
    }
    // Copies go to a version of the destination, or to the whole of
    // another service.
    if let Some(m) = &r.mirror {
        let rule_ns = "";
        if m.host(rule_ns) != r.destination.host(rule_ns) && !m.labels.is_empty() {
            let what = "mirroring to a version of another service (mirror to the whole service, or to versions of the destination)";
            refuse(out, root.key("mirror").key("labels"), what);
        }
    }
    if let Some(f) = &r.http_fault {
        http_fault(out, &root.key("httpFault"), f);
    }
    if !r.destination.labels.is_empty() {
        let what = "labels on a route rule's destination (route versions with `route[].labels`)";
        refuse(out, root.key("destination").key("labels"), what);
    }
    if let Some(m) = &r.match_ {
        let at = root.key("match");
        if m.tcp.is_some() {
            refuse(out, at.key("tcp"), "matching TCP subnets");
        }
        if m.udp.is_some() {
            refuse(out, at.key("udp"), "matching UDP subnets");
        }
        if let Some(src) = &m.source {
            source(out, &at.key("source"), src);
        }
    }
    for (i, d) in r.route.iter().enumerate() {
        if d.destination.is_some() && !d.labels.is_empty() {
            let what = "routing to a version of another service (route to the whole service, or to versions of the destination)";
            refuse(out, root.key("route").index(i).key("labels"), what);
        }
    }
    let overrides = [
        (
            "httpReqTimeout",
            "simpleTimeout",
            r.http_req_timeout
                .as_ref()
                .and_then(|t| t.simple_timeout.override_header_name.as_ref()),
            "timeouts set by a request header",
        ),
        (
            "httpReqRetries",
            "simpleRetry",
            r.http_req_retries
                .as_ref()
                .and_then(|t| t.simple_retry.override_header_name.as_ref()),
            "retries set by a request header",
        ),
    ];
    for (field, policy, header, what) in overrides {
        if header.is_some() {
            let at = root.key(field).key(policy).key("overrideHeaderName");
            refuse(out, at, what);
        }
    }
}

/// The parts of `httpFault` that do not act yet.
fn http_fault(out: &mut Vec<FieldError>, at: &FieldPath, f: &HttpFaultInjection) {
    if let Some(d) = &f.delay {
        if d.exponential_delay.is_some() {
            refuse(
                out,
                at.key("delay").key("exponentialDelay"),
                "exponential delays",
            );
        }
        if d.override_header_name.is_some() {
            let what = "delays set by a request header";
            refuse(out, at.key("delay").key("overrideHeaderName"), what);
        }
    }
    if let Some(a) = &f.abort {
        refuse_set(
            out,
            &at.key("abort"),
            &[
                (
                    "grpcStatus",
                    a.grpc_status.is_some(),
                    "aborts with a gRPC status",
                ),
                (
                    "http2Error",
                    a.http2_error.is_some(),
                    "aborts with an HTTP/2 error",
                ),
                (
                    "overrideHeaderName",
                    a.override_header_name.is_some(),
                    "aborts set by a request header",
                ),
            ],
        );
    }
}

/// A rule's source: by namespace, labels and service name (the services
/// whose selector takes the calling workload).
fn source(out: &mut Vec<FieldError>, at: &FieldPath, s: &IstioService) {
    if s.service.is_some() {
        refuse(out, at.key("service"), "a source by host name (use `name`)");
    }
    if s.domain
        .as_deref()
        .is_some_and(|d| d != registry::DEFAULT_DOMAIN)
    {
        refuse(out, at.key("domain"), "a source in another DNS domain");
    }
}

fn destination_policy(out: &mut Vec<FieldError>, root: &FieldPath, p: &DestinationPolicy) {
    if p.source.is_some() {
        refuse(
            out,
            root.key("source"),
            "destination policies for one source",
        );
    }
}

fn egress_rule(out: &mut Vec<FieldError>, root: &FieldPath, e: &EgressRule) {
    if e.use_egress_proxy {
        refuse(out, root.key("useEgressProxy"), "an egress proxy");
    }
    let tcp = e
        .ports
        .iter()
        .any(|p| p.protocol().is_some_and(|p| !p.is_http()));
    if !e.endpoints.is_empty() && tcp {
        let what = "static endpoints for TCP ports (HTTP ports take them)";
        refuse(out, root.key("endpoints"), what);
    }
    let host = e.destination.service.as_deref().unwrap_or_default();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return;
    }
    // A name or a subnet: HTTP finds the host in the request; TCP would
    // need the destination matched by subnet or SNI.
    for (i, p) in e.ports.iter().enumerate() {
        if p.protocol().is_some_and(|proto| !proto.is_http()) {
            let what = "TCP egress to a host name or subnet (give an IP address, or an HTTP port)";
            refuse(out, root.key("ports").index(i).key("protocol"), what);
        }
    }
}

fn authorization_policy(
    out: &mut Vec<FieldError>,
    root: &FieldPath,
    a: &crate::rules::security::AuthorizationPolicy,
) {
    use crate::rules::security::Action;
    if a.action == Action::Custom {
        refuse(out, root.key("action"), "CUSTOM (external authorizers)");
    }
    refuse_set(
        out,
        root,
        &[
            ("provider", a.provider.is_some(), "external authorizers"),
            ("targetRef", a.target_ref.is_some(), "Gateway API targets"),
            ("targetRefs", a.target_refs.is_some(), "Gateway API targets"),
        ],
    );
    for (i, rule) in a.rules.iter().enumerate() {
        for (j, from) in rule.from.iter().enumerate() {
            let at = root
                .key("rules")
                .index(i)
                .key("from")
                .index(j)
                .key("source");
            let s = &from.source;
            let what = "callers by address or end-user token";
            refuse_set(
                out,
                &at,
                &[
                    ("requestPrincipals", s.request_principals.is_some(), what),
                    (
                        "notRequestPrincipals",
                        s.not_request_principals.is_some(),
                        what,
                    ),
                    ("ipBlocks", s.ip_blocks.is_some(), what),
                    ("notIpBlocks", s.not_ip_blocks.is_some(), what),
                    ("remoteIpBlocks", s.remote_ip_blocks.is_some(), what),
                    ("notRemoteIpBlocks", s.not_remote_ip_blocks.is_some(), what),
                ],
            );
        }
    }
}

/// The Sidecar's fields beyond one list of hosts and the outbound mode.
fn gateway(out: &mut Vec<FieldError>, root: &FieldPath, g: &crate::rules::ingress::Gateway) {
    for (i, s) in g.servers.iter().enumerate() {
        let at = root.key("servers").index(i);
        if s.port.protocol().is_some_and(|p| !p.is_http()) {
            refuse(
                out,
                at.key("port").key("protocol"),
                "HTTPS and TCP servers (HTTP, HTTP2 and GRPC are served)",
            );
        }
        refuse_set(
            out,
            &at,
            &[
                ("tls", s.tls.is_some(), "TLS at the gateway"),
                ("bind", s.bind.is_some(), "binding one address"),
                (
                    "defaultEndpoint",
                    s.default_endpoint.is_some(),
                    "a default endpoint",
                ),
                ("name", s.name.is_some(), "naming a server"),
            ],
        );
        refuse_set(
            out,
            &at.key("port"),
            &[(
                "targetPort",
                s.port.target_port.is_some(),
                "a target port (the proxy listens on `number`)",
            )],
        );
    }
}

fn sidecar(out: &mut Vec<FieldError>, root: &FieldPath, s: &crate::rules::sidecar::Sidecar) {
    refuse_set(
        out,
        root,
        &[
            ("ingress", s.ingress.is_some(), "inbound listeners"),
            (
                "inboundConnectionPool",
                s.inbound_connection_pool.is_some(),
                "inbound connection pool settings",
            ),
        ],
    );
    if let Some(p) = &s.outbound_traffic_policy {
        let at = root.key("outboundTrafficPolicy");
        refuse_set(
            out,
            &at,
            &[("egressProxy", p.egress_proxy.is_some(), "an egress proxy")],
        );
    }
    for (i, e) in s.egress.iter().enumerate() {
        let at = root.key("egress").index(i);
        refuse_set(
            out,
            &at,
            &[
                ("port", e.port.is_some(), "egress listeners for one port"),
                (
                    "bind",
                    e.bind.is_some(),
                    "the address an egress listener binds",
                ),
                (
                    "captureMode",
                    e.capture_mode.is_some(),
                    "capture mode per listener",
                ),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::{Source, load};

    fn errors(spec: &str) -> String {
        let text = format!(
            "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata:\n  name: r\nspec:\n  destination:\n    name: svcb\n{spec}"
        );
        match load(&[Source {
            name: "r.yaml",
            text: &text,
        }]) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn fields_not_acted_on_are_refused_with_their_place() {
        let e = errors("  httpFault:\n    abort: {percent: 10, grpcStatus: UNAVAILABLE}\n");
        assert_eq!(
            e,
            "r.yaml:9:26: document 1: spec.httpFault.abort.grpcStatus: not supported yet: aborts with a gRPC status; the rule is refused rather than stored and ignored"
        );
        // Delays and HTTP aborts act.
        let faults = "  httpFault:\n    delay: {percent: 10, fixedDelay: 1s}\n    abort: {percent: 10, httpStatus: 503}\n";
        assert_eq!(errors(faults), "");
        // Another service as a whole acts; a version of it does not.
        assert_eq!(
            errors("  route:\n  - destination: {name: other}\n    weight: 100\n"),
            ""
        );
        let e = errors(
            "  route:\n  - destination: {name: other}\n    labels: {version: v1}\n    weight: 100\n",
        );
        assert!(e.contains("spec.route[0].labels: not supported yet"), "{e}");
        // What acts is accepted.
        let ok = "  precedence: 2\n  match:\n    source: {name: svca, labels: {version: v1}}\n  route:\n  - labels: {version: v0.2}\n  httpReqRetries:\n    simpleRetry: {attempts: 3, perTryTimeout: 1s}\n  appendHeaders: {x-a: b}\n";
        assert_eq!(errors(ok), "");
    }
}
