//! Mutual TLS between sidecars, in network-namespace pods: mesh-ca in the
//! node namespace signs each sidecar's certificate (bootstrap tokens),
//! pilot turns TLS on, and what crosses the pods' link is encrypted.

use std::process::Stdio;
use std::time::Duration;

use mesh_testbed::mesh::{Mesh, Mtls, Pod, Sidecar};
use mesh_testbed::{Lines, walk};

/// tcpdump on the pods' bridge, capturing the app port (8080) into a
/// file; stopped by [`Capture::stop`], which returns the packets as text.
struct Capture {
    pid: u32,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(mesh: &mut Mesh) -> Capture {
        let file = mesh.dir.path().join("pods.pcap");
        let node = mesh.world.node.clone();
        let script = format!(
            "exec tcpdump -i br0 -nn -U -w {} 'tcp port 8080' 2>&1",
            file.display()
        );
        let child = mesh
            .world
            .spawn(&node, None, &["sh", "-c", &script], Stdio::piped())
            .unwrap();
        let pid = child.id();
        let mut lines = Lines::new(child.stdout.take().unwrap());
        lines
            .wait_for("tcpdump: listening on br0", Duration::from_secs(10))
            .unwrap();
        lines.discard_rest();
        Capture { pid, file }
    }

    /// Stops tcpdump (it flushes on SIGTERM) and prints the packets with
    /// their payloads.
    fn stop(self, mesh: &Mesh) -> String {
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let file = self.file.display().to_string();
        mesh_testbed::eventually(
            "tcpdump to finish the file",
            Duration::from_secs(10),
            || {
                let (code, out) = mesh
                    .world
                    .exec(&mesh.world.node, &["tcpdump", "-nn", "-A", "-r", &file]);
                (code == 0).then_some(out)
            },
        )
    }
}

/// The seed's walk with STRICT mutual TLS between `sidecar`s, `checks`
/// of them, while tcpdump on the pods' bridge captures the app port: the
/// calls cross it, none of their HTTP in the clear.
fn strict_walk_holds(sidecar: Sidecar, checks: usize) {
    mesh_testbed::require_root();
    let mut mesh = Mesh::new().unwrap();
    mesh.mtls = Some(Mtls::Strict);
    let capture = Capture::start(&mut mesh);
    let report = walk::run(&mut mesh, sidecar, &mut |l| eprintln!("{l}")).unwrap();
    let failed = report.failed();
    assert!(failed.is_empty(), "the walk failed:\n{}", failed.join("\n"));
    assert_eq!(report.checks().len(), checks);
    let packets = capture.stop(&mesh);
    let count = packets.lines().filter(|l| l.contains(" IP ")).count();
    assert!(
        count > 100,
        "the capture saw the walk's calls ({count} packets)"
    );
    for plaintext in ["HTTP/1.1", "GET /", "x-b3-traceid", "service_b:"] {
        assert!(
            !packets.contains(plaintext),
            "`{plaintext}` crossed the pods' link in the clear"
        );
    }
}

#[test]
fn the_seed_walk_with_strict_mtls_everywhere() {
    strict_walk_holds(Sidecar::MeshProxy, 11);
}

/// The same with an unmodified Envoy in every pod, its certificate from
/// the pod's SDS agent.
#[test]
fn the_seed_walk_with_strict_mtls_between_envoy_sidecars() {
    strict_walk_holds(Sidecar::Envoy, 10);
}

/// What a call from `pod` to svca's app (`/`, answered 404 by the app
/// itself) gives: the status, or the curl exit code when refused.
fn call_svca(mesh: &Mesh, pod: &Pod, url: &str) -> Result<u16, i32> {
    let (code, out) = mesh.curl(pod, &["-o", "/dev/null", "-w", "%{http_code}", url]);
    if code != 0 {
        return Err(code);
    }
    Ok(out.trim().parse().unwrap_or(0))
}

