//! Following a file as it changes, for configuration that is re-read
//! while the process runs (the proxy's bootstrap, pilot's registry, the
//! rule store). The folder is watched, not the file, so a file replaced by
//! rename (how editors write) is seen too, and so is a Kubernetes volume
//! (ConfigMap, Secret, downward API) whose files are links through a
//! `..data` link the kubelet swaps.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use notify::Watcher;

/// Why a watch could not start.
pub type WatchError = notify::Error;

/// A running watch; dropping it stops it.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileWatch")
    }
}

/// Calls `changed` whenever `path` may have changed: it was created or
/// modified, or the watch itself reported an error (so the caller re-reads
/// rather than miss a change). Reading the file raises access events; they
/// do not count.
pub fn on_change(
    path: &Path,
    mut changed: impl FnMut() + Send + 'static,
) -> Result<FileWatch, notify::Error> {
    let dir = folder_of(path);
    let name: Option<OsString> = path.file_name().map(|f| f.to_owned());
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        let relevant = match e {
            Ok(e) => {
                (e.kind.is_create() || e.kind.is_modify())
                    && e.paths.iter().any(|p| {
                        let file = p.file_name();
                        // Kubernetes' atomic writer (ConfigMap, Secret and
                        // downward-API volumes) swaps a `..data` link.
                        file == name.as_deref()
                            || file.is_some_and(|f| f.to_string_lossy().starts_with(".."))
                    })
            }
            Err(_) => true,
        };
        if relevant {
            changed();
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(FileWatch { _watcher: watcher })
}

/// Calls `changed` with the file's new contents each time they differ
/// from the last seen (`last`: what the caller already read). Unreadable
/// moments (a write in progress, a rename) are skipped.
pub fn follow(
    path: &Path,
    mut last: Vec<u8>,
    mut changed: impl FnMut(&[u8]) + Send + 'static,
) -> Result<FileWatch, notify::Error> {
    let file = path.to_owned();
    on_change(path, move || {
        let Ok(now) = std::fs::read(&file) else {
            return;
        };
        if now != last {
            last = now;
            changed(&last);
        }
    })
}

fn folder_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn follow_reports_each_new_content_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, "a").unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = super::follow(&path, b"a".to_vec(), move |b| {
            let _ = tx.send(b.to_vec());
        })
        .unwrap();
        // Same bytes again: nothing; new bytes: once. (Each written whole
        // by rename: an in-place write is seen half done, as any reader would.)
        let tmp = dir.path().join(".f.tmp");
        for text in ["a", "b"] {
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("a change");
        assert_eq!(got, b"b");
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }
}
