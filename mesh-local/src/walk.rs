//! The seed's walk, step by step, in a [`Mesh`] of network-namespace pods:
//! the end-to-end test runs it and asserts on the [`Report`]; `meshctl
//! demo` runs it and prints what it observed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::mesh::{Mesh, Pod, Sidecar, requests};
use crate::{Doing, Error, Lines, Result};

/// The seed's rule files, as shipped under samples/istio-0.4-walk/.
pub const EGRESS_RULE: &str =
    include_str!("../../samples/istio-0.4-walk/enable-svcb-engress-rule.yaml");
/// 50/50 between svcb v0.1 and v0.2.
pub const ROUTE_50: &str =
    include_str!("../../samples/istio-0.4-walk/route-rules-svcb-v0.2-50.yaml");
/// Everything to svcb v0.2.
pub const ROUTE_100: &str =
    include_str!("../../samples/istio-0.4-walk/route-rules-svcb-v0.2-100.yaml");
/// The address the seed's msgd had; the walk writes its own msgd's instead.
pub const SEED_MSGD_IP: &str = "10.100.35.27";

/// The walk's file registry: svca and svcb, VIPs in 10.251.0.0/16; the
/// workloads register themselves through their sidecars.
pub const REGISTRY: &str = "services:
- name: svca
  namespace: default
  vip: 10.251.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080}
  selector: {app: svca}
- name: svcb
  namespace: default
  vip: 10.251.0.11
  ports:
  - {name: http, port: 80, targetPort: 8080}
  selector: {app: svcb}
";

