//! The embedded rule store: one JSON file in a folder, replaced atomically.
//!
//! - Writers serialize on an exclusive lock of `<dir>/.lock` for the whole
//!   read-modify-write, so concurrent `meshctl` processes lose no update.
//! - A write goes to a temporary file that is fsynced, renamed over
//!   `rules.json`, and the folder is fsynced: a crash leaves the old or the
//!   new file, never half of one.
//! - Watchers follow the folder with inotify (via `notify`) and re-read the
//!   file when it is replaced.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_rules::Rule;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Applied, Change, RuleStore, RuleWatch, Snapshot, StoreError, StoredRule, plan};

const DATA_FILE: &str = "rules.json";
const LOCK_FILE: &str = ".lock";

/// A rule store in a local folder.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    revision: u64,
    rules: Vec<FileRule>,
}

#[derive(Serialize, Deserialize)]
struct FileRule {
    revision: u64,
    object: serde_json::Value,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl LocalStore {
    /// A store in `dir`, created on first write.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data_path(&self) -> PathBuf {
        self.dir.join(DATA_FILE)
    }

    /// Reads the current snapshot (empty when nothing was written yet).
    pub fn read(&self) -> Result<Snapshot, StoreError> {
        let path = self.data_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Snapshot::default()),
            Err(e) => return Err(io(&path)(e)),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let file: FileFormat = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        let mut snap = Snapshot {
            revision: file.revision,
            ..Snapshot::default()
        };
        for r in file.rules {
            let rule = Rule::from_stored(r.object).map_err(|problems| {
                let each: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                corrupt(each.join("; "))
            })?;
            snap.rules.insert(
                rule.key(),
                StoredRule {
                    rule,
                    revision: r.revision,
                },
            );
        }
        Ok(snap)
    }

    fn write(&self, snap: &Snapshot) -> Result<(), StoreError> {
        let file = FileFormat {
            revision: snap.revision,
            rules: snap
                .rules
                .values()
                .map(|s| FileRule {
                    revision: s.revision,
                    object: s.rule.to_value(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("store serializes");
        let tmp = self
            .dir
            .join(format!(".{DATA_FILE}.{}.tmp", std::process::id()));
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        let data = self.data_path();
        if let Err(e) = fs::rename(&tmp, &data) {
            let _ = fs::remove_file(&tmp);
            return Err(io(&data)(e));
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    /// Applies a batch under the store's lock (blocking).
    pub fn apply_blocking(&self, changes: Vec<Change>) -> Result<Vec<Applied>, StoreError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let current = self.read()?;
        let (next, applied) = plan(&current, changes)?;
        if !applied.is_empty() {
            self.write(&next)?;
        }
        Ok(applied)
        // The lock is released when `lock` is dropped.
    }

    /// Sends the store's snapshot to `tx` when it is newer than the last sent.
    fn refresh(&self, tx: &watch::Sender<Arc<Snapshot>>) {
        // An unreadable intermediate state is skipped; the next event re-reads.
        if let Ok(snap) = self.read() {
            tx.send_if_modified(|cur| {
                let newer = snap.revision > cur.revision;
                if newer {
                    *cur = Arc::new(snap);
                }
                newer
            });
        }
    }

    /// Starts following the store folder.
    pub fn watch_blocking(&self) -> Result<RuleWatch, StoreError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let (tx, rx) = watch::channel(Arc::new(self.read()?));
        let tx = Arc::new(tx);
        let (store, feed) = (self.clone(), tx.clone());
        let watcher =
            mesh_runtime::watch::on_change(&self.dir.join(DATA_FILE), move || store.refresh(&feed))
                .map_err(|e| StoreError::Io {
                    path: self.dir.display().to_string(),
                    source: std::io::Error::other(e),
                })?;
        // A write between the first read and the start of the watch would be missed otherwise.
        self.refresh(&tx);
        Ok(RuleWatch::new(rx, Box::new(watcher)))
    }
}

#[async_trait::async_trait]
impl RuleStore for LocalStore {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || s.read())
            .await
            .expect("store task")
    }

    async fn apply(&self, changes: Vec<Change>) -> Result<Vec<Applied>, StoreError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || s.apply_blocking(changes))
            .await
            .expect("store task")
    }

    async fn watch(&self) -> Result<RuleWatch, StoreError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || s.watch_blocking())
            .await
            .expect("store task")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_rules::{Kind, RuleKey, Source, load};

    use super::*;
    use crate::store::Operation;

    fn rule(name: &str, weight_v1: u32) -> Rule {
        let text = format!(
            "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata:\n  name: {name}\nspec:\n  destination:\n    name: svcb\n  route:\n  - labels: {{version: v0.1}}\n    weight: {weight_v1}\n  - labels: {{version: v0.2}}\n    weight: {}\n",
            100 - weight_v1
        );
        load(&[Source {
            name: "t",
            text: &text,
        }])
        .unwrap()
        .rules
        .remove(0)
        .value
    }

    fn key(name: &str) -> RuleKey {
        RuleKey {
            kind: Kind::RouteRule,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn create_replace_delete_with_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let a = store
            .apply_blocking(vec![Change::Create(rule("r", 50))])
            .unwrap();
        assert_eq!((a[0].operation, a[0].revision), (Operation::Created, 1));
        let a = store
            .apply_blocking(vec![Change::Replace(rule("r", 0))])
            .unwrap();
        assert_eq!((a[0].operation, a[0].revision), (Operation::Updated, 2));
        let snap = LocalStore::new(dir.path()).read().unwrap();
        assert_eq!(snap.revision, 2);
        assert_eq!(snap.rules[&key("r")].rule, rule("r", 0));
        let a = store
            .apply_blocking(vec![Change::Delete(key("r"))])
            .unwrap();
        assert_eq!((a[0].operation, a[0].revision), (Operation::Deleted, 3));
        assert!(store.read().unwrap().rules.is_empty());
    }

    #[test]
    fn refused_batch_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store
            .apply_blocking(vec![Change::Create(rule("a", 50))])
            .unwrap();
        let before = fs::read(dir.path().join(DATA_FILE)).unwrap();
        let err = store
            .apply_blocking(vec![
                Change::Create(rule("b", 50)),
                Change::Create(rule("a", 10)),
            ])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "route-rule/default/a already exists: use `replace` to change it"
        );
        assert_eq!(fs::read(dir.path().join(DATA_FILE)).unwrap(), before);
        let err = store
            .apply_blocking(vec![Change::Delete(key("zz"))])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "route-rule/default/zz does not exist: use `create` to add it"
        );
        assert_eq!(fs::read(dir.path().join(DATA_FILE)).unwrap(), before);
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store
            .apply_blocking(vec![Change::Create(rule("a", 50))])
            .unwrap();
        store
            .apply_blocking(vec![Change::Replace(rule("a", 40))])
            .unwrap();
        let mut stale = rule("a", 30);
        stale.metadata.resource_version = Some("1".into());
        let err = store
            .apply_blocking(vec![Change::Replace(stale.clone())])
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    given: 1,
                    stored: 2,
                    ..
                }
            ),
            "{err}"
        );
        stale.metadata.resource_version = Some("2".into());
        let a = store.apply_blocking(vec![Change::Replace(stale)]).unwrap();
        assert_eq!(a[0].revision, 3);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = LocalStore::new(dir.path());
                std::thread::spawn(move || {
                    for i in 0..10 {
                        store
                            .apply_blocking(vec![Change::Create(rule(&format!("r-{t}-{i}"), 50))])
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let snap = LocalStore::new(dir.path()).read().unwrap();
        assert_eq!(snap.rules.len(), 80);
        assert_eq!(snap.revision, 80);
        let mut revs: Vec<u64> = snap.rules.values().map(|r| r.revision).collect();
        revs.sort();
        assert_eq!(revs, (1..=80).collect::<Vec<_>>());
    }

    #[test]
    fn corrupt_file_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DATA_FILE), "{not json").unwrap();
        let store = LocalStore::new(dir.path());
        let err = store
            .apply_blocking(vec![Change::Create(rule("a", 50))])
            .unwrap_err();
        assert!(err.to_string().contains("is unreadable"), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join(DATA_FILE)).unwrap(),
            "{not json"
        );
    }

    #[tokio::test]
    async fn watch_sees_changes_from_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store
            .apply(vec![Change::Create(rule("a", 50))])
            .await
            .unwrap();
        let mut w = store.watch().await.unwrap();
        assert_eq!(w.current().revision, 1);
        let other = LocalStore::new(dir.path());
        other
            .apply(vec![Change::Replace(rule("a", 20))])
            .await
            .unwrap();
        let snap = tokio::time::timeout(Duration::from_secs(10), w.changed())
            .await
            .expect("watch notified within 10s")
            .unwrap();
        assert_eq!(snap.revision, 2);
        assert_eq!(snap.rules[&key("a")].rule, rule("a", 20));
    }
}