/// A small mesh: svca with its sidecar, a client with one, and an
/// outsider without; mTLS in `mode`.
fn small_mesh(mode: Mtls) -> (Mesh, Pod, Pod, Pod) {
    let (mut mesh, svca, client) = svca_and_client(mode, None);
    let outsider = mesh.pod("outsider", &[], None).unwrap();
    (mesh, svca, client, outsider)
}

/// pilot, svca with its sidecar and app, a client with a sidecar that
/// reaches svca; mTLS in `mode`, certificates living `validity`.
fn svca_and_client(mode: Mtls, validity: Option<&str>) -> (Mesh, Pod, Pod) {
    mesh_testbed::require_root();
    let mut mesh = Mesh::new().unwrap();
    mesh.mtls = Some(mode);
    mesh.cert_validity = validity.map(str::to_owned);
    mesh.write_registry(walk::REGISTRY).unwrap();
    mesh.set_names(&walk::names()).unwrap();
    mesh.start_pilot().unwrap();
    let svca = mesh
        .pod(
            "svca-1",
            &[("app", "svca"), ("version", "v1")],
            Some(Sidecar::MeshProxy),
        )
        .unwrap();
    mesh.sample(&svca, "svca", &["--version", "v1"]).unwrap();
    let client = mesh
        .pod("client", &[("app", "client")], Some(Sidecar::MeshProxy))
        .unwrap();
    mesh.wait_endpoints(&client, "outbound|80||svca.default.svc.cluster.local", 1)
        .unwrap();
    (mesh, svca, client)
}

/// A P-256 key and a self-signed certificate for `subject` with
/// `extensions`, made by openssl (key, certificate).
fn self_signed(
    mesh: &Mesh,
    (key, cert): (&std::path::Path, &std::path::Path),
    subject: &str,
    extensions: &[&str],
) {
    let (key, cert) = (key.to_str().unwrap(), cert.to_str().unwrap());
    let mut args = vec![
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "3650",
        "-subj",
        subject,
    ];
    for e in extensions {
        args.extend(["-addext", e]);
    }
    let (code, out) = mesh.world.exec(&mesh.world.node, &args);
    assert_eq!(code, 0, "{out}");
}

/// A client with a certificate of another root, claiming a mesh identity,
/// is refused in the TLS handshake (in both modes: TLS means mutual TLS).
fn foreign_certificate_is_refused(mesh: &Mesh, svca: &Pod, outsider: &Pod) {
    let dir = mesh.dir.path();
    let (key, cert) = (dir.join("foreign-key.pem"), dir.join("foreign-cert.pem"));
    let san = "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/client";
    self_signed(mesh, (&key, &cert), "/CN=foreign", &[san]);
    let failed_before = handshake_errors(mesh, svca);
    let url = format!("https://{}:8080/", svca.ip);
    let (code, out) = mesh.world.exec(
        &outsider.ns,
        &[
            "curl",
            "-sk",
            "--max-time",
            "10",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &url,
        ],
    );
    assert_ne!(
        code, 0,
        "a certificate of a foreign root was accepted: {out}"
    );
    assert!(
        handshake_errors(mesh, svca) > failed_before,
        "the sidecar counted the refused handshake"
    );
}