/// The service names of [`REGISTRY`] and their VIPs, for hosts files.
pub fn names() -> [(&'static str, IpAddr); 2] {
    [
        ("svca", IpAddr::from([10, 251, 0, 10])),
        ("svcb", IpAddr::from([10, 251, 0, 11])),
    ]
}

/// What the walk saw.
#[derive(Debug, Default)]
pub struct Report {
    /// The sidecar every pod ran.
    pub sidecar: Sidecar,
    /// Step 1: `/pay`'s status and body while msgd is outside the mesh.
    pub refused: (u16, String),
    /// Step 1: requests msgd received meanwhile.
    pub msgd_before: usize,
    /// Step 2: `/pay`'s status and body once the egress rule is in.
    pub allowed: (u16, String),
    /// Step 2: the headers msgd received.
    pub msgd_headers: BTreeMap<String, String>,
    /// Step 3: of 1000 `/pay` calls, how many svcb v0.1 and v0.2 served.
    pub split: (usize, usize),
    /// Steps 3 and 4: of the 1200 `/pay` calls counted by version, how
    /// many went all the way to msgd and back.
    pub succeeded: usize,
    /// Step 3: requests each svcb replica's sidecar took in (pod, count).
    pub replicas: Vec<(String, u64)>,
    /// Step 4: failed and total requests of the load during the replace.
    pub replace_load: (usize, usize),
    /// Step 4: after the replace, of 200 calls how many v0.1 and v0.2 served.
    pub after: (usize, usize),
    /// Step 5: svca's sidecar's requests per svcb destination cluster
    /// (`outbound|80|<version>|svcb…`) after step 3.
    pub by_version: Vec<(String, u64)>,
    /// Step 3 in the standard metrics of mesh-proxy sidecars
    /// (`mesh_requests_total`), per destination version: as svca's sidecar
    /// reported the calls (source), and as svcb's sidecars did
    /// (destination, calls from svca). `None` with Envoy sidecars.
    pub standard: Option<(BTreeMap<String, u64>, BTreeMap<String, u64>)>,
    /// `/pay` calls the client made in all (each one trace).
    pub pays: usize,
    /// The pods with sidecars: name and address (where their metrics are).
    pub sidecars: Vec<(String, IpAddr)>,
    /// Packets to a VIP that escaped capture (must be 0; `None` on
    /// loopback, where nothing is captured).
    pub escaped: Option<u64>,
}

/// One expectation of the walk and whether it held.
#[derive(Debug, Clone)]
pub struct Check {
    /// It held.
    pub ok: bool,
    /// What was expected, and what was seen.
    pub what: String,
}

impl Report {
    /// What the checks that did not hold say.
    pub fn failed(&self) -> Vec<String> {
        self.checks()
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.what)
            .collect()
    }

    /// What the seed's walk promises, checked against what was seen; the
    /// test asserts them all, the demo prints them.
    pub fn checks(&self) -> Vec<Check> {
        let mut c = Vec::new();
        self.egress_checks(&mut c);
        self.traffic_checks(&mut c);
        c
    }

    /// Steps 1 and 2: refused, then allowed, with the trace headers.
    fn egress_checks(&self, c: &mut Vec<Check>) {
        let mut check = |ok: bool, what: String| c.push(Check { ok, what });
        check(
            self.refused.0 == 500
                && self.refused.1.contains("send msg error")
                && self.msgd_before == 0,
            format!(
                "before the egress rule /pay fails (got {}) and msgd gets nothing (got {})",
                self.refused.0, self.msgd_before
            ),
        );
        check(
            self.allowed.0 == 200 && self.allowed.1.contains("send msg ok"),
            format!(
                "with the egress rule /pay succeeds (got {})",
                self.allowed.0
            ),
        );
        let missing: Vec<&str> = [
            "x-request-id",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled",
            "x-b3-parentspanid",
        ]
        .into_iter()
        .filter(|h| !self.msgd_headers.contains_key(*h))
        .collect();
        check(
            missing.is_empty(),
            format!("msgd sees the trace headers (missing: {missing:?})"),
        );
    }

    /// Steps 3 to 5: the split, the replace under load, the counts, and
    /// nothing escaping capture.
    fn traffic_checks(&self, c: &mut Vec<Check>) {
        let mut check = |ok: bool, what: String| c.push(Check { ok, what });
        let (v1, v2) = self.split;
        // mesh-proxy splits by a deterministic schedule; Envoy draws at
        // random per request (1000 draws: σ ≈ 16, so ±4σ).
        let band = if self.sidecar.is_mesh_proxy() {
            470..=530
        } else {
            437..=563
        };
        check(
            v1 + v2 == 1000 && band.contains(&v1),
            format!("50/50 split per request within {band:?} (got {v1}/{v2})"),
        );
        check(
            self.succeeded == 1200,
            format!(
                "every /pay of steps 3 and 4 succeeds ({} of 1200)",
                self.succeeded
            ),
        );
        check(
            self.replicas.len() == 4 && self.replicas.iter().all(|(_, n)| *n > 0),
            format!("every svcb replica takes traffic ({:?})", self.replicas),
        );
        check(
            self.replace_load == (0, 300),
            format!(
                "no request fails while the rule is replaced ({} of {} failed)",
                self.replace_load.0, self.replace_load.1
            ),
        );
        check(
            self.after == (0, 200),
            format!(
                "after the replace all of 200 go to v0.2 (got {:?})",
                self.after
            ),
        );
        let by: BTreeMap<&str, u64> = self
            .by_version
            .iter()
            .map(|(c, n)| (c.split('|').nth(2).unwrap_or_default(), *n))
            .collect();
        check(
            by.get("v0.1") == Some(&(v1 as u64)) && by.get("v0.2") == Some(&(v2 as u64)),
            format!("svca's sidecar counts the requests per destination version ({by:?})"),
        );
        if let Some((source, destination)) = &self.standard {
            let split =
                |m: &BTreeMap<String, u64>| (m.get("v0.1").copied(), m.get("v0.2").copied());
            let want = (Some(v1 as u64), Some(v2 as u64));
            check(
                split(source) == want && split(destination) == want,
                format!(
                    "the standard metrics label the split by version on both sides (svca reported {source:?}, svcb {destination:?})"
                ),
            );
        }
        if let Some(n) = self.escaped {
            check(n == 0, format!("no packet escapes capture ({n} escaped)"));
        }
    }
}

/// Status and body of one `/pay` from `client`.
fn pay(mesh: &Mesh, client: &Pod) -> Result<(u16, String)> {
    let (code, out) = mesh.curl(client, &["-w", "\n%{http_code}", "http://svca/pay"]);
    curl_ok(code, &out)?;
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    Ok((status.parse().unwrap_or(0), body.to_owned()))
}

fn curl_ok(code: i32, out: &str) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::Command {
            command: "curl http://svca/pay".into(),
            output: format!("exit {code}: {out}"),
        })
    }
}

/// Which svcb versions served `n` calls of `/pay` on one connection, and
/// how many of the calls went all the way (svca notified the customer).
fn pay_many(mesh: &Mesh, client: &Pod, n: usize) -> Result<((usize, usize), usize)> {
    let (code, out) = mesh.curl(client, &[&format!("http://svca/pay?n=[1-{n}]")]);
    curl_ok(code, &out)?;
    let v1 = out.matches("service_b:v0.1 is serving").count();
    let v2 = out.matches("service_b:v0.2 is serving").count();
    Ok(((v1, v2), out.matches("notify customer ok").count()))
}

