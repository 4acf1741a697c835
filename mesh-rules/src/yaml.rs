//! Reads a YAML (or JSON) stream into JSON values while remembering where
//! every node was, so a later check can name the line and column of the
//! field it rejects.
//!
//! One parser (YAML 1.2, which also reads JSON) does the whole job, so
//! syntax errors and semantic errors count lines the same way.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

use crate::diagnostic::{Diagnostic, Position};
use crate::error::FieldError;
use crate::path::FieldPath;

/// Where a node and, for mapping values, its key were.
#[derive(Debug, Clone, Copy)]
pub struct NodePosition {
    /// Where the node's key is, for mapping values.
    pub key: Option<Position>,
    /// Where the node itself is.
    pub value: Position,
    /// Mappings and sequences are pointed at by their key, which is where a
    /// reader looks for them; scalars by their value.
    pub collection: bool,
}

/// One document of a stream.
#[derive(Debug)]
pub struct YamlDocument {
    /// The document as a JSON value (YAML 1.2 core schema).
    pub value: Value,
    /// Where the document starts.
    pub start: Position,
    positions: HashMap<FieldPath, NodePosition>,
}

impl YamlDocument {
    /// Where the node at `path` was; the nearest ancestor that exists when
    /// the node itself does not (e.g. a missing field points at its parent).
    pub fn locate(&self, path: &FieldPath, prefer_key: bool) -> Position {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(pos) = self.positions.get(&cur) {
                return match (prefer_key || pos.collection, pos.key) {
                    (true, Some(k)) => k,
                    _ => pos.value,
                };
            }
            p = cur.parent();
        }
        self.start
    }
}

impl YamlDocument {
    /// Reads the document into `T`, naming the field and place of the first
    /// problem (serde's words: unknown field, missing field, invalid type).
    pub fn deserialize<T: serde::de::DeserializeOwned>(
        &self,
    ) -> std::result::Result<T, FieldError> {
        serde_path_to_error::deserialize(self.value.clone()).map_err(|e| {
            let path = FieldPath::from_serde(e.path());
            let message = e.into_inner().to_string();
            let at_key = message.starts_with("unknown field");
            let position = self.locate(&path, at_key);
            FieldError {
                at_key,
                ..FieldError::new(path, message)
            }
            .located(position)
        })
    }
}

/// A syntax error: where and what.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// 1-based index of the document it is in.
    pub document: usize,
    /// Where.
    pub position: Position,
    /// What.
    pub message: String,
}

impl SyntaxError {
    /// The same problem as a located error (the whole text is at fault).
    pub fn into_error(self) -> FieldError {
        FieldError::message(self.message).located(self.position)
    }
}

