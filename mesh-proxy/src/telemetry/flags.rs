//! Response flags: why the proxy answered as it did, in Envoy's short
//! names (`UH`, `UF`, `NR`, …) so metrics and access logs read as Istio
//! users know them. `-` when nothing went wrong.

use std::fmt;

/// A set of response flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u16);

/// One flag: its bit and Envoy's short name, in Envoy's printing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Flag {
    /// No healthy upstream endpoint.
    NoHealthyUpstream = 0,
    /// The upstream request timed out.
    UpstreamTimeout,
    /// The upstream reset the stream.
    UpstreamReset,
    /// The upstream connection could not be made.
    UpstreamConnectFailure,
    /// The upstream connection closed before the response.
    UpstreamTermination,
    /// The cluster's circuit breaker refused the request.
    UpstreamOverflow,
    /// No route matched.
    NoRoute,
    /// A fault delay was injected.
    DelayInjected,
    /// A fault abort was injected.
    FaultInjected,
    /// A local rate limit refused the request.
    RateLimited,
    /// The downstream connection went away before the response ended.
    DownstreamTermination,
    /// Retries ran out.
    RetryLimitExceeded,
    /// The request was malformed.
    DownstreamProtocolError,
    /// The route named a cluster that does not exist.
    NoCluster,
    /// The proxy-wide overload cap refused the request.
    Overloaded,
}

const NAMES: [&str; 15] = [
    "UH", "UT", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "DC", "URX", "DPE", "NC", "OM",
];

impl Flags {
    /// No flag.
    pub const NONE: Flags = Flags(0);

    /// These flags and `flag`.
    pub fn with(self, flag: Flag) -> Flags {
        Flags(self.0 | 1 << flag as u16)
    }

    /// Both sets.
    pub fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// Whether `flag` is set.
    pub fn has(self, flag: Flag) -> bool {
        self.0 & 1 << flag as u16 != 0
    }
}

impl From<Flag> for Flags {
    fn from(f: Flag) -> Flags {
        Flags::NONE.with(f)
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & 1 << bit != 0 {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_as_envoy_does() {
        assert_eq!(Flags::NONE.to_string(), "-");
        let f = Flags::from(Flag::RetryLimitExceeded).with(Flag::UpstreamConnectFailure);
        assert_eq!(f.to_string(), "UF,URX");
        assert!(f.has(Flag::UpstreamConnectFailure) && !f.has(Flag::NoRoute));
        assert_eq!(Flags::from(Flag::Overloaded).to_string(), "OM");
        assert_eq!(NAMES.len(), Flag::Overloaded as usize + 1);
    }
}
