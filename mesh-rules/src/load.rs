//! From files to validated rules: reads every document, checks it, and
//! reports every problem with file, document, line:column and field path.

use std::collections::HashMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::check::Checker;
use crate::diagnostic::{Diagnostics, Position};
use crate::error::FieldError;
use crate::path::FieldPath;
use crate::rules::{Kind, Metadata, Rule, RuleKey, Spec};
use crate::yaml;

/// One input: its name (a path, or `-` for standard input) and its text.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// How errors name the input.
    pub name: &'a str,
    /// The YAML or JSON text, one or more documents.
    pub text: &'a str,
}

/// Where a document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The source's name.
    pub file: String,
    /// 1-based document index in the source.
    pub document: usize,
    /// Where the document starts.
    pub position: Position,
}

/// A value with the place it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it was read.
    pub origin: Origin,
}

/// A Kubernetes object that is not a mesh rule (a Deployment, a Service, …),
/// found beside rules in the same files; rule commands leave it to kubectl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignObject {
    /// Its apiVersion.
    pub api_version: String,
    /// Its kind.
    pub kind: String,
    /// Its metadata.name, if any.
    pub name: Option<String>,
}

/// Everything read from a set of sources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// The rules, in source and document order.
    pub rules: Vec<Located<Rule>>,
    /// Documents that are not mesh rules.
    pub foreign: Vec<Located<ForeignObject>>,
}

/// What one document turned out to be.
#[allow(clippy::large_enum_variant)] // built once per document, moved once
enum Document {
    Rule(Rule),
    Foreign(ForeignObject),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: S,
}

fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

fn typed<S: DeserializeOwned>(value: Value) -> Result<(Metadata, S), FieldError> {
    serde_path_to_error::deserialize::<_, Envelope<S>>(value)
        .map(|e| (e.metadata, e.spec))
        .map_err(|e| {
            let path = FieldPath::from_serde(e.path());
            let message = e.into_inner().to_string();
            if message.starts_with("unknown field") {
                FieldError::at_key(path, message)
            } else {
                FieldError::new(path, message)
            }
        })
}

fn one_problem(path: FieldPath, message: String) -> Vec<FieldError> {
    vec![FieldError::new(path, message)]
}

/// The kind a document's `apiVersion` and `kind` name: one of ours, or
/// another API's object (passed through), or an error.
fn kind_of(
    map: &serde_json::Map<String, Value>,
) -> Result<Result<Kind, ForeignObject>, Vec<FieldError>> {
    let root = FieldPath::root();
    let text_field = |name: &str| match map.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(one_problem(
            root.key(name),
            format!("`{name}` must be a string"),
        )),
        None => Err(one_problem(
            root.clone(),
            format!("`{name}` is missing: every document needs apiVersion and kind"),
        )),
    };
    let api_version = text_field("apiVersion")?;
    let kind_name = text_field("kind")?;
    let group = api_group(&api_version);
    let in_group = |k: &Kind| k.api_versions().iter().any(|v| api_group(v) == group);
    let ours = Kind::ALL.iter().any(in_group);
    match Kind::from_manifest(&kind_name) {
        Some(kind) if !kind.api_versions().contains(&api_version.as_str()) => {
            let allowed = kind.api_versions().join(" or ");
            Err(one_problem(
                root.key("apiVersion"),
                format!("unknown apiVersion `{api_version}` for kind {kind_name}: use {allowed}"),
            ))
        }
        Some(kind) => Ok(Ok(kind)),
        None if ours => {
            let kinds: Vec<_> = Kind::ALL
                .iter()
                .filter(|k| in_group(k))
                .map(|k| k.as_str())
                .collect();
            Err(one_problem(
                root.key("kind"),
                format!(
                    "unknown kind `{kind_name}` in {api_version}: allowed kinds are {}",
                    kinds.join(", ")
                ),
            ))
        }
        None => {
            let name = map
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(Err(ForeignObject {
                api_version,
                kind: kind_name,
                name,
            }))
        }
    }
}

