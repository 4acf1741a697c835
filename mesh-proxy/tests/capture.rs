//! Capture mode for real, as root: pods are network namespaces with the
//! rules `mesh-proxy init` programs, sidecars run as uid 1337, the app and
//! curl know nothing of the proxy. Client pod → its sidecar (15001) →
//! server pod's sidecar (15006) → server app; an external host outside the
//! mesh is refused until its listener exists. No packet may escape capture.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use common::netns::{APP, World};

const VIP: &str = "10.251.0.10";

/// A capture listener (15001 or 15006): hands connections to the listener
/// for their original destination, else to the black hole (REGISTRY_ONLY).
fn capture_listener(name: &str, port: u16) -> String {
    capture_listener_on(name, "0.0.0.0", port)
}

/// [`capture_listener`] on `address` (`::` is bound dual-stack).
fn capture_listener_on(name: &str, address: &str, port: u16) -> String {
    let compat = if address == "::" {
        ", ipv4_compat: true"
    } else {
        ""
    };
    format!(
        r#"  - name: {name}
    address:
      socket_address: {{address: "{address}", port_value: {port}{compat}}}
    use_original_dst: true
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: BlackHoleCluster
          cluster: BlackHoleCluster
"#
    )
}

fn sidecar_bootstrap(extra_listeners: &str, extra_clusters: &str, inbound: &str) -> String {
    let outbound_capture = capture_listener("virtualOutbound", 15001);
    let inbound_capture = capture_listener("virtualInbound", 15006);
    format!(
        r#"admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: 15000}}
static_resources:
  listeners:
{outbound_capture}{inbound_capture}{inbound}{extra_listeners}  clusters:
  - name: BlackHoleCluster
    type: STATIC
    connect_timeout: 1s
{extra_clusters}"#
    )
}

fn http_listener(name: &str, address: &str, port: u16, domains: &str, cluster: &str) -> String {
    format!(
        r#"  - name: {name}
    address:
      socket_address: {{address: {address}, port_value: {port}}}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: {name}
            virtual_hosts:
            - name: {name}
              domains: [{domains}]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: "{cluster}"}}
"#
    )
}

fn static_cluster(name: &str, ip: &str, port: u16) -> String {
    format!(
        "  - name: \"{name}\"\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: \"{name}\"\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{address: {ip}, port_value: {port}}}\n"
    )
}

/// A sidecar: capture rules, then mesh-proxy as uid 1337; waits for `ready`.
struct Sidecar {
    config: std::path::PathBuf,
    stdout: BufReader<std::process::ChildStdout>,
}

fn sidecar(world: &mut World, ns: &str, dir: &std::path::Path, config: &str) -> Sidecar {
    let (code, _) = world.exec(ns, &[env!("CARGO_BIN_EXE_mesh-proxy"), "init"]);
    assert_eq!(code, 0, "mesh-proxy init failed in {ns}");
    start_proxy(world, ns, Some(1337), dir, config)
}

/// mesh-proxy in `ns` (as `uid`) with `config`; waits for `ready`.
fn start_proxy(
    world: &mut World,
    ns: &str,
    uid: Option<u32>,
    dir: &std::path::Path,
    config: &str,
) -> Sidecar {
    let path = dir.join(format!("{ns}.yaml"));
    std::fs::write(&path, config).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let child = world
        .spawn(
            ns,
            uid,
            &[
                env!("CARGO_BIN_EXE_mesh-proxy"),
                "--config",
                path.to_str().unwrap(),
                "--concurrency",
                "1",
            ],
            Stdio::piped(),
        )
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    while mesh_testbed::read_message(&mut stdout)
        .unwrap_or_else(|| panic!("mesh-proxy in {ns} exited before it was ready"))
        != "ready"
    {}
    Sidecar {
        config: path,
        stdout,
    }
}

impl Sidecar {
    fn reconfigure(&mut self, config: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
        let line = loop {
            let line = mesh_testbed::read_message(&mut self.stdout).expect("sidecar exited");
            if line.starts_with("config ") {
                break line;
            }
        };
        assert!(line.starts_with("config applied"), "{line}");
    }
}

fn app(world: &mut World, ns: &str, name: &str, port: u16, log: &std::path::Path) {
    app_on(world, ns, name, port, log, "0.0.0.0")
}

/// [`app`] listening on `bind` (`::` for IPv6).
fn app_on(world: &mut World, ns: &str, name: &str, port: u16, log: &std::path::Path, bind: &str) {
    let port = port.to_string();
    let args = [
        "/usr/bin/python3",
        "-c",
        APP,
        name,
        &port,
        log.to_str().unwrap(),
        bind,
    ];
    let child = world.spawn(ns, None, &args, Stdio::piped()).unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "app {name} did not start");
}

