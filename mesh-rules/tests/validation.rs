//! One test per validation rule, asserting the exact text a user reads,
//! line and column included.

use mesh_rules::{Source, load};

/// Every problem in `text`, one string per problem.
fn problems(text: &str) -> Vec<String> {
    match load(&[Source {
        name: "rule.yaml",
        text,
    }]) {
        Ok(_) => vec![],
        Err(d) => d.iter().map(|p| p.to_string()).collect(),
    }
}

fn route_rule(spec: &str) -> String {
    format!(
        "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata:\n  name: r\nspec:\n{spec}"
    )
}

fn egress_rule(spec: &str) -> String {
    format!(
        "apiVersion: config.istio.io/v1alpha2\nkind: EgressRule\nmetadata:\n  name: e\nspec:\n{spec}"
    )
}

#[track_caller]
fn assert_problems(text: &str, expected: &[&str]) {
    assert_eq!(problems(text), expected, "\n--- input ---\n{text}");
}

#[test]
fn seed_files_are_accepted_as_written() {
    for name in [
        "enable-svcb-engress-rule.yaml",
        "route-rules-svcb-v0.2-50.yaml",
        "route-rules-svcb-v0.2-100.yaml",
    ] {
        for dir in ["", "mesh/"] {
            let path = format!(
                "{}/../samples/istio-0.4-walk/{dir}{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(&path).unwrap();
            let loaded = load(&[Source {
                name: &path,
                text: &text,
            }])
            .unwrap_or_else(|d| panic!("{d}"));
            assert_eq!(loaded.rules.len(), 1, "{path}");
        }
    }
}

#[test]
fn seed_route_rule_reads_into_the_model() {
    let text = include_str!("../../samples/istio-0.4-walk/route-rules-svcb-v0.2-50.yaml");
    let rule = load(&[Source { name: "r", text }])
        .unwrap()
        .rules
        .remove(0)
        .value;
    assert_eq!(
        rule.key().to_string(),
        "route-rule/default/route-rules-svcb"
    );
    let mesh_rules::Spec::RouteRule(rr) = &rule.spec else {
        panic!("{rule:?}")
    };
    assert_eq!(rr.destination.name.as_deref(), Some("svcb"));
    assert_eq!(rr.precedence, Some(1));
    let weights: Vec<_> = rr
        .route
        .iter()
        .map(|r| (r.labels["version"].as_str(), r.weight))
        .collect();
    assert_eq!(weights, [("v0.1", Some(50)), ("v0.2", Some(50))]);
    assert_eq!(
        rule.destination_host().unwrap().as_str(),
        "svcb.default.svc.cluster.local"
    );
}

#[test]
fn unknown_kind() {
    let text =
        "apiVersion: config.istio.io/v1alpha2\nkind: RouteRul\nmetadata:\n  name: r\nspec: {}\n";
    assert_problems(
        text,
        &[
            "rule.yaml:2:7: document 1: kind: unknown kind `RouteRul` in config.istio.io/v1alpha2: allowed kinds are RouteRule, DestinationPolicy, EgressRule",
        ],
    );
}

#[test]
fn unknown_api_version() {
    let text =
        "apiVersion: config.istio.io/v1alpha3\nkind: RouteRule\nmetadata:\n  name: r\nspec: {}\n";
    assert_problems(
        text,
        &[
            "rule.yaml:1:13: document 1: apiVersion: unknown apiVersion `config.istio.io/v1alpha3` for kind RouteRule: use config.istio.io/v1alpha2 or config.mesh.dev/v1alpha1",
        ],
    );
}

#[test]
fn unknown_field() {
    let text = route_rule(
        "  destination:\n    name: svcb\n  route:\n  - labels:\n      version: v0.1\n    weigth: 100\n",
    );
    assert_problems(
        text.as_str(),
        &[
            "rule.yaml:11:5: document 1: spec.route[0].weigth: unknown field `weigth`, expected one of `destination`, `labels`, `weight`",
        ],
    );
}

#[test]
fn unknown_top_level_field() {
    let text = format!(
        "{}status: {{}}\n",
        route_rule("  destination:\n    name: svcb\n")
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:8:1: document 1: status: unknown field `status`, expected one of `apiVersion`, `kind`, `metadata`, `spec`",
        ],
    );
}

