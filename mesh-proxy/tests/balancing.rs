//! Load balancing across endpoints, endpoint health, timeouts, retries, and
//! the sidecar's metrics and readiness ports.

mod common;

use common::{Backend, bootstrap, cluster, curl, dead_port, mesh_proxy, mesh_proxy_with, route_to};

fn with_clusters(routes: &str, clusters: &str) -> String {
    bootstrap(routes, &[]).replace("  clusters:\n", &format!("  clusters:\n{clusters}"))
}

fn hits(proxy: &common::Process, n: usize) -> String {
    curl(&["-s", &format!("http://{}/[1-{n}]", proxy.listener("http"))]).1
}

#[test]
fn round_robin_is_even_and_unhealthy_endpoints_get_nothing() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let ports = [
        (a.addr.port(), "HEALTHY"),
        (b.addr.port(), "HEALTHY"),
        (c.addr.port(), "UNHEALTHY"),
    ];
    let proxy = mesh_proxy(&with_clusters(
        &route_to("svc"),
        &cluster("svc", &ports, ""),
    ));
    hits(&proxy, 100);
    assert_eq!((a.count(), b.count(), c.count()), (50, 50, 0));
}

#[test]
fn random_and_least_request_spread_over_all_endpoints() {
    for policy in ["RANDOM", "LEAST_REQUEST"] {
        let backends: Vec<_> = (0..3).map(|i| Backend::start(&format!("e{i}"))).collect();
        let ports: Vec<_> = backends
            .iter()
            .map(|b| (b.addr.port(), "HEALTHY"))
            .collect();
        let extra = format!("    lb_policy: {policy}\n");
        let proxy = mesh_proxy(&with_clusters(
            &route_to("svc"),
            &cluster("svc", &ports, &extra),
        ));
        hits(&proxy, 300);
        let counts: Vec<_> = backends.iter().map(Backend::count).collect();
        assert_eq!(counts.iter().sum::<usize>(), 300, "{policy}");
        // Each has probability 1/3; 40 is more than 7 standard deviations below 100.
        assert!(counts.iter().all(|c| *c >= 40), "{policy}: {counts:?}");
    }
}

#[test]
fn route_timeout_gives_504() {
    let a = Backend::start("slow");
    let routes = "              - match: {prefix: \"/\"}\n                route: {cluster: svc, timeout: 0.2s}\n";
    let proxy = mesh_proxy(&with_clusters(
        routes,
        &cluster("svc", &[(a.addr.port(), "HEALTHY")], ""),
    ));
    let started = std::time::Instant::now();
    let (_, out) = curl(&[
        "-s",
        "-H",
        "x-delay-ms: 3000",
        "-w",
        "\n%{http_code}",
        &format!("http://{}/", proxy.listener("http")),
    ]);
    assert_eq!(out, "upstream request timeout\n\n504");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the proxy answered before the backend did"
    );
}

#[test]
fn retries_on_connect_failure_hide_a_dead_endpoint() {
    let a = Backend::start("alive");
    let dead = dead_port();
    let ports = [(a.addr.port(), "HEALTHY"), (dead.port, "HEALTHY")];
    let routes = "              - match: {prefix: \"/\"}\n                route:\n                  cluster: svc\n                  retry_policy: {retry_on: connect-failure, num_retries: 2}\n";
    let proxy = mesh_proxy(&with_clusters(routes, &cluster("svc", &ports, "")));
    let url = format!("http://{}/[1-100]", proxy.listener("http"));
    let (_, codes) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}\n", &url]);
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        100,
        "{codes}"
    );
    let (_, stats) = curl(&["-s", &format!("http://{}/stats/prometheus", proxy.admin())]);
    let retries: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("mesh_proxy_upstream_rq_retry_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        retries, 50,
        "every other pick hit the dead endpoint and was retried:\n{stats}"
    );
}

