//! The mesh's settings, one document both the injector (what it adds to
//! pods) and pilot (how proxies treat traffic) read: defaults, a mesh
//! configuration file, or the `mesh` key of the `mesh-system/mesh`
//! ConfigMap. Key names follow Istio's mesh configuration where it has
//! one.

use std::collections::BTreeMap;

use crate::{Diagnostic, FieldError, FieldPath};
use serde::{Deserialize, Serialize};

/// How the sidecar joins the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SidecarMode {
    /// A regular container beside the app.
    #[default]
    Container,
    /// A native sidecar: an init container with `restartPolicy: Always`
    /// (Kubernetes 1.29 and newer), started before and stopped after the app.
    Native,
}

/// Compute resources of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Requests (`cpu`, `memory`).
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    /// Limits (`cpu`, `memory`).
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

fn resources(req_cpu: &str, req_mem: &str, lim_cpu: &str, lim_mem: &str) -> Resources {
    Resources {
        requests: [
            ("cpu".into(), req_cpu.into()),
            ("memory".into(), req_mem.into()),
        ]
        .into(),
        limits: [
            ("cpu".into(), lim_cpu.into()),
            ("memory".into(), lim_mem.into()),
        ]
        .into(),
    }
}

/// The mesh configuration the injector uses. Every field has a default, so
/// an empty file is a valid configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MeshSettings {
    /// Image registry and path prefix of the proxy image.
    pub hub: String,
    /// Proxy image tag.
    pub tag: String,
    /// Pull policy of the injected images.
    pub image_pull_policy: String,
    /// Where sidecars find pilot's xDS server.
    pub pilot_address: String,
    /// Sidecar resources.
    pub proxy_resources: Resources,
    /// Init container resources.
    pub init_resources: Resources,
    /// Outbound destinations (CIDRs) never captured.
    pub exclude_outbound_cidrs: Vec<String>,
    /// Outbound destinations (CIDRs) captured; `*` for all.
    pub include_outbound_cidrs: String,
    /// Inbound ports never captured (the proxy's own are always excluded).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports never captured.
    pub exclude_outbound_ports: Vec<u16>,
    /// Container or native sidecar.
    pub sidecar_mode: SidecarMode,
    /// Worker threads of the sidecar.
    pub concurrency: u32,
    /// Seconds the sidecar serves on after SIGTERM before draining, so
    /// callers stop sending to a terminating pod before its listeners
    /// close (keep it below the pod's termination grace period).
    pub drain_delay_seconds: u32,
    /// pilot: where calls to hosts the mesh does not know go (Istio's
    /// `outboundTrafficPolicy`); unset, pilot's `--outbound-policy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// pilot: where proxies write a line per call — `/dev/stdout`, or
    /// `""` for nowhere (Istio's `accessLogFile`); unset, pilot's
    /// `--access-log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_file: Option<AccessLogFile>,
    /// pilot: the access log lines' encoding (Istio's
    /// `accessLogEncoding`); `TEXT` unless set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_encoding: Option<AccessLogEncoding>,
}

/// Istio's `outboundTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// The mode.
    pub mode: OutboundMode,
}

/// Where calls to unknown hosts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Refused until an egress rule or ServiceEntry names the host (the
    /// seed walk's behaviour).
    RegistryOnly,
    /// Passed through to the original destination.
    AllowAny,
}

/// Where access log lines go: the proxy's standard output, or nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessLogFile {
    /// Off.
    #[serde(rename = "")]
    Off,
    /// The proxy's standard output (the container log).
    #[serde(rename = "/dev/stdout")]
    Stdout,
}

/// Access log line encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccessLogEncoding {
    /// Envoy's default text format.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            hub: "ghcr.io/mesh".into(),
            tag: env!("CARGO_PKG_VERSION").into(),
            image_pull_policy: "IfNotPresent".into(),
            pilot_address: "mesh-pilot.mesh-system.svc:15010".into(),
            proxy_resources: resources("10m", "16Mi", "1", "128Mi"),
            init_resources: resources("10m", "10Mi", "100m", "50Mi"),
            exclude_outbound_cidrs: vec![],
            include_outbound_cidrs: "*".into(),
            exclude_inbound_ports: vec![],
            exclude_outbound_ports: vec![],
            sidecar_mode: SidecarMode::Container,
            concurrency: 2,
            drain_delay_seconds: 5,
            outbound_traffic_policy: None,
            access_log_file: None,
            access_log_encoding: None,
        }
    }
}

impl MeshSettings {
    /// The proxy image reference.
    pub fn proxy_image(&self) -> String {
        format!("{}/mesh-proxy:{}", self.hub, self.tag)
    }

    /// Reads a configuration: either the configuration itself, or a
    /// ConfigMap whose `data.mesh` holds it (as `kubectl get cm -o yaml`
    /// prints it). `name` is used in errors.
    pub fn from_yaml(name: &str, text: &str) -> Result<Self, Diagnostic> {
        let doc = crate::yaml::read_one(text).map_err(|e| e.in_file(name, 0))?;
        let Some(doc) = doc else {
            return Ok(Self::default());
        };
        if doc.value.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap") {
            let inner = doc
                .value
                .pointer("/data/mesh")
                .and_then(|m| m.as_str())
                .ok_or_else(|| {
                    let data = FieldPath::root().key("data");
                    let position = doc.locate(&data, true);
                    FieldError::new(
                        data,
                        "the ConfigMap has no `mesh` key holding the mesh configuration",
                    )
                    .located(position)
                    .in_file(name, 0)
                })?;
            return Self::from_yaml(&format!("{name} (data.mesh)"), inner);
        }
        doc.deserialize().map_err(|e| e.in_file(name, 0))
    }
}
