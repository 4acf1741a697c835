//! `meshctl install`: the mesh's Kubernetes bundles, rendered from the
//! templates in `install/templates/` (compiled in) with the mesh's values;
//! `--set key=value` changes one, `-o DIR` writes the files (the copies
//! under `install/kubernetes/` are this command's output, and a test keeps
//! them so): `mesh.yaml` (the namespace, the rule kinds' CRDs generated
//! from their types ([`crd`]), pilot with its RBAC), `istio-api.yaml`
//! (the same kinds under Istio's API groups, optional) and the
//! observability addons: Prometheus, Grafana with the mesh's dashboards,
//! the Zipkin-compatible collector (Jaeger) and the service graph.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

mod crd;
pub mod uninstall;

/// The templates: where each renders to, and its text.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "mesh.yaml",
        include_str!("../../../install/templates/mesh.yaml"),
    ),
    (
        "addons/prometheus.yaml",
        include_str!("../../../install/templates/addons/prometheus.yaml"),
    ),
    (
        "addons/grafana.yaml",
        include_str!("../../../install/templates/addons/grafana.yaml"),
    ),
    (
        "addons/zipkin.yaml",
        include_str!("../../../install/templates/addons/zipkin.yaml"),
    ),
    (
        "addons/servicegraph.yaml",
        include_str!("../../../install/templates/addons/servicegraph.yaml"),
    ),
];

/// The Grafana dashboards provisioned by `addons/grafana.yaml`.
const DASHBOARDS: &[(&str, &str)] = &[
    (
        "mesh.json",
        include_str!("../../../install/kubernetes/addons/dashboards/mesh.json"),
    ),
    (
        "service.json",
        include_str!("../../../install/kubernetes/addons/dashboards/service.json"),
    ),
    (
        "workload.json",
        include_str!("../../../install/kubernetes/addons/dashboards/workload.json"),
    ),
];

/// The values, their defaults and what they are.
const VALUES: &[(&str, &str, &str)] = &[
    ("namespace", "mesh-system", "the namespace the mesh runs in"),
    ("hub", "localhost/mesh", "where the mesh's own images are"),
    ("tag", env!("CARGO_PKG_VERSION"), "the mesh's images' tag"),
    ("pilot.replicas", "1", "how many pilots serve"),
    ("pilot.cpu", "100m", "the CPU each pilot asks for"),
    ("pilot.memory", "128Mi", "the memory each pilot asks for"),
    ("pilot.memoryLimit", "512Mi", "the memory a pilot may use"),
    (
        "proxy.imagePullPolicy",
        "IfNotPresent",
        "when nodes pull the injected sidecar's image",
    ),
    (
        "inject.replicas",
        "1",
        "how many webhook servers (injection, rule validation) serve",
    ),
    ("inject.cpu", "50m", "the CPU each webhook server asks for"),
    (
        "inject.memory",
        "32Mi",
        "the memory each webhook server asks for",
    ),
    (
        "inject.memoryLimit",
        "128Mi",
        "the memory a webhook server may use",
    ),
    (
        "inject.certValidity",
        "8760h",
        "how long the webhooks' own serving certificate lives (replaced at two thirds)",
    ),
    (
        "gateway.replicas",
        "1",
        "how many ingress gateway proxies serve",
    ),
    (
        "gateway.serviceType",
        "NodePort",
        "how the ingress gateway's Service is reached from outside (NodePort or LoadBalancer)",
    ),
    (
        "gateway.cpu",
        "100m",
        "the CPU each ingress gateway asks for",
    ),
    (
        "gateway.memory",
        "64Mi",
        "the memory each ingress gateway asks for",
    ),
    (
        "gateway.memoryLimit",
        "256Mi",
        "the memory an ingress gateway may use",
    ),
    (
        "prometheus.image",
        "docker.io/prom/prometheus:v3.5.0",
        "Prometheus' image",
    ),
    (
        "prometheus.scrapeInterval",
        "15s",
        "how often Prometheus scrapes",
    ),
    (
        "prometheus.retention",
        "6h",
        "how long Prometheus keeps samples",
    ),
    (
        "grafana.image",
        "docker.io/grafana/grafana:12.1.1",
        "Grafana's image",
    ),
    (
        "tracing.image",
        "docker.io/jaegertracing/jaeger:2.12.0",
        "the tracing backend's image (Jaeger)",
    ),
    (
        "tracing.maxTraces",
        "50000",
        "traces the tracing backend keeps in memory",
    ),
    (
        "servicegraph.window",
        "1m",
        "the window the service graph's rates are taken over",
    ),
];

/// What `meshctl install` renders with.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Change a value (repeat for each): `namespace`, `hub`, `tag`,
    /// `prometheus.image`, … (`--set help=` lists them).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Write the files under DIR (`DIR/addons/prometheus.yaml`, …) instead
    /// of printing them.
    #[arg(short = 'o', long, value_name = "DIR")]
    output: Option<PathBuf>,
}