/// How much of a document to check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// Every rule: what users write.
    All,
    /// Shape only (fields and types): what the store wrote after checking
    /// it once, when it was written.
    Shape,
}

fn document(value: Value) -> Result<Document, Vec<FieldError>> {
    document_with(value, Checks::All)
}

fn document_with(value: Value, checks: Checks) -> Result<Document, Vec<FieldError>> {
    let root = FieldPath::root();
    let Value::Object(map) = &value else {
        return Err(one_problem(
            root,
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    };
    let kind = match kind_of(map)? {
        Ok(kind) => kind,
        Err(foreign) => return Ok(Document::Foreign(foreign)),
    };
    let api_version = map["apiVersion"].as_str().unwrap_or_default().to_owned();
    let one = |p: FieldError| vec![p];
    let (metadata, spec) = match kind {
        Kind::RouteRule => typed(value)
            .map(|(m, s)| (m, Spec::RouteRule(s)))
            .map_err(one)?,
        Kind::DestinationPolicy => typed(value)
            .map(|(m, s)| (m, Spec::DestinationPolicy(s)))
            .map_err(one)?,
        Kind::EgressRule => typed(value)
            .map(|(m, s)| (m, Spec::EgressRule(s)))
            .map_err(one)?,
        Kind::VirtualService => typed(value)
            .map(|(m, s)| (m, Spec::VirtualService(s)))
            .map_err(one)?,
        Kind::DestinationRule => typed(value)
            .map(|(m, s)| (m, Spec::DestinationRule(s)))
            .map_err(one)?,
        Kind::ServiceEntry => typed(value)
            .map(|(m, s)| (m, Spec::ServiceEntry(s)))
            .map_err(one)?,
        Kind::HttpRoute => typed(value)
            .map(|(m, s)| (m, Spec::HttpRoute(s)))
            .map_err(one)?,
        Kind::PeerAuthentication => typed(value)
            .map(|(m, s)| (m, Spec::PeerAuthentication(s)))
            .map_err(one)?,
        Kind::AuthorizationPolicy => typed(value)
            .map(|(m, s)| (m, Spec::AuthorizationPolicy(s)))
            .map_err(one)?,
        Kind::Sidecar => typed(value)
            .map(|(m, s)| (m, Spec::Sidecar(s)))
            .map_err(one)?,
        Kind::Gateway => typed(value)
            .map(|(m, s)| (m, Spec::Gateway(s)))
            .map_err(one)?,
    };
    if checks == Checks::All {
        let mut c = Checker::default();
        metadata.check(&mut c, &root.key("metadata"));
        spec.check(&mut c, &root.key("spec"));
        let problems = c.into_problems();
        if !problems.is_empty() {
            return Err(problems);
        }
    }
    Ok(Document::Rule(Rule {
        api_version,
        metadata,
        spec,
    }))
}

impl Rule {
    /// Reads and checks a rule from a JSON value; the error holds every
    /// problem.
    pub fn from_value(value: Value) -> Result<Rule, Vec<FieldError>> {
        Rule::read(value, Checks::All)
    }

    /// Reads a rule as the mesh admits it into force: checked as
    /// [`Rule::from_value`] does, and every field set one the mesh acts on
    /// (the rest are refused "not supported yet", as `meshctl validate`
    /// refuses them in a file). The error holds every problem.
    pub fn admit(value: Value) -> Result<Rule, Vec<FieldError>> {
        let rule = Rule::from_value(value)?;
        let not_acted_on = crate::support::unsupported(&rule.spec);
        if not_acted_on.is_empty() {
            Ok(rule)
        } else {
            Err(not_acted_on)
        }
    }

    /// A Kubernetes object of a rule kind (as the API server stores it)
    /// as the document its author wrote: `apiVersion`, `kind`, `spec`, and
    /// of the metadata the name, namespace (`namespace` when the object
    /// has none), labels, annotations but kubectl's last-applied copy, and
    /// the resourceVersion; no status, no server-set fields.
    pub fn document_of_object(object: &Value, namespace: Option<&str>) -> Value {
        let m = &object["metadata"];
        let mut metadata = serde_json::Map::new();
        metadata.insert("name".into(), m["name"].clone());
        let ns = m["namespace"]
            .as_str()
            .or(namespace)
            .map(|n| Value::String(n.to_owned()));
        if let Some(ns) = ns {
            metadata.insert("namespace".into(), ns);
        }
        if let Some(labels) = m["labels"].as_object().filter(|l| !l.is_empty()) {
            metadata.insert("labels".into(), Value::Object(labels.clone()));
        }
        if let Some(annotations) = m["annotations"].as_object() {
            let kept: serde_json::Map<_, _> = annotations
                .iter()
                .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !kept.is_empty() {
                metadata.insert("annotations".into(), Value::Object(kept));
            }
        }
        if let Some(rv) = m.get("resourceVersion").filter(|v| v.is_string()) {
            metadata.insert("resourceVersion".into(), rv.clone());
        }
        serde_json::json!({
            "apiVersion": object["apiVersion"],
            "kind": object["kind"],
            "metadata": metadata,
            "spec": object.get("spec").cloned().unwrap_or(Value::Null),
        })
    }

    /// Reads a rule a store wrote: its shape (fields, types) is checked,
    /// not its rules, which were checked once, when it was written — so a
    /// write validates each rule once, not again on every read of the
    /// store by each writer and by pilot.
    pub fn from_stored(value: Value) -> Result<Rule, Vec<FieldError>> {
        Rule::read(value, Checks::Shape)
    }

    fn read(value: Value, checks: Checks) -> Result<Rule, Vec<FieldError>> {
        match document_with(value, checks)? {
            Document::Rule(r) => Ok(r),
            Document::Foreign(f) => Err(one_problem(
                FieldPath::root().key("kind"),
                format!("{} {} is not a mesh rule", f.api_version, f.kind),
            )),
        }
    }
}

/// Reads every source, checks every document, and checks that no rule is
/// defined twice. Returns all rules, or every problem found.
pub fn load(sources: &[Source<'_>]) -> Result<Loaded, Diagnostics> {
    let mut out = Loaded::default();
    let mut diags = Vec::new();
    let mut seen: HashMap<RuleKey, Origin> = HashMap::new();
    for src in sources {
        let docs = match yaml::read_stream(src.text) {
            Ok(d) => d,
            Err(e) => {
                let document = e.document;
                diags.push(e.into_error().in_file(src.name, document));
                continue;
            }
        };
        for (index, doc) in docs {
            let origin = Origin {
                file: src.name.to_owned(),
                document: index,
                position: doc.start,
            };
            let diag = |p: &FieldError| {
                let position = doc.locate(&p.path, p.at_key);
                p.clone().located(position).in_file(src.name, index)
            };
            match document(doc.value.clone()) {
                Err(problems) => diags.extend(problems.iter().map(diag)),
                Ok(Document::Foreign(f)) => out.foreign.push(Located { value: f, origin }),
                Ok(Document::Rule(rule)) => {
                    let not_acted_on = crate::support::unsupported(&rule.spec);
                    if !not_acted_on.is_empty() {
                        diags.extend(not_acted_on.iter().map(diag));
                        continue;
                    }
                    let key = rule.key();
                    if let Some(first) = seen.get(&key) {
                        let name = FieldPath::root().key("metadata").key("name");
                        diags.push(diag(&FieldError::new(
                            name,
                            format!(
                                "{} {}/{} is defined twice: first in {}, document {} (line {}); names must be unique per kind and namespace",
                                key.kind, key.namespace, key.name, first.file, first.document, first.position.line
                            ),
                        )));
                        continue;
                    }
                    seen.insert(key, origin.clone());
                    out.rules.push(Located {
                        value: rule,
                        origin,
                    });
                }
            }
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(Diagnostics(diags))
    }
}
