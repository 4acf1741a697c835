//! The containers, volume and annotations injection adds to a pod, built
//! with the Kubernetes API types so every field is one Kubernetes knows.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe,
    ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::TEMPLATE_VERSION;
use crate::config::{MeshSettings, Resources, SidecarMode};

/// Name of the init container that programs the pod's packet redirection.
pub const INIT_CONTAINER: &str = "mesh-init";
/// Name of the sidecar container.
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// Name of the sidecar's scratch volume (its root filesystem is read-only).
pub const PROXY_VOLUME: &str = "mesh-proxy-run";
/// Name of the downward-API volume with the pod's labels.
pub const PODINFO_VOLUME: &str = "mesh-podinfo";
/// Where the sidecar finds the pod's labels (`key="value"` lines, kept up
/// to date by the kubelet when the labels change).
pub const LABELS_FILE: &str = "/var/run/mesh/pod/labels";
/// The user id the proxy runs as; capture rules let its traffic through.
pub const PROXY_UID: i64 = 1337;
/// Prometheus metrics port of the sidecar.
pub const METRICS_PORT: i32 = 15090;
/// Readiness port of the sidecar.
pub const HEALTH_PORT: i32 = 15021;
/// Admin port of the sidecar (loopback only, never captured).
pub const ADMIN_PORT: i32 = 15000;
/// Outbound capture port.
pub const OUTBOUND_CAPTURE_PORT: i32 = 15001;
/// Inbound capture port.
pub const INBOUND_CAPTURE_PORT: i32 = 15006;

/// Annotation recording what was injected, as JSON.
pub const STATUS_ANNOTATION: &str = "sidecar.mesh.dev/status";
/// Annotation that opts a pod out (`"false"`) of injection.
pub const INJECT_ANNOTATION: &str = "sidecar.mesh.dev/inject";
/// Namespace label that opts a namespace in (`enabled`) or out (`disabled`).
pub const NAMESPACE_LABEL: &str = "mesh-injection";

/// What injection recorded in [`STATUS_ANNOTATION`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Template version.
    pub version: String,
    /// Injected init containers.
    pub init_containers: Vec<String>,
    /// Injected containers.
    pub containers: Vec<String>,
    /// Injected volumes.
    pub volumes: Vec<String>,
}

fn quantities(m: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!m.is_empty()).then(|| {
        m.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    })
}

fn requirements(r: &Resources) -> ResourceRequirements {
    ResourceRequirements {
        requests: quantities(&r.requests),
        limits: quantities(&r.limits),
        ..Default::default()
    }
}

fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The init container: `mesh-proxy init` with the capture settings.
pub fn init_container(cfg: &MeshSettings) -> Container {
    let mut exclude_inbound = vec![METRICS_PORT as u16, HEALTH_PORT as u16];
    exclude_inbound.extend(cfg.exclude_inbound_ports.iter().copied());
    let mut args = vec![
        "init".to_owned(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--proxy-gid".into(),
        PROXY_UID.to_string(),
        "--inbound-ports".into(),
        "*".into(),
        "--exclude-inbound-ports".into(),
        join(exclude_inbound),
        "--outbound-cidrs".into(),
        cfg.include_outbound_cidrs.clone(),
    ];
    if !cfg.exclude_outbound_cidrs.is_empty() {
        args.extend([
            "--exclude-outbound-cidrs".into(),
            join(&cfg.exclude_outbound_cidrs),
        ]);
    }
    if !cfg.exclude_outbound_ports.is_empty() {
        args.extend([
            "--exclude-outbound-ports".into(),
            join(&cfg.exclude_outbound_ports),
        ]);
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(cfg.proxy_image()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        args: Some(args),
        resources: Some(requirements(&cfg.init_resources)),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn literal_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The sidecar container of a pod of `workload` (the Deployment,
/// StatefulSet, … that owns it, as Istio's `WORKLOAD_NAME`). Everything
/// else pilot needs to place the pod comes from the downward API: its
/// name, namespace, IP and service account as environment, its labels as
/// a file that follows label changes.
pub fn proxy_container(cfg: &MeshSettings, workload: &str) -> Container {
    let port = |n: i32, name: &str| ContainerPort {
        container_port: n,
        name: Some(name.into()),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(cfg.proxy_image()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        args: Some(vec![
            "sidecar".into(),
            "--xds-address".into(),
            cfg.pilot_address.clone(),
            "--concurrency".into(),
            cfg.concurrency.to_string(),
            "--drain-delay".into(),
            cfg.drain_delay_seconds.to_string(),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            literal_env("WORKLOAD_NAME", workload),
            literal_env("MESH_LABELS_FILE", LABELS_FILE),
            literal_env("MESH_PILOT_ADDRESS", &cfg.pilot_address),
        ]),
        ports: Some(vec![
            port(METRICS_PORT, "mesh-metrics"),
            port(HEALTH_PORT, "mesh-health"),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".into()),
                port: IntOrString::Int(HEALTH_PORT),
                ..Default::default()
            }),
            initial_delay_seconds: Some(1),
            period_seconds: Some(2),
            failure_threshold: Some(30),
            ..Default::default()
        }),
        resources: Some(requirements(&cfg.proxy_resources)),
        restart_policy: (cfg.sidecar_mode == SidecarMode::Native).then(|| "Always".into()),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: PROXY_VOLUME.into(),
                mount_path: "/var/run/mesh".into(),
                ..Default::default()
            },
            VolumeMount {
                name: PODINFO_VOLUME.into(),
                mount_path: "/var/run/mesh/pod".into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// The sidecar's volumes: its scratch space, and the pod's labels.
pub fn proxy_volumes() -> [Volume; 2] {
    [
        Volume {
            name: PROXY_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: PODINFO_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "labels".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// What injection records about itself.
pub fn status(cfg: &MeshSettings) -> Status {
    let (init, containers) = match cfg.sidecar_mode {
        SidecarMode::Container => (vec![INIT_CONTAINER.into()], vec![PROXY_CONTAINER.into()]),
        SidecarMode::Native => (vec![INIT_CONTAINER.into(), PROXY_CONTAINER.into()], vec![]),
    };
    Status {
        version: TEMPLATE_VERSION.into(),
        init_containers: init,
        containers,
        volumes: vec![PROXY_VOLUME.into(), PODINFO_VOLUME.into()],
    }
}
