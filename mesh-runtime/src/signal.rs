//! The end of a server's life: SIGTERM (Kubernetes, systemd, the tests)
//! or Ctrl-C.

/// Resolves when the process is asked to stop.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
