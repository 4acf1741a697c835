//! Translation golden tests: the seed's registry and rules for the svca and
//! svcb proxies, as xDS JSON reviewed once and compared ever after (set
//! `MESH_BLESS=1` to rewrite after a deliberate change). Every translation is
//! also applied by mesh-proxy and validated by a real Envoy.

use std::path::{Path, PathBuf};

use mesh_pilot::translate::{
    AccessLogEncoding, Inputs, MeshConfig, ProxyKind, ProxyNode, Resources, TRACE_CLUSTER,
    TraceProtocol, TracingConfig, translate,
};
use mesh_proto::envoy::config::bootstrap::v3::{Bootstrap, bootstrap::StaticResources};
use mesh_rules::{Rule, Source, load};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn registry() -> mesh_rules::registry::Registry {
    let path = repo().join("samples/registries/istio-0.4-walk.yaml");
    mesh_pilot::registry::from_yaml("registry.yaml", &std::fs::read_to_string(path).unwrap())
        .unwrap()
}

fn rules(files: &[&str]) -> Vec<Rule> {
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            (
                f.to_string(),
                // The seed's files by name, others by their path under samples/.
                std::fs::read_to_string(if f.contains('/') {
                    repo().join("samples").join(f)
                } else {
                    repo().join("samples/istio-0.4-walk").join(f)
                })
                .unwrap(),
            )
        })
        .collect();
    let sources: Vec<Source<'_>> = texts
        .iter()
        .map(|(n, t)| Source { name: n, text: t })
        .collect();
    load(&sources)
        .unwrap()
        .rules
        .into_iter()
        .map(|r| r.value)
        .collect()
}

fn node(ip: &str, app: &str, version: &str) -> ProxyNode {
    ProxyNode {
        namespace: "default".into(),
        ip: Some(ip.parse().unwrap()),
        labels: [
            ("app".to_owned(), app.to_owned()),
            ("version".to_owned(), version.to_owned()),
        ]
        .into(),
        interception: Default::default(),
        kind: ProxyKind::MeshProxy,
    }
}

/// The same configuration as a static bootstrap (routes inline, endpoints
/// in their clusters), which Envoy validates without a control plane.
fn bootstrap(r: &Resources) -> Bootstrap {
    use mesh_proto::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    use mesh_proto::envoy::config::listener::v3::filter::ConfigType;
    use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_connection_manager::RouteSpecifier,
    };
    use prost::Message;
    let mut listeners = r.listeners.clone();
    for f in listeners
        .iter_mut()
        .flat_map(|l| &mut l.filter_chains)
        .flat_map(|c| &mut c.filters)
    {
        let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
            continue;
        };
        let Ok(mut m) = HttpConnectionManager::decode(any.value.as_slice()) else {
            continue;
        };
        if let Some(RouteSpecifier::Rds(rds)) = &m.route_specifier {
            let rc = r.routes.iter().find(|rc| rc.name == rds.route_config_name);
            let rc = rc.unwrap_or_else(|| panic!("no RDS {}", rds.route_config_name));
            m.route_specifier = Some(RouteSpecifier::RouteConfig(rc.clone()));
            any.value = m.encode_to_vec();
        }
    }
    let mut clusters = r.clusters.clone();
    for c in &mut clusters {
        if let Some(la) = r.endpoints.iter().find(|e| e.cluster_name == c.name) {
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            c.eds_cluster_config = None;
            c.load_assignment = Some(la.clone());
        }
    }
    Bootstrap {
        static_resources: Some(StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Translates, compares with the golden file, and checks that mesh-proxy
/// applies the result.
fn golden(name: &str, files: &[&str], node: &ProxyNode) -> Resources {
    golden_in(name, &registry(), files, node)
}

/// [`golden`] over another registry.
fn golden_in(
    name: &str,
    registry: &mesh_rules::registry::Registry,
    files: &[&str],
    node: &ProxyNode,
) -> Resources {
    golden_with(name, registry, files, node, &MeshConfig::default())
}

/// [`golden_in`] with other mesh settings. mesh-proxy must apply what
/// pilot sends a mesh-proxy node (an Envoy node's configuration is Envoy's
/// to judge, in `envoy_accepts_every_translation`).
fn golden_with(
    name: &str,
    registry: &mesh_rules::registry::Registry,
    files: &[&str],
    node: &ProxyNode,
    mesh: &MeshConfig,
) -> Resources {
    golden_of(name, registry, rules(files), node, mesh)
}

/// [`golden_with`] for rules already read (and expanded).
fn golden_of(
    name: &str,
    registry: &mesh_rules::registry::Registry,
    rules: Vec<Rule>,
    node: &ProxyNode,
    mesh: &MeshConfig,
) -> Resources {
    mesh_proto::descriptors::keep_loaded(mesh_proto::descriptors::Schema::Xds);
    let registry = registry.clone();
    let out = translate(
        &Inputs {
            registry: &registry,
            rules: &rules,
            mesh,
        },
        node,
    );
    let json = xds_json(&out) + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.json"));
    if std::env::var_os("MESH_BLESS").is_some() {
        std::fs::write(&path, &json).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MESH_BLESS=1 creates it)", path.display()));
    assert_eq!(json, expected, "{name} differs from its golden file");
    // pilot serves the same thing in two parts, the outbound part shared by
    // every proxy with the same outbound key and the proxy's own inbound:
    // no resource is in both.
    let inputs = Inputs {
        registry: &registry,
        rules: &rules,
        mesh,
    };
    let index = mesh_pilot::translate::Index::of(&inputs);
    let (outbound, inbound) = (
        mesh_pilot::translate::translate_outbound(&inputs, &index, node),
        mesh_pilot::translate::translate_inbound(&inputs, &index, node),
    );
    let names = |r: &Resources| -> std::collections::BTreeSet<String> {
        r.listeners
            .iter()
            .map(|l| format!("LDS {}", l.name))
            .chain(r.routes.iter().map(|x| format!("RDS {}", x.name)))
            .chain(r.clusters.iter().map(|c| format!("CDS {}", c.name)))
            .chain(
                r.endpoints
                    .iter()
                    .map(|e| format!("EDS {}", e.cluster_name)),
            )
            .collect()
    };
    let both: Vec<_> = names(&outbound)
        .intersection(&names(&inbound))
        .cloned()
        .collect();
    assert!(both.is_empty(), "{name}: in both parts: {both:?}");
    if node.kind == ProxyKind::Envoy {
        return out;
    }
    // mesh-proxy applies it as pilot sends it (RDS, EDS) and as a file.
    let xds = mesh_proxy::config::Resources {
        listeners: out.listeners.clone(),
        clusters: out.clusters.clone(),
        routes: out.routes.clone(),
        endpoints: out.endpoints.clone(),
    };
    mesh_proxy::config::Snapshot::from_xds("1", xds, None)
        .unwrap_or_else(|e| panic!("{name}: mesh-proxy refuses it over xDS: {e}"));
    mesh_proxy::config::Snapshot::from_bootstrap(&bootstrap(&out), None)
        .unwrap_or_else(|e| panic!("{name}: mesh-proxy refuses: {e}"));
    out
}

const SVCA: (&str, &str, &str) = ("10.250.0.2", "svca", "v0.1");

#[test]
fn no_rules() {
    let n = node(SVCA.0, SVCA.1, SVCA.2);
    let r = golden("svca-no-rules", &[], &n);
    let names: Vec<_> = r.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "virtualOutbound",
            "virtualInbound",
            "0.0.0.0_80",
            "10.250.0.2_8080"
        ]
    );
}

