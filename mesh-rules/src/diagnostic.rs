//! Errors that point at the exact place in the user's file.

use std::fmt;

use crate::error::FieldError;

/// A place in a source file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One problem found in a source file: a [`FieldError`] and the file and
/// document it is in.
///
/// Rendered as `file:line:column: document N: field.path: message`, the shape
/// compilers use, so editors and terminals can jump to the place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as the user gave it (`-` is standard input).
    pub file: String,
    /// 1-based index of the YAML document in the file (0 when the file as a whole is unreadable).
    pub document: usize,
    /// What is wrong, at which field and place.
    pub error: FieldError,
}

impl std::error::Error for Diagnostic {}

impl Diagnostic {
    /// Where the problem is (the file's start when it is not known).
    pub fn position(&self) -> Position {
        self.error
            .position
            .unwrap_or(Position { line: 1, column: 1 })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.position())?;
        if self.document > 0 {
            write!(f, "document {}: ", self.document)?;
        }
        let e = &self.error;
        if !e.path.is_root() {
            write!(f, "{}: ", e.path)?;
        }
        f.write_str(&e.message)
    }
}

/// Every problem found in a set of sources, in file and position order.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
