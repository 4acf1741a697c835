//! What mesh-proxy understands of Envoy's configuration. Anything else that
//! is set is refused, naming the field, so a config never half-applies
//! silently.

use mesh_proto::fields::SetField;
use mesh_rules::FieldError;
use prost_reflect::DynamicMessage;

/// Checks every set field of `msg` against what mesh-proxy applies.
pub fn check(msg: &DynamicMessage) -> Result<(), Vec<FieldError>> {
    let mut problems = Vec::new();
    for f in mesh_proto::fields::set_fields(msg) {
        if let Some(e) = refuse(&f) {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn refuse(f: &SetField) -> Option<FieldError> {
    if let Some(t) = &f.any_type {
        return (!mesh_proto::types::TYPED_CONFIGS.contains(&t.as_str())).then(|| {
            FieldError::at_key(
                f.path.clone(),
                format!("typed config {t} is not supported by mesh-proxy"),
            )
        });
    }
    if f.message.starts_with("google.protobuf.") {
        return None;
    }
    let full = format!("{}.{}", f.message, f.field);
    (!mesh_proto::types::PROXY_FIELDS.contains(&full.as_str())).then(|| {
        FieldError::at_key(
            f.path.clone(),
            format!(
                "field `{}` of {} is not supported by mesh-proxy",
                f.field, f.message
            ),
        )
    })
}
