//! Who is on the other side of a call, as the standard metrics label it.
//!
//! Sidecars tell each other their workload in one header, [`HEADER`]: the
//! caller's sidecar adds it to requests to mesh workloads (never to
//! services outside the mesh), the receiving sidecar takes it off before
//! the app sees it and answers with its own on the response, which the
//! caller's sidecar takes off in turn. The value is `key=value` pairs
//! separated by `;`:
//!
//! ```text
//! x-mesh-peer: workload=svcb-v2;namespace=default;app=svcb;version=v0.2;service=svcb;revision=v0.2
//! ```
//!
//! Values follow Kubernetes label-value rules (at most 63 of
//! `[A-Za-z0-9._-]`); anything else, and any key missing, reads as
//! `unknown`, so a caller cannot grow the metrics without bound by
//! inventing names. (With mutual TLS the principal will come from the
//! certificate, never from this header.)

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use http::HeaderValue;
use http::header::HeaderName;

/// The exchange header.
pub const HEADER: HeaderName = HeaderName::from_static("x-mesh-peer");

/// The value of a label nobody told.
pub const UNKNOWN: &str = "unknown";

/// A workload's labels in the standard metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    /// The Deployment (or other owner) it runs as.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its `app.kubernetes.io/name` (or `app`) label.
    pub app: String,
    /// Its `app.kubernetes.io/version` (or `version`) label.
    pub version: String,
    /// Istio's canonical service: `service.istio.io/canonical-name`, else
    /// the app, else the workload.
    pub canonical_service: String,
    /// Istio's canonical revision: `service.istio.io/canonical-revision`,
    /// else the version, else `latest`.
    pub canonical_revision: String,
}

/// Every label unknown: a caller outside the mesh, or one that said
/// nothing usable.
pub static NOBODY: LazyLock<Arc<Workload>> = LazyLock::new(|| {
    Arc::new(Workload {
        name: UNKNOWN.into(),
        namespace: UNKNOWN.into(),
        app: UNKNOWN.into(),
        version: UNKNOWN.into(),
        canonical_service: UNKNOWN.into(),
        canonical_revision: UNKNOWN.into(),
    })
});

/// Keeps a value that is a valid Kubernetes label value, else `unknown`.
fn bounded(v: &str) -> String {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { v.to_owned() } else { UNKNOWN.into() }
}

impl Workload {
    /// This proxy's own workload, from what it tells pilot (its workload
    /// name, namespace and pod labels).
    pub fn local(name: &str, namespace: &str, labels: &BTreeMap<String, String>) -> Workload {
        let label = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
                .cloned()
        };
        let app = label(&["app.kubernetes.io/name", "app"]);
        let version = label(&["app.kubernetes.io/version", "version"]);
        let name = bounded(name);
        Workload {
            canonical_service: bounded(
                &label(&["service.istio.io/canonical-name"])
                    .or_else(|| app.clone())
                    .unwrap_or_else(|| name.clone()),
            ),
            canonical_revision: bounded(
                &label(&["service.istio.io/canonical-revision"])
                    .or_else(|| version.clone())
                    .unwrap_or_else(|| "latest".into()),
            ),
            app: bounded(app.as_deref().unwrap_or(UNKNOWN)),
            version: bounded(version.as_deref().unwrap_or(UNKNOWN)),
            namespace: bounded(namespace),
            name,
        }
    }

    /// The exchange header's value for this workload.
    pub fn header_value(&self) -> HeaderValue {
        let v = format!(
            "workload={};namespace={};app={};version={};service={};revision={}",
            self.name,
            self.namespace,
            self.app,
            self.version,
            self.canonical_service,
            self.canonical_revision
        );
        // Every part passed `bounded`: visible ASCII only.
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static(""))
    }

    /// Reads an exchange header; `None` when it names no workload.
    pub fn from_header(v: &HeaderValue) -> Option<Workload> {
        let text = v.to_str().ok().filter(|t| t.len() <= 512)?;
        let mut w = (**NOBODY).clone();
        for pair in text.split(';') {
            let Some((key, value)) = pair.trim().split_once('=') else {
                continue;
            };
            let slot = match key {
                "workload" => &mut w.name,
                "namespace" => &mut w.namespace,
                "app" => &mut w.app,
                "version" => &mut w.version,
                "service" => &mut w.canonical_service,
                "revision" => &mut w.canonical_revision,
                _ => continue,
            };
            *slot = bounded(value);
        }
        (w.name != UNKNOWN).then_some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn the_header_carries_a_workload_both_ways() {
        let w = Workload::local(
            "svcb-v2",
            "default",
            &labels(&[("app", "svcb"), ("version", "v0.2")]),
        );
        assert_eq!(
            w.header_value(),
            "workload=svcb-v2;namespace=default;app=svcb;version=v0.2;service=svcb;revision=v0.2"
        );
        assert_eq!(Workload::from_header(&w.header_value()), Some(w));
    }

    #[test]
    fn recommended_labels_win_and_gaps_read_unknown() {
        let w = Workload::local(
            "pay",
            "shop",
            &labels(&[
                ("app", "old"),
                ("app.kubernetes.io/name", "payments"),
                ("service.istio.io/canonical-revision", "r7"),
            ]),
        );
        assert_eq!((w.app.as_str(), w.version.as_str()), ("payments", UNKNOWN));
        assert_eq!(
            (w.canonical_service.as_str(), w.canonical_revision.as_str()),
            ("payments", "r7")
        );
        let bare = Workload::local("job", "ns", &BTreeMap::new());
        assert_eq!(
            (
                bare.canonical_service.as_str(),
                bare.canonical_revision.as_str()
            ),
            ("job", "latest")
        );
    }

    #[test]
    fn a_caller_cannot_invent_unbounded_values() {
        let long = "x".repeat(64);
        let v = HeaderValue::from_str(&format!(
            "workload=a b;namespace={long};app=ok;extra=1;version"
        ))
        .unwrap();
        assert_eq!(Workload::from_header(&v), None, "no usable workload name");
        let v = HeaderValue::from_str(&format!("workload=w;namespace={long};app=ok")).unwrap();
        let w = Workload::from_header(&v).unwrap();
        assert_eq!(
            (w.name.as_str(), w.namespace.as_str(), w.app.as_str()),
            ("w", UNKNOWN, "ok")
        );
        let huge = HeaderValue::from_str(&"workload=w;".repeat(60)).unwrap();
        assert_eq!(Workload::from_header(&huge), None);
    }
}