fn requests(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn stat(world: &World, ns: &str, needle: &str) -> u64 {
    let (_, stats) = world.exec(
        ns,
        &["curl", "-s", "http://127.0.0.1:15000/stats/prometheus"],
    );
    stats
        .lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in\n{stats}"))
}

#[test]
fn pod_to_pod_through_both_sidecars_and_egress_refused_until_allowed() {
    let mut world = World::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (client, _client_ip) = world.host("client").unwrap();
    let (server, server_ip) = world.host("server").unwrap();
    let (external, external_ip) = world.host("msgd").unwrap();

    let (server_log, msgd_log) = (dir.path().join("server.log"), dir.path().join("msgd.log"));
    app(&mut world, &server, "svcb-v0.1", 8080, &server_log);
    app(&mut world, &external, "msgd", 9997, &msgd_log);

    // Server sidecar: inbound 8080 on its own IP goes to the app on loopback.
    let inbound = http_listener(
        "inbound|8080",
        &server_ip.to_string(),
        8080,
        "\"*\"",
        "inbound|8080||",
    );
    let server_cfg = sidecar_bootstrap(
        "",
        &static_cluster("inbound|8080||", "127.0.0.1", 8080),
        &inbound,
    );
    let _server_sidecar = sidecar(&mut world, &server, dir.path(), &server_cfg);

    // Client sidecar: svcb's VIP:80 goes to the server pod.
    let domains = format!("\"svcb\", \"svcb:80\", \"{VIP}\", \"{VIP}:80\"");
    let outbound = http_listener("0.0.0.0_80", "0.0.0.0", 80, &domains, "outbound|80||svcb");
    let svcb = static_cluster("outbound|80||svcb", &server_ip.to_string(), 8080);
    let client_cfg = sidecar_bootstrap(&outbound, &svcb, "");
    let mut client_sidecar = sidecar(&mut world, &client, dir.path(), &client_cfg);

    // The app (curl as root) calls the VIP; both sidecars carry the request.
    let (code, out) = world.exec(
        &client,
        &[
            "curl",
            "-s",
            "-H",
            "Host: svcb",
            &format!("http://{VIP}/pay"),
        ],
    );
    assert_eq!((code, out.as_str()), (0, "svcb-v0.1\n"));
    assert_eq!(requests(&server_log), 1);
    let log = std::fs::read_to_string(&server_log).unwrap();
    assert!(
        log.contains("x-request-id"),
        "the sidecar adds a request id: {log}"
    );
    assert_eq!(
        stat(
            &world,
            &client,
            "mesh_proxy_upstream_rq_total{cluster=\"outbound|80||svcb\""
        ),
        1
    );
    assert_eq!(
        stat(
            &world,
            &server,
            "mesh_proxy_upstream_rq_total{cluster=\"inbound|8080||\""
        ),
        1
    );

    // REGISTRY_ONLY: the external host is refused, and never reached.
    let msgd_url = format!("http://{external_ip}:9997/send?msg=hi");
    let (_, out) = world.exec(&client, &["curl", "-s", "-w", "\n%{http_code}", &msgd_url]);
    assert!(out.ends_with("\n502"), "{out}");
    assert!(
        out.contains(&format!("{external_ip}:9997 is outside the mesh")),
        "{out}"
    );
    assert_eq!(requests(&msgd_log), 0);
    // Opaque TCP to it is closed without an answer.
    let telnet = format!("printf 'PING\\r\\n' | curl -s --max-time 5 telnet://{external_ip}:9997");
    let (_, out) = world.exec(&client, &["sh", "-c", &telnet]);
    assert_eq!(out, "", "nothing answers for a refused destination");
    assert_eq!(requests(&msgd_log), 0);

    // An egress listener for msgd (what an EgressRule becomes) opens it.
    let egress = http_listener(
        &format!("{external_ip}_9997"),
        &external_ip.to_string(),
        9997,
        "\"*\"",
        "outbound|9997||msgd",
    );
    let msgd_cluster = static_cluster("outbound|9997||msgd", &external_ip.to_string(), 9997);
    client_sidecar.reconfigure(&sidecar_bootstrap(
        &format!("{outbound}{egress}"),
        &format!("{svcb}{msgd_cluster}"),
        "",
    ));
    let (code, out) = world.exec(&client, &["curl", "-s", &msgd_url]);
    assert_eq!((code, out.as_str()), (0, "msgd\n"));
    assert_eq!(requests(&msgd_log), 1);

    assert_eq!(
        world.escaped_packets().unwrap(),
        0,
        "a packet to a VIP escaped capture"
    );
}

#[test]
fn init_is_idempotent_and_cleanup_removes_everything() {
    let mut world = World::new().unwrap();
    let (pod, _) = world.host("pod").unwrap();
    let bin = env!("CARGO_BIN_EXE_mesh-proxy");
    let rules = |w: &World| w.exec(&pod, &["iptables", "-t", "nat", "-S"]).1;
    let init = |w: &World| {
        w.exec(
            &pod,
            &[
                bin,
                "init",
                "--exclude-outbound-cidrs",
                "169.254.169.254/32",
            ],
        )
        .0
    };
    let before = rules(&world);
    assert_eq!(init(&world), 0);
    let once = rules(&world);
    assert!(
        once.contains("-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
        "{once}"
    );
    assert!(
        once.contains("-A MESH_OUTPUT -d 169.254.169.254/32 -j RETURN"),
        "{once}"
    );
    assert!(
        once.contains("-A PREROUTING -p tcp -j MESH_INBOUND"),
        "{once}"
    );
    assert_eq!(init(&world), 0);
    assert_eq!(rules(&world), once, "applying twice gives the same rules");
    let (_, dry) = world.exec(&pod, &[bin, "init", "--dry-run"]);
    assert!(
        dry.starts_with("# iptables-restore --noflush\n*nat\n") && dry.ends_with("COMMIT\n"),
        "{dry}"
    );
    assert!(
        dry.contains("# ip6tables-restore --noflush (where the pod has IPv6)\n*nat\n")
            && dry.contains("-A MESH_OUTPUT -d ::1/128 -j RETURN"),
        "both families: {dry}"
    );
    assert_eq!(rules(&world), once, "--dry-run changes nothing");
    assert_eq!(world.exec(&pod, &[bin, "init", "--cleanup"]).0, 0);
    assert_eq!(rules(&world), before);
    assert_eq!(
        world.exec(&pod, &[bin, "init", "--cleanup"]).0,
        0,
        "cleanup twice is fine"
    );
}

#[test]
fn a_cluster_connect_timeout_bounds_the_wait_for_a_silent_endpoint() {
    // An endpoint that drops SYNs (a host whose firewall eats them): the
    // cluster's connect_timeout, not a global one, decides how long a
    // request waits before its 503.
    let mut world = World::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (client, _) = world.host("client").unwrap();
    let (silent, silent_ip) = world.host("silent").unwrap();
    let (code, _) = world.exec(
        &silent,
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP",
        ],
    );
    assert_eq!(code, 0);
    let listener = http_listener("web", "127.0.0.1", 18080, "\"*\"", "silent")
        .replace("    bind_to_port: false\n", "");
    let cluster = static_cluster("silent", &silent_ip.to_string(), 8080)
        .replace("connect_timeout: 1s", "connect_timeout: 0.3s");
    assert!(cluster.contains("connect_timeout: 0.3s"), "{cluster}");
    let config = format!("static_resources:\n  listeners:\n{listener}  clusters:\n{cluster}");
    let _proxy = start_proxy(&mut world, &client, None, dir.path(), &config);
    // With the old global 5 s connect timeout curl would give up first (exit 28).
    let (code, out) = world.exec(
        &client,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            "-w",
            "\n%{http_code}",
            "http://127.0.0.1:18080/",
        ],
    );
    assert_eq!(code, 0, "no answer within 3 s: {out}");
    assert!(out.ends_with("\n503"), "{out}");
}

