//! The CustomResourceDefinitions of the rule kinds, generated from the
//! mesh-rules types themselves (schemars, made structural the way kube-rs
//! makes its own): what `meshctl validate` reads and what the API server
//! stores can never drift apart. The schema checks shapes and types
//! (unknown fields, wrong types, bad durations); what needs the whole rule
//! (weights adding up to 100, …) is the validating webhook's.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_rules::rules::{
    self, Kind, MESH_API_VERSION, RuleStatus, gateway, ingress, networking, security, sidecar,
};
use schemars::JsonSchema;
use serde_json::{Value, json};

/// Which API groups a bundle defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Groups {
    /// The mesh's own group (`config.mesh.dev`), in `mesh.yaml`.
    Mesh,
    /// Istio's groups (`config.istio.io`, `networking.istio.io`,
    /// `security.istio.io`), for files written for Istio, in the optional
    /// `istio-api.yaml`. Gateway API's `HTTPRoute` is not here: its CRDs
    /// are the Gateway API project's.
    Istio,
}

/// The CRDs of `groups`, one per (group, kind), in a stable order.
pub fn definitions(groups: Groups) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mesh_group = group_of(MESH_API_VERSION);
    // (group, kind) → versions, the first listed being the stored one.
    let mut by_group: BTreeMap<(&str, Kind), Vec<&str>> = BTreeMap::new();
    for kind in Kind::ALL {
        for api_version in kind.api_versions() {
            let group = group_of(api_version);
            let ours = group == mesh_group;
            let wanted = match groups {
                Groups::Mesh => ours,
                Groups::Istio => !ours && !gateway::GATEWAY_API_VERSIONS.contains(api_version),
            };
            if wanted {
                let version = api_version.rsplit('/').next().unwrap_or_default();
                by_group.entry((group, kind)).or_default().push(version);
            }
        }
    }
    by_group
        .into_iter()
        .map(|((group, kind), versions)| definition(group, kind, &versions))
        .collect()
}

fn group_of(api_version: &str) -> &str {
    api_version.split('/').next().unwrap_or_default()
}

fn definition(
    group: &str,
    kind: Kind,
    versions: &[&str],
) -> anyhow::Result<CustomResourceDefinition> {
    let schema = object_schema(kind)?;
    let columns = columns(kind);
    let plural = kind.plural();
    Ok(CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.{group}")),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "mesh".to_owned(),
            )])),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: group.to_owned(),
            names: CustomResourceDefinitionNames {
                kind: kind.as_str().to_owned(),
                list_kind: Some(format!("{}List", kind.as_str())),
                plural,
                singular: Some(kind.as_str().to_ascii_lowercase()),
                categories: Some(vec!["mesh".to_owned()]),
                short_names: None,
            },
            scope: "Namespaced".to_owned(),
            versions: versions
                .iter()
                .enumerate()
                .map(|(i, version)| CustomResourceDefinitionVersion {
                    name: (*version).to_owned(),
                    served: true,
                    storage: i == 0,
                    schema: Some(CustomResourceValidation {
                        open_api_v3_schema: Some(schema.clone()),
                    }),
                    subresources: Some(CustomResourceSubresources {
                        status: Some(CustomResourceSubresourceStatus(json!({}))),
                        scale: None,
                    }),
                    additional_printer_columns: Some(columns.clone()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
        status: None,
    })
}

/// The schema of a whole object of `kind`: its spec (required) and the
/// status pilot writes.
fn object_schema(kind: Kind) -> anyhow::Result<JSONSchemaProps> {
    let spec = spec_schema(kind)
        .ok_or_else(|| anyhow::anyhow!("{kind} has no CRD of the mesh's making"))?;
    let status = schema_of::<RuleStatus>();
    let object = json!({
        "type": "object",
        "required": ["spec"],
        "properties": {"spec": spec, "status": status},
    });
    props(object)
}

/// The JSON schema of a spec type, as the API server wants it.
pub fn spec_schema(kind: Kind) -> Option<Value> {
    Some(match kind {
        Kind::RouteRule => schema_of::<rules::RouteRule>(),
        Kind::DestinationPolicy => schema_of::<rules::DestinationPolicy>(),
        Kind::EgressRule => schema_of::<rules::EgressRule>(),
        Kind::VirtualService => schema_of::<networking::VirtualService>(),
        Kind::DestinationRule => schema_of::<networking::DestinationRule>(),
        Kind::ServiceEntry => schema_of::<networking::ServiceEntry>(),
        Kind::PeerAuthentication => schema_of::<security::PeerAuthentication>(),
        Kind::AuthorizationPolicy => schema_of::<security::AuthorizationPolicy>(),
        Kind::Sidecar => schema_of::<sidecar::Sidecar>(),
        Kind::Gateway => schema_of::<ingress::Gateway>(),
        Kind::HttpRoute => return None,
    })
}