#[test]
fn missing_field() {
    assert_problems(
        &route_rule("  precedence: 2\n"),
        &["rule.yaml:5:1: document 1: spec: missing field `destination`"],
    );
}

#[test]
fn wrong_type() {
    let text = route_rule(
        "  destination:\n    name: svcb\n  route:\n  - labels: {version: v0.1}\n    weight: \"100\"\n",
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:10:13: document 1: spec.route[0].weight: invalid type: string \"100\", expected i64",
        ],
    );
}

#[test]
fn weight_out_of_range() {
    let text = route_rule(
        "  destination:\n    name: svcb\n  route:\n  - labels: {version: v0.1}\n    weight: 150\n  - labels: {version: v0.2}\n    weight: -50\n",
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:10:13: document 1: spec.route[0].weight: weight 150 is out of range: it must be between 0 and 100",
            "rule.yaml:12:13: document 1: spec.route[1].weight: weight -50 is out of range: it must be between 0 and 100",
        ],
    );
}

#[test]
fn weights_must_sum_to_100() {
    let text = route_rule(
        "  destination:\n    name: svcb\n  route:\n  - labels: {version: v0.1}\n    weight: 50\n  - labels: {version: v0.2}\n    weight: 40\n",
    );
    assert_problems(
        &text,
        &["rule.yaml:8:3: document 1: spec.route: weights sum to 90; they must sum to 100"],
    );
}

#[test]
fn weight_required_with_several_routes_but_not_one() {
    let text = route_rule(
        "  destination:\n    name: svcb\n  route:\n  - labels: {version: v0.1}\n  - labels: {version: v0.2}\n    weight: 100\n",
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:9:5: document 1: spec.route[0]: weight is missing: every route needs a weight (0 to 100) when a rule has more than one",
        ],
    );
    let single =
        route_rule("  destination:\n    name: svcb\n  route:\n  - labels: {version: v0.2}\n");
    assert_problems(&single, &[]);
}

#[test]
fn label_key_and_value() {
    let text = route_rule(
        "  destination:\n    name: svcb\n  route:\n  - labels:\n      -version: v0.1\n      app: v0.1-\n",
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:10:7: document 1: spec.route[0].labels.-version: label key `-version` is invalid: the name part must be 1 to 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
            "rule.yaml:11:12: document 1: spec.route[0].labels.app: label value `v0.1-` is invalid: it must be empty or 1 to 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
        ],
    );
}

#[test]
fn rule_name_and_namespace() {
    let text = "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata:\n  name: Route_Rules\n  namespace: my.ns\nspec:\n  destination:\n    name: svcb\n";
    assert_problems(
        text,
        &[
            "rule.yaml:4:9: document 1: metadata.name: `Route_Rules` is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
            "rule.yaml:5:14: document 1: metadata.namespace: `my.ns` is not a valid DNS label: use lowercase letters, digits and '-', starting and ending with a letter or digit",
        ],
    );
}

#[test]
fn service_name() {
    let text = route_rule("  destination:\n    name: svc_b\n");
    assert_problems(
        &text,
        &[
            "rule.yaml:7:11: document 1: spec.destination.name: `svc_b` is not a valid DNS label: use lowercase letters, digits and '-', starting and ending with a letter or digit",
        ],
    );
}

#[test]
fn port_range() {
    let text = egress_rule(
        "  destination:\n    service: msgd.example.com\n  ports:\n  - port: 0\n    protocol: http\n  - port: 70000\n    protocol: http\n",
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:9:11: document 1: spec.ports[0].port: port 0 is out of range: it must be between 1 and 65535",
            "rule.yaml:11:11: document 1: spec.ports[1].port: port 70000 is out of range: it must be between 1 and 65535",
        ],
    );
}

