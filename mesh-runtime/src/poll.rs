//! Waiting for a condition that has no readiness signal of its own (what
//! another process serves, a file another process writes).

use std::time::{Duration, Instant};

/// Calls `check` every `every` until it gives a value, or `within` has
/// passed (`None`). It is called at least once.
pub fn until<T>(
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}
