//! What a pod tells its sidecar through the Kubernetes downward API: its
//! labels, as a file of `key="value"` lines that the kubelet rewrites when
//! the labels change (the injector mounts it and names it in
//! `MESH_LABELS_FILE`).

use std::collections::BTreeMap;

use mesh_rules::{FieldError, Position};

/// Reads a downward-API labels file. Values are quoted as Go's `%q` does;
/// a line that is not `key="value"` is an error naming the line.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, FieldError> {
    let mut labels = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || {
            FieldError::message(format!("`{line}` is not key=\"value\"")).located(Position {
                line: i + 1,
                column: 1,
            })
        };
        let (key, quoted) = line.split_once('=').ok_or_else(bad)?;
        let inner = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .ok_or_else(bad)?;
        labels.insert(key.to_owned(), unquote(inner).ok_or_else(bad)?);
    }
    Ok(labels)
}

/// Undoes Go's `%q` escapes (`\"`, `\\`, `\n`, `\t`, `\r`, `\xNN`, `\uNNNN`).
fn unquote(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Option<char> {
            let digits: String = chars.by_ref().take(n).collect();
            char::from_u32(u32::from_str_radix(&digits, 16).ok()?)
        };
        out.push(match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'x' => hex(&mut chars, 2)?,
            'u' => hex(&mut chars, 4)?,
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_what_the_kubelet_writes() {
        let text = "app=\"svcb\"\npod-template-hash=\"5d4f8c9b7\"\nversion=\"v0.1\"\nexample.com/note=\"a \\\"b\\\"\"\n";
        let labels = super::parse_labels(text).unwrap();
        assert_eq!(labels["app"], "svcb");
        assert_eq!(labels["version"], "v0.1");
        assert_eq!(labels["example.com/note"], "a \"b\"");
        assert_eq!(
            super::parse_labels("app=svcb\n").unwrap_err().to_string(),
            "1:1: `app=svcb` is not key=\"value\""
        );
    }
}