#[test]
fn protocol_from_fixed_set() {
    let text = egress_rule(
        "  destination:\n    service: '*.example.com'\n  ports:\n  - port: 53\n    protocol: udp\n  - port: 443\n    protocol: HTTPS\n",
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:10:15: document 1: spec.ports[0].protocol: protocol `udp` is not supported: use one of http, http2, grpc, https, tcp",
        ],
    );
}

#[test]
fn egress_host() {
    let text = egress_rule(
        "  destination:\n    service: a.*.com\n  ports:\n  - port: 80\n    protocol: http\n",
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:7:14: document 1: spec.destination.service: `a.*.com` is not a valid host: use a DNS name (`api.example.com`), a wildcard (`*.example.com`), an IP address or a CIDR",
        ],
    );
    let cidr = egress_rule(
        "  destination:\n    service: 10.0.0.0/8\n  ports:\n  - port: 80\n    protocol: http\n",
    );
    assert_problems(
        &cidr,
        &[
            "rule.yaml:10:15: document 1: spec.ports[0].protocol: a CIDR destination can only be opened for protocol tcp; name HTTP hosts by DNS name or IP",
        ],
    );
}

#[test]
fn durations() {
    let text = route_rule(
        "  destination:\n    name: svcb\n  httpReqTimeout:\n    simpleTimeout:\n      timeout: 10x\n",
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:10:16: document 1: spec.httpReqTimeout.simpleTimeout.timeout: `10x` is not a duration: write a number followed by a unit (h, m, s, ms, us, ns), e.g. 500ms, 1.5s or 1m30s",
        ],
    );
    let zero = route_rule(
        "  destination:\n    name: svcb\n  httpFault:\n    delay:\n      percent: 10\n      fixedDelay: 0s\n",
    );
    assert_problems(
        &zero,
        &[
            "rule.yaml:11:19: document 1: spec.httpFault.delay.fixedDelay: duration `0s` is too short: it must be at least 1ms",
        ],
    );
}

#[test]
fn regex_must_compile() {
    let text = route_rule(
        "  destination:\n    name: svcb\n  match:\n    request:\n      headers:\n        cookie:\n          regex: \"^(.*?;)?(user=jason)(;.*\"\n",
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:12:18: document 1: spec.match.request.headers.cookie.regex: `^(.*?;)?(user=jason)(;.*` is not a valid regular expression (RE2 syntax): error: unclosed group",
        ],
    );
}

#[test]
fn string_match_needs_exactly_one() {
    let text = route_rule(
        "  destination:\n    name: svcb\n  match:\n    request:\n      headers:\n        uri:\n          exact: /pay\n          prefix: /p\n",
    );
    assert_problems(
        &text,
        &[
            "rule.yaml:11:9: document 1: spec.match.request.headers.uri: a string match needs exactly one of `exact`, `prefix` or `regex`; found 2",
        ],
    );
}

#[test]
fn duplicate_name_within_kind_and_namespace() {
    let rr = route_rule("  destination:\n    name: svcb\n");
    let other_ns = rr.replace("  name: r\n", "  name: r\n  namespace: prod\n");
    let other_kind = "apiVersion: config.istio.io/v1alpha2\nkind: DestinationPolicy\nmetadata:\n  name: r\nspec:\n  destination:\n    name: svcb\n";
    let text = format!("{rr}---\n{other_ns}---\n{other_kind}---\n{rr}");
    assert_problems(
        &text,
        &[
            "rule.yaml:29:9: document 4: metadata.name: route-rule default/r is defined twice: first in rule.yaml, document 1 (line 1); names must be unique per kind and namespace",
        ],
    );
}

#[test]
fn duplicate_across_files_in_one_batch() {
    let rr = route_rule("  destination:\n    name: svcb\n");
    let err = load(&[
        Source {
            name: "a.yaml",
            text: &rr,
        },
        Source {
            name: "b.yaml",
            text: &rr,
        },
    ])
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "b.yaml:4:9: document 1: metadata.name: route-rule default/r is defined twice: first in a.yaml, document 1 (line 1); names must be unique per kind and namespace"
    );
}