/// A type's schema: every reference inlined, enums and options rewritten
/// into the structural forms Kubernetes accepts.
fn schema_of<T: JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(kube_core::schema::OptionalEnum)
        .with_transform(kube_core::schema::OptionalIntOrString)
        .with_transform(kube_core::schema::StructuralSchemaRewriter)
        .into_generator();
    let mut value = generator.into_root_schema_for::<T>().to_value();
    if let Some(root) = value.as_object_mut() {
        root.remove("title");
    }
    kubernetes_forms(&mut value);
    value
}

/// What the structural rewriting leaves for the API server to refuse:
/// - maps with non-string keys (`portLevelMtls: {8080: …}`) come as
///   `patternProperties`, which CRDs lack: they become
///   `additionalProperties` (every JSON key is a string anyway);
/// - fields the mesh parses only to refuse ("not supported yet") have no
///   type: they keep whatever is written, so the refusal comes from the
///   rule check (the validating webhook, pilot's status) with its
///   reason, not a bare schema error.
fn kubernetes_forms(schema: &mut Value) {
    let Some(node) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(patterns)) = node.remove("patternProperties")
        && let Some((_, values)) = patterns.into_iter().next()
    {
        node.insert("additionalProperties".into(), values);
    }
    let typed = [
        "type",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
    ]
    .iter()
    .any(|k| node.contains_key(*k));
    if !typed {
        node.insert(
            "x-kubernetes-preserve-unknown-fields".into(),
            Value::Bool(true),
        );
    }
    if let Some(Value::Object(properties)) = node.get_mut("properties") {
        properties.values_mut().for_each(kubernetes_forms);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = node.get_mut(key) {
            kubernetes_forms(child);
        }
    }
}

/// The schema as the CRD type holds it; a keyword the type would drop is
/// an error rather than a silently weaker schema.
fn props(schema: Value) -> anyhow::Result<JSONSchemaProps> {
    let props: JSONSchemaProps = serde_json::from_value(schema.clone())?;
    let back = serde_json::to_value(&props)?;
    anyhow::ensure!(
        back == schema,
        "the schema has keywords a CRD cannot hold: {}",
        first_difference(&schema, &back, "")
    );
    Ok(props)
}

fn first_difference(want: &Value, got: &Value, at: &str) -> String {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                match g.get(k) {
                    None => return format!("{at}/{k}"),
                    Some(gv) if gv != v => return first_difference(v, gv, &format!("{at}/{k}")),
                    _ => {}
                }
            }
            at.to_owned()
        }
        (Value::Array(w), Value::Array(g)) => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                if wv != gv {
                    return first_difference(wv, gv, &format!("{at}/{i}"));
                }
            }
            at.to_owned()
        }
        _ => format!("{at}: {want} became {got}"),
    }
}

/// What `kubectl get` prints beside the name: the fields a user scans
/// for, whether pilot accepted the rule, and its age.
fn columns(kind: Kind) -> Vec<CustomResourceColumnDefinition> {
    let column = |name: &str, type_: &str, path: &str| CustomResourceColumnDefinition {
        name: name.to_owned(),
        type_: type_.to_owned(),
        json_path: path.to_owned(),
        ..Default::default()
    };
    let mut columns: Vec<_> = kind_columns(kind)
        .iter()
        .map(|(name, type_, path)| column(name, type_, path))
        .collect();
    columns.push(column(
        "Accepted",
        "string",
        r#".status.conditions[?(@.type=="Accepted")].status"#,
    ));
    columns.push(column("Age", "date", ".metadata.creationTimestamp"));
    columns
}

