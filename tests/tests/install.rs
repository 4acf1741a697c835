//! The install bundles on a real API server (the substrate's single-node
//! cluster): every object of every bundle passes the server's own checks
//! (the generated CRD schemas are structural), `kubectl apply -f
//! mesh.yaml` brings pilot up with nothing else (its RBAC is enough for
//! its registry), the CRDs take every sample rule and refuse bad ones at
//! the field `meshctl validate` names, pilot takes its rules from them
//! (writing back whether it accepted each, and why not), the bundle's
//! RBAC is exactly what the parts call (from the API server's audit log:
//! every call granted, every grant used), and `kubectl delete -f`
//! removes every object the bundle made. Needs `MESH_K8S_BIN` and root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mesh_testbed::eventually;
use mesh_testbed::kube::{
    TestCluster, documents, http_get, kubectl, kubectl_ok, mesh_objects, pods, render, rollout,
};
use serde_json::Value;

/// Waits (20 s at most) until pilot has marked rule `what` (in
/// `default`) with `condition` (`Accepted=True`).
fn wait_condition(c: &TestCluster, what: &str, condition: &str) {
    kubectl_ok(
        c,
        &[
            "wait",
            "-n",
            "default",
            &format!("--for=condition={condition}"),
            what,
            "--timeout=20s",
        ],
        "",
    );
}

/// Every rule of the samples the bundles define a kind for (not Gateway
/// API's, not the apps' Deployments), without its namespace.
fn sample_rules() -> Vec<(String, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples");
    let mut rules = vec![];
    for dir in [
        "rules",
        "rules/security",
        "gateway",
        "today",
        "istio-0.4-walk",
        "istio-0.4-walk/mesh",
    ] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for f in files {
            for mut d in documents(&std::fs::read_to_string(&f).unwrap()) {
                // Each use applies it in a namespace of its choosing.
                if let Some(m) = d["metadata"].as_object_mut() {
                    m.remove("namespace");
                }
                let group = d["apiVersion"].as_str().unwrap_or_default();
                if group.contains(".istio.io/") || group.starts_with("config.mesh.dev/") {
                    rules.push((f.display().to_string(), d));
                }
            }
        }
    }
    rules
}