#[test]
fn syntax_error() {
    assert_problems(
        "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata:\n  name: [r\n",
        &[
            "rule.yaml:5:1: document 1: YAML syntax error: while parsing a flow sequence, expected ',' or ']'",
        ],
    );
}

#[test]
fn duplicate_yaml_key() {
    let text = route_rule("  destination:\n    name: svcb\n  precedence: 1\n  precedence: 2\n");
    assert_problems(
        &text,
        &[
            "rule.yaml:9:3: document 1: duplicate key `precedence`: each key may appear once in a mapping",
        ],
    );
}

#[test]
fn every_problem_of_every_document_is_listed() {
    let bad_weight = route_rule(
        "  destination:\n    name: svcb\n  route:\n  - labels: {version: v0.1}\n    weight: 101\n",
    );
    let bad_port = egress_rule(
        "  destination:\n    service: msgd\n  ports:\n  - port: 0\n    protocol: http\n",
    );
    let text = format!("{bad_weight}---\n{bad_port}");
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("rule.yaml:10:13: document 1: spec.route[0].weight:"));
    assert!(found[1].starts_with("rule.yaml:20:11: document 2: spec.ports[0].port:"));
}

#[test]
fn json_documents() {
    let text = "{\n  \"apiVersion\": \"config.mesh.dev/v1alpha1\",\n  \"kind\": \"EgressRule\",\n  \"metadata\": {\"name\": \"e\"},\n  \"spec\": {\n    \"destination\": {\"service\": \"msgd\"},\n    \"ports\": [{\"port\": 9997, \"protocol\": \"gopher\"}]\n  }\n}\n";
    assert_problems(
        text,
        &[
            "rule.yaml:7:42: document 1: spec.ports[0].protocol: protocol `gopher` is not supported: use one of http, http2, grpc, https, tcp",
        ],
    );
}

