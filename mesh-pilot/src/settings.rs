//! The mesh's settings file (the `mesh` ConfigMap, mounted): read at start
//! and followed, so an edit reaches every proxy with no restart. A version
//! that does not parse is logged, counted and changes nothing.

use std::path::Path;

use mesh_rules::mesh_config::MeshSettings;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing::{info, warn};

/// Reads of the settings file, by result.
#[derive(Clone, Default)]
pub struct SettingsMetrics {
    reads: Family<[(&'static str, &'static str); 1], Counter>,
}

impl SettingsMetrics {
    /// Adds the family to pilot's metrics.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "pilot_mesh_settings_reads",
            "Versions of the mesh settings file read, by result (accepted, or refused and the last good kept)",
            self.reads.clone(),
        );
    }

    fn read(&self, result: &'static str) {
        self.reads.get_or_create(&[("result", result)]).inc();
    }
}

/// Why the settings file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Not readable.
    #[error("cannot read the mesh settings {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a valid settings document.
    #[error("{0}")]
    Invalid(mesh_rules::Diagnostic),
}

/// Reads the settings file once (at start: a bad file stops pilot there).
pub fn read(path: &Path, metrics: &SettingsMetrics) -> Result<MeshSettings, SettingsError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        file: file.clone(),
        source,
    })?;
    let settings = MeshSettings::from_yaml(&file, &text).map_err(SettingsError::Invalid)?;
    metrics.read("accepted");
    Ok(settings)
}

/// Follows the settings file: `apply` gets each good new version.
pub fn follow(
    path: &Path,
    metrics: SettingsMetrics,
    apply: impl Fn(MeshSettings) + Send + 'static,
) -> Result<mesh_runtime::watch::FileWatch, mesh_runtime::watch::WatchError> {
    let first = std::fs::read(path).unwrap_or_default();
    let file = path.display().to_string();
    mesh_runtime::watch::follow(path, first, move |bytes| {
        match MeshSettings::from_yaml(&file, &String::from_utf8_lossy(bytes)) {
            Ok(settings) => {
                info!(%file, "mesh settings changed");
                metrics.read("accepted");
                apply(settings);
            }
            Err(d) => {
                metrics.read("refused");
                warn!("mesh settings refused, the last good ones kept: {d}");
            }
        }
    })
}