/// The values after `--set`s, or what is wrong with one.
fn values(set: &[String]) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut values: Vec<(&str, String)> = VALUES
        .iter()
        .map(|(k, v, _)| (*k, (*v).to_owned()))
        .collect();
    let known = || {
        VALUES
            .iter()
            .map(|(k, v, what)| format!("  {k} (default {v}): {what}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for s in set {
        let Some((key, value)) = s.split_once('=') else {
            anyhow::bail!(
                "--set {s}: expected KEY=VALUE; the values are:\n{}",
                known()
            );
        };
        let Some(slot) = values.iter_mut().find(|(k, _)| *k == key) else {
            anyhow::bail!(
                "--set {s}: there is no value `{key}`; the values are:\n{}",
                known()
            );
        };
        anyhow::ensure!(
            !value.is_empty()
                && !value
                    .chars()
                    .any(|c| c.is_whitespace() || "{}\"'#".contains(c)),
            "--set {s}: a value is one word without quotes, braces or #"
        );
        if key == "namespace" {
            let dns_label = value.len() <= 63
                && value.starts_with(|c: char| c.is_ascii_lowercase())
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !value.ends_with('-');
            anyhow::ensure!(
                dns_label,
                "--set {s}: a namespace is a DNS label (lowercase letters, digits, '-', at most 63)"
            );
        }
        if key == "gateway.serviceType" {
            anyhow::ensure!(
                ["NodePort", "LoadBalancer", "ClusterIP"].contains(&value),
                "--set {s}: the gateway's Service type is NodePort, LoadBalancer or ClusterIP"
            );
        }
        slot.1 = value.to_owned();
    }
    Ok(values)
}

/// Where the dashboards go in a template.
const DASHBOARDS_SLOT: &str = "{{dashboards}}";
/// Where the mesh's CRDs go in a template.
const CRDS_SLOT: &str = "{{crds}}";
/// Where pilot's RBAC rules for the rule kinds go.
const RULE_RBAC_SLOT: &str = "{{rule_rbac}}";
/// The API groups the rule validation webhook is called for.
const RULE_GROUPS_SLOT: &str = "{{rule_groups}}";

/// The optional bundle of the same kinds under Istio's API groups, for
/// files written for Istio (all generated, no template).
const ISTIO_API: &str = "istio-api.yaml";

/// The dashboards as a ConfigMap's `data` entries (block scalars).
fn dashboards_data() -> String {
    let mut s = String::new();
    for (name, json) in DASHBOARDS {
        s.push_str(&format!("  {name}: |\n"));
        for line in json.lines() {
            s.push_str("    ");
            s.push_str(line);
            s.push('\n');
        }
    }
    s.trim_end_matches('\n').to_owned()
}

/// Every bundle file: its path under the output folder and its text.
pub fn render(set: &[String]) -> anyhow::Result<Vec<(&'static str, String)>> {
    let values = values(set)?;
    // Generated text goes in last: the dashboards' legends use Grafana's
    // own `{{label}}` syntax.
    let slots = [
        (DASHBOARDS_SLOT, dashboards_data()),
        (CRDS_SLOT, crd::yaml(&crd::definitions(crd::Groups::Mesh)?)?),
        (RULE_RBAC_SLOT, crd::rbac_rules()),
        (RULE_GROUPS_SLOT, crd::validated_groups()),
    ];
    let mut files = TEMPLATES
        .iter()
        .map(|(path, template)| {
            let mut text = template.to_string();
            for (key, value) in &values {
                text = text.replace(&format!("{{{{{key}}}}}"), value);
            }
            let bare = slots
                .iter()
                .fold(text.clone(), |t, (slot, _)| t.replace(slot, ""));
            if let Some(at) = bare.find("{{") {
                let rest = &bare[at..];
                let end = rest.find("}}").map_or(rest.len(), |e| e + 2);
                anyhow::bail!("template {path} names an unknown value {}", &rest[..end]);
            }
            for (slot, generated) in &slots {
                text = text.replace(slot, generated.trim_end_matches('\n'));
            }
            Ok((*path, text))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let header = "# The mesh's rule kinds under Istio's API groups (config.istio.io,\n# networking.istio.io, security.istio.io), for files written for Istio.\n# Optional; do not apply beside Istio's own CRDs. Rendered by `meshctl install`.\n";
    files.push((
        ISTIO_API,
        format!(
            "{header}{}",
            crd::yaml(&crd::definitions(crd::Groups::Istio)?)?
        ),
    ));
    Ok(files)
}

fn write(dir: &Path, files: &[(&str, String)]) -> anyhow::Result<()> {
    for (path, text) in files {
        let to = dir.join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&to, text).with_context(|| format!("cannot write {}", to.display()))?;
        eprintln!("wrote {}", to.display());
    }
    Ok(())
}

/// `meshctl install`.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let files = render(&args.set)?;
    match &args.output {
        Some(dir) => write(dir, &files)?,
        None => {
            let all: Vec<&str> = files.iter().map(|(_, t)| t.as_str()).collect();
            print!("{}", all.join("---\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_by_name_and_shape() {
        let e = render(&["nmespace=x".into()]).unwrap_err().to_string();
        assert!(
            e.contains("there is no value `nmespace`")
                && e.contains("namespace (default mesh-system)"),
            "{e}"
        );
        let e = render(&["namespace=Bad_Name".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("a namespace is a DNS label"), "{e}");
        let e = render(&["tag".into()]).unwrap_err().to_string();
        assert!(e.contains("expected KEY=VALUE"), "{e}");
        let files = render(&["namespace=observability".into()]).unwrap();
        for (path, text) in &files {
            assert!(!text.contains("mesh-system"), "{path}");
            // The Istio API bundle has only cluster-wide objects.
            if *path != ISTIO_API {
                assert!(text.contains("namespace: observability"), "{path}");
            }
        }
    }
}