/// Every field Istio 0.4 had is read and checked; a field the mesh does
/// not act on yet is refused by name ("not supported yet"), never stored
/// and ignored.
#[test]
fn every_field_of_istio_0_4_is_read_and_acts_or_is_refused() {
    let text = route_rule(
        "  destination:\n    name: svcb\n    namespace: default\n  precedence: 3\n  match:\n    source:\n      name: svca\n      labels: {version: v0.1}\n    tcp:\n      sourceSubnet: [10.0.0.0/8]\n    request:\n      headers:\n        uri: {prefix: /notify}\n        cookie: {regex: \"^(.*?;)?(user=jason)(;.*)?$\"}\n  route:\n  - labels: {version: v0.2}\n    weight: 100\n  rewrite: {uri: /v2/notify}\n  websocketUpgrade: true\n  httpReqTimeout:\n    simpleTimeout: {timeout: 10s}\n  httpReqRetries:\n    simpleRetry: {attempts: 3, perTryTimeout: 2s}\n  httpFault:\n    delay: {percent: 10, fixedDelay: 5s}\n    abort: {percent: 5, httpStatus: 503}\n  l4Fault:\n    terminate: {percent: 1, terminateAfterPeriod: 1m}\n  mirror:\n    name: svcb-shadow\n  corsPolicy:\n    allowOrigin: ['*']\n    allowHeaders: [x-user]\n    maxAge: 1h\n  appendHeaders:\n    x-mesh: demo\n",
    );
    let refused = |at: &str, field: &str, what: &str| {
        format!(
            "rule.yaml:{at}: document 1: {field}: not supported yet: {what}; the rule is refused rather than stored and ignored"
        )
    };
    let expected = [
        refused("32:3", "spec.l4Fault", "TCP fault injection"),
        refused("14:5", "spec.match.tcp", "matching TCP subnets"),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_problems(&text, &expected);
    let policy = "apiVersion: config.istio.io/v1alpha2\nkind: DestinationPolicy\nmetadata:\n  name: svcb-lb\nspec:\n  destination:\n    name: svcb\n    labels: {version: v0.2}\n  source:\n    name: svca\n  loadBalancing:\n    name: RANDOM\n  circuitBreaker:\n    simpleCb:\n      maxConnections: 100\n      httpMaxPendingRequests: 10\n      httpMaxRequests: 1000\n      sleepWindow: 15m\n      httpConsecutiveErrors: 7\n      httpDetectionInterval: 5m\n      httpMaxRequestsPerConnection: 5\n      httpMaxEjectionPercent: 50\n      httpMaxRetries: 3\n";
    let expected = [refused(
        "9:3",
        "spec.source",
        "destination policies for one source",
    )];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_problems(policy, &expected);
}

#[test]
fn ejection_times_must_be_positive() {
    let text = "apiVersion: config.istio.io/v1alpha2\nkind: DestinationPolicy\nmetadata:\n  name: p\nspec:\n  destination:\n    name: svcb\n  circuitBreaker:\n    simpleCb:\n      sleepWindow: 0s\n      httpMaxEjectionPercent: 101\n";
    assert_problems(
        text,
        &[
            "rule.yaml:10:20: document 1: spec.circuitBreaker.simpleCb.sleepWindow: sleepWindow must be longer than 0",
            "rule.yaml:11:31: document 1: spec.circuitBreaker.simpleCb.httpMaxEjectionPercent: httpMaxEjectionPercent 101 is out of range: it must be between 0 and 100",
        ],
    );
}

#[test]
fn rate_limits_are_checked() {
    let text = "apiVersion: config.mesh.dev/v1alpha1\nkind: RouteRule\nmetadata:\n  name: r\nspec:\n  destination:\n    name: svcb\n  rateLimit:\n    requests: 0\n    per: 10ms\n";
    assert_problems(
        text,
        &[
            "rule.yaml:9:15: document 1: spec.rateLimit.requests: requests 0 is out of range: it must be between 1 and 4294967295",
            "rule.yaml:10:10: document 1: spec.rateLimit.per: per must be at least 50ms",
        ],
    );
}

/// Today's Istio kinds: what the mesh cannot act on is refused by name,
/// a kind of their group it does not serve is named, and the 0.4 group
/// does not carry them.
#[test]
fn todays_kinds_are_refused_precisely() {
    let name = "tests/todays-kinds-refused.yaml";
    let text = std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let err = load(&[Source { name, text: &text }])
        .unwrap_err()
        .to_string();
    let refused = "the rule is refused rather than stored and ignored";
    for expected in [
        format!(
            "{name}:12:5: document 1: spec.http[0].mirrorPercentage: not supported yet: mirroring a share of requests (every request is mirrored); {refused}"
        ),
        format!(
            "{name}:13:28: document 1: spec.http[0].retries.retryOn: not supported yet: retry conditions (5xx, connect failures and resets are retried); {refused}"
        ),
        format!(
            "{name}:22:5: document 2: spec.trafficPolicy.tls: not supported yet: TLS to the destination (mTLS comes with the CA); {refused}"
        ),
        format!(
            "{name}:24:24: document 2: spec.trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName: not supported yet: affinity by query parameter; {refused}"
        ),
        format!(
            "{name}:30:1: document 3: spec.selector: a Gateway needs a `selector` naming its proxies' labels (the mesh's bundle labels them `mesh: ingressgateway`)"
        ),
        format!("{name}:30:1: document 3: spec.servers: a Gateway needs at least one server"),
        format!(
            "{name}:32:13: document 4: apiVersion: unknown apiVersion `config.istio.io/v1alpha2` for kind VirtualService: use networking.istio.io/v1 or networking.istio.io/v1beta1 or networking.istio.io/v1alpha3"
        ),
        format!("{name}:47:3: document 5: spec.frobnicate: unknown field `frobnicate`"),
        format!(
            "{name}:56:3: document 6: spec.resolution: not supported yet: STATIC without endpoints; {refused}"
        ),
    ] {
        assert!(err.contains(&expected), "missing {expected}\nin\n{err}");
    }
    assert_eq!(err.lines().count(), 9, "{err}");
}

/// Gateway API's HTTPRoute: what mesh routing cannot do (a Gateway
/// parent, query matches, Gateway API's 302 default, extensions, backends
/// on different ports) is refused by name.
#[test]
fn http_routes_are_refused_precisely() {
    let name = "tests/gateway-api-refused.yaml";
    let text = std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let err = load(&[Source { name, text: &text }])
        .unwrap_err()
        .to_string();
    let lines: Vec<&str> = err.lines().collect();
    let expected = [
        "7:5: document 1: spec.parentRefs[0].kind: not supported yet: routes at a Gateway",
        "11:7: document 1: spec.rules[0].matches[0].queryParams: not supported yet: matching query parameters",
        "15:7: document 1: spec.rules[0].filters[0].requestRedirect.statusCode: not supported yet: redirects other than 301 (Gateway API's default is 302: write `statusCode: 301`)",
        "16:7: document 1: spec.rules[0].filters[1].type: not supported yet: this filter",
        "17:7: document 1: spec.rules[0].filters[1].extensionRef: not supported yet: extensions",
        "29:23: document 2: spec.rules[0].backendRefs[1].port: not supported yet: backends on different ports",
    ];
    assert_eq!(lines.len(), expected.len(), "{err}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(&format!("{name}:{want}")),
            "{line}\nwanted {want}"
        );
    }
}