/// Every sample rule, applied for real in a namespace of its own, gets
/// pilot's verdict (the `Accepted` condition, true or not); those of
/// Istio's kinds the mesh's group has too, also as that group's.
fn every_sample_rule_gets_a_verdict(c: &TestCluster) {
    const NS: &str = "samples";
    const TWINS: [&str; 4] = [
        "PeerAuthentication",
        "AuthorizationPolicy",
        "Sidecar",
        "Gateway",
    ];
    kubectl_ok(c, &["create", "namespace", NS], "");
    let mut rules = sample_rules();
    let twins: Vec<(String, Value)> = rules
        .iter()
        .filter(|(_, r)| {
            TWINS.contains(&r["kind"].as_str().unwrap_or_default())
                && !r["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("config.mesh.dev/")
        })
        .map(|(file, r)| {
            let mut twin = r.clone();
            twin["apiVersion"] = "config.mesh.dev/v1alpha1".into();
            (format!("{file} (as config.mesh.dev's)"), twin)
        })
        .collect();
    rules.extend(twins);
    for (file, rule) in &rules {
        let mut rule = rule.clone();
        rule["metadata"]["namespace"] = NS.into();
        let text = serde_json::to_string(&rule).unwrap();
        let (ok, out) = kubectl(c, &["apply", "-f", "-"], &text);
        assert!(ok, "{file}: {out}");
    }
    for (file, rule) in &rules {
        let group = rule["apiVersion"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let kind = rule["kind"].as_str().unwrap().to_lowercase();
        let object = format!(
            "{kind}.{group}/{}",
            rule["metadata"]["name"].as_str().unwrap()
        );
        eventually(
            &format!("a verdict on {object} ({file})"),
            Duration::from_secs(20),
            || {
                let (_, status) = kubectl(
                    c,
                    &[
                        "get",
                        "-n",
                        NS,
                        &object,
                        "-o",
                        r#"jsonpath={.status.conditions[?(@.type=="Accepted")].status}"#,
                    ],
                    "",
                );
                (status == "True" || status == "False").then_some(())
            },
        );
    }
    kubectl_ok(c, &["delete", "namespace", NS, "--wait=true"], "");
}

/// One RBAC rule as a service account holds it.
struct Grant {
    /// The Role's namespace (None: a ClusterRole's rule, any namespace).
    namespace: Option<String>,
    groups: Vec<String>,
    /// `resource` or `resource/subresource`.
    resources: Vec<String>,
    names: Vec<String>,
    verbs: Vec<String>,
}

/// One call the API server audited: (verb, group, resource[/sub],
/// namespace, name).
type Call = (String, String, String, String, String);

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The grants of each service account of `mesh-system` in `bundle`
/// (roles reached through their bindings).
fn grants(bundle: &str) -> std::collections::BTreeMap<String, Vec<Grant>> {
    let docs = documents(bundle);
    let rules_of = |kind: &str, ns: Option<&str>, name: &str| -> Vec<Value> {
        let role = docs.iter().find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"] == name
                && d["metadata"]["namespace"].as_str() == ns
        });
        let role = role.unwrap_or_else(|| panic!("{kind} {name} is bound but not in the bundle"));
        role["rules"].as_array().cloned().unwrap_or_default()
    };
    let mut by_account: std::collections::BTreeMap<String, Vec<Grant>> = Default::default();
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let ns = b["metadata"]["namespace"].as_str();
        let role_kind = b["roleRef"]["kind"].as_str().unwrap();
        let role_ns = if role_kind == "Role" { ns } else { None };
        let rules = rules_of(role_kind, role_ns, b["roleRef"]["name"].as_str().unwrap());
        for s in b["subjects"].as_array().unwrap() {
            assert_eq!(s["kind"], "ServiceAccount", "{b}");
            assert_eq!(s["namespace"], "mesh-system", "{b}");
            let account = s["name"].as_str().unwrap().to_owned();
            for r in &rules {
                by_account.entry(account.clone()).or_default().push(Grant {
                    namespace: ns.map(str::to_owned),
                    groups: strings(&r["apiGroups"]),
                    resources: strings(&r["resources"]),
                    names: strings(&r["resourceNames"]),
                    verbs: strings(&r["verbs"]),
                });
            }
        }
    }
    by_account
}