/// Requests `pod`'s sidecar sent to `cluster`: the sum of its endpoints'
/// `rq_total` in the admin `/clusters` page, which mesh-proxy and Envoy
/// print alike.
pub fn cluster_requests(mesh: &Mesh, pod: &Pod, cluster: &str) -> u64 {
    mesh.endpoint_stats(pod, cluster, "rq_total")
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// The walk's pods.
struct Pods {
    sidecar: Sidecar,
    msgd: Pod,
    msgd_log: std::path::PathBuf,
    msgd_url: String,
    svca: Pod,
    svcb: Vec<Pod>,
    client: Pod,
}

/// Runs the walk, telling `say` what it does and sees.
pub fn run(mesh: &mut Mesh, sidecar: Sidecar, say: &mut dyn FnMut(&str)) -> Result<Report> {
    let mut r = Report {
        sidecar,
        ..Report::default()
    };
    let mut pods = start(mesh, sidecar, say)?;
    refused(mesh, &pods, &mut r, say)?;
    egress(mesh, &pods, &mut r, say)?;
    split(mesh, &mut pods, &mut r, say)?;
    replace(mesh, &pods, &mut r, say)?;
    r.sidecars = std::iter::once(&pods.svca)
        .chain(&pods.svcb)
        .chain([&pods.client])
        .map(|p| (pod_name(p), IpAddr::V4(p.ip)))
        .collect();
    metrics(&r, say);
    r.escaped = mesh.world.escaped()?;
    if let Some(n) = r.escaped {
        say(&format!(
            "packets to service VIPs that escaped capture: {n}"
        ));
    }
    Ok(r)
}

/// A svcb pod of `version` with its sidecar and app.
fn add_svcb(
    mesh: &mut Mesh,
    sidecar: Sidecar,
    (name, version): (&str, &str),
    msgd_url: &str,
) -> Result<Pod> {
    let pod = mesh.pod(
        name,
        &[("app", "svcb"), ("version", version)],
        Some(sidecar),
    )?;
    mesh.sample(&pod, "svcb", &["--version", version, "--msgd", msgd_url])?;
    Ok(pod)
}

/// pilot, msgd outside the mesh, svca, one svcb, a client.
fn start(mesh: &mut Mesh, sidecar: Sidecar, say: &mut dyn FnMut(&str)) -> Result<Pods> {
    say(&if mesh.world.loopback {
        "starting pilot and the pods (addresses on loopback, sidecars used explicitly: no root, no capture)".to_owned()
    } else {
        format!(
            "starting pilot and the pods (network namespaces with capture, {} sidecars as uid 1337)",
            sidecar.name()
        )
    });
    mesh.write_registry(REGISTRY)?;
    mesh.set_names(&names())?;
    mesh.start_pilot()?;
    let msgd = mesh.pod("msgd", &[], None)?;
    let msgd_log = mesh.msgd(&msgd)?;
    let msgd_url = format!("http://{}:9997", msgd.ip);
    let svca = mesh.pod(
        "svca-v0.1-1",
        &[("app", "svca"), ("version", "v0.1")],
        Some(sidecar),
    )?;
    mesh.sample(&svca, "svca", &["--version", "v0.1"])?;
    let svcb = vec![add_svcb(mesh, sidecar, ("svcb-v0.1-1", "v0.1"), &msgd_url)?];
    let client = mesh.pod("client", &[("app", "client")], Some(sidecar))?;
    mesh.wait_synced(&client, 0)?;
    // Registered workloads reach their callers' sidecars.
    mesh.wait_endpoints(&client, &cluster("svca", ""), 1)?;
    mesh.wait_endpoints(&svca, &cluster("svcb", ""), 1)?;
    say(&format!(
        "up: svca-v0.1 {}, svcb-v0.1 {}, msgd {} (outside the mesh), client {}",
        svca.ip, svcb[0].ip, msgd.ip, client.ip
    ));
    Ok(Pods {
        sidecar,
        msgd,
        msgd_log,
        msgd_url,
        svca,
        svcb,
        client,
    })
}

/// Step 1: outside the mesh is refused.
fn refused(mesh: &Mesh, pods: &Pods, r: &mut Report, say: &mut dyn FnMut(&str)) -> Result<()> {
    say("step 1: curl http://svca/pay — svcb's call to msgd should be refused");
    r.refused = pay(mesh, &pods.client)?;
    r.pays += 1;
    r.msgd_before = requests(&pods.msgd_log).len();
    say(&format!(
        "  /pay answered {}; msgd received {} request(s)\n{}",
        r.refused.0,
        r.msgd_before,
        indent(&r.refused.1)
    ));
    Ok(())
}

/// Step 2: the egress rule opens msgd; msgd sees the trace headers.
fn egress(mesh: &Mesh, pods: &Pods, r: &mut Report, say: &mut dyn FnMut(&str)) -> Result<()> {
    say(&format!(
        "step 2: meshctl create -f enable-svcb-engress-rule.yaml (destination {})",
        pods.msgd.ip
    ));
    let rule = EGRESS_RULE.replace(SEED_MSGD_IP, &pods.msgd.ip.to_string());
    let revision = mesh.apply_rules("create", &rule)?;
    for p in &pods.svcb {
        mesh.wait_synced(p, revision)?;
    }
    r.allowed = pay(mesh, &pods.client)?;
    r.pays += 1;
    if let Some(last) = requests(&pods.msgd_log).last()
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(last)
        && let Some(h) = v["headers"].as_object()
    {
        r.msgd_headers = h
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
    }
    say(&format!(
        "  /pay answered {}\n{}",
        r.allowed.0,
        indent(&r.allowed.1)
    ));
    let traced: Vec<String> = r
        .msgd_headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-b3-") || *k == "x-request-id")
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    say(&format!("  msgd saw:\n{}", indent(&traced.join("\n"))));
    Ok(())
}

/// Step 3: svcb v0.2, two replicas of each version, 50/50.
fn split(
    mesh: &mut Mesh,
    pods: &mut Pods,
    r: &mut Report,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    say(
        "step 3: svcb v0.2 with two replicas of each version, then meshctl create -f route-rules-svcb-v0.2-50.yaml",
    );
    for (name, version) in [
        ("svcb-v0.1-2", "v0.1"),
        ("svcb-v0.2-1", "v0.2"),
        ("svcb-v0.2-2", "v0.2"),
    ] {
        let pod = add_svcb(mesh, pods.sidecar, (name, version), &pods.msgd_url)?;
        pods.svcb.push(pod);
    }
    let revision = mesh.apply_rules("create", ROUTE_50)?;
    mesh.wait_synced(&pods.svca, revision)?;
    for version in ["v0.1", "v0.2"] {
        mesh.wait_endpoints(&pods.svca, &cluster("svcb", version), 2)?;
    }
    let before: Vec<u64> = pods.svcb.iter().map(|p| inbound(mesh, p)).collect();
    let standard_before = standard_split(mesh, pods);
    let (split, ok) = pay_many(mesh, &pods.client, 1000)?;
    r.pays += 1000;
    r.standard = standard_before.map(|(out0, in0)| {
        let (out1, in1) = standard_split(mesh, pods).unwrap_or_default();
        (minus(out1, &out0), minus(in1, &in0))
    });
    r.split = split;
    r.succeeded += ok;
    r.replicas = pods
        .svcb
        .iter()
        .zip(before)
        .map(|(p, b)| (pod_name(p), inbound(mesh, p) - b))
        .collect();
    say(&format!(
        "  1000 × /pay: svcb v0.1 served {}, v0.2 served {}",
        r.split.0, r.split.1
    ));
    for (name, n) in &r.replicas {
        say(&format!("    {name}: {n} requests"));
    }
    for v in ["v0.1", "v0.2"] {
        let cluster = cluster("svcb", v);
        let n = cluster_requests(mesh, &pods.svca, &cluster);
        r.by_version.push((cluster, n));
    }
    Ok(())
}

/// Step 4: everything to v0.2 while traffic flows.
fn replace(mesh: &Mesh, pods: &Pods, r: &mut Report, say: &mut dyn FnMut(&str)) -> Result<()> {
    say(
        "step 4: meshctl replace -f route-rules-svcb-v0.2-100.yaml during a steady load (300 × /pay at 100/s)",
    );
    let mut load = mesh
        .curl_command(
            &pods.client,
            &[
                "--rate",
                "100/s",
                "-o",
                "/dev/null",
                "-w",
                "status=%{http_code}\n",
                "http://svca/pay?n=[1-300]",
            ],
        )
        .spawn()
        .doing(|| "start curl for the load".into())?;
    // The change lands while the load is flowing: after its first 50 answers.
    let mut lines = Lines::new(load.stdout.take().expect("piped"));
    let replaced = (|| {
        for _ in 0..50 {
            lines.wait_for("status=", Duration::from_secs(10))?;
        }
        let revision = mesh.apply_rules("replace", ROUTE_100)?;
        mesh.wait_synced(&pods.svca, revision)
    })();
    if replaced.is_err() {
        let _ = load.kill();
    }
    let status = load.wait().doing(|| "wait for the load's curl".into())?;
    replaced?;
    lines.wait_for_end(Duration::from_secs(10))?;
    let text = lines.seen.join("\n");
    let total = text.lines().filter(|l| l.starts_with("status=")).count();
    let ok = text.lines().filter(|l| *l == "status=200").count();
    r.replace_load = (300 - ok, total);
    r.pays += total;
    if ok < 300 {
        let failed: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("status=") && *l != "status=200")
            .take(3)
            .collect();
        say(&format!(
            "  failed: {failed:?}; curl exit {:?}",
            status.code()
        ));
    }
    let (after, ok) = pay_many(mesh, &pods.client, 200)?;
    r.pays += 200;
    r.after = after;
    r.succeeded += ok;
    say(&format!(
        "  during the change: {} of 300 failed; after it, of 200 × /pay svcb v0.1 served {}, v0.2 served {}",
        r.replace_load.0, r.after.0, r.after.1
    ));
    Ok(())
}