#[test]
fn load_balancer_names() {
    let text = "apiVersion: config.istio.io/v1alpha2\nkind: DestinationPolicy\nmetadata:\n  name: p\nspec:\n  destination:\n    name: svcb\n  loadBalancing:\n    name: FASTEST\n";
    assert_problems(
        text,
        &[
            "rule.yaml:9:11: document 1: spec.loadBalancing.name: unknown variant `FASTEST`, expected one of `ROUND_ROBIN`, `LEAST_CONN`, `RANDOM`",
        ],
    );
}

#[test]
fn rules_round_trip_through_values() {
    let text = include_str!("../../samples/istio-0.4-walk/route-rules-svcb-v0.2-50.yaml");
    let rule = load(&[Source { name: "r", text }])
        .unwrap()
        .rules
        .remove(0)
        .value;
    let again = mesh_rules::Rule::from_value(rule.to_value()).unwrap();
    assert_eq!(rule, again);
}

/// A rule read back from the store is checked for its shape only: its
/// rules were checked once, when it was written.
#[test]
fn stored_rules_are_read_without_checking_them_again() {
    let text = include_str!("../../samples/istio-0.4-walk/route-rules-svcb-v0.2-50.yaml");
    let rule = load(&[Source { name: "r", text }])
        .unwrap()
        .rules
        .remove(0)
        .value;
    let mut value = rule.to_value();
    value["spec"]["route"][0]["weight"] = serde_json::json!(40);
    assert!(
        mesh_rules::Rule::from_value(value.clone()).is_err(),
        "checked when written"
    );
    assert!(
        mesh_rules::Rule::from_stored(value.clone()).is_ok(),
        "not again when read"
    );
    value["spec"]["routes"] = serde_json::json!([]);
    let err = mesh_rules::Rule::from_stored(value).unwrap_err();
    assert!(
        err.iter()
            .any(|e| e.message.contains("unknown field `routes`")),
        "the shape still is: {err:?}"
    );
}

/// A redirect is accepted (it acts: the proxy answers 301); combined with
/// what forwards a request it would do nothing, and is refused by name.
#[test]
fn redirects_act_and_refuse_forwarding_fields() {
    let ok = route_rule(
        "  destination:\n    name: svcb\n  match:\n    request:\n      headers:\n        uri: {prefix: /old}\n  redirect:\n    uri: /new\n    authority: svcb.example\n",
    );
    assert_problems(&ok, &[]);
    let both = route_rule(
        "  destination:\n    name: svcb\n  redirect:\n    uri: /new\n  httpReqTimeout:\n    simpleTimeout: {timeout: 1s}\n  appendHeaders:\n    x-a: b\n",
    );
    assert_problems(
        &both,
        &[
            "rule.yaml:10:3: document 1: spec.httpReqTimeout: a rule with `redirect` forwards nothing, so `httpReqTimeout` would do nothing: drop one of them",
            "rule.yaml:12:3: document 1: spec.appendHeaders: a rule with `redirect` forwards nothing, so `appendHeaders` would do nothing: drop one of them",
        ],
    );
}

