//! Field paths inside a document (`spec.route[1].weight`).

use std::fmt;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
    /// A sequence element named by its `name` (xDS resources: `CDS[svcb]`).
    Name(String),
}

/// The path from a document's root to one of its nodes.
///
/// The same type names a node when the YAML is read (to remember where it
/// was) and when a check fails (to say where), so the two always agree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The document root.
    pub fn root() -> Self {
        Self::default()
    }

    /// This path extended by a mapping key.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.into()));
        p
    }

    /// This path extended by a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }

    /// `rest` continued from this path.
    pub fn join(&self, rest: &FieldPath) -> Self {
        let mut p = self.clone();
        p.0.extend(rest.0.iter().cloned());
        p
    }

    /// The path one step up, or `None` at the root.
    pub fn parent(&self) -> Option<Self> {
        let mut p = self.clone();
        p.0.pop().map(|_| p)
    }

    /// True at the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The steps.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// This path extended by a named sequence element.
    pub fn name(&self, name: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Name(name.into()));
        p
    }

    /// Reads the text form back (`spec.route[1].weight`, `CDS[a.b].name`);
    /// keys may not contain `.` or `[` in this form, names may not contain `]`.
    pub fn parse(text: &str) -> Self {
        let mut p = Self::root();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(inner) = rest.strip_prefix('[') {
                let (step, after) = inner.split_once(']').unwrap_or((inner, ""));
                p.0.push(match step.parse() {
                    Ok(i) => Segment::Index(i),
                    Err(_) => Segment::Name(step.to_owned()),
                });
                rest = after;
            } else {
                let key_text = rest.strip_prefix('.').unwrap_or(rest);
                let end = key_text.find(['.', '[']).unwrap_or(key_text.len());
                if end > 0 {
                    p.0.push(Segment::Key(key_text[..end].to_owned()));
                }
                rest = &key_text[end..];
                if end == 0 && rest.starts_with('.') {
                    rest = &rest[1..];
                }
            }
        }
        p
    }

    /// The path serde_path_to_error tracked to a failing field.
    pub fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as S;
        let mut p = Self::root();
        for s in path.iter() {
            match s {
                S::Seq { index } => p.0.push(Segment::Index(*index)),
                S::Map { key } => p.0.push(Segment::Key(key.clone())),
                S::Enum { variant } => p.0.push(Segment::Key(variant.clone())),
                S::Unknown => {}
            }
        }
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Name(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips() {
        for t in [
            "spec.route[1].weight",
            "a[0][2].b",
            "x",
            "CDS[outbound|80||a.b].name",
        ] {
            assert_eq!(FieldPath::parse(t).to_string(), t);
        }
    }
}
