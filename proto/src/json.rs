//! Envoy's JSON/YAML form of xDS messages (proto3 JSON mapping, with
//! `"@type"` for Any), read into the generated types with positioned errors
//! and written back for `/config_dump`.

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};

use mesh_rules::yaml::YamlDocument;
use mesh_rules::{FieldPath, Position};

use crate::descriptors;

/// Why a text is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{position}: {path}: {message}")]
pub struct ReadError {
    /// Where in the text.
    pub position: Position,
    /// The field path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Reads one YAML or JSON document as message `T`.
pub fn from_yaml<T: Message + prost::Name + Default>(text: &str) -> Result<T, ReadError> {
    let docs = mesh_rules::yaml::read_stream(text).map_err(|e| ReadError {
        position: e.position,
        path: String::new(),
        message: e.message,
    })?;
    let doc = match docs.as_slice() {
        [(_, d)] => d,
        [] => {
            return Err(ReadError {
                position: Position { line: 1, column: 1 },
                path: String::new(),
                message: "the file is empty".into(),
            });
        }
        [_, (_, second), ..] => {
            return Err(ReadError {
                position: second.start,
                path: String::new(),
                message: "expected one document, found several".into(),
            });
        }
    };
    from_document(doc)
}

/// Reads a YAML document (already parsed) as message `T`.
pub fn from_document<T: Message + prost::Name + Default>(
    doc: &YamlDocument,
) -> Result<T, ReadError> {
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
        let position = doc.locate(&path, unknown.is_some());
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
        ReadError {
            position,
            path: path.to_string(),
            message,
        }
    })?;
    T::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| ReadError {
        position: doc.start,
        path: String::new(),
        message: format!("cannot decode {}: {e}", T::full_name()),
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