#[test]
fn security_samples_are_accepted() {
    for name in [
        "mtls-strict-mesh.yaml",
        "mtls-svcb-port.yaml",
        "authz-svcb.yaml",
    ] {
        let path = format!(
            "{}/../samples/rules/security/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_problems(&text, &[]);
    }
}

#[test]
fn security_policies_are_checked_field_by_field() {
    let peer = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: p\nspec:\n  mtls:\n    mode: STRIKT\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n";
    assert_problems(
        peer,
        &[
            "rule.yaml:7:11: document 1: spec.mtls.mode: unknown variant `STRIKT`, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`",
        ],
    );
    let peer = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\nspec:\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n";
    assert_problems(
        peer,
        &[
            "rule.yaml:6:3: document 1: spec.portLevelMtls: port-level modes need a `selector`: ports are a workload's, not a namespace's",
        ],
    );
    let authz = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  action: CUSTOM\n  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/8]\n    to:\n    - operation:\n        ports: [http]\n        paths: ['/a*b']\n    when:\n    - key: request.auth.claims[iss]\n      values: [x]\n";
    assert_problems(
        authz,
        &[
            "rule.yaml:13:17: document 1: spec.rules[0].to[0].operation.ports[0]: `http` is not a port (1-65535)",
            "rule.yaml:14:17: document 1: spec.rules[0].to[0].operation.paths[0]: `/a*b`: `*` may only start or end a path",
            "rule.yaml:16:12: document 1: spec.rules[0].when[0].key: `request.auth.claims[iss]` is not a condition the mesh evaluates: use one of request.headers[<name>], source.principal, source.namespace, destination.port",
        ],
    );
    let authz = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  action: CUSTOM\n  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/8]\n";
    assert_problems(
        authz,
        &[
            "rule.yaml:6:3: document 1: spec.action: not supported yet: CUSTOM (external authorizers); the rule is refused rather than stored and ignored",
            "rule.yaml:10:9: document 1: spec.rules[0].from[0].source.ipBlocks: not supported yet: callers by address or end-user token; the rule is refused rather than stored and ignored",
        ],
    );
}

