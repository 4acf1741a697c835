//! Injection as a pure function over Kubernetes manifests.
//!
//! Documents are handled as JSON values, so fields the injector does not
//! know (newer API fields, other tools' extensions) pass through untouched;
//! what it adds is built from the Kubernetes API types in [`crate::template`].

use serde_json::{Map, Value, json};

use mesh_rules::{FieldError, FieldPath};

use crate::config::{MeshSettings, SidecarMode};
use crate::template::{
    self, INIT_CONTAINER, INJECT_ANNOTATION, PODINFO_VOLUME, PROXY_CONTAINER, PROXY_VOLUME,
    STATUS_ANNOTATION,
};

/// Options of one injection run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Convert workloads in removed API versions (e.g. `extensions/v1beta1`
    /// Deployments) to their current version.
    pub upgrade_apis: bool,
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The sidecar was added (or refreshed, when it was there already).
    Injected,
    /// A workload that was left alone, and why.
    Skipped(String),
    /// Not a workload (a Service, a ConfigMap, …): passed through unchanged.
    PassedThrough,
}

/// The result for one object (a `List` gives one per item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Kind/name`.
    pub object: String,
    /// What happened.
    pub action: Action,
    /// Things the user should know (e.g. a removed API version).
    pub warnings: Vec<String>,
}

fn err(path: &FieldPath, message: impl Into<String>) -> FieldError {
    FieldError::new(path.clone(), message)
}

/// Where the pod template of a workload kind is, and the API versions the
/// kind is served in (the first is current).
fn workload(kind: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    const TEMPLATE: &[&str] = &["spec", "template"];
    Some(match kind {
        "Pod" => (&[], &["v1"]),
        "ReplicationController" => (TEMPLATE, &["v1"]),
        "Deployment" => (
            TEMPLATE,
            &[
                "apps/v1",
                "extensions/v1beta1",
                "apps/v1beta1",
                "apps/v1beta2",
            ],
        ),
        "StatefulSet" => (TEMPLATE, &["apps/v1", "apps/v1beta1", "apps/v1beta2"]),
        "DaemonSet" | "ReplicaSet" => {
            (TEMPLATE, &["apps/v1", "extensions/v1beta1", "apps/v1beta2"])
        }
        "Job" => (TEMPLATE, &["batch/v1"]),
        "CronJob" => (
            &["spec", "jobTemplate", "spec", "template"],
            &["batch/v1", "batch/v1beta1"],
        ),
        _ => return None,
    })
}

fn name_of(obj: &Value) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("?");
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    format!("{kind}/{name}")
}

fn object_mut<'a>(
    v: &'a mut Value,
    path: &FieldPath,
    what: &str,
) -> Result<&'a mut Map<String, Value>, FieldError> {
    v.as_object_mut()
        .ok_or_else(|| err(path, format!("{what} must be a mapping")))
}

/// Walks to `keys` under `v`, creating empty mappings on the way.
fn descend<'a>(
    mut v: &'a mut Value,
    mut path: FieldPath,
    keys: &[&str],
) -> Result<(&'a mut Value, FieldPath), FieldError> {
    for k in keys {
        let here = path.clone();
        path = path.key(*k);
        let map = object_mut(
            v,
            &here,
            if here.is_root() {
                "the document"
            } else {
                "this field"
            },
        )?;
        v = map
            .entry(k.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok((v, path))
}

/// Injects one document (a workload, a `List`, or anything else, which
/// passes through). The value is changed in place.
pub fn inject_object(
    obj: &mut Value,
    cfg: &MeshSettings,
    opts: &Options,
) -> Result<Vec<Report>, FieldError> {
    inject_at(obj, FieldPath::root(), cfg, opts)
}

fn inject_at(
    obj: &mut Value,
    path: FieldPath,
    cfg: &MeshSettings,
    opts: &Options,
) -> Result<Vec<Report>, FieldError> {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" || kind.ends_with("List") && obj.get("items").is_some_and(Value::is_array) {
        let mut reports = Vec::new();
        let items = obj.get_mut("items").and_then(Value::as_array_mut);
        for (i, item) in items.into_iter().flatten().enumerate() {
            reports.extend(inject_at(item, path.key("items").index(i), cfg, opts)?);
        }
        return Ok(reports);
    }
    let object = name_of(obj);
    let Some((template_path, versions)) = workload(&kind) else {
        return Ok(vec![Report {
            object,
            action: Action::PassedThrough,
            warnings: vec![],
        }]);
    };
    if !versions.contains(&api_version.as_str()) {
        return Err(err(
            &path.key("apiVersion"),
            format!(
                "`{api_version}` is not an API version of {kind}: use {}",
                versions.join(" or ")
            ),
        ));
    }
    let mut warnings = Vec::new();
    let current = versions[0];
    if api_version != current {
        if opts.upgrade_apis {
            upgrade(obj, &path, current, template_path)?;
            warnings.push(format!(
                "{object}: converted from {api_version} to {current}"
            ));
        } else {
            warnings.push(format!(
                "{object}: {api_version} {kind} is not served by Kubernetes 1.16 and newer; use {current} (meshctl kube-inject --upgrade-apis converts it)"
            ));
        }
    }
    let workload = workload_name(&kind, obj);
    let (template, tpath) = descend(obj, path.clone(), template_path)?;
    let action = inject_template(template, &tpath, cfg, &workload)?;
    Ok(vec![Report {
        object,
        action,
        warnings,
    }])
}

/// Converts a workload to `current` (e.g. `apps/v1`), adding the selector
/// apps/v1 requires from the pod template's labels.
fn upgrade(
    obj: &mut Value,
    path: &FieldPath,
    current: &str,
    template_path: &[&str],
) -> Result<(), FieldError> {
    obj["apiVersion"] = Value::String(current.to_owned());
    if current != "apps/v1" {
        return Ok(());
    }
    let labels = obj
        .pointer(&format!("/{}/metadata/labels", template_path.join("/")))
        .cloned()
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()));
    let spec = object_mut(
        obj.get_mut("spec")
            .ok_or_else(|| err(path, "a workload needs a spec"))?,
        &path.key("spec"),
        "spec",
    )?;
    // Fields apps/v1 no longer has.
    spec.remove("rollbackTo");
    spec.remove("templateGeneration");
    if !spec.contains_key("selector") {
        let labels = labels.ok_or_else(|| {
            err(
                &path.key("spec").key("template").key("metadata").key("labels"),
                "apps/v1 needs spec.selector, made from the pod template's labels, but the template has none",
            )
        })?;
        spec.insert("selector".into(), json!({ "matchLabels": labels }));
    }
    Ok(())
}

