//! Local rate limiting, as Envoy's `envoy.filters.http.local_ratelimit`:
//! a token bucket per route (its `typed_per_filter_config`) or for the
//! whole connection manager (the filter's own config); a request that finds
//! the bucket empty is answered with the configured status (429), body
//! `local_rate_limited` and the configured response headers (pilot adds
//! `retry-after`). The bucket is shared by every worker, as Envoy's is.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, StatusCode};
use mesh_proto::envoy::config::core::v3::RuntimeFractionalPercent;
use mesh_proto::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use mesh_proto::envoy::r#type::v3::fractional_percent::DenominatorType;
use mesh_rules::FieldError;

use super::{duration, err};

/// The filter's name, as routes name it in `typed_per_filter_config`.
pub const FILTER: &str = "envoy.filters.http.local_ratelimit";
/// Its typed config.
pub const TYPE: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// Envoy's shortest fill interval.
const MIN_FILL: Duration = Duration::from_millis(50);

/// A token bucket and what a request that finds it empty gets.
#[derive(Debug)]
pub struct RateLimit {
    max_tokens: u64,
    tokens_per_fill: u64,
    fill_interval: Duration,
    bucket: Mutex<Bucket>,
    /// The answer's status.
    pub status: StatusCode,
    /// Headers added to the answer.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
struct Bucket {
    tokens: u64,
    filled: Instant,
}

impl RateLimit {
    /// Takes a token if there is one. Tokens are added
    /// `tokens_per_fill` at a time, once per `fill_interval` since the
    /// bucket was made full, never above `max_tokens`.
    pub fn admit(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let fills = now.duration_since(b.filled).as_nanos() / self.fill_interval.as_nanos();
        if fills > 0 {
            let added = self.tokens_per_fill.saturating_mul(fills as u64);
            b.tokens = b.tokens.saturating_add(added).min(self.max_tokens);
            b.filled += self.fill_interval * fills as u32;
        }
        if b.tokens == 0 {
            return false;
        }
        b.tokens -= 1;
        true
    }
}

/// Whether a runtime fraction is 100 % (`None`: unset).
fn all(f: &Option<RuntimeFractionalPercent>) -> Option<bool> {
    let p = f.as_ref()?.default_value.as_ref()?;
    let whole = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 100,
        Ok(DenominatorType::TenThousand) => 10_000,
        _ => 1_000_000,
    };
    Some(p.numerator >= whole)
}

/// The limit `c` sets, or `None` when it sets no bucket (a filter config
/// that only enables per-route limits).
pub fn build(c: &LocalRateLimit, path: &str) -> Result<Option<RateLimit>, FieldError> {
    let Some(tb) = &c.token_bucket else {
        return Ok(None);
    };
    // Envoy applies the bucket to the share of requests that
    // `filter_enabled` and `filter_enforced` name (unset: none).
    for (field, f) in [
        ("filter_enabled", &c.filter_enabled),
        ("filter_enforced", &c.filter_enforced),
    ] {
        if all(f) != Some(true) {
            return Err(err(
                format!("{path}.{field}"),
                "only 100 % is supported (unset is 0 %: the bucket would never act)",
            ));
        }
    }
    let fill_interval = duration(&tb.fill_interval).unwrap_or_default();
    if fill_interval < MIN_FILL {
        return Err(err(
            format!("{path}.token_bucket.fill_interval"),
            "must be at least 50ms",
        ));
    }
    let status = match &c.status {
        None => StatusCode::TOO_MANY_REQUESTS,
        Some(s) => u16::try_from(s.code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| err(format!("{path}.status.code"), "not an HTTP status"))?,
    };
    let mut headers = Vec::new();
    for (i, h) in c.response_headers_to_add.iter().enumerate() {
        let hpath = format!("{path}.response_headers_to_add[{i}].header");
        let h = h
            .header
            .as_ref()
            .ok_or_else(|| err(&hpath, "a header is required"))?;
        let name = HeaderName::from_bytes(h.key.as_bytes())
            .map_err(|_| err(format!("{hpath}.key"), "not a header name"))?;
        let value = HeaderValue::from_str(&h.value)
            .map_err(|_| err(format!("{hpath}.value"), "not a header value"))?;
        headers.push((name, value));
    }
    let max_tokens = u64::from(tb.max_tokens.max(1));
    Ok(Some(RateLimit {
        max_tokens,
        tokens_per_fill: tb.tokens_per_fill.map_or(1, |t| u64::from(t.value)),
        fill_interval,
        bucket: Mutex::new(Bucket {
            tokens: max_tokens,
            filled: Instant::now(),
        }),
        status,
        headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_once_per_interval_up_to_its_size() {
        let limit = RateLimit {
            max_tokens: 3,
            tokens_per_fill: 2,
            fill_interval: Duration::from_millis(100),
            bucket: Mutex::new(Bucket {
                tokens: 3,
                filled: Instant::now(),
            }),
            status: StatusCode::TOO_MANY_REQUESTS,
            headers: vec![],
        };
        let admitted = |n| (0..n).filter(|_| limit.admit()).count();
        assert_eq!(admitted(10), 3, "a full bucket");
        // Three intervals later: 6 tokens added, capped at 3.
        limit.bucket.lock().unwrap().filled -= Duration::from_millis(300);
        assert_eq!(admitted(10), 3);
        // One interval: 2.
        limit.bucket.lock().unwrap().filled -= Duration::from_millis(100);
        assert_eq!(admitted(10), 2);
    }
}
