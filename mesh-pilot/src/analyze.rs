//! What `meshctl analyze` reports: rules that cannot do what they say with
//! the services and workloads pilot knows (a destination no service has, a
//! version no workload carries, a source service that does not exist), and
//! fields of stored rules the mesh does not act on (stored before such
//! rules were refused at write time).

use mesh_rules::registry::{Registry, Service, labels_match};
use mesh_rules::rules::IstioService;
use mesh_rules::{FieldPath, Rule, Spec};
use serde::Serialize;

/// One thing found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule (`route-rule/default/name`).
    pub rule: String,
    /// The field at fault.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// How findings name a rule: one converted from today's kinds as its
/// source.
fn reported_name(rule: &Rule) -> String {
    match converted_from(rule) {
        Some(from) => format!("{from} (as {})", rule.key()),
        None => rule.key().to_string(),
    }
}

/// The rule of today's kinds `rule` was converted from, if any.
fn converted_from(rule: &Rule) -> Option<&String> {
    rule.metadata
        .annotations
        .get(mesh_rules::convert::FROM_ANNOTATION)
}

/// What mutual TLS policies would do that their authors may not want:
/// PeerAuthentications while mutual TLS is off (they do nothing), and
/// STRICT workloads that callers without a sidecar (plaintext only) can no
/// longer reach.
pub fn security(world: &crate::world::World) -> Vec<Finding> {
    use mesh_rules::rules::security::{MtlsMode, PeerAuthentication, ROOT_NAMESPACE};
    let mut out = Vec::new();
    let plaintext: Vec<String> = world
        .registry
        .workloads
        .iter()
        .filter(|w| !world.sidecars.contains(&(w.namespace.clone(), w.address)))
        .map(|w| format!("{}/{} ({})", w.namespace, w.name, w.address))
        .collect();
    let covers =
        |ns: &str, p: &PeerAuthentication, w: &mesh_rules::registry::Workload| match &p.selector {
            None => ns == ROOT_NAMESPACE || ns == w.namespace,
            Some(s) => ns == w.namespace && labels_match(&s.match_labels, &w.labels),
        };
    for rule in world.rules.iter() {
        let Spec::PeerAuthentication(p) = &rule.spec else {
            continue;
        };
        let finding = |path: FieldPath, message: String| Finding {
            rule: reported_name(rule),
            path: path.to_string(),
            message,
        };
        let spec = FieldPath::root().key("spec");
        if world.mesh.mtls.is_none() {
            out.push(finding(
                spec.key("mtls"),
                "mutual TLS is off (pilot runs without --mtls and a CA): this policy does nothing"
                    .into(),
            ));
            continue;
        }
        let strict = p.mtls.as_ref().is_some_and(|m| m.mode == MtlsMode::Strict)
            || p.port_level_mtls
                .values()
                .any(|m| m.mode == MtlsMode::Strict);
        let ns = rule.metadata.namespace();
        let cut: Vec<String> = world
            .registry
            .workloads
            .iter()
            .filter(|w| {
                world.sidecars.contains(&(w.namespace.clone(), w.address)) && covers(ns, p, w)
            })
            .map(|w| format!("{}/{}", w.namespace, w.name))
            .collect();
        if strict && !cut.is_empty() && !plaintext.is_empty() {
            out.push(finding(
                spec.key("mtls").key("mode"),
                format!(
                    "STRICT for {}: callers without a sidecar ({}) speak plaintext only and will be refused",
                    cut.join(", "),
                    plaintext.join(", ")
                ),
            ));
        }
    }
    out
}