#[test]
fn metrics_and_readiness_ports_serve_only_their_path() {
    let a = Backend::start("v1");
    let mut proxy = mesh_proxy_with(
        &bootstrap(&route_to("v1"), &[("v1", &a)]),
        &[
            "--metrics-address",
            "127.0.0.1:0",
            "--health-address",
            "127.0.0.1:0",
        ],
    );
    let (metrics, health) = (
        proxy.lines["metrics"].clone(),
        proxy.lines["health"].clone(),
    );
    curl(&["-s", &format!("http://{}/", proxy.listener("http"))]);
    let (_, m) = curl(&["-s", &format!("http://{metrics}/stats/prometheus")]);
    assert!(
        m.contains("mesh_proxy_downstream_rq_total{response_code_class=\"2xx\"} 1"),
        "{m}"
    );
    let (_, r) = curl(&[
        "-s",
        "-w",
        " %{http_code}",
        &format!("http://{health}/healthz/ready"),
    ]);
    assert_eq!(r, "LIVE\n 200");
    let (_, no) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{metrics}/config_dump"),
    ]);
    assert_eq!(no, "404", "config is only on the loopback admin port");
    let (_, no) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("http://{health}/quitquitquit"),
    ]);
    assert_eq!(no, "404");
    // Draining flips readiness so the pod leaves its Service first.
    curl(&[
        "-s",
        "-X",
        "POST",
        &format!("http://{}/quitquitquit", proxy.admin()),
    ]);
    assert!(proxy.child.wait().unwrap().success());
}

/// Reads one of mesh-proxy's counters from its admin endpoint.
fn counter(proxy: &common::Process, name: &str) -> u64 {
    let (_, stats) = curl(&["-s", &format!("http://{}/stats/prometheus", proxy.admin())]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("mesh_proxy_{name} ")))
        .unwrap_or_else(|| panic!("{name} in\n{stats}"))
        .parse()
        .unwrap()
}

#[test]
fn retries_stop_when_the_retry_budget_is_spent() {
    // Every endpoint is down, and the route retries connect failures twice.
    let dead = [dead_port(), dead_port()];
    let ports = [(dead[0].port, "HEALTHY"), (dead[1].port, "HEALTHY")];
    let routes = "              - match: {prefix: \"/\"}\n                route:\n                  cluster: svc\n                  retry_policy: {retry_on: connect-failure, num_retries: 2}\n";
    let run = |budget: &str| {
        let proxy = mesh_proxy(&with_clusters(routes, &cluster("svc", &ports, budget)));
        let url = format!("http://{}/[1-10]", proxy.listener("http"));
        let (_, codes) = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}\n", &url]);
        assert_eq!(codes, "503\n".repeat(10));
        (
            counter(&proxy, "upstream_cx_fail_total"),
            counter(&proxy, "upstream_rq_retry_total"),
            counter(&proxy, "upstream_rq_retry_overflow_total"),
        )
    };
    // The default budget (20 % of requests in flight, at least 3 at once)
    // lets one-at-a-time requests use all their retries…
    assert_eq!(run(""), (30, 20, 0));
    // …a spent budget (Envoy's retry_budget set to nothing) lets none:
    // one try per request, each refused retry counted.
    let none = "    circuit_breakers:\n      thresholds:\n      - retry_budget:\n          budget_percent: {value: 0}\n          min_retry_concurrency: 0\n";
    assert_eq!(run(none), (10, 0, 10));
}

