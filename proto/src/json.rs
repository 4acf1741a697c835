//! Envoy's JSON/YAML form of xDS messages (proto3 JSON mapping, with
//! `"@type"` for Any), read into the generated types with positioned errors
//! and written back for `/config_dump`.

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};

use mesh_rules::yaml::YamlDocument;
use mesh_rules::{FieldError, FieldPath, Position};

use crate::descriptors;

/// Reads one YAML or JSON document as message `T`.
pub fn from_yaml<T: Message + prost::Name + Default>(text: &str) -> Result<T, FieldError> {
    match mesh_rules::yaml::read_one(text)? {
        Some(doc) => from_document(&doc),
        None => {
            Err(FieldError::message("the file is empty").located(Position { line: 1, column: 1 }))
        }
    }
}

/// Reads a YAML document (already parsed) as message `T`.
pub fn from_document<T: Message + prost::Name + Default>(
    doc: &YamlDocument,
) -> Result<T, FieldError> {
    let desc = descriptors::message::<T>();
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

/// The message as a descriptor-backed dynamic message.
pub fn to_dynamic<T: Message + prost::Name>(msg: &T) -> DynamicMessage {
    DynamicMessage::decode(descriptors::message::<T>(), msg.encode_to_vec().as_slice())
        .expect("a generated message decodes with its own descriptor")
}

/// The message in Envoy's JSON form as its admin API prints it (proto
/// field names, `"@type"` for Any).
pub fn to_json<T: Message + prost::Name>(msg: &T) -> serde_json::Value {
    let opts = SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(true);
    to_dynamic(msg)
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .expect("xDS messages serialize to JSON")
}