fn annotations_of(template: &Value) -> Option<&Map<String, Value>> {
    template
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
}

/// The workload a pod belongs to, as Istio's `WORKLOAD_NAME`: the
/// object's own name for a workload kind; for a bare pod, its owner's
/// (a ReplicaSet's name without the `pod-template-hash` suffix, which is
/// the Deployment's), else its own name or `generateName` prefix.
pub fn workload_name(kind: &str, obj: &Value) -> String {
    let meta = |k: &str| {
        obj.pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
    };
    if kind != "Pod" {
        return meta("name").unwrap_or_default().to_owned();
    }
    let owner = obj
        .pointer("/metadata/ownerReferences/0")
        .filter(|o| o.get("controller").and_then(Value::as_bool) != Some(false));
    if let Some(o) = owner {
        let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
        let hash = obj
            .pointer("/metadata/labels/pod-template-hash")
            .and_then(Value::as_str);
        return match (o.get("kind").and_then(Value::as_str), hash) {
            (Some("ReplicaSet"), Some(h)) => name
                .strip_suffix(h)
                .and_then(|n| n.strip_suffix('-'))
                .unwrap_or(name)
                .to_owned(),
            _ => name.to_owned(),
        };
    }
    match meta("name") {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => meta("generateName")
            .unwrap_or_default()
            .trim_end_matches('-')
            .to_owned(),
    }
}

/// Adds the sidecar to a pod template (`metadata` + `spec`) of `workload`.
pub fn inject_template(
    template: &mut Value,
    path: &FieldPath,
    cfg: &MeshSettings,
    workload: &str,
) -> Result<Action, FieldError> {
    let opted_out = annotations_of(template)
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .and_then(Value::as_str)
        .is_some_and(|s| s.eq_ignore_ascii_case("false"));
    if opted_out {
        return Ok(Action::Skipped(format!(
            "annotation {INJECT_ANNOTATION}: \"false\""
        )));
    }
    let injected_before =
        annotations_of(template).is_some_and(|a| a.contains_key(STATUS_ANNOTATION));
    let spec_path = path.key("spec");
    let spec = object_mut(
        template
            .get_mut("spec")
            .ok_or_else(|| err(path, "the pod template has no spec"))?,
        &spec_path,
        "spec",
    )?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Action::Skipped(
            "hostNetwork pods share the node's network and cannot be captured".into(),
        ));
    }
    match spec.get("containers").and_then(Value::as_array) {
        Some(c) if !c.is_empty() => {}
        _ => {
            return Err(err(
                &spec_path.key("containers"),
                "a pod needs at least one container",
            ));
        }
    }
    remove_earlier(spec, &spec_path, injected_before)?;
    add_sidecar(spec, &spec_path, cfg, workload)?;
    annotate(template, path, cfg)?;
    Ok(Action::Injected)
}

/// Is `v` (a container or volume) named one of `names`?
fn named(v: &Value, names: &[&str]) -> bool {
    v.get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| names.contains(&n))
}