/// Each service account of `mesh-system`'s calls so far, as the API
/// server audited them (with the status code of each answer).
fn calls(
    c: &TestCluster,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<Call, i64>> {
    let mut by_account: std::collections::BTreeMap<_, std::collections::BTreeMap<Call, i64>> =
        Default::default();
    for e in c.audit_events().expect("the audit log") {
        let Some(account) = e["user"]["username"]
            .as_str()
            .and_then(|u| u.strip_prefix("system:serviceaccount:mesh-system:"))
        else {
            continue;
        };
        // Discovery (`/api`, `/apis`) is every authenticated user's.
        let o = &e["objectRef"];
        if o.is_null() {
            continue;
        }
        let field = |k: &str| o[k].as_str().unwrap_or_default().to_owned();
        let resource = match field("subresource") {
            sub if sub.is_empty() => field("resource"),
            sub => format!("{}/{sub}", field("resource")),
        };
        let call = (
            e["verb"].as_str().unwrap_or_default().to_owned(),
            field("apiGroup"),
            resource,
            field("namespace"),
            field("name"),
        );
        let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
        by_account
            .entry(account.to_owned())
            .or_default()
            .insert(call, code);
    }
    by_account
}

fn allows(g: &Grant, (verb, group, resource, namespace, name): &Call) -> bool {
    let any = |list: &[String], v: &str| list.iter().any(|x| x == v || x == "*");
    g.namespace.as_deref().is_none_or(|ns| ns == namespace)
        && any(&g.groups, group)
        && any(&g.resources, resource)
        && any(&g.verbs, verb)
        && (g.names.is_empty() || g.names.iter().any(|n| n == name))
}

/// Least privilege, both ways: every call each part made is one its RBAC
/// grants (none refused), and every grant is used — each verb on each
/// resource the cluster serves (the Gateway API's, without its CRDs, is
/// granted for when they are installed).
fn rbac_is_what_the_parts_call(c: &TestCluster, bundle: &str) {
    let grants = grants(bundle);
    let calls = calls(c);
    assert!(
        calls.contains_key("mesh-pilot") && calls.contains_key("mesh-inject"),
        "no audited calls of pilot and the injector: {:?}",
        calls.keys().collect::<Vec<_>>()
    );
    let served = kubectl_ok(c, &["api-resources", "-o", "name"], "");
    let served: std::collections::BTreeSet<&str> = served.lines().collect();
    for (account, made) in &calls {
        let granted = grants.get(account).map(Vec::as_slice).unwrap_or_default();
        for (call, code) in made {
            assert_ne!(*code, 403, "{account} was refused {call:?}");
            assert!(
                granted.iter().any(|g| allows(g, call)),
                "{account} called {call:?}, which its RBAC does not grant"
            );
        }
    }
    for (account, granted) in &grants {
        let made = calls.get(account).cloned().unwrap_or_default();
        for g in granted {
            for group in &g.groups {
                for resource in &g.resources {
                    let base = resource.split('/').next().unwrap();
                    let full = if group.is_empty() {
                        base.to_owned()
                    } else {
                        format!("{base}.{group}")
                    };
                    if !served.contains(full.as_str()) {
                        continue;
                    }
                    for verb in &g.verbs {
                        assert!(
                            made.keys()
                                .any(|(v, gr, r, ..)| v == verb && gr == group && r == resource),
                            "{account} is granted {verb} on {resource} ({group}) and never used it"
                        );
                    }
                }
            }
        }
    }
}

/// Bad rules: (what, YAML, the field path both the API server and
/// `meshctl validate` name).
const BAD: &[(&str, &str, &str)] = &[
    (
        "a string weight",
        "spec:\n  destination: {name: svcb}\n  route:\n  - labels: {version: v1}\n    weight: fifty\n",
        "spec.route[0].weight",
    ),
    (
        "a misspelt field",
        "spec:\n  destnation: {name: svcb}\n",
        "spec.destnation",
    ),
    (
        "a duration in words",
        "spec:\n  destination: {name: svcb}\n  httpReqTimeout: {simpleTimeout: {timeout: 10 seconds}}\n",
        "spec.httpReqTimeout.simpleTimeout.timeout",
    ),
];

/// The seed's rule steps and the mistakes users make, as meshctl
/// commands; `meshctl` runs one and gives its exit code, stdout and stderr.
/// What each printed, with revisions (store-specific numbers) as `N`.
fn run_script(
    scratch: &Path,
    meshctl: impl Fn(&[&str]) -> (Option<i32>, Vec<u8>, Vec<u8>),
) -> Vec<String> {
    let walk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/istio-0.4-walk");
    let file = |name: &str| walk.join(name).display().to_string();
    let (egress, split, all_v2) = (
        file("enable-svcb-engress-rule.yaml"),
        file("route-rules-svcb-v0.2-50.yaml"),
        file("route-rules-svcb-v0.2-100.yaml"),
    );
    let extra = scratch.join("svcb-v2.yaml");
    std::fs::write(
        &extra,
        "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata: {name: svcb-v2}\nspec: {destination: {name: svcb}, precedence: 3, route: [{labels: {version: v0.2}}]}\n",
    )
    .unwrap();
    let extra = extra.display().to_string();
    let stale = scratch.join("stale.yaml");
    let stale_path = stale.display().to_string();
    let mut transcript = vec![];
    let mut step = |args: &[&str]| -> String {
        let (code, out, err) = meshctl(args);
        let (out, err) = (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        );
        // YAML differs in what each store keeps of metadata (the cluster
        // names the namespace): only its resourceVersion matters here.
        let shown = if args.contains(&"yaml") {
            assert!(out.contains("resourceVersion: '"), "{out}");
            err.clone()
        } else {
            format!("{out}{err}")
        };
        let numbers = numbers_as_n(&shown);
        transcript.push(format!(
            "$ meshctl {}\nexit {code:?}\n{numbers}",
            args[..].join(" ")
        ));
        out
    };
    step(&["create", "-f", &egress, "-f", &split]);
    // Again: it exists; with a new rule in the batch, the new one is not
    // made either.
    step(&["create", "-f", &split]);
    step(&["create", "-f", &extra, "-f", &split]);
    step(&["get", "route-rule", "svcb-v2"]);
    let yaml = step(&["get", "route-rule", "route-rules-svcb", "-o", "yaml"]);
    std::fs::write(&stale, yaml).unwrap();
    step(&["replace", "-f", &all_v2]);
    // The version read before that replace is stale now.
    step(&["replace", "-f", &stale_path]);
    step(&["create", "-f", &extra]);
    step(&["get", "all"]);
    step(&["delete", "route-rule", "route-rules-svcb"]);
    step(&["delete", "route-rule", "route-rules-svcb"]);
    step(&["replace", "-f", &split]);
    step(&["get", "route-rule"]);
    transcript
}

/// `text` with every run of digits as `N` and file paths cut to their
/// names (the two runs write to different places).
fn numbers_as_n(text: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(ch);
        }
    }
    out
}

