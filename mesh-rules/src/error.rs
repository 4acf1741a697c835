//! The one located error of the mesh: which field, where it is in the
//! text when that is known, and what is wrong. Rules, Envoy resources read
//! by the proxy, injection and registry files all report through it, so a
//! user sees every problem in the same `line:column: field.path: message`
//! shape, and callers add context (a path prefix, a place) without
//! re-wrapping.

use std::fmt;

use crate::diagnostic::{Diagnostic, Position};
use crate::path::FieldPath;

/// A problem at one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    /// The field that is wrong; the root for a problem with the whole text.
    pub path: FieldPath,
    /// Where in the text, when the error came from one.
    pub position: Option<Position>,
    /// What is wrong, and what is allowed.
    pub message: String,
    /// The field itself should not be there (unknown, not supported):
    /// point at its key rather than its value.
    pub at_key: bool,
}

impl FieldError {
    /// A problem with the value at `path`.
    pub fn new(path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            path,
            position: None,
            message: message.into(),
            at_key: false,
        }
    }

    /// A problem with the field at `path` being there at all.
    pub fn at_key(path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            at_key: true,
            ..Self::new(path, message)
        }
    }

    /// A problem with a value whose place the caller knows, not yet located.
    pub fn message(message: impl Into<String>) -> Self {
        Self::new(FieldPath::root(), message)
    }

    /// The same problem seen from `base`: the path is prefixed by it.
    pub fn under(mut self, base: &FieldPath) -> Self {
        self.path = base.join(&self.path);
        self
    }

    /// The same problem at a known place in the text.
    pub fn located(mut self, position: Position) -> Self {
        self.position = Some(position);
        self
    }

    /// The same problem in document `document` of file `file`.
    pub fn in_file(self, file: &str, document: usize) -> Diagnostic {
        Diagnostic {
            file: file.to_owned(),
            document,
            error: self,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.position {
            write!(f, "{p}: ")?;
        }
        if !self.path.is_root() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_place_path_and_message() {
        let e = FieldError::message("must be positive")
            .under(&FieldPath::parse("spec.route[1]").key("weight"))
            .located(Position { line: 8, column: 3 });
        assert_eq!(e.to_string(), "8:3: spec.route[1].weight: must be positive");
        assert_eq!(FieldError::message("empty").to_string(), "empty");
        assert_eq!(
            e.in_file("r.yaml", 2).to_string(),
            "r.yaml:8:3: document 2: spec.route[1].weight: must be positive"
        );
    }
}