/// A Sidecar's hosts are `namespace/host`, in one egress entry; what it
/// cannot act on yet is refused by name.
#[test]
fn sidecar_hosts_and_refusals() {
    let text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: s\nspec:\n  egress:\n  - hosts: [svcb, ./svcb.default.svc.cluster.local]\n  - hosts: [\"*/*\"]\n  outboundTrafficPolicy:\n    mode: OPEN\n";
    let how = "write `namespace/host` (`./*`, `*/*`, `prod/svcb.prod.svc.cluster.local`, `*/*.example.com`)";
    assert_problems(
        text,
        &[
            &format!(
                "rule.yaml:7:13: document 1: spec.egress[0].hosts[0]: `svcb` is not a host entry: it has no namespace; {how}"
            ),
            "rule.yaml:8:5: document 1: spec.egress[1]: only one egress entry is supported (several need `port`, which is not supported yet): list every host in the first",
            "rule.yaml:10:11: document 1: spec.outboundTrafficPolicy.mode: `OPEN` is not an outbound mode: use REGISTRY_ONLY or ALLOW_ANY",
        ],
    );
    let empty = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: s\nspec:\n  workloadSelector:\n    labels: {app: svca}\n";
    assert_problems(
        empty,
        &[
            "rule.yaml:5:1: document 1: spec.egress: a Sidecar needs one `egress` entry listing the `hosts` its workloads call (`./*` for their own namespace, `*/*` for every host)",
        ],
    );
    let refused = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: s\nspec:\n  ingress:\n  - port: {number: 8080}\n  egress:\n  - hosts: [./*]\n    port: {number: 80}\n";
    let not_yet = "the rule is refused rather than stored and ignored";
    assert_problems(
        refused,
        &[
            &format!(
                "rule.yaml:6:3: document 1: spec.ingress: not supported yet: inbound listeners; {not_yet}"
            ),
            &format!(
                "rule.yaml:10:5: document 1: spec.egress[0].port: not supported yet: egress listeners for one port; {not_yet}"
            ),
        ],
    );
}

/// Istio's Gateway: the sample is accepted; what the gateway cannot do
/// yet (TLS, TCP) is refused by name, bad hosts and ports precisely.
#[test]
fn gateways_and_bound_virtual_services() {
    let sample = include_str!("../../samples/gateway/ingress.yaml");
    let loaded = load(&[Source {
        name: "ingress.yaml",
        text: sample,
    }])
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(loaded.rules.len(), 3);
    let not_yet = "the rule is refused rather than stored and ignored";
    let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  selector: {mesh: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [pay.example.com]\n    tls: {mode: SIMPLE}\n  - port: {number: 70000, name: http, protocol: HTTP}\n    hosts: [\"bad host\", \"prod/*.example.com\"]\n  - port: {number: 8080, name: web, protocol: SPDY}\n    hosts: [\"*\"]\n";
    assert_problems(
        gateway,
        &[
            "rule.yaml:11:20: document 1: spec.servers[1].port.number: port 70000 is out of range: it must be between 1 and 65535",
            "rule.yaml:12:13: document 1: spec.servers[1].hosts[0]: `bad host` is not a host entry: it is not a DNS name; write `*`, `*.example.com` or `pay.example.com`, optionally after `namespace/` (`*`, `.` or a namespace)",
            "rule.yaml:13:47: document 1: spec.servers[2].port.protocol: `SPDY` is not a protocol: use HTTP, HTTP2, GRPC, HTTPS or TCP",
        ],
    );
    let refused = gateway
        .replace("70000", "80")
        .replace("\"bad host\", ", "")
        .replace("SPDY", "GRPC");
    assert_problems(
        &refused,
        &[
            &format!(
                "rule.yaml:8:38: document 1: spec.servers[0].port.protocol: not supported yet: HTTPS and TCP servers (HTTP, HTTP2 and GRPC are served); {not_yet}"
            ),
            &format!(
                "rule.yaml:10:5: document 1: spec.servers[0].tls: not supported yet: TLS at the gateway; {not_yet}"
            ),
        ],
    );
    // Bound to a gateway only, a VirtualService routes names callers
    // outside use, to any service's subsets; matching the caller's labels
    // means nothing there.
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: v\nspec:\n  hosts: [\"*.example.com\"]\n  gateways: [mesh-system/ingress]\n  http:\n  - match:\n    - sourceLabels: {app: svca}\n    route:\n    - destination: {host: svcb, subset: v1}\n";
    assert_problems(
        vs,
        &[&format!(
            "rule.yaml:10:7: document 1: spec.http[0].match[0].sourceLabels: not supported yet: matching the caller's labels at a gateway (bind the VirtualService to `mesh` alone); {not_yet}"
        )],
    );
    // Gateways are named as Kubernetes names objects.
    let bad_name = vs.replace("[mesh-system/ingress]", "[mesh, Bad_Name]");
    assert_problems(
        &bad_name,
        &[
            "rule.yaml:7:20: document 1: spec.gateways[1]: `Bad_Name` is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
        ],
    );
    // Bound to the mesh too, its hosts must be the mesh's.
    let both = vs
        .replace("[mesh-system/ingress]", "[mesh, ingress]")
        .replace(
            "    - sourceLabels: {app: svca}\n",
            "    - uri: {prefix: /}\n",
        );
    let problems = problems(&both);
    assert!(
        problems.len() == 2
            && problems[0].contains("rule.yaml:6:11: document 1: spec.hosts[0]: not supported yet: routing a host outside the mesh")
            && problems[1].contains("spec.http[0].route[0].destination.subset: not supported yet: routing to a subset of another service"),
        "{problems:?}"
    );
}
