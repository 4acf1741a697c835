//! Every field a message sets, with its path: the basis for refusing
//! configuration a consumer does not support, naming the field, instead of
//! silently ignoring it.

use mesh_rules::FieldPath;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};

/// One field that is set (non-default) in a message tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetField {
    /// Where, in proto field names (`static_resources.listeners[0].name`).
    pub path: FieldPath,
    /// The full name of the message that holds the field.
    pub message: String,
    /// The field's proto name; for an `Any`, `@type` and the packed type's full name in `any_type`.
    pub field: String,
    /// For an `Any`: the full name of the type it packs.
    pub any_type: Option<String>,
}

/// Lists every set field of `msg`, depth first, unpacking `Any` values whose
/// type is in the xDS descriptor pool.
pub fn set_fields(msg: &DynamicMessage) -> Vec<SetField> {
    let mut out = Vec::new();
    walk(msg, &FieldPath::root(), &mut out);
    out
}

fn walk(msg: &DynamicMessage, path: &FieldPath, out: &mut Vec<SetField>) {
    let desc = msg.descriptor();
    if desc.full_name() == "google.protobuf.Any" {
        let url = msg
            .get_field_by_name("type_url")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let type_name = url.rsplit('/').next().unwrap_or_default().to_owned();
        out.push(SetField {
            path: path.clone(),
            message: desc.full_name().to_owned(),
            field: "@type".into(),
            any_type: Some(type_name.clone()),
        });
        let bytes = msg
            .get_field_by_name("value")
            .and_then(|v| v.as_bytes().cloned())
            .unwrap_or_default();
        if let Some(inner) = desc.parent_pool().get_message_by_name(&type_name)
            && let Ok(inner) = DynamicMessage::decode(inner, bytes)
        {
            walk(&inner, path, out);
        }
        return;
    }
    for (field, value) in msg.fields() {
        let p = path.key(field.name());
        out.push(SetField {
            path: p.clone(),
            message: desc.full_name().to_owned(),
            field: field.name().to_owned(),
            any_type: None,
        });
        walk_value(value, &p, out);
    }
    // Fields the schema does not know (newer than it) are set fields too,
    // named by number, so they are refused rather than dropped.
    for unknown in msg.unknown_fields() {
        let name = format!("#{}", unknown.number());
        out.push(SetField {
            path: path.key(name.clone()),
            message: desc.full_name().to_owned(),
            field: name,
            any_type: None,
        });
    }
}

fn walk_value(value: &Value, path: &FieldPath, out: &mut Vec<SetField>) {
    match value {
        Value::Message(m) => walk(m, path, out),
        Value::List(items) => {
            for (i, v) in items.iter().enumerate() {
                walk_value(v, &path.index(i), out);
            }
        }
        Value::Map(map) => {
            for (k, v) in map {
                let key = match k {
                    prost_reflect::MapKey::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                walk_value(v, &path.key(key), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::config::bootstrap::v3::Bootstrap;

    #[test]
    fn reads_a_bootstrap_and_lists_fields_through_any() {
        let yaml = r#"
static_resources:
  listeners:
  - name: http
    address:
      socket_address: {address: 127.0.0.1, port_value: 10000}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
"#;
        let b: Bootstrap = crate::json::from_yaml(crate::descriptors::Schema::Xds, yaml).unwrap();
        assert_eq!(
            b.static_resources.as_ref().unwrap().listeners[0].name,
            "http"
        );
        let fields = set_fields(&crate::json::to_dynamic(
            crate::descriptors::Schema::Xds,
            &b,
        ));
        let names: Vec<String> = fields
            .iter()
            .map(|f| format!("{} {}", f.path, f.field))
            .collect();
        assert!(
            names.contains(&"static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefix stat_prefix".to_owned()),
            "{names:#?}"
        );
        let any = fields.iter().find(|f| f.any_type.is_some()).unwrap();
        assert_eq!(
            any.any_type.as_deref(),
            Some(
                "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
            )
        );
    }

    #[test]
    fn unknown_field_is_refused_with_its_position() {
        let yaml = "static_resources:\n  listeners:\n  - name: http\n    stat_prefixx: x\n";
        let err =
            crate::json::from_yaml::<Bootstrap>(crate::descriptors::Schema::Xds, yaml).unwrap_err();
        assert_eq!(err.position.map(|p| p.line), Some(4), "{err}");
        assert!(err.message.contains("stat_prefixx"), "{err}");
    }
}
