//! Collects every semantic problem of a document, each with its field path.

use std::collections::BTreeMap;

use crate::error::FieldError;
use crate::names;
use crate::path::FieldPath;

/// Gathers problems; checks never stop at the first one.
#[derive(Debug, Default)]
pub struct Checker {
    problems: Vec<FieldError>,
}

impl Checker {
    /// Records a problem at the value of `path`.
    pub fn fail(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.problems.push(FieldError::new(path.clone(), message));
    }

    /// Records a problem at the key of `path`.
    pub fn fail_key(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.problems
            .push(FieldError::at_key(path.clone(), message));
    }

    /// Records `result`'s error, if any, under `path`.
    pub fn check(&mut self, path: &FieldPath, result: Result<(), FieldError>) {
        if let Err(e) = result {
            self.problems.push(e.under(path));
        }
    }

    /// Checks a label map: keys and values by Kubernetes rules.
    pub fn labels(&mut self, path: &FieldPath, labels: &BTreeMap<String, String>) {
        for (k, v) in labels {
            let p = path.key(k.clone());
            if let Err(e) = names::check_label_key(k) {
                self.fail_key(&p, e.message);
            }
            self.check(&p, names::check_label_value(v));
        }
    }

    /// Checks that `value` lies in `min..=max`.
    pub fn range<T: PartialOrd + std::fmt::Display>(
        &mut self,
        path: &FieldPath,
        what: &str,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            self.fail(
                path,
                format!("{what} {value} is out of range: it must be between {min} and {max}"),
            );
        }
    }

    /// Checks that a regular expression compiles (RE2 syntax, as Envoy's).
    pub fn regex(&mut self, path: &FieldPath, re: &str) {
        if let Err(e) = regex::Regex::new(re) {
            let detail = e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_owned();
            self.fail(
                path,
                format!("`{re}` is not a valid regular expression (RE2 syntax): {detail}"),
            );
        }
    }

    /// The problems found, in the order they were found.
    pub fn into_problems(self) -> Vec<FieldError> {
        self.problems
    }
}
