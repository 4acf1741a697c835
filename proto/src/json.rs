//! Envoy's JSON/YAML form of xDS messages (proto3 JSON mapping, with
//! `"@type"` for Any), read into the generated types with positioned errors
//! and written back for `/config_dump`.

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};

use mesh_rules::yaml::YamlDocument;
use mesh_rules::{FieldError, FieldPath, Position, Segment};
use prost_reflect::{Kind, MessageDescriptor};

use crate::descriptors::{NOT_SUPPORTED, NOT_SUPPORTED_ENUM, Schema};

/// Reads one YAML or JSON document as message `T`, as `schema` knows it.
pub fn from_yaml<T: Message + prost::Name + Default>(
    schema: Schema,
    text: &str,
) -> Result<T, FieldError> {
    match mesh_rules::yaml::read_one(text)? {
        Some(doc) => from_document(schema, &doc),
        None => {
            Err(FieldError::message("the file is empty").located(Position { line: 1, column: 1 }))
        }
    }
}

/// Reads a YAML document (already parsed) as message `T`, as `schema`
/// knows it. In [`Schema::Proxy`] a field mesh-proxy does not apply is
/// refused by name, whatever it holds.
pub fn from_document<T: Message + prost::Name + Default>(
    schema: Schema,
    doc: &YamlDocument,
) -> Result<T, FieldError> {
    let desc = schema.message::<T>();
    let root = desc.clone();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(&doc.value, &mut track);
    let dynamic = DynamicMessage::deserialize(desc, de).map_err(|e| {
        let message = e.to_string();
        let mut path = FieldPath::from_serde(&track.path());
        // An unknown field is reported at its parent; point at the field itself.
        let unknown = message
            .strip_prefix("unrecognized field name '")
            .and_then(|rest| rest.split('\'').next());
        if let Some(name) = unknown {
            path = path.key(name);
        }
        if let Some((at, why)) = stand_in(&root, &doc.value, &path) {
            let position = doc.locate(&at, true);
            return FieldError::at_key(at, why).located(position);
        }
        let at_key = unknown.is_some();
        let position = doc.locate(&path, at_key);
        // An `@type` outside the descriptor set: say what it is to the reader.
        let message = match message
            .strip_prefix("message '")
            .and_then(|rest| rest.split_once("' not found"))
        {
            Some((name, _)) => format!(
                "typed config {name} is not supported (it is not among the xDS types mesh reads)"
            ),
            None => message,
        };
        FieldError {
            at_key,
            ..FieldError::new(path, message)
        }
        .located(position)
    })?;
    T::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| {
        FieldError::message(format!("cannot decode {}: {e}", T::full_name())).located(doc.start)
    })
}

/// The first field on `path` (in the document `value` of message `desc`)
/// that the schema only names with a stand-in type: the field to refuse,
/// and why, instead of a type error somewhere inside it.
fn stand_in(
    desc: &MessageDescriptor,
    value: &serde_json::Value,
    path: &FieldPath,
) -> Option<(FieldPath, String)> {
    let (mut msg, mut value, mut at) = (desc.clone(), value, FieldPath::root());
    for seg in path.segments() {
        if msg.full_name() == "google.protobuf.Any" {
            let url = value.get("@type")?.as_str()?;
            msg = msg
                .parent_pool()
                .get_message_by_name(url.rsplit('/').next()?)?;
        }
        match seg {
            Segment::Key(k) => {
                let f = msg
                    .get_field_by_name(k)
                    .or_else(|| msg.get_field_by_json_name(k))?;
                at = at.key(k.clone());
                value = value.get(k)?;
                let stand_in = match f.kind() {
                    Kind::Message(m) if m.full_name() == NOT_SUPPORTED => true,
                    Kind::Enum(e) if e.full_name() == NOT_SUPPORTED_ENUM => true,
                    Kind::Message(m) => {
                        msg = m;
                        false
                    }
                    _ => return None,
                };
                if stand_in {
                    let why = format!(
                        "field `{}` of {} is not supported by mesh-proxy",
                        f.name(),
                        msg.full_name()
                    );
                    return Some((at, why));
                }
            }
            Segment::Index(i) => {
                at = at.index(*i);
                value = value.get(i)?;
            }
            Segment::Name(_) => return None,
        }
    }
    None
}

/// The message as a dynamic message of `schema`.
pub fn to_dynamic<T: Message + prost::Name>(schema: Schema, msg: &T) -> DynamicMessage {
    DynamicMessage::decode(schema.message::<T>(), msg.encode_to_vec().as_slice())
        .expect("a generated message decodes with its own descriptor")
}

/// The message in Envoy's JSON form as its admin API prints it (proto
/// field names, `"@type"` for Any).
pub fn to_json<T: Message + prost::Name>(schema: Schema, msg: &T) -> serde_json::Value {
    let opts = SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(true);
    to_dynamic(schema, msg)
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .expect("xDS messages serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::config::bootstrap::v3::Bootstrap;

    const CLUSTER: &str =
        "static_resources:\n  clusters:\n  - name: backend\n    connect_timeout: 1s\n";

    /// mesh-proxy's schema names the fields it does not apply: whatever
    /// they hold, the reader refuses them by name, at their key.
    #[test]
    fn the_proxy_schema_refuses_fields_it_only_names() {
        for (extra, field) in [
            (
                "    common_lb_config: {healthy_panic_threshold: {value: 10}}\n",
                "common_lb_config",
            ),
            ("    dns_lookup_family: V4_ONLY\n", "dns_lookup_family"),
        ] {
            let text = format!("{CLUSTER}{extra}");
            let err = from_yaml::<Bootstrap>(Schema::Proxy, &text).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "5:5: static_resources.clusters[0].{field}: field `{field}` of envoy.config.cluster.v3.Cluster is not supported by mesh-proxy"
                )
            );
            // The full schema reads it.
            from_yaml::<Bootstrap>(Schema::Xds, &text).unwrap();
        }
        // A field it applies reads as before; a misspelt one is still unknown.
        from_yaml::<Bootstrap>(Schema::Proxy, CLUSTER).unwrap();
        let err =
            from_yaml::<Bootstrap>(Schema::Proxy, &format!("{CLUSTER}    nmae: x\n")).unwrap_err();
        assert!(
            err.message.contains("unrecognized field name 'nmae'"),
            "{err}"
        );
    }

    /// A field its schema does not know at all (a number from a newer
    /// Envoy) is a set field too, named by number: refused, never dropped.
    #[test]
    fn fields_unknown_to_the_schema_are_listed_by_number() {
        use prost::Message;
        let cluster = crate::envoy::config::cluster::v3::Cluster {
            name: "backend".into(),
            ..Default::default()
        };
        let mut bytes = cluster.encode_to_vec();
        // Field 9999, varint 1.
        prost::encoding::encode_key(9999, prost::encoding::WireType::Varint, &mut bytes);
        prost::encoding::encode_varint(1, &mut bytes);
        let desc = Schema::Proxy.message::<crate::envoy::config::cluster::v3::Cluster>();
        let msg = DynamicMessage::decode(desc, bytes.as_slice()).unwrap();
        let fields: Vec<String> = crate::fields::set_fields(&msg)
            .iter()
            .map(|f| f.path.to_string())
            .collect();
        assert_eq!(fields, ["name", "#9999"]);
    }
}
