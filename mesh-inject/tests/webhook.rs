//! The webhook as the API server uses it: the real binary over HTTPS, a
//! real TLS client (curl) posting an AdmissionReview in the API server's
//! `admission.k8s.io/v1` format, and the patch applied to the pod.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use mesh_inject::{MeshSettings, Options, inject_manifests};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};

/// The webhook process; killed when dropped, also when a test fails.
struct Webhook {
    child: Child,
    url: String,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Webhook {
    start_with(None)
}

/// The webhook, with `--mesh-config FILE` when given.
fn start_with(mesh_config: Option<&Path>) -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mesh test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![
        "127.0.0.1".into(),
        "mesh-inject.mesh-system.svc".into(),
    ])
    .unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "mesh-inject.mesh-system.svc");
    let leaf = leaf.signed_by(&key, &ca).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_path = write("ca.pem", ca.pem());
    let cert = write("tls.crt", leaf.pem());
    let key = write("tls.key", key.serialize_pem());
    let mut command = Command::new(env!("CARGO_BIN_EXE_mesh-inject"));
    command
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key);
    if let Some(file) = mesh_config {
        command.arg("--mesh-config").arg(file);
    }
    let mut child = command
        .env("MESH_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let line = mesh_runtime::log::json_message(&line).unwrap_or(line);
    let url = line
        .trim()
        .strip_prefix("mesh-inject listening on ")
        .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"))
        .to_owned();
    Webhook {
        child,
        url,
        ca: ca_path,
        _dir: dir,
    }
}

/// POSTs a review with curl, verifying the server against the test CA.
fn post(hook: &Webhook, review: &Value) -> (u16, String) {
    post_to(hook, &hook.url, review)
}

/// POSTs a review to `url` (the webhook's inject URL, or another path of it).
fn post_to(hook: &Webhook, url: &str, review: &Value) -> (u16, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--cacert"])
        .arg(&hook.ca)
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
            "-w",
            "\n%{http_code}",
        ])
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(review.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "curl failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

fn fixture() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission-review-pod.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn decode_patch(response: &Value) -> json_patch::Patch {
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn pod_review_gets_the_patch_kube_inject_would_apply() {
    let hook = start();
    let review = fixture();
    let (code, body) = post(&hook, &review);
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true);

    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &decode_patch(response)).unwrap();

    // kube-inject on the same pod, as YAML through the same path the CLI takes.
    let yaml = serde_yaml::to_string(&review["request"]["object"]).unwrap();
    let offline = inject_manifests(
        "pod.yaml",
        &yaml,
        &MeshSettings::default(),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(pod, offline.documents[0]);
    let names: Vec<_> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, [json!("svcb"), json!("mesh-proxy")]);
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "mesh-init");
}

#[test]
fn other_kinds_opted_out_pods_and_bad_pods() {
    let hook = start();

    let mut service = fixture();
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    let (code, body) = post(&hook, &service);
    assert_eq!(code, 200);
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        r["response"],
        json!({"uid": service["request"]["uid"], "allowed": true})
    );

    let mut opted_out = fixture();
    opted_out["request"]["object"]["metadata"]["annotations"] =
        json!({"sidecar.mesh.dev/inject": "false"});
    let r: Value = serde_json::from_str(&post(&hook, &opted_out).1).unwrap();
    assert_eq!(
        r["response"],
        json!({"uid": opted_out["request"]["uid"], "allowed": true})
    );

    let mut reserved = fixture();
    reserved["request"]["object"]["spec"]["containers"][0]["name"] = json!("mesh-proxy");
    let r: Value = serde_json::from_str(&post(&hook, &reserved).1).unwrap();
    assert_eq!(r["response"]["allowed"], false);
    assert_eq!(
        r["response"]["status"]["message"],
        "mesh sidecar injection failed: spec.containers[0].name: the name `mesh-proxy` is reserved for what the mesh injects; rename it"
    );

    let (code, body) = post(&hook, &json!({"kind": "AdmissionReview"}));
    assert_eq!(
        (code, body.as_str()),
        (400, "request: missing: every AdmissionReview has one\n")
    );
}