/// Admin `/logging` lists levels (GET), changes them (POST, Envoy's
/// `level=` for all or `logger=level` for one) and refuses a level it does
/// not know; a level turned on shows at once in the proxy's output.
#[test]
fn admin_logging_changes_levels_at_run_time() {
    let a = Backend::start("a");
    let mut proxy = mesh_proxy(&bootstrap(&route_to("a"), &[("a", &a)]));
    let logging = format!("http://{}/logging", proxy.admin());
    let (_, list) = curl(&["-s", &logging]);
    assert_eq!(list, "active loggers:\ndefault: info\n");
    let (_, refused) = curl(&[
        "-s",
        "-w",
        " %{http_code}",
        "-X",
        "POST",
        &format!("{logging}?mesh_proxy=loud"),
    ]);
    assert!(
        refused.starts_with("unknown level `loud`") && refused.ends_with(" 400"),
        "{refused}"
    );
    let (_, get_change) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{logging}?level=debug"),
    ]);
    assert_eq!(get_change, "405", "changes need POST");
    let (_, set) = curl(&[
        "-s",
        "-X",
        "POST",
        &format!("{logging}?mesh_proxy%3A%3Alistener=debug"),
    ]);
    assert_eq!(
        set,
        "active loggers:\ndefault: info\nmesh_proxy::listener: debug\n"
    );
    // Debug for the listener module: each connection is logged now.
    assert_eq!(hits(&proxy, 1), "a\n");
    let line = proxy.wait_line("connection accepted");
    assert!(line.contains("handler=http"), "{line}");
    // level= sets every logger, overrides included.
    let (_, all) = curl(&["-s", "-X", "POST", &format!("{logging}?level=warning")]);
    assert_eq!(all, "active loggers:\ndefault: warn\n");
}

/// Each `retry_on` token means what it means in Envoy: the same bootstrap
/// and the same first failure give the same final answer from mesh-proxy
/// and from Envoy.
#[test]
fn retry_conditions_act_as_in_envoy() {
    // (retry_on and extra policy fields, how the first try fails, final status)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("5xx", "500", "", "200"),
        ("5xx", "reset", "", "200"),
        ("gateway-error", "500", "", "500"),
        ("gateway-error", "503", "", "200"),
        ("gateway-error", "reset", "", "200"),
        ("reset", "reset", "", "200"),
        ("reset", "503", "", "503"),
        ("connect-failure", "503", "", "503"),
        ("retriable-4xx", "409", "", "200"),
        ("retriable-4xx", "404", "", "404"),
        (
            "retriable-status-codes, retriable_status_codes: [418]",
            "418",
            "",
            "200",
        ),
        (
            "retriable-status-codes, retriable_status_codes: [418]",
            "500",
            "",
            "500",
        ),
        (
            "retriable-headers, retriable_headers: [{name: x-try-again, string_match: {exact: \"yes\"}}]",
            "500",
            "x-try-again=yes",
            "200",
        ),
        (
            "retriable-headers, retriable_headers: [{name: x-try-again, string_match: {exact: \"yes\"}}]",
            "500",
            "x-try-again=no",
            "500",
        ),
    ];
    let a = Backend::start("a");
    let mut expected = Vec::new();
    let mut routes = String::new();
    for (i, (policy, _, _, want)) in cases.iter().enumerate() {
        let (on, extra) = policy.split_once(", ").unwrap_or((policy, ""));
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        routes += &format!(
            "              - match: {{path: \"/case{i}\"}}\n                route:\n                  cluster: a\n                  retry_policy: {{retry_on: \"{on}\", num_retries: 1{extra}, retry_back_off: {{base_interval: 0.001s}}}}\n"
        );
        expected.push(format!("case{i} {want}"));
    }
    let config = bootstrap(&routes, &[("a", &a)]);
    for (who, proxy) in [
        ("mesh-proxy", mesh_proxy(&config)),
        ("envoy", common::envoy(&config)),
    ] {
        let mut got = Vec::new();
        for (i, (_, fail, header, _)) in cases.iter().enumerate() {
            let url = format!("http://{}/case{i}", proxy.listener("http"));
            let id = format!("x-fail-id: {who}-{i}");
            let (_, code) = curl(&[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &format!("x-fail-once: {fail}"),
                "-H",
                &id,
                "-H",
                &format!("x-fail-header: {header}"),
                &url,
            ]);
            got.push(format!("case{i} {code}"));
        }
        assert_eq!(got, expected, "{who}");
    }
}