/// A workload for the injector: msgd, one replica, and its Service.
const MESHED_APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: msgd}
spec:
  replicas: 1
  selector: {matchLabels: {app: msgd}}
  template:
    metadata: {labels: {app: msgd, version: v1}}
    spec:
      containers:
      - name: msgd
        image: mesh.local/msgd:test
        imagePullPolicy: Never
        args: [--listen, "0.0.0.0:9997"]
        ports: [{containerPort: 9997}]
---
apiVersion: v1
kind: Service
metadata: {name: msgd}
spec:
  selector: {app: msgd}
  ports: [{name: http, port: 9997}]
"#;

/// A rule the CRD schema takes and the mesh refuses (weights of 150).
const TOO_HEAVY: &str = "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata: {name: too-heavy}\nspec: {destination: {name: svcb}, route: [{labels: {version: v1}, weight: 100}, {labels: {version: v2}, weight: 50}]}\n";

/// mesh-inject made its serving certificate and gave its CA to both
/// webhook configurations (and gives it back when it is taken away); the
/// API server calls it: pods in a labelled namespace get the sidecar
/// `meshctl kube-inject` adds, other pods nothing; a rule the mesh would
/// refuse is refused as it is written, in `meshctl validate`'s words.
fn webhooks_serve_with_their_own_certificate(c: &TestCluster, scratch: &Path) {
    let bundle = |kind: &str, name: &str| {
        kubectl_ok(
            c,
            &[
                "get",
                kind,
                name,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ],
            "",
        )
    };
    let secret_ca = || {
        kubectl_ok(
            c,
            &[
                "-n",
                "mesh-system",
                "get",
                "secret",
                "mesh-inject-tls",
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ],
            "",
        )
    };
    let announced = || {
        let ca = secret_ca();
        (!ca.is_empty()
            && bundle("mutatingwebhookconfiguration", "mesh-sidecar-injector") == ca
            && bundle("validatingwebhookconfiguration", "mesh-rule-validation") == ca)
            .then_some(ca)
    };
    let ca = eventually(
        "the secret's CA in both configurations",
        Duration::from_secs(10),
        announced,
    );
    // Taken away (a replace of the configuration would do that), it comes back.
    kubectl_ok(
        c,
        &[
            "patch",
            "mutatingwebhookconfiguration",
            "mesh-sidecar-injector",
            "--type=json",
            "-p",
            r#"[{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}]"#,
        ],
        "",
    );
    eventually("the CA bundle is put back", Duration::from_secs(10), || {
        (bundle("mutatingwebhookconfiguration", "mesh-sidecar-injector") == ca).then_some(())
    });
    // At two thirds of its 45 s, the certificate is replaced by one of a
    // new CA; the bundle keeps the old CA for replicas still serving it.
    let pem = |b64: &str| {
        String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap(),
        )
        .unwrap()
    };
    let rotated = eventually(
        "the certificate is replaced",
        Duration::from_secs(60),
        || {
            let now = secret_ca();
            (now != ca).then_some(now)
        },
    );
    assert!(pem(&rotated).ends_with(&pem(&ca)), "the old CA is kept");
    eventually(
        "the new CA bundle is announced",
        Duration::from_secs(10),
        || announced().filter(|now| *now != ca),
    );

    // Injection, through the API server (a server-side dry run runs the
    // webhooks and keeps nothing).
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: app, labels: {app: app, version: v1}}\nspec:\n  containers:\n  - {name: app, image: mesh.local/msgd:test, imagePullPolicy: Never}\n";
    let names = |pod: &Value| -> Vec<String> {
        ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
            .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    kubectl_ok(c, &["create", "namespace", "injected"], "");
    kubectl_ok(
        c,
        &["label", "namespace", "injected", "mesh-injection=enabled"],
        "",
    );
    let created = |ns: &str| -> Value {
        let out = kubectl_ok(
            c,
            &[
                "create",
                "-n",
                ns,
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
            ],
            pod,
        );
        serde_json::from_str(&out).unwrap()
    };
    let file = scratch.join("pod.yaml");
    std::fs::write(&file, pod).unwrap();
    let meshctl = mesh_testbed::binary("meshctl").unwrap();
    let injected = Command::new(&meshctl)
        .args(["kube-inject", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(injected.status.success());
    let by_kube_inject: Value = documents(&String::from_utf8_lossy(&injected.stdout))
        .pop()
        .unwrap();
    let by_webhook = created("injected");
    assert!(names(&by_webhook).len() > 1, "{by_webhook}");
    assert_eq!(names(&by_webhook), names(&by_kube_inject));
    assert_eq!(names(&created("default")), ["app"]);
    kubectl_ok(c, &["delete", "namespace", "injected", "--wait=false"], "");

    // Validation: refused as written, the reason as meshctl words it.
    let mesh_rule = TOO_HEAVY
        .replace("config.istio.io/v1alpha2", "config.mesh.dev/v1alpha1")
        .replace("too-heavy", "too-heavy-now");
    let (ok, server) = kubectl(c, &["apply", "-n", "default", "-f", "-"], &mesh_rule);
    assert!(!ok, "the API server took it: {server}");
    let file = scratch.join("too-heavy.yaml");
    std::fs::write(&file, &mesh_rule).unwrap();
    let local = Command::new(&meshctl)
        .args(["validate", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let local = String::from_utf8_lossy(&local.stderr);
    let first = local.lines().next().unwrap();
    // `FILE:LINE:COL: document N: PATH: MESSAGE`: the webhook says
    // `PATH: MESSAGE`.
    let words = &first[first.find(": spec.route").expect(first) + 2..];
    assert!(server.contains("the mesh refuses this rule"), "{server}");
    assert!(
        server.contains(words),
        "{server}\nvs meshctl validate: {words}"
    );
}

#[test]
fn the_bundle_installs_pilot_takes_rules_and_uninstalls_cleanly() {
    let msgd = mesh_testbed::binary("msgd").unwrap();
    let images = mesh_cluster::images::mesh(msgd.parent().unwrap(), "mesh.local", "test").unwrap();
    let c = TestCluster::up(&images);
    let dir = tempfile::tempdir().unwrap();
    // Short-lived, so the test sees mesh-inject replace its certificate;
    // two pilots, so it sees one lead the status writes.
    render(dir.path(), &["inject.certValidity=45s", "pilot.replicas=2"]);
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let (mesh, istio) = (read("mesh.yaml"), read("istio-api.yaml"));

    // The other bundles pass the server's checks without being kept
    // (the addons' objects go in mesh.yaml's namespace: created first).
    kubectl_ok(&c, &["create", "namespace", "mesh-system"], "");
    for name in [
        "mesh.yaml",
        "istio-api.yaml",
        "addons/prometheus.yaml",
        "addons/grafana.yaml",
        "addons/zipkin.yaml",
        "addons/servicegraph.yaml",
    ] {
        let out = kubectl_ok(&c, &["apply", "--dry-run=server", "-f", "-"], &read(name));
        assert!(out.contains("(server dry run)"), "{name}: {out}");
    }
    kubectl_ok(
        &c,
        &["delete", "namespace", "mesh-system", "--wait=true"],
        "",
    );

    // Applied (Istio's groups first, for rules written for Istio),
    // mesh.yaml brings pilot up with nothing else; pilot's registry (with
    // the bundle's RBAC) sees the cluster, its own Service too.
    kubectl_ok(&c, &["apply", "-f", "-"], &istio);
    kubectl_ok(
        &c,
        &[
            "wait",
            "--for=condition=Established",
            "crd",
            "routerules.config.istio.io",
            "--timeout=60s",
        ],
        "",
    );
    // A rule written before the mesh (and its validation) is installed:
    // the schema takes it, pilot will refuse it and say why.
    kubectl_ok(&c, &["apply", "-n", "default", "-f", "-"], TOO_HEAVY);
    kubectl_ok(&c, &["apply", "-f", "-"], &mesh);
    kubectl_ok(
        &c,
        &[
            "wait",
            "--for=condition=Established",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=mesh",
            "--timeout=60s",
        ],
        "",
    );
    rollout(&c, "mesh-system", "mesh-pilot", 90);
    rollout(&c, "mesh-system", "mesh-inject", 90);
    rollout(&c, "mesh-system", "mesh-ingressgateway", 90);
    webhooks_serve_with_their_own_certificate(&c, dir.path());
    let pilot_ip = pods(
        &c,
        "mesh-system",
        "app=mesh-pilot",
        "{.items[0].status.podIP}",
    );
    let registry = eventually(
        "pilot's registry lists its own service",
        Duration::from_secs(20),
        || {
            let body = http_get(&c, &format!("{pilot_ip}:15014"), "/debug/registryz").ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            v["services"]
                .as_array()?
                .iter()
                .any(|s| s["name"] == "mesh-pilot" && s["namespace"] == "mesh-system")
                .then_some(v)
        },
    );
    let pilot_pod = registry["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["address"] == pilot_ip.as_str())
        .expect("pilot's own pod is a workload");
    assert_eq!(pilot_pod["serviceAccount"], "mesh-pilot");
    assert_eq!(pilot_pod["health"], "healthy");

    // An injected workload runs: the webhook gives its pod the sidecar of
    // the image the mesh ConfigMap names, the init container captures in
    // the pod's namespace, and the sidecar finds pilot by its Service name
    // and takes its configuration.
    kubectl_ok(&c, &["create", "namespace", "meshed"], "");
    kubectl_ok(
        &c,
        &["label", "namespace", "meshed", "mesh-injection=enabled"],
        "",
    );
    kubectl_ok(&c, &["apply", "-n", "meshed", "-f", "-"], MESHED_APP);
    rollout(&c, "meshed", "msgd", 120);
    let images = pods(
        &c,
        "meshed",
        "app=msgd",
        "{.items[0].spec.containers[*].image}",
    );
    assert_eq!(images, "mesh.local/msgd:test mesh.local/mesh-proxy:test");
    // (Connected to either pilot.)
    let pilot_ips = pods(
        &c,
        "mesh-system",
        "app=mesh-pilot",
        "{.items[*].status.podIP}",
    );
    let synced = eventually(
        "the sidecar synced with pilot",
        Duration::from_secs(30),
        || {
            let proxies: Vec<Value> = pilot_ips
                .split_whitespace()
                .filter_map(|ip| http_get(&c, &format!("{ip}:15014"), "/debug/syncz").ok())
                .filter_map(|body| serde_json::from_str::<Vec<Value>>(&body).ok())
                .flatten()
                .collect();
            proxies.into_iter().find(|p| {
                p["namespace"] == "meshed"
                    && p["states"]
                        .as_object()
                        .is_some_and(|s| !s.is_empty() && s.values().all(|v| v == "SYNCED"))
            })
        },
    );
    assert_eq!(synced["workload"], "msgd", "{synced}");
    assert_eq!(synced["labels"]["version"], "v1", "{synced}");

    // Every sample rule is a valid object of its CRD.
    let rules = sample_rules();
    assert!(rules.len() >= 20, "{} sample rules", rules.len());
    for (file, rule) in &rules {
        let text = serde_json::to_string(rule).unwrap();
        let (ok, out) = kubectl(
            &c,
            &["apply", "-n", "default", "--dry-run=server", "-f", "-"],
            &text,
        );
        assert!(ok, "{file} ({}): {out}", rule["metadata"]["name"]);
    }
    // A bad rule is refused by the API server and by `meshctl validate`,
    // both naming the same field.
    let meshctl = mesh_testbed::binary("meshctl").unwrap();
    for (what, spec, path) in BAD {
        let rule = format!(
            "apiVersion: config.mesh.dev/v1alpha1\nkind: RouteRule\nmetadata: {{name: bad}}\n{spec}"
        );
        let (ok, server) = kubectl(&c, &["apply", "-n", "default", "-f", "-"], &rule);
        assert!(!ok, "{what}: the API server took it: {server}");
        assert!(server.contains(path), "{what}: {server}");
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, &rule).unwrap();
        let local = Command::new(&meshctl)
            .args(["validate", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let local_err = String::from_utf8_lossy(&local.stderr);
        assert_eq!(local.status.code(), Some(1), "{what}: {local_err}");
        assert!(
            local_err.contains(&format!(": {path}: ")),
            "{what}: {local_err}"
        );
    }
    // `kubectl get` prints the kind's columns.
    kubectl_ok(
        &c,
        &["apply", "-n", "default", "-f", "-"],
        "apiVersion: config.mesh.dev/v1alpha1\nkind: RouteRule\nmetadata: {name: svcb-default}\nspec: {destination: {name: svcb}, precedence: 2, route: [{labels: {version: v1}}]}\n",
    );
    let table = kubectl_ok(
        &c,
        &["get", "routerules.config.mesh.dev", "-n", "default"],
        "",
    );
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "DESTINATION", "PRECEDENCE", "ACCEPTED", "AGE"]
    );
    assert!(table.contains("svcb-default   svcb          2"), "{table}");

    // pilot reads the rules from the cluster and says, on each, whether
    // it took it: the valid one (and the seed's, under Istio's group) in
    // force, one the schema allows but the mesh refuses with its reason.
    let seed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../samples/istio-0.4-walk/route-rules-svcb-v0.2-50.yaml"),
    )
    .unwrap();
    kubectl_ok(&c, &["apply", "-n", "default", "-f", "-"], &seed);
    for (what, condition) in [
        ("routerule.config.mesh.dev/svcb-default", "Accepted=True"),
        ("routerule.config.istio.io/too-heavy", "Accepted=False"),
    ] {
        wait_condition(&c, what, condition);
    }
    let seed_name = documents(&seed)[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_condition(
        &c,
        &format!("routerule.config.istio.io/{seed_name}"),
        "Accepted=True",
    );
    let why = kubectl_ok(
        &c,
        &[
            "get",
            "-n",
            "default",
            "routerule.config.istio.io/too-heavy",
            "-o",
            "jsonpath={.status.conditions[0].message}",
        ],
        "",
    );
    assert!(why.contains("spec.route"), "{why}");
    let in_force = |c: &TestCluster| -> Option<Vec<String>> {
        let body = http_get(c, &format!("{pilot_ip}:15014"), "/debug/configz").ok()?;
        let rules: Vec<Value> = serde_json::from_str(&body).ok()?;
        Some(
            rules
                .iter()
                .map(|r| {
                    format!(
                        "{} {}",
                        r["apiVersion"].as_str().unwrap(),
                        r["metadata"]["name"].as_str().unwrap()
                    )
                })
                .collect(),
        )
    };
    let rules = in_force(&c).expect("configz answers");
    assert_eq!(
        rules,
        [
            format!("config.istio.io/v1alpha2 {seed_name}"),
            "config.mesh.dev/v1alpha1 svcb-default".to_owned(),
        ]
    );
    // A deleted rule leaves pilot's configuration.
    kubectl_ok(
        &c,
        &[
            "delete",
            "-n",
            "default",
            "routerule.config.mesh.dev/svcb-default",
        ],
        "",
    );
    eventually("svcb-default out of force", Duration::from_secs(5), || {
        (in_force(&c)?.len() == 1).then_some(())
    });

    // meshctl writes rules to the cluster (KUBECONFIG set) with the words
    // and outcomes of its local store, and pilot puts them in force.
    kubectl_ok(
        &c,
        &[
            "delete",
            "-n",
            "default",
            "routerules.config.istio.io,routerules.config.mesh.dev",
            "--all",
        ],
        "",
    );
    let local_store = dir.path().join("store");
    let local = run_script(dir.path(), |args| {
        let out = Command::new(&meshctl)
            .args(args)
            .env("MESH_STORE", &local_store)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        (out.status.code(), out.stdout, out.stderr)
    });
    let in_cluster = run_script(dir.path(), |args| {
        let out = mesh_testbed::kube::meshctl(&c, args);
        (out.status.code(), out.stdout, out.stderr)
    });
    assert_eq!(in_cluster, local, "meshctl on the cluster and locally");
    for (step, want) in [
        (0, "exit Some(0)\nCreated config egress-rule/default/"),
        (
            1,
            "exit Some(1)\nError: route-rule/default/route-rules-svcb already exists",
        ),
        (
            3,
            "exit Some(1)\nError: route-rule default/svcb-vN not found",
        ),
        (
            5,
            "exit Some(0)\nUpdated config route-rule/default/route-rules-svcb",
        ),
        (6, "was changed by someone else"),
        (
            10,
            "exit Some(1)\nError: route-rule/default/route-rules-svcb does not exist",
        ),
    ] {
        assert!(local[step].contains(want), "step {step}: {}", local[step]);
    }
    // The seed's rules went under Istio's group (installed) and are in force.
    eventually("meshctl's rules in force", Duration::from_secs(10), || {
        let mut rules = in_force(&c)?;
        rules.sort();
        (rules
            == [
                "config.istio.io/v1alpha2 enable-svcb-engress-rule".to_owned(),
                "config.istio.io/v1alpha2 svcb-v2".to_owned(),
            ])
        .then_some(())
    });
    wait_condition(
        &c,
        "egressrule.config.istio.io/enable-svcb-engress-rule",
        "Accepted=True",
    );

    // Two pilots serve; the Lease's holder writes the status. When it
    // goes, another takes the Lease over and writes the next verdict.
    let pilots = || -> Vec<String> {
        let names = pods(
            &c,
            "mesh-system",
            "app=mesh-pilot",
            "{.items[*].metadata.name}",
        );
        names.split_whitespace().map(str::to_owned).collect()
    };
    let holder = || {
        kubectl_ok(
            &c,
            &[
                "-n",
                "mesh-system",
                "get",
                "lease/mesh-pilot",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            "",
        )
    };
    let before = pilots();
    assert_eq!(before.len(), 2, "{before:?}");
    let leader = holder();
    assert!(
        before.contains(&leader),
        "the Lease is held by {leader}, not a pilot of {before:?}"
    );
    kubectl_ok(
        &c,
        &["-n", "mesh-system", "delete", "pod", &leader, "--wait=true"],
        "",
    );
    let successor = eventually(
        "another pilot to take the Lease",
        Duration::from_secs(40),
        || {
            let h = holder();
            (h != leader && !h.is_empty()).then_some(h)
        },
    );
    // The surviving pilot, or the pod the Deployment made in the
    // leader's place, whichever asked first.
    let now = pilots();
    assert!(
        now.contains(&successor),
        "{successor} holds the Lease, not a running pilot of {now:?}"
    );
    kubectl_ok(
        &c,
        &["apply", "-n", "default", "-f", "-"],
        "apiVersion: config.mesh.dev/v1alpha1\nkind: RouteRule\nmetadata: {name: after-failover}\nspec: {destination: {name: svcb}, route: [{labels: {version: v1}}]}\n",
    );
    wait_condition(
        &c,
        "routerule.config.mesh.dev/after-failover",
        "Accepted=True",
    );

    // Every sample rule kept this time (each kind's status written), then
    // the bundle's RBAC compared with the calls the mesh made.
    every_sample_rule_gets_a_verdict(&c);
    rbac_is_what_the_parts_call(&c, &mesh);

    // Deleted, nothing the bundles made is left (rules go with their CRDs).
    kubectl_ok(&c, &["delete", "--wait=true", "-f", "-"], &istio);
    kubectl_ok(&c, &["delete", "--wait=true", "-f", "-"], &mesh);
    let left = mesh_objects(&c);
    let left: Vec<&str> = left.lines().filter(|l| l.contains('/')).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let (exists, _) = kubectl(&c, &["get", "namespace", "mesh-system"], "");
    assert!(!exists, "mesh-system is still there");
}
