//! `rateLimit`: a local rate limit, a mesh extension of the 0.4 kinds
//! (Istio configures the same with an EnvoyFilter). Each proxy that
//! enforces it keeps its own token bucket.

use serde::{Deserialize, Serialize};

use crate::check::Checker;
use crate::duration::Duration;
use crate::path::FieldPath;

/// `requests` per `per` (default 1s), up to `burst` at once after a quiet
/// spell (default `requests`); requests past it are answered 429 with
/// `retry-after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests let through per period.
    pub requests: i64,
    /// The period (at least 50ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Duration>,
    /// Requests let through at once (the bucket's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
}

impl RateLimit {
    /// The refill period.
    pub fn period(&self) -> std::time::Duration {
        self.per
            .as_ref()
            .map_or(std::time::Duration::from_secs(1), Duration::get)
    }

    /// The bucket's size.
    pub fn bucket(&self) -> i64 {
        self.burst.unwrap_or(self.requests)
    }

    pub(crate) fn check(&self, c: &mut Checker, path: &FieldPath) {
        let max = i64::from(u32::MAX);
        c.range(&path.key("requests"), "requests", self.requests, 1, max);
        if let Some(b) = self.burst {
            c.range(&path.key("burst"), "burst", b, 1, max);
        }
        if self.period() < std::time::Duration::from_millis(50) {
            c.fail(&path.key("per"), "per must be at least 50ms");
        }
    }
}
