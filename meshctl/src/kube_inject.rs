//! `meshctl kube-inject`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use mesh_inject::{Action, MeshSettings, Options, SidecarMode, inject_manifests};

use crate::files::read_inputs;

/// Arguments of `kube-inject`.
#[derive(clap::Args)]
pub struct Args {
    /// The manifest file, or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    file: String,
    /// Write the result here instead of standard output (nothing is written on error).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Mesh configuration: a YAML file, or the `mesh-system/mesh` ConfigMap
    /// as `kubectl get cm -o yaml` prints it. Defaults apply when absent.
    #[arg(
        long = "mesh-config",
        visible_alias = "inject-config",
        value_name = "FILE"
    )]
    mesh_config: Option<PathBuf>,
    /// Inject the proxy as a native sidecar (Kubernetes 1.29+).
    #[arg(long)]
    native_sidecar: bool,
    /// Convert workloads in removed API versions (extensions/v1beta1, apps/v1beta1,
    /// apps/v1beta2, batch/v1beta1) to their current version.
    #[arg(long)]
    upgrade_apis: bool,
}

/// Runs `kube-inject`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut cfg = match &args.mesh_config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            MeshSettings::from_yaml(&p.display().to_string(), &text).map_err(anyhow::Error::msg)?
        }
        None => MeshSettings::default(),
    };
    if args.native_sidecar {
        cfg.sidecar_mode = SidecarMode::Native;
    }
    let input = read_inputs(std::slice::from_ref(&args.file))?.remove(0);
    let opts = Options {
        upgrade_apis: args.upgrade_apis,
    };
    let injected = match inject_manifests(&input.name, &input.text, &cfg, &opts) {
        Ok(i) => i,
        Err(problems) => {
            for p in problems.iter() {
                eprintln!("{p}");
            }
            eprintln!(
                "Error: {} problem(s) found; nothing was written",
                problems.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    for r in &injected.reports {
        for w in &r.warnings {
            eprintln!("Warning: {w}");
        }
        if let Action::Skipped(why) = &r.action {
            eprintln!("Skipped {}: {why}", r.object);
        }
    }
    match &args.output {
        Some(p) => std::fs::write(p, &injected.yaml)
            .with_context(|| format!("cannot write {}", p.display()))?,
        None => print!("{}", injected.yaml),
    }
    Ok(ExitCode::SUCCESS)
}