/// The same path over IPv6 only: pods with unique local addresses, the
/// capture rules `mesh-proxy init` programs with ip6tables, capture
/// listeners on `::` (dual-stack), original destinations of IPv6
/// connections, and no packet to the IPv6 VIPs escaping.
#[test]
fn ipv6_pod_to_pod_through_both_sidecars() {
    use common::netns::VIP_CIDR6;
    let mut world = World::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (client, _) = world.host6("client6").unwrap();
    let (server, server_ip) = world.host6("server6").unwrap();
    let log = dir.path().join("server6.log");
    app_on(&mut world, &server, "svcb-v6", 8080, &log, "::");
    let vip = VIP_CIDR6.replace("::/64", "::10");
    let captures = |extra: &str, clusters: &str| {
        format!(
            "admin:\n  address:\n    socket_address: {{address: 127.0.0.1, port_value: 15000}}\nstatic_resources:\n  listeners:\n{}{}{extra}  clusters:\n  - name: BlackHoleCluster\n    type: STATIC\n    connect_timeout: 1s\n{clusters}",
            capture_listener_on("virtualOutbound", "::", 15001),
            capture_listener_on("virtualInbound", "::", 15006),
        )
    };
    let inbound = http_listener(
        "inbound|8080",
        &server_ip.to_string(),
        8080,
        "\"*\"",
        "inbound|8080||",
    );
    let server_cfg = captures(&inbound, &static_cluster("inbound|8080||", "::1", 8080));
    let _server_sidecar = sidecar(&mut world, &server, dir.path(), &server_cfg);
    let domains = format!("\"svcb\", \"[{vip}]\", \"[{vip}]:80\"");
    let outbound = http_listener("v6_80", "\"::\"", 80, &domains, "outbound|80||svcb");
    let svcb = static_cluster("outbound|80||svcb", &server_ip.to_string(), 8080);
    let _client_sidecar = sidecar(&mut world, &client, dir.path(), &captures(&outbound, &svcb));
    let (code, out) = world.exec(
        &client,
        &["curl", "-s", "-g", &format!("http://[{vip}]/pay")],
    );
    assert_eq!((code, out.as_str()), (0, "svcb-v6\n"));
    assert_eq!(requests(&log), 1, "the server app got the request");
    let (_, rules) = world.exec(&client, &["ip6tables", "-t", "nat", "-S", "MESH_OUTPUT"]);
    assert!(rules.contains("-d ::1/128 -j RETURN"), "{rules}");
    assert_eq!(
        world.escaped_packets().unwrap(),
        0,
        "a packet to {VIP_CIDR6} escaped capture"
    );
}