/// Everything wrong with `rules` against `registry`, rule by rule.
pub fn analyze(registry: &Registry, rules: &[Rule], domain: &str) -> Vec<Finding> {
    let mut out = gateway_routes(rules);
    for rule in rules {
        let key = reported_name(rule);
        let mut found = |path: FieldPath, message: String| {
            out.push(Finding {
                rule: key.clone(),
                path: path.to_string(),
                message,
            })
        };
        for p in mesh_rules::support::unsupported(&rule.spec) {
            found(
                p.path,
                format!("{} (stored earlier; pilot does not act on it)", p.message),
            );
        }
        let ns = rule.metadata.namespace();
        let spec = FieldPath::root().key("spec");
        let service =
            |s: &IstioService, at: FieldPath, found: &mut dyn FnMut(FieldPath, String)| {
                let host = s.host(ns)?;
                let svc = registry
                    .services
                    .iter()
                    .find(|svc| svc.host(domain) == host);
                if svc.is_none() {
                    found(at, format!("no service {} is known", host.as_str()));
                }
                svc
            };
        match &rule.spec {
            Spec::RouteRule(r) => {
                // At a gateway the destination is a host callers use, not a service.
                let svc = match r.at_gateways {
                    Some(_) => None,
                    None => service(&r.destination, spec.key("destination"), &mut found),
                };
                for (i, d) in r.route.iter().enumerate() {
                    if let Some(other) = &d.destination {
                        let at = spec.key("route").index(i).key("destination");
                        service(other, at, &mut found);
                        continue;
                    }
                    if let Some(svc) = svc {
                        versions(
                            registry,
                            svc,
                            &d.labels,
                            spec.key("route").index(i),
                            &mut found,
                        );
                    }
                }
                if let Some(src) = r.match_.as_ref().and_then(|m| m.source.as_ref())
                    && src.name.is_some()
                {
                    let at = spec.key("match").key("source");
                    service(src, at, &mut found);
                }
            }
            Spec::DestinationPolicy(p) => {
                if let Some(svc) = service(&p.destination, spec.key("destination"), &mut found) {
                    let at = spec.key("destination");
                    versions(registry, svc, &p.destination.labels, at, &mut found);
                }
            }
            // Today's kinds reach pilot expanded into these (world.rs).
            Spec::EgressRule(_)
            | Spec::VirtualService(_)
            | Spec::DestinationRule(_)
            | Spec::ServiceEntry(_)
            | Spec::HttpRoute(_)
            | Spec::PeerAuthentication(_)
            | Spec::AuthorizationPolicy(_)
            | Spec::Sidecar(_)
            | Spec::Gateway(_) => {}
        }
    }
    out
}

/// Routes bound to a Gateway that does not exist, or for a host none of
/// its servers serves: calls for that host get nothing there (404). One
/// finding per VirtualService, not per route it became.
fn gateway_routes(rules: &[Rule]) -> Vec<Finding> {
    let gateways: Vec<(&Rule, &mesh_rules::rules::ingress::Gateway)> = rules
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Gateway(g) => Some((r, &**g)),
            _ => None,
        })
        .collect();
    let mut out: Vec<Finding> = Vec::new();
    for rule in rules {
        let Spec::RouteRule(r) = &rule.spec else {
            continue;
        };
        let Some(at) = &r.at_gateways else { continue };
        let ns = rule.metadata.namespace();
        for (gns, gname) in &at.gateways {
            let found = gateways
                .iter()
                .find(|(g, _)| g.metadata.namespace() == gns && g.metadata.name == *gname);
            let message = match found {
                None => format!(
                    "no Gateway {gns}/{gname}: calls for {} are not routed there",
                    at.host
                ),
                Some((_, g)) if !g.servers.iter().any(|s| s.serves(gns, ns, &at.host)) => format!(
                    "Gateway {gns}/{gname} serves no host matching {}: its calls there get 404",
                    at.host
                ),
                Some(_) => continue,
            };
            let finding = Finding {
                rule: converted_from(rule).map_or_else(|| rule.key().to_string(), Clone::clone),
                path: FieldPath::root().key("spec").key("gateways").to_string(),
                message,
            };
            if !out.contains(&finding) {
                out.push(finding);
            }
        }
    }
    out
}

/// Reports labels that no workload of `svc` carries.
fn versions(
    registry: &Registry,
    svc: &Service,
    labels: &std::collections::BTreeMap<String, String>,
    at: FieldPath,
    found: &mut dyn FnMut(FieldPath, String),
) {
    if labels.is_empty()
        || registry
            .endpoints(svc)
            .any(|w| labels_match(labels, &w.labels))
    {
        return;
    }
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    found(
        at.key("labels"),
        format!(
            "no workload of {}.{} has {}: this subset gets no traffic",
            svc.name,
            svc.namespace,
            want.join(",")
        ),
    );
}