#[test]
fn egress_rule() {
    golden(
        "svca-egress",
        &["enable-svcb-engress-rule.yaml"],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
}

#[test]
fn route_rule_50_50() {
    let r = golden(
        "svca-route-50",
        &["route-rules-svcb-v0.2-50.yaml"],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    let clusters: Vec<_> = r.clusters.iter().map(|c| c.name.as_str()).collect();
    assert!(
        clusters.contains(&"outbound|80|v0.1|svcb.default.svc.cluster.local"),
        "{clusters:?}"
    );
    assert!(
        clusters.contains(&"outbound|80|v0.2|svcb.default.svc.cluster.local"),
        "{clusters:?}"
    );
}

/// Every route of every route configuration.
fn all_routes(r: &Resources) -> impl Iterator<Item = &mesh_proto::envoy::config::route::v3::Route> {
    r.routes
        .iter()
        .flat_map(|rc| &rc.virtual_hosts)
        .flat_map(|vh| &vh.routes)
}

/// How many routes configure HTTP filter `filter` for themselves.
fn routes_configuring(r: &Resources, filter: &str) -> usize {
    all_routes(r)
        .filter(|route| route.typed_per_filter_config.contains_key(filter))
        .count()
}

/// A redirect rule: the caller's sidecar answers 301 itself (Envoy
/// validates the golden file like every other).
#[test]
fn redirect_rule() {
    let r = golden(
        "svca-redirect",
        &["rules/redirect-svcb-old.yaml"],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    let redirect = all_routes(&r)
        .find_map(|route| match &route.action {
            Some(mesh_proto::envoy::config::route::v3::route::Action::Redirect(to)) => Some(to),
            _ => None,
        })
        .expect("a redirect route");
    assert!(
        matches!(
            &redirect.path_rewrite_specifier,
            Some(mesh_proto::envoy::config::route::v3::redirect_action::PathRewriteSpecifier::PathRedirect(p)) if p == "/new"
        ),
        "{redirect:?}"
    );
}

/// Fault injection: the fault filter before the router, the rule's delay
/// and abort on its route (mesh-proxy applies it; Envoy validates it).
#[test]
fn fault_rule() {
    let r = golden(
        "svca-fault",
        &["rules/fault-svcb-v0.2.yaml"],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    assert_eq!(routes_configuring(&r, "envoy.filters.http.fault"), 1);
}

/// DestinationPolicy `loadBalancing` for one version: that version's
/// cluster balances by least request, the others keep round robin.
#[test]
fn load_balancing_per_version() {
    use mesh_proto::envoy::config::cluster::v3::cluster::LbPolicy;
    let r = golden(
        "svca-lb",
        &["route-rules-svcb-v0.2-50.yaml", "rules/lb-svcb-v0.2.yaml"],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    let lb = |name: &str| {
        let c = r.clusters.iter().find(|c| c.name == name).unwrap();
        LbPolicy::try_from(c.lb_policy).unwrap()
    };
    assert_eq!(
        lb("outbound|80|v0.2|svcb.default.svc.cluster.local"),
        LbPolicy::LeastRequest
    );
    assert_eq!(
        lb("outbound|80|v0.1|svcb.default.svc.cluster.local"),
        LbPolicy::RoundRobin
    );
}

/// DestinationPolicy `circuitBreaker.simpleCb` on every version's cluster:
/// one DEFAULT threshold, consecutive-5xx outlier detection (success-rate
/// ejection off), requests per connection in the HTTP protocol options.
#[test]
fn circuit_breaker_on_every_version() {
    use mesh_proto::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use prost::Message;
    let r = golden(
        "svca-circuit-breaker",
        &[
            "route-rules-svcb-v0.2-50.yaml",
            "rules/circuit-breaker-svcb.yaml",
        ],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    for version in ["v0.1", "v0.2"] {
        let name = format!("outbound|80|{version}|svcb.default.svc.cluster.local");
        let c = r.clusters.iter().find(|c| c.name == name).unwrap();
        let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
        let limits = [
            t.max_connections,
            t.max_pending_requests,
            t.max_requests,
            t.max_retries,
        ];
        assert_eq!(
            limits.map(|v| v.unwrap().value),
            [100, 10, 100, 3],
            "{name}"
        );
        let o = c.outlier_detection.as_ref().unwrap();
        assert_eq!(o.consecutive_5xx.unwrap().value, 3);
        assert_eq!(o.base_ejection_time.unwrap().seconds, 30);
        assert_eq!(o.interval.unwrap().seconds, 1);
        assert_eq!(o.max_ejection_percent.unwrap().value, 50);
        assert_eq!(o.enforcing_success_rate.unwrap().value, 0);
        let options = &c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        let options = HttpProtocolOptions::decode(options.value.as_slice()).unwrap();
        let common = options.common_http_protocol_options.unwrap();
        assert_eq!(common.max_requests_per_connection.unwrap().value, 50);
    }
}

/// A mirror to a version of the destination: the rule's route copies to
/// that version's cluster, which exists though no route sends to it.
#[test]
fn mirror_rule() {
    use mesh_proto::envoy::config::route::v3::route::Action;
    let r = golden(
        "svca-mirror",
        &["rules/mirror-svcb-v0.2.yaml"],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    let v2 = "outbound|80|v0.2|svcb.default.svc.cluster.local";
    let mirrors: Vec<&str> = all_routes(&r)
        .filter_map(|route| match &route.action {
            Some(Action::Route(a)) => Some(a),
            _ => None,
        })
        .flat_map(|a| a.request_mirror_policies.iter().map(|m| m.cluster.as_str()))
        .collect();
    assert_eq!(mirrors, [v2]);
    assert!(r.clusters.iter().any(|c| c.name == v2));
}

/// Rate limits: a RouteRule's on the caller's route to svcb (the filter
/// in svca's outbound chain), a DestinationPolicy's on the inbound route
/// of the version it names (svcb v0.2's sidecar) and nowhere else.
#[test]
fn rate_limits_on_the_caller_and_on_the_destination() {
    use mesh_proto::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use prost::Message;
    const FILTER: &str = "envoy.filters.http.local_ratelimit";
    let files = ["rules/rate-limit-svcb.yaml"];
    let caller = golden("svca-rate-limit", &files, &node(SVCA.0, SVCA.1, SVCA.2));
    let limited: Vec<_> = all_routes(&caller)
        .filter_map(|route| route.typed_per_filter_config.get(FILTER))
        .map(|any| LocalRateLimit::decode(any.value.as_slice()).unwrap())
        .collect();
    assert_eq!(limited.len(), 1, "the rule's one route");
    let bucket = limited[0].token_bucket.as_ref().unwrap();
    assert_eq!(
        (bucket.max_tokens, bucket.tokens_per_fill.unwrap().value),
        (200, 100)
    );
    let header = limited[0].response_headers_to_add[0]
        .header
        .as_ref()
        .unwrap();
    assert_eq!(
        (header.key.as_str(), header.value.as_str()),
        ("retry-after", "1")
    );
    let v2 = golden(
        "svcb-v0.2-rate-limit",
        &files,
        &node("10.250.0.5", "svcb", "v0.2"),
    );
    let inbound: Vec<_> = v2
        .routes
        .iter()
        .filter(|rc| rc.name.starts_with("10.250.0.5_"))
        .flat_map(|rc| &rc.virtual_hosts)
        .flat_map(|vh| &vh.routes)
        .collect();
    assert!(!inbound.is_empty());
    for route in inbound {
        let any = &route.typed_per_filter_config[FILTER];
        let l = LocalRateLimit::decode(any.value.as_slice()).unwrap();
        let bucket = l.token_bucket.unwrap();
        assert_eq!(
            (bucket.max_tokens, bucket.fill_interval.unwrap().nanos),
            (50, 500_000_000)
        );
    }
    let v1 = golden_in(
        "svcb-v0.1-no-rate-limit",
        &registry(),
        &files,
        &node("10.250.0.3", "svcb", "v0.1"),
    );
    let inbound_limits = v1
        .routes
        .iter()
        .filter(|rc| rc.name.starts_with("10.250.0.3_"))
        .flat_map(|rc| &rc.virtual_hosts)
        .flat_map(|vh| &vh.routes)
        .filter(|route| route.typed_per_filter_config.contains_key(FILTER))
        .count();
    assert_eq!(inbound_limits, 0, "v0.1 is not limited");
}

/// A translation as the JSON the golden files hold.
fn xds_json(r: &Resources) -> String {
    serde_json::to_string_pretty(&mesh_proto::json::to_json(
        mesh_proto::descriptors::Schema::Xds,
        &bootstrap(r),
    ))
    .unwrap()
}

/// One scenario in Istio 0.4's kinds and in today's (VirtualService,
/// DestinationRule, ServiceEntry): the proxy gets the same configuration.
#[test]
fn todays_kinds_give_the_same_configuration_as_0_4_rules() {
    let n = node(SVCA.0, SVCA.1, SVCA.2);
    let old = golden("svca-scenario", &["rules/scenario-0.4.yaml"], &n);
    let today = rules(&["today/scenario.yaml"]);
    let expanded = mesh_rules::convert::expand(&today);
    let kinds: Vec<_> = expanded.iter().map(|r| r.kind().as_str()).collect();
    assert_eq!(
        kinds,
        ["RouteRule", "RouteRule", "DestinationPolicy", "EgressRule"],
        "{expanded:#?}"
    );
    let new = translate(
        &Inputs {
            registry: &registry(),
            rules: &expanded,
            mesh: &MeshConfig::default(),
        },
        &n,
    );
    assert_eq!(xds_json(&new), xds_json(&old));
}

/// Calls split between two Services (one per version), written as 0.4
/// RouteRules, as a VirtualService and as a Gateway API HTTPRoute: the
/// proxy gets the same configuration from each.
#[test]
fn a_split_between_services_is_the_same_in_three_apis() {
    let path = repo().join("samples/registries/svcb-versions.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let registry = mesh_pilot::registry::from_yaml("svcb-versions.yaml", &text).unwrap();
    let n = node(SVCA.0, SVCA.1, SVCA.2);
    let old = golden_in(
        "svca-split-services",
        &registry,
        &["rules/split-services-0.4.yaml"],
        &n,
    );
    for file in [
        "today/split-services.yaml",
        "gateway-api/split-services.yaml",
    ] {
        let expanded = mesh_rules::convert::expand(&rules(&[file]));
        let new = translate(
            &Inputs {
                registry: &registry,
                rules: &expanded,
                mesh: &MeshConfig::default(),
            },
            &n,
        );
        assert_eq!(xds_json(&new), xds_json(&old), "{file}");
    }
    let split = all_routes(&old)
        .filter_map(|r| match &r.action {
            Some(mesh_proto::envoy::config::route::v3::route::Action::Route(a)) => a.cluster_specifier.as_ref(),
            _ => None,
        })
        .find_map(|c| match c {
            mesh_proto::envoy::config::route::v3::route_action::ClusterSpecifier::WeightedClusters(w)
                if w.clusters.len() == 2 =>
            {
                Some(w)
            }
            _ => None,
        })
        .expect("a weighted route");
    let names: Vec<_> = split
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        names,
        [
            ("outbound|80||svcb-v1.default.svc.cluster.local", 80),
            ("outbound|80||svcb-v2.default.svc.cluster.local", 20)
        ]
    );
}

/// Session affinity: svcb's clusters hash on a ring, and every route to
/// them hashes the header.
#[test]
fn affinity_by_header() {
    use mesh_proto::envoy::config::cluster::v3::cluster::LbPolicy;
    use mesh_proto::envoy::config::route::v3::route;
    let r = golden(
        "svca-affinity",
        &["route-rules-svcb-v0.2-50.yaml", "rules/affinity-svcb.yaml"],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    let svcb: Vec<_> = r
        .clusters
        .iter()
        .filter(|c| c.name.ends_with("|svcb.default.svc.cluster.local"))
        .collect();
    assert_eq!(svcb.len(), 3, "the service and its two versions");
    assert!(
        svcb.iter()
            .all(|c| c.lb_policy == LbPolicy::RingHash as i32)
    );
    let hashed: Vec<_> = all_routes(&r)
        .filter_map(|rt| match &rt.action {
            Some(route::Action::Route(a)) => Some(a),
            _ => None,
        })
        .filter(|a| format!("{:?}", a.cluster_specifier).contains("svcb"))
        .map(|a| a.hash_policy.len())
        .collect();
    assert_eq!(hashed, [1, 1], "the rule's route and the default one");
}

/// Locality failover: with outlier detection on svcb, its endpoints come
/// in priorities by distance from the caller (svca in r1-a): its zone,
/// then its region, then the other region; without a policy, one level.
#[test]
fn endpoints_fail_over_by_locality() {
    let path = repo().join("samples/registries/svcb-zones.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let registry = mesh_pilot::registry::from_yaml("svcb-zones.yaml", &text).unwrap();
    let mut n = node(SVCA.0, SVCA.1, SVCA.2);
    n.labels
        .insert("topology.kubernetes.io/region".into(), "r1".into());
    n.labels
        .insert("topology.kubernetes.io/zone".into(), "r1-a".into());
    let r = golden_in(
        "svca-locality",
        &registry,
        &["rules/circuit-breaker-svcb.yaml"],
        &n,
    );
    let la = r
        .endpoints
        .iter()
        .find(|e| e.cluster_name == "outbound|80||svcb.default.svc.cluster.local")
        .unwrap();
    let levels: Vec<(u32, String, usize)> = la
        .endpoints
        .iter()
        .map(|g| {
            (
                g.priority,
                g.locality.as_ref().unwrap().zone.clone(),
                g.lb_endpoints.len(),
            )
        })
        .collect();
    assert_eq!(
        levels,
        [
            (0, "r1-a".into(), 1),
            (1, "r1-b".into(), 1),
            (2, "r2-a".into(), 2)
        ]
    );
    let plain = translate(
        &Inputs {
            registry: &registry,
            rules: &[],
            mesh: &MeshConfig::default(),
        },
        &n,
    );
    let la = plain
        .endpoints
        .iter()
        .find(|e| e.cluster_name == "outbound|80||svcb.default.svc.cluster.local")
        .unwrap();
    assert_eq!(la.endpoints.len(), 1, "no policy: one level");
}

/// `meshctl convert` there and back: every 0.4 sample written as today's
/// kinds and expanded again gives the proxy the configuration the 0.4
/// rules gave, but for what convert lists as lost (an address as an
/// egress host; 0.4's refusal of WebSocket upgrades on a rule's route).
#[test]
fn rules_converted_to_todays_kinds_and_back_act_the_same() {
    let n = node(SVCA.0, SVCA.1, SVCA.2);
    let sets: [&[&str]; 9] = [
        &["rules/scenario-0.4.yaml"],
        &[
            "route-rules-svcb-v0.2-50.yaml",
            "enable-svcb-engress-rule.yaml",
        ],
        &["rules/fault-svcb-v0.2.yaml"],
        &["rules/cors-svcb.yaml"],
        &["rules/redirect-svcb-old.yaml"],
        &["route-rules-svcb-v0.2-50.yaml", "rules/lb-svcb-v0.2.yaml"],
        &["rules/mirror-svcb-v0.2.yaml"],
        &[
            "route-rules-svcb-v0.2-50.yaml",
            "rules/circuit-breaker-svcb.yaml",
        ],
        &["route-rules-svcb-v0.2-50.yaml", "rules/affinity-svcb.yaml"],
    ];
    for files in sets {
        let old = rules(files);
        let (today, losses) = mesh_rules::upgrade::upgrade(&old);
        let lost: Vec<_> = losses.iter().map(|l| l.what.as_str()).collect();
        assert!(
            lost.iter().all(|w| w.starts_with("an address as a host")
                || w.starts_with("refusing WebSocket upgrades")),
            "{files:?}: {lost:?}"
        );
        // What comes back takes WebSocket upgrades, as today's kinds do.
        let mut old = old;
        for r in &mut old {
            if let mesh_rules::Spec::RouteRule(rr) = &mut r.spec {
                rr.websocket_upgrade = true;
            }
        }
        let back = mesh_rules::convert::expand(&today);
        let translated = |rules: &[Rule]| {
            translate(
                &Inputs {
                    registry: &registry(),
                    rules,
                    mesh: &MeshConfig::default(),
                },
                &n,
            )
        };
        assert_eq!(
            xds_json(&translated(&back)),
            xds_json(&translated(&old)),
            "{files:?}"
        );
    }
}

/// Session affinity by cookie: the routes to svcb hash a cookie the
/// sidecar makes (one hour) when the caller has none.
#[test]
fn affinity_by_cookie() {
    use mesh_proto::envoy::config::route::v3::route;
    use mesh_proto::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
    let r = golden(
        "svca-affinity-cookie",
        &["rules/affinity-cookie-svcb.yaml"],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    let cookies: Vec<_> = all_routes(&r)
        .filter_map(|rt| match &rt.action {
            Some(route::Action::Route(a)) => Some(a),
            _ => None,
        })
        .flat_map(|a| &a.hash_policy)
        .filter_map(|h| match &h.policy_specifier {
            Some(PolicySpecifier::Cookie(c)) => Some((c.name.as_str(), c.ttl.unwrap().seconds)),
            _ => None,
        })
        .collect();
    assert_eq!(cookies, [("svcb-session", 3600)]);
}

/// A ServiceEntry with STATIC endpoints: calls for the name go to the
/// endpoint (a cluster holding it), not where the caller connected.
#[test]
fn static_service_entry() {
    let files = ["today/static-entry.yaml"];
    let expanded = mesh_rules::convert::expand(&rules(&files));
    let r = translate(
        &Inputs {
            registry: &registry(),
            rules: &expanded,
            mesh: &MeshConfig::default(),
        },
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    let name = "outbound|9997||msgd.example.internal";
    let c = r
        .clusters
        .iter()
        .find(|c| c.name == name)
        .expect("the entry's cluster");
    assert!(
        c.cluster_discovery_type.is_some() && c.lb_policy == 0,
        "{c:?}"
    );
    let la = r
        .endpoints
        .iter()
        .find(|e| e.cluster_name == name)
        .expect("its endpoints");
    let json = serde_json::to_string(&mesh_proto::json::to_json(
        mesh_proto::descriptors::Schema::Xds,
        la,
    ))
    .unwrap();
    assert!(
        json.contains("10.100.35.27") && json.contains("9997"),
        "{json}"
    );
}

/// A CORS policy: the CORS filter first in the chain, the rule's policy
/// on its route (mesh-proxy applies it; Envoy validates it).
#[test]
fn cors_rule() {
    let r = golden(
        "svca-cors",
        &["rules/cors-svcb.yaml"],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    assert_eq!(routes_configuring(&r, "envoy.filters.http.cors"), 1);
}

#[test]
fn route_rule_100() {
    golden(
        "svca-route-100",
        &["route-rules-svcb-v0.2-100.yaml"],
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
}

#[test]
fn svcb_proxy_with_everything() {
    golden(
        "svcb-v0.2-all",
        &[
            "enable-svcb-engress-rule.yaml",
            "route-rules-svcb-v0.2-50.yaml",
        ],
        &node("10.250.0.5", "svcb", "v0.2"),
    );
}

/// Both kinds of sidecar get the mesh's tracer: Envoy's Zipkin or
/// OpenTelemetry tracer (gRPC or HTTP) at the mesh's sampling rate, each
/// call a span of its own on either side, and the collector's cluster.
/// Envoy accepts each (the goldens are validated by Envoy) and so does
/// mesh-proxy's xDS client (else it would NACK them).
#[test]
fn sidecars_get_the_meshs_tracer() {
    let pool = mesh_proto::descriptors::Schema::Proxy.pool();
    for (protocol, golden_name) in [
        (TraceProtocol::Zipkin, "svca-envoy-zipkin"),
        (TraceProtocol::OtlpGrpc, "svca-envoy-otlp-grpc"),
        (TraceProtocol::OtlpHttp, "svca-envoy-otlp-http"),
    ] {
        let mesh = MeshConfig {
            tracing: TracingConfig {
                sampling: 25.0,
                collector: Some(("10.250.0.1:9411".into(), protocol)),
            },
            ..MeshConfig::default()
        };
        let mut envoy = node(SVCA.0, SVCA.1, SVCA.2);
        envoy.kind = ProxyKind::Envoy;
        let r = golden_with(golden_name, &registry(), &[], &envoy, &mesh);
        assert!(r.clusters.iter().any(|c| c.name == TRACE_CLUSTER));
        let inputs = Inputs {
            registry: &registry(),
            rules: &[],
            mesh: &mesh,
        };
        let mesh_proxy = translate(&inputs, &node(SVCA.0, SVCA.1, SVCA.2));
        assert!(mesh_proxy.clusters.iter().any(|c| c.name == TRACE_CLUSTER));
        for l in &mesh_proxy.listeners {
            let bytes = prost::Message::encode_to_vec(l);
            let checked = mesh_proxy::config::check_resource(
                &pool,
                mesh_proto::types::XdsType::Listener,
                &l.name,
                &bytes,
            );
            assert!(checked.is_ok(), "{protocol:?} {}: {checked:?}", l.name);
        }
    }
}

/// With access logs on, both kinds of sidecar print a line per call
/// (JSON or text, Istio's fields); Envoy accepts each (goldens) and so
/// does mesh-proxy's xDS client.
#[test]
fn sidecars_log_calls_when_the_mesh_says() {
    let pool = mesh_proto::descriptors::Schema::Proxy.pool();
    for (encoding, golden_name) in [
        (AccessLogEncoding::Json, "svca-envoy-access-log-json"),
        (AccessLogEncoding::Text, "svca-envoy-access-log-text"),
    ] {
        let mesh = MeshConfig {
            access_log: Some(encoding),
            ..MeshConfig::default()
        };
        let mut envoy = node(SVCA.0, SVCA.1, SVCA.2);
        envoy.kind = ProxyKind::Envoy;
        golden_with(golden_name, &registry(), &[], &envoy, &mesh);
        let inputs = Inputs {
            registry: &registry(),
            rules: &[],
            mesh: &mesh,
        };
        let mesh_proxy = translate(&inputs, &node(SVCA.0, SVCA.1, SVCA.2));
        let pool = &pool;
        for l in &mesh_proxy.listeners {
            let bytes = prost::Message::encode_to_vec(l);
            let kind = mesh_proto::types::XdsType::Listener;
            let checked = mesh_proxy::config::check_resource(pool, kind, &l.name, &bytes);
            assert!(checked.is_ok(), "{encoding:?} {}: {checked:?}", l.name);
            for f in l.filter_chains.iter().flat_map(|c| &c.filters) {
                use mesh_proto::envoy::config::listener::v3::filter::ConfigType;
                use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
                if let Some(ConfigType::TypedConfig(any)) = &f.config_type
                    && let Ok(m) =
                        <HttpConnectionManager as prost::Message>::decode(any.value.as_slice())
                    && any.type_url.ends_with("HttpConnectionManager")
                {
                    assert_eq!(m.access_log.len(), 1, "{}", l.name);
                }
            }
        }
    }
}

#[test]
fn envoy_accepts_every_translation() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = mesh_testbed::envoy_binary().unwrap();
    // Every golden file, so a new one cannot skip Envoy's judgement.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut names: Vec<String> = std::fs::read_dir(&golden)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let stem = p.file_stem()?.to_string_lossy().into_owned();
            (p.extension()? == "json").then_some(stem)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 6, "golden files: {names:?}");
    for name in &names {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.json"));
        let copy = dir.path().join(format!("{name}.json"));
        std::fs::copy(&path, &copy).unwrap();
        let out = std::process::Command::new(&envoy)
            .args(["--mode", "validate", "-l", "error", "-c"])
            .arg(&copy)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: envoy refuses:\n{text}");
    }
}

/// The seed's registry with svcb's port renamed (its name declares the
/// protocol).
fn svcb_port_named(name: &str) -> mesh_rules::registry::Registry {
    let mut registry = registry();
    for s in &mut registry.services {
        if s.name == "svcb" {
            s.ports[0].name = name.into();
        }
    }
    registry
}

#[test]
fn undeclared_ports_are_detected_per_connection() {
    // svcb's port named `web` declares no protocol: the proxy looks at each
    // connection's first bytes (http_inspector, 100 ms) and routes HTTP by
    // the rules or proxies anything else as TCP, on the way out (svca's
    // listener for svcb's VIP) and on the way in (svcb's own port).
    let svcb = node("10.250.0.3", "svcb", "v0.1");
    let r = golden_in(
        "svcb-undeclared-port",
        &svcb_port_named("web"),
        &["route-rules-svcb-v0.2-50.yaml"],
        &svcb,
    );
    for name in ["10.251.0.11_80", "10.250.0.3_8080"] {
        let l = r
            .listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("listener {name}"));
        assert_eq!(
            l.listener_filters
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["envoy.filters.listener.http_inspector"],
            "{name}"
        );
        let chains: Vec<Vec<String>> = l
            .filter_chains
            .iter()
            .map(|c| {
                c.filter_chain_match
                    .clone()
                    .unwrap_or_default()
                    .application_protocols
            })
            .collect();
        assert_eq!(
            chains,
            [vec!["http/1.0", "http/1.1", "h2c"], vec![]],
            "{name}: HTTP chain, then the TCP fallback"
        );
        assert!(l.continue_on_listener_filters_timeout, "{name}");
    }
}

#[test]
fn grpc_and_http2_ports_use_http2_upstream() {
    // gRPC carries its status in trailers: the proxy must speak HTTP/2 to
    // the endpoints too, on the way out and in.
    let svcb = node("10.250.0.3", "svcb", "v0.1");
    let r = golden_in(
        "svcb-grpc-port",
        &svcb_port_named("grpc"),
        &["route-rules-svcb-v0.2-50.yaml"],
        &svcb,
    );
    let http2: Vec<&str> = r
        .clusters
        .iter()
        .filter(|c| {
            c.typed_extension_protocol_options
                .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        })
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        http2,
        [
            "inbound|8080||",
            "outbound|80|v0.1|svcb.default.svc.cluster.local",
            "outbound|80|v0.2|svcb.default.svc.cluster.local",
            "outbound|80||svcb.default.svc.cluster.local",
        ]
    );
}

#[test]
fn explicit_proxy_without_capture() {
    // A proxy nothing redirects to (INTERCEPTION_MODE NONE): one HTTP proxy
    // listener on its IP:15001 with every host, inbound listeners bound on
    // its IP forwarding to the app's address, egress to the rule's address.
    let mut n = node("10.250.0.2", "svca", "v0.1");
    n.interception = mesh_pilot::translate::Interception::Explicit {
        app_ip: "127.0.0.1".parse().unwrap(),
    };
    let r = golden(
        "svca-explicit",
        &[
            "enable-svcb-engress-rule.yaml",
            "route-rules-svcb-v0.2-50.yaml",
        ],
        &n,
    );
    let listeners: Vec<_> = r
        .listeners
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.bind_to_port.as_ref().is_none_or(|b| b.value),
            )
        })
        .collect();
    assert_eq!(
        listeners,
        [("10.250.0.2_15001", true), ("10.250.0.2_8080", true)]
    );
    let egress = r
        .endpoints
        .iter()
        .find(|e| e.cluster_name == "outbound|9997||10.100.35.27")
        .expect("the egress cluster's endpoints");
    assert_eq!(
        format!("{:?}", egress.endpoints)
            .matches("10.100.35.27")
            .count(),
        1,
        "a cluster to the rule's address"
    );
}

/// `match.source.name` admits the workloads that service selects, in the
/// rule's namespace unless the source names another.
#[test]
fn a_rule_source_names_the_calling_service() {
    let text = "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata:\n  name: from-svca\nspec:\n  destination:\n    name: svcb\n  match:\n    source:\n      name: svca\n  route:\n  - labels: {version: v0.2}\n";
    let rules: Vec<Rule> = load(&[Source {
        name: "r.yaml",
        text,
    }])
    .unwrap()
    .rules
    .into_iter()
    .map(|r| r.value)
    .collect();
    let registry = registry();
    let mesh = MeshConfig::default();
    let inputs = Inputs {
        registry: &registry,
        rules: &rules,
        mesh: &mesh,
    };
    let index = mesh_pilot::translate::Index::of(&inputs);
    let key = |n: &ProxyNode| mesh_pilot::translate::outbound_key(&inputs, &index, n).sources;
    let matched = [("default".to_owned(), "from-svca".to_owned())];
    assert_eq!(
        key(&node(SVCA.0, SVCA.1, SVCA.2)),
        matched,
        "svca's workload"
    );
    assert!(
        key(&node("10.250.0.3", "svcb", "v0.1")).is_empty(),
        "svcb's workload"
    );
    let mut elsewhere = node(SVCA.0, SVCA.1, SVCA.2);
    elsewhere.namespace = "prod".into();
    assert!(
        key(&elsewhere).is_empty(),
        "svca's labels in another namespace"
    );
}

/// A Sidecar scopes what a proxy gets: svca's proxy holds svcb and
/// nothing else (not its own service, not the outside host an egress rule
/// opens); svcb's proxy, which no Sidecar selects, still holds everything;
/// a namespace-wide Sidecar in the root namespace covers the rest.
#[test]
fn a_sidecar_scopes_what_a_proxy_gets() {
    let files = ["today/sidecar-svca.yaml", "enable-svcb-engress-rule.yaml"];
    let expanded = mesh_rules::convert::expand(&rules(&files));
    let registry = registry();
    let inputs = Inputs {
        registry: &registry,
        rules: &expanded,
        mesh: &MeshConfig::default(),
    };
    let clusters = |r: &Resources| -> Vec<String> {
        r.clusters
            .iter()
            .map(|c| c.name.clone())
            .filter(|n| n.starts_with("outbound|"))
            .collect()
    };
    let hosts = |r: &Resources| -> Vec<String> {
        r.routes
            .iter()
            .filter(|rc| rc.name == "0.0.0.0_80")
            .flat_map(|rc| &rc.virtual_hosts)
            .map(|vh| vh.name.clone())
            .filter(|n| n != "allow_any_or_refuse")
            .collect()
    };
    let svca = translate(&inputs, &node(SVCA.0, SVCA.1, SVCA.2));
    assert_eq!(
        clusters(&svca),
        ["outbound|80||svcb.default.svc.cluster.local"],
        "svca's proxy holds svcb only"
    );
    assert_eq!(hosts(&svca), ["svcb.default.svc.cluster.local:80"]);
    let svcb = translate(&inputs, &node("10.250.0.3", "svcb", "v0.1"));
    let all = clusters(&svcb);
    for wanted in [
        "outbound|80||svca.default.svc.cluster.local",
        "outbound|80||svcb.default.svc.cluster.local",
        "outbound|9997||10.100.35.27",
    ] {
        assert!(all.iter().any(|c| c == wanted), "{wanted} in {all:?}");
    }
    // A mesh-wide Sidecar (root namespace, no selector) covers svcb's
    // proxy too; svca's own Sidecar still wins for svca.
    let mesh_wide = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: mesh-system}\nspec:\n  egress:\n  - hosts: [\"*/10.100.35.27\"]\n";
    let mut with_default = expanded.clone();
    with_default.extend(
        load(&[Source {
            name: "mesh-wide.yaml",
            text: mesh_wide,
        }])
        .unwrap()
        .rules
        .into_iter()
        .map(|r| r.value),
    );
    let inputs = Inputs {
        rules: &with_default,
        ..inputs
    };
    let svcb = translate(&inputs, &node("10.250.0.3", "svcb", "v0.1"));
    assert_eq!(clusters(&svcb), ["outbound|9997||10.100.35.27"]);
    let svca = translate(&inputs, &node(SVCA.0, SVCA.1, SVCA.2));
    assert_eq!(
        clusters(&svca),
        ["outbound|80||svcb.default.svc.cluster.local"]
    );
}

/// Equal inputs encode to equal bytes, so equal resources keep their
/// versions and proxies are not sent what they hold: protobuf maps (a
/// cluster's service metadata, a route's filter configs, RBAC policies,
/// the JSON access log format) must not come out in a new order each time.
#[test]
fn equal_inputs_encode_alike() {
    use prost::Message;
    let rules = rules(&[
        "rules/fault-svcb-v0.2.yaml",
        "rules/cors-svcb.yaml",
        "rules/rate-limit-svcb.yaml",
        "rules/security/authz-svcb.yaml",
    ]);
    let registry = registry();
    let mesh = MeshConfig {
        access_log: Some(AccessLogEncoding::Json),
        ..MeshConfig::default()
    };
    let inputs = Inputs {
        registry: &registry,
        rules: &rules,
        mesh: &mesh,
    };
    let encoded = |r: &Resources| -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = r.listeners.iter().map(Message::encode_to_vec).collect();
        out.extend(r.routes.iter().map(Message::encode_to_vec));
        out.extend(r.clusters.iter().map(Message::encode_to_vec));
        out.extend(r.endpoints.iter().map(Message::encode_to_vec));
        out
    };
    for n in [
        node(SVCA.0, SVCA.1, SVCA.2),
        node("10.250.0.3", "svcb", "v0.2"),
    ] {
        let first = encoded(&translate(&inputs, &n));
        for _ in 0..8 {
            assert!(
                encoded(&translate(&inputs, &n)) == first,
                "{n:?} encodes anew"
            );
        }
    }
}

/// The bundle's ingress gateway (labels `mesh: ingressgateway`).
fn ingress_gateway() -> ProxyNode {
    ProxyNode {
        namespace: "mesh-system".into(),
        ip: Some("10.250.0.9".parse().unwrap()),
        labels: [("mesh".to_owned(), "ingressgateway".to_owned())].into(),
        interception: mesh_pilot::translate::Interception::Gateway,
        kind: ProxyKind::MeshProxy,
    }
}

/// A gateway gets one bound listener per Gateway port, routing the hosts
/// bound VirtualServices name (by path, to subsets by weight); the
/// clusters of those subsets; nothing of the sidecars' outbound listeners.
/// A sidecar gets none of the gateway's routes.
#[test]
fn a_gateway_routes_by_host_and_path() {
    use mesh_proto::envoy::config::route::v3::route::Action;
    use mesh_proto::envoy::config::route::v3::route_action::ClusterSpecifier;
    let rules = mesh_rules::convert::expand(&rules(&["gateway/ingress.yaml"]));
    let gateway = ingress_gateway();
    let out = golden_of(
        "gateway",
        &registry(),
        rules.clone(),
        &gateway,
        &MeshConfig::default(),
    );
    let listeners: Vec<(&str, bool)> = out
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.bind_to_port.is_none()))
        .collect();
    assert_eq!(listeners, [("0.0.0.0_80", true)]);
    let [routes] = out.routes.as_slice() else {
        panic!("one route configuration: {:?}", out.routes)
    };
    assert_eq!(routes.name, "http.80");
    let [vhost] = routes.virtual_hosts.as_slice() else {
        panic!("one virtual host: {:?}", routes.virtual_hosts)
    };
    assert_eq!(
        vhost.domains,
        ["notify.example.com:80", "notify.example.com"]
    );
    let split = |i: usize| -> Vec<(String, u32)> {
        match &vhost.routes[i].action {
            Some(Action::Route(a)) => match &a.cluster_specifier {
                Some(ClusterSpecifier::WeightedClusters(w)) => w
                    .clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
                    .collect(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    let (v1, v2) = (
        "outbound|80|v0.1|svcb.default.svc.cluster.local",
        "outbound|80|v0.2|svcb.default.svc.cluster.local",
    );
    assert_eq!(split(0), [(v2.to_owned(), 100)]);
    assert_eq!(split(1), [(v1.to_owned(), 50), (v2.to_owned(), 50)]);
    for subset in [v1, v2] {
        let eps = out
            .endpoints
            .iter()
            .find(|e| e.cluster_name == subset)
            .unwrap();
        assert_eq!(eps.endpoints[0].lb_endpoints.len(), 2, "{subset}");
    }
    // The sidecars route svcb as before: no gateway host, no subset split.
    let sidecar = translate(
        &Inputs {
            registry: &registry(),
            rules: &rules,
            mesh: &MeshConfig::default(),
        },
        &node(SVCA.0, SVCA.1, SVCA.2),
    );
    let domains: Vec<&String> = sidecar
        .routes
        .iter()
        .flat_map(|r| &r.virtual_hosts)
        .flat_map(|v| &v.domains)
        .collect();
    assert!(
        !domains.iter().any(|d| d.contains("example.com")),
        "{domains:?}"
    );
    assert!(
        !sidecar.clusters.iter().any(|c| c.name == v1),
        "a sidecar got a gateway subset"
    );
}

/// A DestinationRule's affinity holds at the gateway too: its routes to
/// svcb hash on the header, svcb's version clusters use a hash ring.
#[test]
fn a_gateways_routes_follow_destination_rules() {
    use mesh_proto::envoy::config::cluster::v3::cluster::LbPolicy;
    use mesh_proto::envoy::config::route::v3::route;
    let text = std::fs::read_to_string(repo().join("samples/gateway/ingress.yaml"))
        .unwrap()
        .replace(
            "  host: svcb\n  subsets:",
            "  host: svcb\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n  subsets:",
        );
    let rules: Vec<Rule> = load(&[Source {
        name: "ingress.yaml",
        text: &text,
    }])
    .unwrap()
    .rules
    .into_iter()
    .map(|r| r.value)
    .collect();
    let gateway = ingress_gateway();
    let out = translate(
        &Inputs {
            registry: &registry(),
            rules: &mesh_rules::convert::expand(&rules),
            mesh: &MeshConfig::default(),
        },
        &gateway,
    );
    let hashed: Vec<String> = all_routes(&out)
        .filter_map(|rt| match &rt.action {
            Some(route::Action::Route(a)) => Some(format!("{:?}", a.hash_policy)),
            _ => None,
        })
        .collect();
    assert_eq!(hashed.len(), 2, "{hashed:?}");
    assert!(hashed.iter().all(|h| h.contains("x-user")), "{hashed:?}");
    for v in ["v0.1", "v0.2"] {
        let name = format!("outbound|80|{v}|svcb.default.svc.cluster.local");
        let c = out.clusters.iter().find(|c| c.name == name).unwrap();
        assert_eq!(c.lb_policy, LbPolicy::RingHash as i32, "{name}");
    }
}