/// `append_action` of added headers as Envoy applies it, for a header the
/// request has and one it has not: the backend echoes what it got.
#[test]
fn header_append_actions_act_as_in_envoy() {
    let a = Backend::start("a");
    let mut adds = String::new();
    for (i, action) in [
        "APPEND_IF_EXISTS_OR_ADD",
        "ADD_IF_ABSENT",
        "OVERWRITE_IF_EXISTS_OR_ADD",
        "OVERWRITE_IF_EXISTS",
    ]
    .iter()
    .enumerate()
    {
        for which in ["present", "absent"] {
            adds += &format!(
                "                - header: {{key: x-{which}-{i}, value: mesh}}\n                  append_action: {action}\n"
            );
        }
    }
    let routes = format!(
        "              - match: {{prefix: \"/\"}}\n                route: {{cluster: a}}\n                request_headers_to_add:\n{adds}"
    );
    let config = bootstrap(&routes, &[("a", &a)]);
    // Per action: (the header the request had, the one it had not).
    let expected = [
        ("app, mesh", "mesh"),
        ("app", "mesh"),
        ("mesh", "mesh"),
        ("mesh", "-"),
    ];
    for (who, proxy) in [
        ("mesh-proxy", mesh_proxy(&config)),
        ("envoy", common::envoy(&config)),
    ] {
        let url = format!("http://{}/", proxy.listener("http"));
        let mut args = vec!["-s", "-D", "-", "-o", "/dev/null"];
        let present: Vec<String> = (0..4).map(|i| format!("x-present-{i}: app")).collect();
        for h in &present {
            args.extend(["-H", h]);
        }
        args.push(&url);
        let (_, head) = curl(&args);
        let head = head.to_ascii_lowercase();
        let echoed = |name: &str| {
            let values: Vec<&str> = head
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("x-echo-{name}: ")))
                .map(str::trim)
                .collect();
            if values.is_empty() {
                "-".to_owned()
            } else {
                values.join(", ")
            }
        };
        for (i, (present, absent)) in expected.iter().enumerate() {
            assert_eq!(
                echoed(&format!("x-present-{i}")),
                *present,
                "{who}: action {i}, header present"
            );
            assert_eq!(
                echoed(&format!("x-absent-{i}")),
                *absent,
                "{who}: action {i}, header absent"
            );
        }
    }
}

/// `stat_prefix` names the connection manager's counters, as Envoy's
/// `http.<prefix>.downstream_rq_<class>`: the same requests give the same
/// counts in both, and a new configuration does not reset them.
#[test]
fn stat_prefix_names_the_counters_as_in_envoy() {
    let a = Backend::start("a");
    let routes = "              - match: {path: \"/missing\"}\n                direct_response: {status: 404}\n              - match: {prefix: \"/\"}\n                route: {cluster: a}\n";
    let config =
        bootstrap(routes, &[("a", &a)]).replace("stat_prefix: http", "stat_prefix: ingress");
    let send = |proxy: &common::Process| {
        let base = format!("http://{}", proxy.listener("http"));
        for path in ["/", "/x", "/y", "/missing", "/missing"] {
            curl(&["-s", "-o", "/dev/null", &format!("{base}{path}")]);
        }
    };
    let envoy = common::envoy(&config);
    send(&envoy);
    let (_, stats) = curl(&[
        "-s",
        "-g",
        &format!(
            "http://{}/stats?filter=^http\\.ingress\\.downstream_rq_[24]xx$",
            envoy.admin()
        ),
    ]);
    assert_eq!(
        stats, "http.ingress.downstream_rq_2xx: 3\nhttp.ingress.downstream_rq_4xx: 2\n",
        "envoy"
    );
    let mut proxy = mesh_proxy(&config);
    send(&proxy);
    let class = |proxy: &common::Process, c: &str| {
        counter(
            proxy,
            &format!(
                "http_downstream_rq_total{{stat_prefix=\"ingress\",response_code_class=\"{c}\"}}"
            ),
        )
    };
    assert_eq!(
        (class(&proxy, "2xx"), class(&proxy, "4xx")),
        (3, 2),
        "mesh-proxy"
    );
    proxy.rewrite_config(&config.replace("status: 404", "status: 410"));
    proxy.wait_line("config applied");
    assert_eq!(
        (class(&proxy, "2xx"), class(&proxy, "4xx")),
        (3, 2),
        "kept across a new configuration"
    );
}