/// `mesh_proxy_ssl_handshake_error_total` of `pod`'s sidecar.
fn handshake_errors(mesh: &Mesh, pod: &Pod) -> u64 {
    mesh.admin(pod, "/stats/prometheus")
        .lines()
        .find_map(|l| l.strip_prefix("mesh_proxy_ssl_handshake_error_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn strict_refuses_clients_outside_the_mesh_and_permissive_takes_them() {
    for (mode, outsider_gets) in [(Mtls::Strict, None), (Mtls::Permissive, Some(404))] {
        let (mesh, svca, client, outsider) = small_mesh(mode);
        assert_eq!(
            call_svca(&mesh, &client, "http://svca/"),
            Ok(404),
            "{mode:?}: a sidecar's call reaches the app over mutual TLS"
        );
        let direct = format!("http://{}:8080/", svca.ip);
        let got = call_svca(&mesh, &outsider, &direct);
        match outsider_gets {
            Some(status) => assert_eq!(got, Ok(status), "{mode:?}: plaintext taken"),
            None => assert!(got.is_err(), "{mode:?}: plaintext refused, got {got:?}"),
        }
        foreign_certificate_is_refused(&mesh, &svca, &outsider);
        // The receiving side labels the call with how it came and who made it.
        let metrics = mesh.admin(&svca, "/stats/prometheus");
        let inbound = metrics
            .lines()
            .find(|l| {
                l.starts_with("mesh_requests_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains("source_workload=\"client\"")
            })
            .unwrap_or_else(|| panic!("no inbound request series:\n{metrics}"));
        for label in [
            "connection_security_policy=\"mutual_tls\"",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
            "destination_principal=\"spiffe://cluster.local/ns/default/sa/svca\"",
        ] {
            assert!(
                inbound.contains(label),
                "{mode:?}: {label} missing in {inbound}"
            );
        }
        // The sidecar holds a certificate for its service account only.
        let certs: serde_json::Value = serde_json::from_str(&mesh.admin(&svca, "/certs")).unwrap();
        assert_eq!(
            certs["certificates"][0]["cert_chain"][0]["subject_alt_names"][0]["uri"],
            "spiffe://cluster.local/ns/default/sa/svca"
        );
        // meshctl shows it, the same way for mesh-proxy and Envoy.
        let admin = "127.0.0.1:15000";
        let (code, out) = mesh.world.exec(
            &svca.ns,
            &[
                mesh_testbed::binary("meshctl").unwrap().to_str().unwrap(),
                "proxy-config",
                "secret",
                admin,
            ],
        );
        assert_eq!(code, 0, "{out}");
        let default = out
            .lines()
            .find(|l| l.starts_with("default"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            default.contains("spiffe://cluster.local/ns/default/sa/svca"),
            "{out}"
        );
        assert!(out.lines().any(|l| l.starts_with("ROOTCA")), "{out}");
        let dump = mesh.admin(&svca, "/config_dump");
        assert!(
            !dump.contains("PRIVATE KEY"),
            "the key never leaves the proxy"
        );
    }
}

/// The status and body of a GET (or `method`) from `pod` to svca.
fn request(mesh: &Mesh, pod: &Pod, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let url = format!("http://svca{path}");
    let mut args = vec!["-X", method, "-w", "\n%{http_code}", &url];
    for h in headers {
        args.extend(["-H", h]);
    }
    let (code, out) = mesh.curl(pod, &args);
    assert_eq!(code, 0, "curl {url}: {out}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

const POLICIES: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svca-callers, namespace: default}
spec:
  selector: {matchLabels: {app: svca}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
    to: [{operation: {methods: [GET], paths: [/public/*]}}]
  - from: [{source: {namespaces: [default]}}]
    to: [{operation: {paths: [/by-header]}}]
    when: [{key: 'request.headers[x-token]', values: [secret]}]
  - from: [{source: {namespaces: [prod]}}]
    to: [{operation: {paths: [/by-namespace]}}]
  - to: [{operation: {hosts: ['svca*'], paths: [/by-host]}}]
  - to: [{operation: {hosts: [elsewhere], paths: [/by-other-host]}}]
  - to: [{operation: {ports: ['8080'], paths: [/by-port]}}]
  - to: [{operation: {ports: ['9090'], paths: [/by-other-port]}}]
  - to: [{operation: {paths: ['*.html']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: svca}}
  action: DENY
  rules:
  - to: [{operation: {paths: ['/public/admin']}}]
";

#[test]
fn authorization_policies_allow_and_deny_by_each_field() {
    let (mut mesh, svca, client, _) = small_mesh(Mtls::Strict);
    let other = mesh
        .pod("other", &[("app", "other")], Some(Sidecar::MeshProxy))
        .unwrap();
    mesh.wait_endpoints(&other, "outbound|80||svca.default.svc.cluster.local", 1)
        .unwrap();
    // No policy selects svca: everything is allowed.
    assert_eq!(request(&mesh, &other, "GET", "/anything", &[]).0, 404);
    let revision = mesh.apply_rules("create", POLICIES).unwrap();
    mesh.wait_synced(&svca, revision).unwrap();
    // (caller, method, path, headers, expected status); 404 is svca's
    // own answer (allowed through), 403 the sidecar's refusal.
    let cases: [(&Pod, &str, &str, &[&str], u16); 14] = [
        (&client, "GET", "/public/page", &[], 404),
        (&client, "POST", "/public/page", &[], 403),
        (&other, "GET", "/public/page", &[], 403),
        (&other, "GET", "/by-header", &["x-token: secret"], 404),
        (&other, "GET", "/by-header", &["x-token: wrong"], 403),
        (&other, "GET", "/by-header", &[], 403),
        (&client, "GET", "/by-namespace", &[], 403),
        (&other, "GET", "/by-host", &[], 404),
        (&other, "GET", "/by-other-host", &[], 403),
        (&other, "GET", "/by-port", &[], 404),
        (&other, "GET", "/by-other-port", &[], 403),
        (&other, "GET", "/docs/index.html", &[], 404),
        (&other, "GET", "/docs/index.txt", &[], 403),
        // DENY wins over the ALLOW rule that matches it.
        (&client, "GET", "/public/admin", &[], 403),
    ];
    for (caller, method, path, headers, expected) in cases {
        let (status, body) = request(&mesh, caller, method, path, headers);
        assert_eq!(
            status, expected,
            "{} {method} {path} {headers:?}: {body}",
            caller.ns
        );
    }
    let (_, body) = request(&mesh, &client, "GET", "/public/admin", &[]);
    assert_eq!(
        body,
        "RBAC: access denied: denied by policy ns[default]-policy[deny-admin]-rule[0]\n"
    );
    let (_, body) = request(&mesh, &other, "GET", "/nothing", &[]);
    assert!(
        body.starts_with("RBAC: access denied: no ALLOW policy matches (of ns[default]-policy[svca-callers]-rule[0]"),
        "{body}"
    );
}

#[test]
fn peer_authentication_sets_a_workloads_mode_and_a_ports() {
    let (mesh, svca, client, outsider) = small_mesh(Mtls::Permissive);
    let direct = format!("http://{}:8080/", svca.ip);
    assert_eq!(call_svca(&mesh, &outsider, &direct), Ok(404));
    let strict = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: svca, namespace: default}
spec:
  selector: {matchLabels: {app: svca}}
  mtls: {mode: STRICT}
";
    let revision = mesh.apply_rules("create", strict).unwrap();
    mesh.wait_synced(&svca, revision).unwrap();
    assert!(
        call_svca(&mesh, &outsider, &direct).is_err(),
        "svca is STRICT"
    );
    // The outsider, known to the registry without a sidecar: analyze says
    // STRICT cuts it off.
    let registry = format!(
        "{}workloads:\n- {{name: outsider, namespace: default, address: {}, labels: {{app: outsider}}}}\n",
        walk::REGISTRY,
        outsider.ip
    );
    mesh.write_registry(&registry).unwrap();
    let analyzed =
        mesh_testbed::eventually("analyze to flag STRICT", Duration::from_secs(10), || {
            let (_, out) = mesh
                .meshctl_on_node(&["analyze", "--pilot", &mesh.debug_address()])
                .unwrap();
            out.contains("STRICT for default/svca-1").then_some(out)
        });
    assert!(
        analyzed.contains("callers without a sidecar (default/outsider ("),
        "{analyzed}"
    );
    assert_eq!(call_svca(&mesh, &client, "http://svca/"), Ok(404));
    let port = format!("{strict}  portLevelMtls:\n    8080: {{mode: PERMISSIVE}}\n");
    let revision = mesh.apply_rules("replace", &port).unwrap();
    mesh.wait_synced(&svca, revision).unwrap();
    assert_eq!(
        call_svca(&mesh, &outsider, &direct),
        Ok(404),
        "port 8080 is PERMISSIVE again"
    );
    assert_eq!(call_svca(&mesh, &client, "http://svca/"), Ok(404));
}

/// What `pod`'s sidecar shows of its certificates: its own certificate's
/// serial, its issuer's serial (the chain's next), and how many roots it
/// trusts.
fn certificates(mesh: &Mesh, pod: &Pod) -> (String, String, usize) {
    let certs: serde_json::Value = serde_json::from_str(&mesh.admin(pod, "/certs")).unwrap();
    let set = &certs["certificates"][0];
    let serial = |i: usize| {
        set["cert_chain"][i]["serial_number"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let roots = set["ca_cert"].as_array().map_or(0, Vec::len);
    (serial(0), serial(1), roots)
}

/// Writes `text` to `path` in one step (the sidecars follow the file).
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits until every one of `pods` satisfies `done`, polling their `/certs`.
fn until_all(
    mesh: &Mesh,
    pods: &[&Pod],
    what: &str,
    within: Duration,
    done: impl Fn(&(String, String, usize)) -> bool,
) {
    mesh_testbed::eventually(what, within, || {
        pods.iter()
            .all(|p| done(&certificates(mesh, p)))
            .then_some(())
    });
}

/// curl in a pod at a steady rate, each answer's line kept as it comes.
struct SteadyLoad {
    curl: std::process::Child,
    reader: std::thread::JoinHandle<()>,
    answers: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// What curl prints per answer.
const ANSWER: &str = "%{http_code} %{size_download}\n";

impl SteadyLoad {
    fn start(mesh: &Mesh, client: &Pod, rate: u64, total: u64) -> SteadyLoad {
        let url = format!("http://svca/rotate?n=[1-{total}]");
        let rate = format!("{rate}/s");
        let args = ["--rate", &rate, "-o", "/dev/null", "-w", ANSWER, &url];
        let mut curl = mesh.curl_command(client, &args).spawn().unwrap();
        let out = curl.stdout.take().unwrap();
        let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let kept = answers.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                kept.lock().unwrap().push(line.unwrap_or_default());
            }
        });
        SteadyLoad {
            curl,
            reader,
            answers,
        }
    }

    fn answered(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// Waits for the end; every answer's line.
    fn finish(mut self) -> Vec<String> {
        let status = self.curl.wait().unwrap();
        self.reader.join().unwrap();
        assert!(status.success(), "curl: {status}");
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

/// The serials each of `pods` has shown, polled every 5 s until `until`
/// (seconds after `start`).
fn observe_until(
    mesh: &Mesh,
    pods: &[&Pod],
    serials: &mut [std::collections::BTreeSet<String>],
    start: std::time::Instant,
    until: u64,
) {
    while start.elapsed() < Duration::from_secs(until) {
        for (seen, p) in serials.iter_mut().zip(pods) {
            seen.insert(certificates(mesh, p).0);
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// mesh-ca away for 100 s: no certificate issued, traffic flowing on the
/// ones in force; back, renewal resumes.
fn ca_outage(mesh: &mut Mesh, pods: &[&Pod], load: &SteadyLoad, start: std::time::Instant) {
    let mut serials = vec![std::collections::BTreeSet::new(); pods.len()];
    mesh.stop_ca();
    let during = load.answered();
    let stopped = start.elapsed().as_secs();
    observe_until(mesh, pods, &mut serials, start, stopped + 100);
    assert!(
        serials.iter().all(|s| s.len() == 1),
        "no certificate is issued while mesh-ca is away: {serials:?}"
    );
    // (curl's pace drops when the machine is busy: a quarter of the
    // nominal rate says calls kept flowing; none failing is checked at
    // the end.)
    let flowed = load.answered() - during;
    assert!(
        flowed > 100 * 200 / 4,
        "traffic flowed while mesh-ca was away: {flowed} answers in 100 s"
    );
    mesh.start_ca().unwrap();
    let held: Vec<String> = pods.iter().map(|p| certificates(mesh, p).0).collect();
    until_all(
        mesh,
        pods,
        "renewal to resume",
        Duration::from_secs(90),
        |c| !held.contains(&c.0),
    );
}

/// A new root (made by openssl): trusted beside the old one, certificates
/// reissued under it, then the old one dropped.
fn rotate_root(mesh: &mut Mesh, pods: &[&Pod]) {
    let old_root = std::fs::read_to_string(mesh.roots_file()).unwrap();
    let old_issuer = certificates(mesh, pods[0]).1;
    let r2 = mesh.dir.path().join("root2");
    std::fs::create_dir(&r2).unwrap();
    let (key, cert) = (r2.join("ca-key.pem"), r2.join("ca-cert.pem"));
    self_signed(
        mesh,
        (&key, &cert),
        "/O=cluster.local/CN=mesh root 2",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ],
    );
    let new_root = std::fs::read_to_string(&cert).unwrap();
    let both = format!("{old_root}{new_root}");
    replace_file(&mesh.roots_file(), &both);
    let twenty = Duration::from_secs(20);
    until_all(mesh, pods, "both roots to be trusted", twenty, |c| c.2 == 2);
    mesh.stop_ca();
    let cadir = mesh.ca_dir();
    for (name, text) in [
        ("ca-cert.pem", new_root.clone()),
        ("ca-key.pem", std::fs::read_to_string(&key).unwrap()),
        ("cert-chain.pem", new_root.clone()),
        ("root-cert.pem", both),
    ] {
        std::fs::write(cadir.join(name), text).unwrap();
    }
    mesh.start_ca().unwrap();
    let reissued = Duration::from_secs(150);
    until_all(
        mesh,
        pods,
        "certificates under the new root",
        reissued,
        |c| !c.1.is_empty() && c.1 != old_issuer,
    );
    replace_file(&mesh.roots_file(), &new_root);
    until_all(mesh, pods, "the old root to be dropped", twenty, |c| {
        c.2 == 1
    });
}

/// Ten minutes of 200 requests/s from a sidecar to a STRICT one, each
/// sidecar's certificate living 4 minutes (renewed about every 2), a new
/// TLS connection every 20 requests; meanwhile mesh-ca is stopped for 100 s
/// (traffic keeps flowing on the certificates in force, renewal resumes
/// when it is back) and the root is rotated (new root trusted beside the
/// old, certificates reissued under it, old root dropped). Not one request
/// fails.
#[test]
fn certificates_and_roots_rotate_under_load_with_no_failed_request() {
    const SECONDS: u64 = 600;
    const RATE: u64 = 200;
    let (mut mesh, svca, client) = svca_and_client(Mtls::Strict, Some("4m"));
    let reconnect = "apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: svca-reconnect}
spec:
  destination: {name: svca}
  circuitBreaker: {simpleCb: {httpMaxRequestsPerConnection: 20}}
";
    let revision = mesh.apply_rules("create", reconnect).unwrap();
    mesh.wait_synced(&client, revision).unwrap();
    let args = ["-o", "/dev/null", "-w", ANSWER, "http://svca/rotate"];
    let (code, expected) = mesh.curl(&client, &args);
    assert!(
        code == 0 && expected.starts_with("404 "),
        "svca's own answer: {expected}"
    );
    let load = SteadyLoad::start(&mesh, &client, RATE, RATE * SECONDS);
    let start = std::time::Instant::now();
    let pods = [&svca, &client];
    let mut serials = vec![std::collections::BTreeSet::new(); 2];
    observe_until(&mesh, &pods, &mut serials, start, 150);
    ca_outage(&mut mesh, &pods, &load, start);
    rotate_root(&mut mesh, &pods);
    let rotated_at = start.elapsed();
    observe_until(&mesh, &pods, &mut serials, start, SECONDS);
    let answers = load.finish();
    let failed: Vec<&String> = answers
        .iter()
        .filter(|a| **a != expected.trim_end())
        .collect();
    assert_eq!(
        answers.len() as u64,
        RATE * SECONDS,
        "every request answered"
    );
    let shown = &failed[..failed.len().min(5)];
    assert!(failed.is_empty(), "{} failed, e.g. {shown:?}", failed.len());
    for (seen, p) in serials.iter().zip(pods) {
        assert!(
            seen.len() >= 3,
            "{}: {} certificates outside the outage and the rotation (done at {rotated_at:?})",
            p.ns,
            seen.len()
        );
    }
}

/// An unmodified Envoy takes part in mutual TLS with certificates from
/// mesh-ca, served by the SDS agent in its pod (`mesh-proxy sds`): a
/// mesh-proxy calls an Envoy sidecar, an Envoy calls a mesh-proxy
/// sidecar, both verify each other's SPIFFE identity, and the Envoy
/// sidecar refuses plaintext (STRICT).
#[test]
fn envoy_and_mesh_proxy_speak_mutual_tls_to_each_other() {
    mesh_testbed::require_root();
    let mut mesh = Mesh::new().unwrap();
    mesh.mtls = Some(Mtls::Strict);
    mesh.write_registry(walk::REGISTRY).unwrap();
    mesh.set_names(&walk::names()).unwrap();
    mesh.start_pilot().unwrap();
    let svca = mesh
        .pod(
            "svca-1",
            &[("app", "svca"), ("version", "v1")],
            Some(Sidecar::Envoy),
        )
        .unwrap();
    mesh.sample(&svca, "svca", &["--version", "v1"]).unwrap();
    let svcb = mesh
        .pod(
            "svcb-1",
            &[("app", "svcb"), ("version", "v1")],
            Some(Sidecar::MeshProxy),
        )
        .unwrap();
    mesh.sample(&svcb, "svcb", &["--version", "v1"]).unwrap();
    let by_mesh_proxy = mesh
        .pod("client-m", &[("app", "client-m")], Some(Sidecar::MeshProxy))
        .unwrap();
    let by_envoy = mesh
        .pod("client-e", &[("app", "client-e")], Some(Sidecar::Envoy))
        .unwrap();
    let outsider = mesh.pod("outsider", &[], None).unwrap();
    mesh.wait_endpoints(
        &by_mesh_proxy,
        "outbound|80||svca.default.svc.cluster.local",
        1,
    )
    .unwrap();
    mesh.wait_endpoints(&by_envoy, "outbound|80||svcb.default.svc.cluster.local", 1)
        .unwrap();
    let (status, body) = request(&mesh, &by_mesh_proxy, "GET", "/", &[]);
    assert_eq!(status, 404, "mesh-proxy → Envoy: svca's own answer: {body}");
    assert!(body.contains("service_a"), "{body}");
    let (code, out) = mesh.curl(&by_envoy, &["-w", "\n%{http_code}", "http://svcb/"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("\n200") && out.contains("service_b:v1 is serving"),
        "Envoy → mesh-proxy: {out}"
    );
    let direct = format!("http://{}:8080/", svca.ip);
    assert!(
        call_svca(&mesh, &outsider, &direct).is_err(),
        "the Envoy sidecar is STRICT"
    );
    // Envoy holds the certificate mesh-ca issued for svca's account.
    let certs: serde_json::Value = serde_json::from_str(&mesh.admin(&svca, "/certs")).unwrap();
    let uris: Vec<&str> = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
        .flat_map(|c| c["subject_alt_names"].as_array().into_iter().flatten())
        .filter_map(|n| n["uri"].as_str())
        .collect();
    assert!(
        uris.contains(&"spiffe://cluster.local/ns/default/sa/svca"),
        "{certs}"
    );
}
