//! When a route retries, as Envoy's `retry_on` tokens mean it: which
//! answers and failures are retried, how often, how long each try may take
//! and how long to wait between tries. A token mesh-proxy does not apply
//! is refused with its place.

use std::time::Duration;

use mesh_proto::envoy::config::route::v3 as xroute;

use super::route::{HeaderMatch, header_match};
use super::{FieldError, duration, err};

/// How a try failed without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connect failed or timed out.
    Connect,
    /// The connection broke (or closed) before the response head.
    Reset,
    /// An HTTP/2 upstream refused the stream (`REFUSED_STREAM`).
    RefusedStream,
    /// The try's timeout passed.
    Timeout,
}

/// The `retry_on` tokens mesh-proxy applies.
pub const RETRY_ON: [&str; 8] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
];

/// When and how often to retry.
#[derive(Debug, Default)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub num_retries: u32,
    /// The `retry_on` tokens given.
    on: Vec<&'static str>,
    /// With `retriable-status-codes`: which.
    status_codes: Vec<u16>,
    /// With `retriable-headers`: response headers that ask for a retry.
    headers: Vec<HeaderMatch>,
    /// Timeout of each try.
    pub per_try_timeout: Option<Duration>,
    /// Back-off between tries: the base interval and the cap.
    pub back_off: (Duration, Duration),
}

impl RetryPolicy {
    fn on(&self, token: &str) -> bool {
        self.on.contains(&token)
    }

    /// Whether a response asks for a retry (Envoy's meanings: `5xx` any
    /// 5xx, `gateway-error` 502/503/504, `retriable-4xx` 409, the listed
    /// codes, or a matching response header).
    pub fn retries_response(&self, status: u16, headers: &http::HeaderMap) -> bool {
        (self.on("5xx") && status >= 500)
            || (self.on("gateway-error") && matches!(status, 502..=504))
            || (self.on("retriable-4xx") && status == 409)
            || (self.on("retriable-status-codes") && self.status_codes.contains(&status))
            || (self.on("retriable-headers")
                && self
                    .headers
                    .iter()
                    .any(|h| h.matches(headers.get(&h.name).and_then(|v| v.to_str().ok()))))
    }

    /// Whether a try that got no response is retried: `5xx`,
    /// `gateway-error` and `reset` cover every such failure;
    /// `connect-failure` and `refused-stream` their own.
    pub fn retries_failure(&self, f: Failure) -> bool {
        self.on("5xx")
            || self.on("gateway-error")
            || self.on("reset")
            || (f == Failure::Connect && self.on("connect-failure"))
            || (f == Failure::RefusedStream && self.on("refused-stream"))
    }

    /// How long to wait before retry number `n` (1-based): Envoy's fully
    /// jittered exponential back-off, a random time up to
    /// `base × (2ⁿ − 1)`, capped.
    pub fn wait_before(&self, n: u32) -> Duration {
        let (base, cap) = self.back_off;
        let ceiling = base.saturating_mul((1u32 << n.min(16)) - 1).min(cap);
        ceiling.mul_f64(fastrand::f64())
    }

    /// Reads a route's retry policy.
    pub fn build(rp: &xroute::RetryPolicy, path: &str) -> Result<RetryPolicy, FieldError> {
        let mut on = Vec::new();
        for token in rp
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let Some(known) = RETRY_ON.iter().find(|t| **t == token) else {
                return Err(err(
                    format!("{path}.retry_on"),
                    format!(
                        "`{token}` is not a retry condition mesh-proxy applies ({})",
                        RETRY_ON.join(", ")
                    ),
                ));
            };
            on.push(*known);
        }
        let status_codes = rp
            .retriable_status_codes
            .iter()
            .map(|c| u16::try_from(*c).ok().filter(|c| (100..600).contains(c)))
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(|| {
                err(
                    format!("{path}.retriable_status_codes"),
                    "status codes are 100 to 599",
                )
            })?;
        let headers = rp
            .retriable_headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_match(h, &format!("{path}.retriable_headers[{i}]")))
            .collect::<Result<_, _>>()?;
        let back_off = match &rp.retry_back_off {
            None => (Duration::from_millis(25), Duration::from_millis(250)),
            Some(b) => {
                let base = duration(&b.base_interval)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        err(
                            format!("{path}.retry_back_off.base_interval"),
                            "a base interval above 0 is required",
                        )
                    })?;
                let cap = duration(&b.max_interval).unwrap_or(base * 10);
                if cap < base {
                    return Err(err(
                        format!("{path}.retry_back_off.max_interval"),
                        "must not be below base_interval",
                    ));
                }
                (base, cap)
            }
        };
        Ok(RetryPolicy {
            num_retries: rp.num_retries.as_ref().map_or(1, |n| n.value),
            on,
            status_codes,
            headers,
            per_try_timeout: duration(&rp.per_try_timeout).filter(|d| !d.is_zero()),
            back_off,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<RetryPolicy, FieldError> {
        let rp: xroute::RetryPolicy =
            mesh_proto::json::from_yaml(mesh_proto::descriptors::Schema::Proxy, yaml).unwrap();
        RetryPolicy::build(&rp, "retry_policy")
    }

    #[test]
    fn tokens_mean_what_they_mean_in_envoy() {
        let h = http::HeaderMap::new();
        let gw = policy("retry_on: gateway-error").unwrap();
        assert!(!gw.retries_response(500, &h) && gw.retries_response(503, &h));
        assert!(gw.retries_failure(Failure::Reset));
        let cf = policy("retry_on: connect-failure").unwrap();
        assert!(cf.retries_failure(Failure::Connect) && !cf.retries_failure(Failure::Reset));
        assert!(!cf.retries_response(503, &h));
        let codes =
            policy("retry_on: retriable-status-codes\nretriable_status_codes: [418]").unwrap();
        assert!(codes.retries_response(418, &h) && !codes.retries_response(500, &h));
        let e = policy("retry_on: 5xx,envoy-ratelimited").unwrap_err();
        assert_eq!(e.path.to_string(), "retry_policy.retry_on");
        assert!(
            e.message
                .starts_with("`envoy-ratelimited` is not a retry condition"),
            "{e}"
        );
        let b = policy("retry_on: 5xx\nretry_back_off: {base_interval: 0.1s, max_interval: 0.3s}")
            .unwrap();
        assert!((0..50).all(|_| b.wait_before(3) <= Duration::from_millis(300)));
    }
}