#[test]
fn rule_reviews_are_allowed_or_refused_as_meshctl_validate_words_them() {
    let hook = start();
    let url = hook.url.replace("/inject", "/validate");
    let review = |spec: Value| {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0d3a-rule",
                "kind": {"group": "config.istio.io", "version": "v1alpha2", "kind": "RouteRule"},
                "operation": "CREATE",
                "namespace": "shop",
                "object": {
                    "apiVersion": "config.istio.io/v1alpha2",
                    "kind": "RouteRule",
                    "metadata": {
                        "name": "svcb-split",
                        "namespace": "shop",
                        "uid": "1f0c",
                        "creationTimestamp": "2026-12-04T10:00:00Z",
                        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                    },
                    "spec": spec,
                },
            },
        })
    };
    let answer = |spec: Value| -> Value {
        let (code, body) = post_to(&hook, &url, &review(spec));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["response"].clone()
    };
    let good = answer(json!({
        "destination": {"name": "svcb"},
        "route": [{"labels": {"version": "v1"}, "weight": 50}, {"labels": {"version": "v2"}, "weight": 50}],
    }));
    assert_eq!(good, json!({"uid": "0d3a-rule", "allowed": true}));
    let heavy = answer(json!({
        "destination": {"name": "svcb"},
        "route": [{"labels": {"version": "v1"}, "weight": 100}, {"labels": {"version": "v2"}, "weight": 50}],
    }));
    assert_eq!(heavy["allowed"], false);
    assert_eq!(heavy["status"]["code"], 422);
    assert_eq!(
        heavy["status"]["message"],
        "the mesh refuses this rule:\nspec.route: weights sum to 150; they must sum to 100"
    );
    // A field the mesh does not act on is refused too, by its path.
    let unacted = answer(json!({
        "destination": {"name": "svcb", "labels": {"version": "v1"}},
        "route": [{"labels": {"version": "v1"}}],
    }));
    let message = unacted["status"]["message"].as_str().unwrap_or_default();
    assert_eq!(unacted["allowed"], false, "{unacted}");
    assert!(
        message.contains("\nspec.destination.labels: ") && message.contains("not supported yet"),
        "{message}"
    );
}

/// The sidecar image a pod review is answered with.
fn injected_proxy_image(hook: &Webhook) -> String {
    let review = fixture();
    let (code, body) = post(hook, &review);
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &decode_patch(&answer["response"])).unwrap();
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mesh-proxy")
        .map(|c| c["image"].as_str().unwrap().to_owned())
        .unwrap()
}

/// The mesh ConfigMap is a volume the kubelet rewrites (a new `..data`
/// folder, the link swapped): the next review uses the new configuration
/// with no restart, and a bad one leaves the last good one in force.
#[test]
fn a_changed_mesh_configuration_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The atomic writer's layout: mesh.yaml -> ..data/mesh.yaml.
    let write = |version: &str, text: &str| {
        let data = dir.path().join(format!("..{version}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("mesh.yaml"), text).unwrap();
        let link = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &link).unwrap();
        std::fs::rename(&link, dir.path().join("..data")).unwrap();
    };
    write("v1", "hub: registry.example.com/mesh\ntag: '1.0'\n");
    let file = dir.path().join("mesh.yaml");
    std::os::unix::fs::symlink("..data/mesh.yaml", &file).unwrap();
    let hook = start_with(Some(&file));
    assert_eq!(
        injected_proxy_image(&hook),
        "registry.example.com/mesh/mesh-proxy:1.0"
    );

    write("v2", "hub: registry.example.com/mesh\ntag: '1.1'\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while injected_proxy_image(&hook) != "registry.example.com/mesh/mesh-proxy:1.1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the new tag never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A configuration the injector refuses: the last good one stays.
    write("v3", "hub: registry.example.com/mesh\ntag: [not, a, tag]\n");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        injected_proxy_image(&hook),
        "registry.example.com/mesh/mesh-proxy:1.1"
    );
}