fn pos(span: &Span) -> Position {
    Position {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

struct Reader<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: HashMap<usize, Value>,
    document: usize,
    last: Position,
}

type Result<T> = std::result::Result<T, SyntaxError>;

impl<'a> Reader<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span)> {
        match self.parser.next_event() {
            Some(Ok((ev, span))) => {
                self.last = pos(&span);
                Ok((ev, span))
            }
            Some(Err(e)) => Err(SyntaxError {
                document: self.document,
                position: Position {
                    line: e.marker().line(),
                    column: e.marker().col() + 1,
                },
                message: format!("YAML syntax error: {}", e.info()),
            }),
            None => Err(self.error(self.last, "unexpected end of input".into())),
        }
    }

    fn error(&self, position: Position, message: String) -> SyntaxError {
        SyntaxError {
            document: self.document,
            position,
            message,
        }
    }

    /// The rest of a mapping (after its start event), keys in order.
    fn mapping(
        &mut self,
        path: &FieldPath,
        positions: &mut HashMap<FieldPath, NodePosition>,
    ) -> Result<Value> {
        let mut map = Map::new();
        loop {
            let (ev, sp) = self.next()?;
            if matches!(ev, Event::MappingEnd) {
                return Ok(Value::Object(map));
            }
            let key_pos = pos(&sp);
            let key = match ev {
                Event::Scalar(text, ..) => text.into_owned(),
                _ => {
                    return Err(self.error(
                        key_pos,
                        "mapping keys must be plain strings, not sequences or mappings".into(),
                    ));
                }
            };
            if map.contains_key(&key) {
                return Err(self.error(
                    key_pos,
                    format!("duplicate key `{key}`: each key may appear once in a mapping"),
                ));
            }
            let (ev, sp) = self.next()?;
            let child = path.key(key.clone());
            let v = self.node(ev, sp, child, Some(key_pos), positions)?;
            map.insert(key, v);
        }
    }

    fn node(
        &mut self,
        event: Event<'a>,
        span: Span,
        path: FieldPath,
        key: Option<Position>,
        positions: &mut HashMap<FieldPath, NodePosition>,
    ) -> Result<Value> {
        let here = pos(&span);
        let collection = matches!(event, Event::SequenceStart(..) | Event::MappingStart(..));
        positions.insert(
            path.clone(),
            NodePosition {
                key,
                value: here,
                collection,
            },
        );
        let (value, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let tag = tag.map(|t| format!("{}{}", t.handle, t.suffix));
                (
                    scalar(&text, style, tag.as_deref()).map_err(|m| self.error(here, m))?,
                    anchor,
                )
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, sp) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    let child = path.index(items.len());
                    items.push(self.node(ev, sp, child, None, positions)?);
                }
                (Value::Array(items), anchor)
            }
            Event::MappingStart(anchor, _) => (self.mapping(&path, positions)?, anchor),
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(v) => (v.clone(), 0),
                None => return Err(self.error(here, "alias refers to an unknown anchor".into())),
            },
            other => {
                return Err(self.error(here, format!("unexpected YAML event {other:?}")));
            }
        };
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        Ok(value)
    }
}

/// Reads every document of `text`. Empty documents (e.g. after a trailing
/// `---`) are dropped; the document numbers of the rest stay as in the file.
pub fn read_stream(text: &str) -> std::result::Result<Vec<(usize, YamlDocument)>, SyntaxError> {
    let mut r = Reader {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        document: 0,
        last: Position { line: 1, column: 1 },
    };
    let mut docs = Vec::new();
    loop {
        let (ev, span) = r.next()?;
        match ev {
            Event::StreamStart => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                r.document += 1;
                r.anchors.clear();
                let start = pos(&span);
                let (ev, sp) = r.next()?;
                let mut positions = HashMap::new();
                let value = if matches!(ev, Event::DocumentEnd) {
                    Value::Null
                } else {
                    let v = r.node(ev, sp, FieldPath::root(), None, &mut positions)?;
                    let (end, _) = r.next()?;
                    if !matches!(end, Event::DocumentEnd) {
                        return Err(r.error(r.last, "expected the end of the document".into()));
                    }
                    v
                };
                if !value.is_null() {
                    docs.push((
                        r.document,
                        YamlDocument {
                            value,
                            start,
                            positions,
                        },
                    ));
                }
            }
            other => return Err(r.error(pos(&span), format!("unexpected YAML event {other:?}"))),
        }
    }
    Ok(docs)
}

/// Reads a text that holds one document: `None` when it holds none, an
/// error when it holds several (a second document would be ignored).
pub fn read_one(text: &str) -> std::result::Result<Option<YamlDocument>, FieldError> {
    let mut docs = read_stream(text).map_err(SyntaxError::into_error)?;
    if let Some((_, second)) = docs.get(1) {
        return Err(FieldError::message(
            "expected one document, found several: put each in a file of its own",
        )
        .located(second.start));
    }
    Ok(docs.pop().map(|(_, d)| d))
}

/// Reads file `name` holding one document of type `T` (`T::default()` when
/// it is empty), naming file, place and field of any problem.
pub fn read_file<T: serde::de::DeserializeOwned + Default>(
    name: &str,
    text: &str,
) -> std::result::Result<T, Diagnostic> {
    match read_one(text).map_err(|e| e.in_file(name, 0))? {
        Some(doc) => doc.deserialize().map_err(|e| e.in_file(name, 0)),
        None => Ok(T::default()),
    }
}