/// Per kind: (column, type, JSON path).
fn kind_columns(kind: Kind) -> &'static [(&'static str, &'static str, &'static str)] {
    match kind {
        Kind::RouteRule => &[
            ("Destination", "string", ".spec.destination.name"),
            ("Precedence", "integer", ".spec.precedence"),
        ],
        Kind::DestinationPolicy => &[("Destination", "string", ".spec.destination.name")],
        Kind::EgressRule => &[("Destination", "string", ".spec.destination.service")],
        Kind::VirtualService => &[("Hosts", "string", ".spec.hosts")],
        Kind::DestinationRule => &[("Host", "string", ".spec.host")],
        Kind::ServiceEntry => &[
            ("Hosts", "string", ".spec.hosts"),
            ("Location", "string", ".spec.location"),
        ],
        Kind::PeerAuthentication => &[("Mode", "string", ".spec.mtls.mode")],
        Kind::AuthorizationPolicy => &[("Action", "string", ".spec.action")],
        Kind::Sidecar | Kind::HttpRoute | Kind::Gateway => &[],
    }
}

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// pilot's ClusterRole rules for the rule kinds of every group it reads
/// them from: list and watch them, patch their status (not Gateway API's,
/// whose status pilot does not write).
pub fn rbac_rules() -> String {
    let mut by_group: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for kind in Kind::ALL {
        for api_version in kind.api_versions() {
            let plurals = by_group.entry(group_of(api_version)).or_default();
            if !plurals.contains(&kind.plural()) {
                plurals.push(kind.plural());
            }
        }
    }
    let mut out = String::new();
    for (group, plurals) in by_group {
        let status: Vec<String> = plurals.iter().map(|p| format!("{p}/status")).collect();
        out.push_str(&format!(
            "- apiGroups: [{group}]\n  resources: [{}]\n  verbs: [list, watch]\n",
            plurals.join(", ")
        ));
        // Gateway API's status is per parent, and not written yet.
        if group == GATEWAY_GROUP {
            continue;
        }
        out.push_str(&format!(
            "- apiGroups: [{group}]\n  resources: [{}]\n  verbs: [patch]\n",
            status.join(", ")
        ));
    }
    out
}

/// The API groups whose rules the mesh validates (every group of a rule
/// kind but Gateway API's, which has its own validation), as a YAML flow
/// list.
pub fn validated_groups() -> String {
    let mut groups: Vec<&str> = Kind::ALL
        .iter()
        .flat_map(|k| k.api_versions().iter().map(|v| group_of(v)))
        .filter(|g| *g != GATEWAY_GROUP)
        .collect();
    groups.sort();
    groups.dedup();
    format!("[{}]", groups.join(", "))
}

/// The CRDs as YAML documents (each after a `---`).
pub fn yaml(definitions: &[CustomResourceDefinition]) -> anyhow::Result<String> {
    let mut out = String::new();
    for d in definitions {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every printer column names a field the schema has.
    #[test]
    fn columns_name_fields_of_the_schema() {
        for kind in Kind::ALL {
            let Some(spec) = spec_schema(kind) else {
                continue;
            };
            for (name, _, path) in kind_columns(kind) {
                let mut at = &spec;
                for key in path.trim_start_matches(".spec.").split('.') {
                    at = &at["properties"][key];
                    assert!(!at.is_null(), "{kind} column {name}: no {path}");
                }
            }
        }
    }

    /// The mesh's group carries the 0.4 kinds and the kinds it shares
    /// with Istio's security and sidecar groups; Istio's bundle carries
    /// the rest with every version Istio serves, the newest stored.
    #[test]
    fn each_bundle_defines_its_groups_kinds() {
        let names = |g| -> Vec<String> {
            definitions(g)
                .unwrap()
                .iter()
                .map(|d| d.metadata.name.clone().unwrap())
                .collect()
        };
        assert_eq!(
            names(Groups::Mesh),
            [
                "routerules.config.mesh.dev",
                "destinationpolicies.config.mesh.dev",
                "egressrules.config.mesh.dev",
                "peerauthentications.config.mesh.dev",
                "authorizationpolicies.config.mesh.dev",
                "sidecars.config.mesh.dev",
                "gateways.config.mesh.dev",
            ]
        );
        let istio = definitions(Groups::Istio).unwrap();
        let vs = istio
            .iter()
            .find(|d| d.spec.names.kind == "VirtualService")
            .unwrap();
        let versions: Vec<(&str, bool)> = vs
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.storage))
            .collect();
        assert_eq!(
            versions,
            [("v1", true), ("v1beta1", false), ("v1alpha3", false)]
        );
        assert!(
            istio
                .iter()
                .any(|d| d.metadata.name.as_deref() == Some("routerules.config.istio.io"))
        );
        assert!(istio.iter().all(|d| d.spec.names.kind != "HTTPRoute"));
    }
}
