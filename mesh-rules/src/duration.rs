//! Durations as users write them in rules (`500ms`, `1.5s`, `1m30s`).

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::FieldError;

/// A duration written as numbers with units `h`, `m`, `s`, `ms`, `us`, `ns`
/// (Go's syntax, which Istio users write), or protobuf JSON seconds (`1.5s`).
/// It keeps the text the user wrote so output round-trips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: StdDuration,
}

impl Duration {
    /// Parses `text`, with the reason when it is not a duration.
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::message(format!(
                "`{text}` is not a duration: write a number followed by a unit (h, m, s, ms, us, ns), e.g. 500ms, 1.5s or 1m30s"
            ))
        };
        if text.is_empty() {
            return Err(bad());
        }
        let mut rest = text;
        let mut total = 0f64;
        while !rest.is_empty() {
            let n = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let number: f64 = rest[..n].parse().map_err(|_| bad())?;
            rest = &rest[n..];
            let u = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..u] {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 1e-3,
                "us" | "µs" => 1e-6,
                "ns" => 1e-9,
                _ => return Err(bad()),
            };
            total += number * scale;
            rest = &rest[u..];
        }
        if total > 366.0 * 24.0 * 3600.0 {
            return Err(FieldError::message(format!(
                "`{text}` is too long: durations may be at most a year"
            )));
        }
        Ok(Self {
            text: text.to_owned(),
            value: StdDuration::from_secs_f64(total),
        })
    }

    /// The duration's length.
    pub fn get(&self) -> StdDuration {
        self.value
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Duration::parse(&text).map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(([0-9]+\\.?[0-9]*|\\.[0-9]+)(h|m|s|ms|us|µs|ns))+$",
            "description": "A duration: `10s`, `1.5s`, `1m30s`, `250ms`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(
            Duration::parse("10s").unwrap().get(),
            StdDuration::from_secs(10)
        );
        assert_eq!(
            Duration::parse("1.5s").unwrap().get(),
            StdDuration::from_millis(1500)
        );
        assert_eq!(
            Duration::parse("1m30s").unwrap().get(),
            StdDuration::from_secs(90)
        );
        assert_eq!(
            Duration::parse("250ms").unwrap().get(),
            StdDuration::from_millis(250)
        );
        for bad in ["", "10", "s", "10x", "1..5s", "-1s"] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
    }
}