/// Resolves a scalar by the YAML 1.2 core schema: plain `null`, booleans,
/// integers and floats get their types; everything quoted is a string.
fn scalar(text: &str, style: ScalarStyle, tag: Option<&str>) -> std::result::Result<Value, String> {
    let s = || Value::String(text.to_owned());
    match tag {
        None => {}
        Some("!!str" | "tag:yaml.org,2002:str") => return Ok(s()),
        Some("!!int" | "tag:yaml.org,2002:int" | "!!float" | "tag:yaml.org,2002:float") => {
            return number(text).ok_or_else(|| format!("`{text}` is not a number"));
        }
        Some("!!bool" | "tag:yaml.org,2002:bool") => {
            return boolean(text)
                .ok_or_else(|| format!("`{text}` is not a boolean (true or false)"));
        }
        Some("!!null" | "tag:yaml.org,2002:null") => return Ok(Value::Null),
        Some(other) => {
            return Err(format!(
                "unsupported YAML tag `{other}`: only !!str, !!int, !!float, !!bool and !!null are allowed"
            ));
        }
    }
    if style != ScalarStyle::Plain {
        return Ok(s());
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if let Some(b) = boolean(text) {
        return Ok(b);
    }
    Ok(number(text).unwrap_or_else(s))
}

fn boolean(text: &str) -> Option<Value> {
    match text {
        "true" | "True" | "TRUE" => Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => Some(Value::Bool(false)),
        _ => None,
    }
}

fn number(text: &str) -> Option<Value> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let negative = text.starts_with('-');
    let radix = |p: &str, r: u32| -> Option<Value> {
        let n = i64::from_str_radix(digits.strip_prefix(p)?, r).ok()?;
        Some(Value::from(if negative { -n } else { n }))
    };
    if let Some(v) = radix("0x", 16).or_else(|| radix("0o", 8)) {
        return Some(v);
    }
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .ok();
    }
    let looks_float = !digits.is_empty()
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().filter(|b| *b == b'.').count() <= 1;
    if looks_float {
        return text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_documents_with_positions() {
        let text = "a: 1\n---\nspec:\n  route:\n  - weight: 50\n    labels: {version: v0.1}\n";
        let docs = read_stream(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].0, 2);
        let d = &docs[1].1;
        assert_eq!(d.value["spec"]["route"][0]["weight"], 50);
        let p = FieldPath::root()
            .key("spec")
            .key("route")
            .index(0)
            .key("weight");
        assert_eq!(
            d.locate(&p, false),
            Position {
                line: 5,
                column: 13
            }
        );
        assert_eq!(d.locate(&p, true), Position { line: 5, column: 5 });
        let v = p.parent().unwrap().key("labels").key("version");
        assert_eq!(
            d.locate(&v, false),
            Position {
                line: 6,
                column: 23
            }
        );
    }

    #[test]
    fn core_schema_scalars() {
        let docs =
            read_stream("[1, -2, 0x10, 1.5, true, null, '1', v0.1, 10.100.35.27, ~]").unwrap();
        assert_eq!(
            docs[0].1.value,
            serde_json::json!([
                1,
                -2,
                16,
                1.5,
                true,
                null,
                "1",
                "v0.1",
                "10.100.35.27",
                null
            ])
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let e = read_stream("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.position.line >= 2, "{e:?}");
        let e = read_stream("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.position, Position { line: 2, column: 1 });
        assert_eq!(
            e.message,
            "duplicate key `a`: each key may appear once in a mapping"
        );
    }

    #[test]
    fn reads_json() {
        let docs =
            read_stream("{\"kind\": \"EgressRule\",\n \"spec\": {\"ports\": [{\"port\": 9997}]}}")
                .unwrap();
        let d = &docs[0].1;
        let p = FieldPath::root()
            .key("spec")
            .key("ports")
            .index(0)
            .key("port");
        assert_eq!(d.value["spec"]["ports"][0]["port"], 9997);
        assert_eq!(d.locate(&p, false).line, 2);
    }
}