/// A RING_HASH cluster with route hash policies, as in Envoy: by header,
/// each user's calls stick to one endpoint and users spread over all; by
/// source address, one caller's calls all go to one endpoint; without the
/// header, calls spread.
#[test]
fn consistent_hashing_sticks_like_envoy() {
    let routes = r#"              - match: {prefix: "/user"}
                route:
                  cluster: svc
                  hash_policy: [{header: {header_name: x-user}}]
              - match: {prefix: "/ip"}
                route:
                  cluster: svc
                  hash_policy: [{connection_properties: {source_ip: true}}]
              - match: {prefix: "/cookie"}
                route:
                  cluster: svc
                  hash_policy: [{cookie: {name: session, ttl: 60s}}]
"#;
    for name in ["mesh-proxy", "envoy"] {
        let backends: Vec<_> = (0..3).map(|i| Backend::start(&format!("e{i}"))).collect();
        let ports: Vec<_> = backends
            .iter()
            .map(|b| (b.addr.port(), "HEALTHY"))
            .collect();
        let config = with_clusters(
            routes,
            &cluster("svc", &ports, "    lb_policy: RING_HASH\n"),
        );
        let proxy = if name == "envoy" {
            common::envoy(&config)
        } else {
            mesh_proxy(&config)
        };
        let base = format!("http://{}", proxy.listener("http"));
        let mut owners = std::collections::BTreeSet::new();
        for user in 0..30 {
            let header = format!("x-user: user-{user}");
            let (_, bodies) = curl(&["-s", "-H", &header, &format!("{base}/user?n=[1-5]")]);
            let served: std::collections::BTreeSet<&str> = bodies.lines().collect();
            assert_eq!(served.len(), 1, "{name}: user-{user} went to {served:?}");
            owners.extend(served.into_iter().map(str::to_owned));
        }
        assert_eq!(owners.len(), 3, "{name}: 30 users over {owners:?}");
        let (_, bodies) = curl(&["-s", &format!("{base}/ip?n=[1-20]")]);
        let served: std::collections::BTreeSet<&str> = bodies.lines().collect();
        assert_eq!(served.len(), 1, "{name}: one caller went to {served:?}");
        let (_, bodies) = curl(&["-s", &format!("{base}/user?n=[1-60]")]);
        let served: std::collections::BTreeSet<&str> = bodies.lines().collect();
        assert!(
            served.len() > 1,
            "{name}: without a key, calls spread: {served:?}"
        );
        // A caller without the cookie is given one; with it, it sticks.
        let (_, head) = curl(&[
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{base}/cookie"),
        ]);
        let set = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("{name}: no cookie in {head}"))
            .trim()
            .to_owned();
        let attributes = set.contains("Max-Age=60") && set.contains("HttpOnly");
        assert!(set.starts_with("session=") && attributes, "{name}: {set}");
        let jar = format!("cookie: {}", set.split(';').next().unwrap());
        let (_, bodies) = curl(&["-s", "-H", &jar, &format!("{base}/cookie?n=[1-10]")]);
        let served: std::collections::BTreeSet<&str> = bodies.lines().collect();
        assert_eq!(served.len(), 1, "{name}: one session went to {served:?}");
        eprintln!("{name}: {set}");
    }
}