/// Step 5: metrics by destination version (as they stood after step 3's split:
/// the replace removed the v0.1 cluster, and its counters with it).
fn metrics(r: &Report, say: &mut dyn FnMut(&str)) {
    say(
        "step 5: svca's sidecar after step 3, requests by destination cluster (svcb version), from its admin /clusters",
    );
    for (cluster, n) in &r.by_version {
        say(&format!("  {cluster}: {n} requests"));
    }
    if let Some((source, destination)) = &r.standard {
        say("  in the standard metrics (mesh_requests_total) of step 3, by destination_version:");
        say(&format!("    reporter=source (svca's sidecar): {source:?}"));
        say(&format!(
            "    reporter=destination (svcb's sidecars, source_app=svca): {destination:?}"
        ));
    }
}

/// The outbound cluster of `service`'s port 80 (a version's subset, or
/// all versions with `""`), as pilot names it.
fn cluster(service: &str, version: &str) -> String {
    format!("outbound|80|{version}|{service}.default.svc.cluster.local")
}

fn inbound(mesh: &Mesh, pod: &Pod) -> u64 {
    cluster_requests(mesh, pod, "inbound|8080||")
}

/// Requests in `pod`'s sidecar's standard metrics (`mesh_requests_total`)
/// whose labels include `filter`, summed by the value of label `by`.
pub fn standard_requests(
    mesh: &Mesh,
    pod: &Pod,
    filter: &[(&str, &str)],
    by: &str,
) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for line in mesh.admin(pod, "/stats/prometheus").lines() {
        let Some((labels, value)) = line
            .strip_prefix("mesh_requests_total{")
            .and_then(|l| l.rsplit_once("} "))
        else {
            continue;
        };
        let labels: BTreeMap<&str, &str> = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        if filter.iter().all(|(k, v)| labels.get(k) == Some(v))
            && let (Some(key), Ok(n)) = (labels.get(by), value.parse::<u64>())
        {
            *sums.entry((*key).to_owned()).or_default() += n;
        }
    }
    sums
}

