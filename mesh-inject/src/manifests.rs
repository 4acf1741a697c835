//! `meshctl kube-inject` over a multi-document YAML (or JSON) file.

use mesh_rules::{Diagnostics, FieldError, yaml};

use crate::config::MeshSettings;
use crate::inject::{Options, Report, inject_object};

/// The injected file.
#[derive(Debug, Clone)]
pub struct Injected {
    /// The documents, in input order, as YAML separated by `---`.
    pub yaml: String,
    /// The injected values, one per input document.
    pub documents: Vec<serde_json::Value>,
    /// What happened to each object.
    pub reports: Vec<Report>,
}

/// Injects every document of `text`; any bad document fails the whole file,
/// with every problem named by file, document, line:column and field.
pub fn inject_manifests(
    name: &str,
    text: &str,
    cfg: &MeshSettings,
    opts: &Options,
) -> Result<Injected, Diagnostics> {
    let docs = yaml::read_stream(text).map_err(|e| {
        let document = e.document;
        Diagnostics(vec![e.into_error().in_file(name, document)])
    })?;
    let mut problems = Vec::new();
    let mut out = Injected {
        yaml: String::new(),
        documents: Vec::new(),
        reports: Vec::new(),
    };
    for (index, doc) in docs {
        let mut value = doc.value.clone();
        if !value.is_object() {
            problems.push(
                FieldError::message("a manifest document must be a mapping")
                    .located(doc.start)
                    .in_file(name, index),
            );
            continue;
        }
        match inject_object(&mut value, cfg, opts) {
            Ok(reports) => out.reports.extend(reports),
            Err(e) => {
                let position = doc.locate(&e.path, e.at_key);
                problems.push(e.located(position).in_file(name, index));
            }
        }
        out.documents.push(value);
    }
    if !problems.is_empty() {
        return Err(Diagnostics(problems));
    }
    let rendered: Vec<String> = out
        .documents
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("JSON values render as YAML"))
        .collect();
    out.yaml = rendered.join("---\n");
    Ok(out)
}
