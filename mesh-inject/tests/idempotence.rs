//! Injecting twice equals injecting once, for generated workloads of every
//! kind; and re-injecting with a new configuration equals injecting it fresh.

use mesh_inject::{MeshSettings, Options, SidecarMode, inject_object};
use proptest::prelude::*;
use serde_json::{Value, json};

const KINDS: [(&str, &str); 9] = [
    ("v1", "Pod"),
    ("v1", "ReplicationController"),
    ("apps/v1", "Deployment"),
    ("extensions/v1beta1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "ReplicaSet"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
];

fn name() -> impl Strategy<Value = String> {
    // Names the mesh reserves are refused (tested elsewhere); keep them out.
    "[a-z][a-z0-9-]{0,8}[a-z0-9]".prop_filter("reserved", |n| !n.starts_with("mesh-"))
}

fn container() -> impl Strategy<Value = Value> {
    (name(), proptest::option::of(1u16..65535)).prop_map(|(n, port)| {
        let mut c = json!({"name": n, "image": format!("example.com/{n}:1")});
        if let Some(p) = port {
            c["ports"] = json!([{"containerPort": p}]);
        }
        c
    })
}

fn pod_template() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(container(), 1..4),
        proptest::collection::vec(container(), 0..3),
        proptest::collection::btree_map(name(), name(), 0..3),
        proptest::collection::btree_map(name(), name(), 0..3),
        proptest::collection::vec(name(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(containers, init, labels, annotations, volumes, host_network)| {
                let mut spec = json!({"containers": containers});
                if !init.is_empty() {
                    spec["initContainers"] = json!(init);
                }
                if !volumes.is_empty() {
                    spec["volumes"] = Value::Array(
                        volumes
                            .iter()
                            .map(|v| json!({"name": v, "emptyDir": {}}))
                            .collect(),
                    );
                }
                if host_network {
                    spec["hostNetwork"] = json!(true);
                }
                let mut t = json!({"spec": spec});
                if !labels.is_empty() || !annotations.is_empty() {
                    t["metadata"] = json!({"labels": labels, "annotations": annotations});
                }
                t
            },
        )
}

fn workload() -> impl Strategy<Value = Value> {
    (0..KINDS.len(), name(), pod_template()).prop_map(|(k, n, template)| {
        let (api_version, kind) = KINDS[k];
        let mut obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": n}});
        match kind {
            "Pod" => {
                if let Some(m) = template.get("metadata") {
                    obj["metadata"]["labels"] = m["labels"].clone();
                }
                obj["spec"] = template["spec"].clone();
            }
            "CronJob" => obj["spec"] = json!({"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}),
            _ => obj["spec"] = json!({"template": template}),
        }
        obj
    })
}

fn config() -> impl Strategy<Value = MeshSettings> {
    (
        any::<bool>(),
        "[a-z]{1,6}",
        proptest::collection::vec(1u16..65535, 0..3),
    )
        .prop_map(|(native, tag, ports)| MeshSettings {
            sidecar_mode: if native {
                SidecarMode::Native
            } else {
                SidecarMode::Container
            },
            tag,
            exclude_inbound_ports: ports,
            ..MeshSettings::default()
        })
}

fn inject(mut v: Value, cfg: &MeshSettings) -> Value {
    inject_object(&mut v, cfg, &Options::default()).unwrap();
    v
}

fn count_named(v: &Value, name: &str) -> usize {
    match v {
        Value::Object(m) => {
            let here = usize::from(
                m.get("name").and_then(Value::as_str) == Some(name) && m.contains_key("image"),
            );
            here + m.values().map(|c| count_named(c, name)).sum::<usize>()
        }
        Value::Array(a) => a.iter().map(|c| count_named(c, name)).sum(),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn injecting_twice_equals_injecting_once(w in workload(), cfg in config()) {
        let once = inject(w.clone(), &cfg);
        let twice = inject(once.clone(), &cfg);
        prop_assert_eq!(&once, &twice);
        let host_network = serde_json::to_string(&w).unwrap().contains("\"hostNetwork\":true");
        prop_assert_eq!(count_named(&once, "mesh-proxy"), usize::from(!host_network));
    }

    #[test]
    fn reinjecting_with_new_config_equals_fresh_injection(w in workload(), a in config(), b in config()) {
        let fresh = inject(w.clone(), &b);
        let again = inject(inject(w, &a), &b);
        prop_assert_eq!(fresh, again);
    }
}
