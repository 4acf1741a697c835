//! Fault injection, as Envoy's `envoy.filters.http.fault` filter: a share
//! of requests delayed, a share answered with a status before they are
//! forwarded. The filter's own config is the default; a route's
//! `typed_per_filter_config` entry replaces it for that route.
//!
//! Envoy draws each request at random; mesh-proxy picks requests by a
//! deterministic schedule, so a share is exact over any run of requests
//! (50 % of 1000 is 500, not 500 ± 32).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use mesh_proto::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use mesh_proto::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use mesh_proto::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use mesh_rules::FieldError;

use super::{duration, err};

/// The filter's name, as routes name it in `typed_per_filter_config`.
pub const FILTER: &str = "envoy.filters.http.fault";
/// Its typed config.
pub const TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";

/// A share of requests: exactly `numerator / denominator` of them.
#[derive(Debug)]
pub struct Share {
    numerator: u64,
    denominator: u64,
    seen: AtomicU64,
}

impl Share {
    pub(crate) fn new(p: &Option<FractionalPercent>, path: &str) -> Result<Share, FieldError> {
        // Envoy: an unset percentage is 100 %.
        let Some(p) = p else {
            return Ok(Share {
                numerator: 1,
                denominator: 1,
                seen: AtomicU64::new(0),
            });
        };
        let denominator = match DenominatorType::try_from(p.denominator) {
            Ok(DenominatorType::Hundred) => 100,
            Ok(DenominatorType::TenThousand) => 10_000,
            Ok(DenominatorType::Million) => 1_000_000,
            Err(_) => return Err(err(format!("{path}.denominator"), "not a denominator")),
        };
        Ok(Share {
            numerator: u64::from(p.numerator).min(denominator),
            denominator,
            seen: AtomicU64::new(0),
        })
    }

    /// Whether this request is in the share: the n-th request is when the
    /// running share `n × numerator / denominator` passes a whole number.
    pub fn pick(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        (n + 1) * self.numerator / self.denominator > n * self.numerator / self.denominator
    }
}

/// What is injected into a share of requests.
#[derive(Debug)]
pub struct Injected<T> {
    /// The delay, or the status answered.
    pub what: T,
    /// Which requests.
    pub share: Share,
}

/// The faults of a route (or the filter's default).
#[derive(Debug)]
pub struct Fault {
    /// Delay before forwarding.
    pub delay: Option<Injected<Duration>>,
    /// Answer with a status instead of forwarding.
    pub abort: Option<Injected<StatusCode>>,
}

/// Reads an `HTTPFault` (its fields outside delay and abort were refused
/// by name by the allowlist).
pub fn build(f: &HttpFault, path: &str) -> Result<Fault, FieldError> {
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let p = format!("{path}.delay");
            let what = match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(fixed)) => {
                    duration(&Some(*fixed)).unwrap_or_default()
                }
                _ => return Err(err(&p, "a fixed_delay is required")),
            };
            Some(Injected {
                what,
                share: Share::new(&d.percentage, &format!("{p}.percentage"))?,
            })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let p = format!("{path}.abort");
            let what = match &a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => u16::try_from(*s)
                    .ok()
                    .filter(|s| (200..600).contains(s))
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or_else(|| {
                        err(format!("{p}.http_status"), "not an HTTP status (200-599)")
                    })?,
                _ => return Err(err(&p, "an http_status is required")),
            };
            Some(Injected {
                what,
                share: Share::new(&a.percentage, &format!("{p}.percentage"))?,
            })
        }
    };
    Ok(Fault { delay, abort })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_exact_over_any_run() {
        let s = Share::new(
            &Some(FractionalPercent {
                numerator: 30,
                denominator: DenominatorType::Hundred as i32,
            }),
            "p",
        )
        .unwrap();
        let picked: Vec<bool> = (0..1000).map(|_| s.pick()).collect();
        assert_eq!(picked.iter().filter(|p| **p).count(), 300);
        // Spread out, not bunched: every 10 requests hold 3.
        assert!(
            picked
                .chunks(10)
                .all(|c| c.iter().filter(|p| **p).count() == 3)
        );
    }
}