/// Removes what an earlier injection added, so injecting twice equals
/// injecting once; refuses the mesh's names in a pod never injected.
fn remove_earlier(
    spec: &mut Map<String, Value>,
    spec_path: &FieldPath,
    injected_before: bool,
) -> Result<(), FieldError> {
    let reserved = [
        PROXY_CONTAINER,
        INIT_CONTAINER,
        PROXY_VOLUME,
        PODINFO_VOLUME,
    ];
    if !injected_before {
        for field in ["containers", "initContainers", "volumes"] {
            let list = spec
                .get(field)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(i) = list.iter().position(|v| named(v, &reserved)) {
                let name = list[i]["name"].as_str().unwrap_or_default();
                return Err(err(
                    &spec_path.key(field).index(i).key("name"),
                    format!("the name `{name}` is reserved for what the mesh injects; rename it"),
                ));
            }
        }
    }
    for (field, names) in [
        ("containers", &[PROXY_CONTAINER][..]),
        ("initContainers", &[INIT_CONTAINER, PROXY_CONTAINER][..]),
        ("volumes", &[PROXY_VOLUME, PODINFO_VOLUME][..]),
    ] {
        if let Some(list) = spec.get_mut(field).and_then(Value::as_array_mut) {
            list.retain(|v| !named(v, names));
        }
        if spec
            .get(field)
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
            && field != "containers"
        {
            spec.remove(field);
        }
    }
    Ok(())
}

/// Adds the init container (first, so capture is in place before any
/// other init container talks to the network), the sidecar and its
/// volumes.
fn add_sidecar(
    spec: &mut Map<String, Value>,
    spec_path: &FieldPath,
    cfg: &MeshSettings,
    workload: &str,
) -> Result<(), FieldError> {
    let mut init = vec![to_value(&template::init_container(cfg))];
    let proxy = to_value(&template::proxy_container(cfg, workload));
    let containers = spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .expect("checked by the caller");
    match cfg.sidecar_mode {
        SidecarMode::Container => containers.push(proxy),
        SidecarMode::Native => init.push(proxy),
    }
    let init_list = spec
        .entry("initContainers")
        .or_insert_with(|| Value::Array(vec![]))
        .as_array_mut()
        .ok_or_else(|| {
            err(
                &spec_path.key("initContainers"),
                "initContainers must be a list",
            )
        })?;
    init_list.splice(0..0, init);
    spec.entry("volumes")
        .or_insert_with(|| Value::Array(vec![]))
        .as_array_mut()
        .ok_or_else(|| err(&spec_path.key("volumes"), "volumes must be a list"))?
        .extend(template::proxy_volumes().iter().map(to_value));
    Ok(())
}

/// Records what was injected and asks Prometheus to scrape the sidecar
/// (scrape annotations the pod has are kept).
fn annotate(template: &mut Value, path: &FieldPath, cfg: &MeshSettings) -> Result<(), FieldError> {
    let (meta, meta_path) = descend(template, path.clone(), &["metadata"])?;
    let (annotations, apath) = descend(meta, meta_path, &["annotations"])?;
    let annotations = object_mut(annotations, &apath, "annotations")?;
    let status = serde_json::to_string(&template::status(cfg)).expect("status serializes");
    annotations.insert(STATUS_ANNOTATION.into(), Value::String(status));
    for (k, v) in [
        ("prometheus.io/scrape", "true".to_owned()),
        ("prometheus.io/port", template::METRICS_PORT.to_string()),
        ("prometheus.io/path", "/stats/prometheus".to_owned()),
    ] {
        annotations.entry(k).or_insert(Value::String(v));
    }
    Ok(())
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("Kubernetes API types serialize")
}

#[cfg(test)]
mod workload_tests {
    use serde_json::json;

    #[test]
    fn pods_belong_to_their_owner() {
        let name = super::workload_name;
        assert_eq!(
            name("Deployment", &json!({"metadata": {"name": "svcb-v0.1"}})),
            "svcb-v0.1"
        );
        let from_rs = json!({"metadata": {
            "generateName": "svcb-v0.1-5d4f8c9b7-",
            "labels": {"pod-template-hash": "5d4f8c9b7"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "svcb-v0.1-5d4f8c9b7", "controller": true}],
        }});
        assert_eq!(name("Pod", &from_rs), "svcb-v0.1", "the Deployment's name");
        let from_sts = json!({"metadata": {"name": "db-0", "ownerReferences": [{"kind": "StatefulSet", "name": "db"}]}});
        assert_eq!(name("Pod", &from_sts), "db");
        assert_eq!(
            name("Pod", &json!({"metadata": {"generateName": "job-x-"}})),
            "job-x"
        );
        assert_eq!(
            name("Pod", &json!({"metadata": {"name": "alone"}})),
            "alone"
        );
    }
}