/// svca's calls to svcb by destination version as svca's sidecar reports
/// them, and as svcb's sidecars do; `None` unless sidecars are mesh-proxy.
fn standard_split(
    mesh: &Mesh,
    pods: &Pods,
) -> Option<(BTreeMap<String, u64>, BTreeMap<String, u64>)> {
    if !pods.sidecar.is_mesh_proxy() {
        return None;
    }
    let out = [("reporter", "source"), ("destination_service_name", "svcb")];
    let source = standard_requests(mesh, &pods.svca, &out, "destination_version");
    let mut destination = BTreeMap::new();
    for p in &pods.svcb {
        let inb = [("reporter", "destination"), ("source_app", "svca")];
        for (v, n) in standard_requests(mesh, p, &inb, "destination_version") {
            *destination.entry(v).or_default() += n;
        }
    }
    Some((source, destination))
}

/// `after` less `before`, key by key.
fn minus(
    mut after: BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    for (k, n) in after.iter_mut() {
        *n -= before.get(k).copied().unwrap_or(0).min(*n);
    }
    after
}

fn pod_name(p: &Pod) -> String {
    // sidecar~IP~NAME.NAMESPACE~…
    p.node_id
        .split('~')
        .nth(2)
        .and_then(|s| s.rsplit_once('.'))
        .map_or(p.ns.as_str(), |(name, _)| name)
        .to_owned()
}

fn indent(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
