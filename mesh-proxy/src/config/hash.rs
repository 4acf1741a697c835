//! Consistent hashing, as Envoy's `RING_HASH` clusters with route
//! `hash_policy`: a request's key (a header, or the caller's address) picks
//! the same endpoint every time while the endpoints stay the same, and
//! only the keys of an endpoint that leaves move.
//!
//! The ring's hash is FNV-1a with a final mix (deterministic across runs
//! and builds); which endpoint a key lands on differs from Envoy's
//! xxHash ring, that it sticks does not.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName};
use mesh_proto::envoy::config::route::v3::route_action;
use mesh_rules::FieldError;

use super::err;

/// Points per endpoint: fixed, so an endpoint's points stay where they
/// are when others come and go.
const REPLICAS: usize = 256;

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser: FNV alone clusters similar keys.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Points on a circle, each owned by an endpoint (its index).
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// A ring over `addresses` (the cluster's healthy endpoints, in order).
    pub fn build(addresses: &[SocketAddr]) -> Ring {
        if addresses.is_empty() {
            return Ring::default();
        }
        let mut points = Vec::with_capacity(REPLICAS * addresses.len());
        for (i, a) in addresses.iter().enumerate() {
            for replica in 0..REPLICAS {
                points.push((fnv(format!("{a}_{replica}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Endpoint indexes from `hash` clockwise round the ring (each point's
    /// owner; an endpoint recurs).
    pub fn from(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(p, _)| *p < hash);
        let n = self.points.len();
        (0..n).map(move |k| self.points[(start + k) % n].1)
    }
}

/// Where a route's hash key comes from (Envoy's `hash_policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header's value.
    Header(HeaderName),
    /// The caller's address.
    SourceIp,
    /// A cookie's value; when the request has none and `ttl` is set, the
    /// proxy makes one (from the caller's address, as Envoy does) and
    /// sets it on the response, so the caller's next calls stick.
    Cookie {
        /// The cookie's name.
        name: String,
        /// Its lifetime (`Some(0)`: a session cookie).
        ttl: Option<std::time::Duration>,
        /// Its path.
        path: Option<String>,
    },
}

/// One `hash_policy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    /// The key.
    pub key: HashKey,
    /// Stop at this policy when it gives a key.
    pub terminal: bool,
}

impl HashPolicy {
    /// The route's policies; any kind but a header or the source address is
    /// refused with its path.
    pub fn build(
        policies: &[route_action::HashPolicy],
        path: &str,
    ) -> Result<Vec<HashPolicy>, FieldError> {
        use route_action::hash_policy::PolicySpecifier;
        policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let at = format!("{path}.hash_policy[{i}]");
                let key = match &p.policy_specifier {
                    Some(PolicySpecifier::Header(h)) => HashKey::Header(
                        HeaderName::from_bytes(h.header_name.as_bytes())
                            .map_err(|_| err(format!("{at}.header.header_name"), "not a header name"))?,
                    ),
                    Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => HashKey::SourceIp,
                    Some(PolicySpecifier::Cookie(c)) if !c.name.is_empty() => HashKey::Cookie {
                        name: c.name.clone(),
                        ttl: super::duration(&c.ttl),
                        path: (!c.path.is_empty()).then(|| c.path.clone()),
                    },
                    _ => return Err(err(at, "only header, cookie and connection_properties.source_ip hash policies are supported")),
                };
                Ok(HashPolicy { key, terminal: p.terminal })
            })
            .collect()
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// A request's hash and, for a cookie the proxy made, the `Set-Cookie`
/// value its response carries.
pub struct RequestHash {
    /// The hash (`None`: no key found).
    pub hash: Option<u64>,
    /// A cookie to set on the response.
    pub set_cookie: Option<http::HeaderValue>,
}

/// A cookie made for a caller without one: its value (from the caller's
/// address) and the `Set-Cookie` header value.
fn made_cookie(
    name: &str,
    ttl: std::time::Duration,
    path: Option<&str>,
    peer: Option<SocketAddr>,
) -> (String, Option<http::HeaderValue>) {
    let from = peer.map(|a| a.to_string()).unwrap_or_default();
    let value = format!("{:016x}", fnv(from.as_bytes()));
    let mut header = format!("{name}=\"{value}\"");
    if !ttl.is_zero() {
        header.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if let Some(p) = path {
        header.push_str(&format!("; Path={p}"));
    }
    header.push_str("; HttpOnly");
    (value, http::HeaderValue::from_str(&header).ok())
}

/// A request's hash under `policies`: each key found is folded in (as
/// Envoy does), until a terminal one.
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> RequestHash {
    let mut out = RequestHash {
        hash: None,
        set_cookie: None,
    };
    for p in policies {
        let key = match &p.key {
            HashKey::Header(name) => headers.get(name).map(|v| fnv(v.as_bytes())),
            HashKey::SourceIp => peer.map(|a| fnv(a.ip().to_string().as_bytes())),
            HashKey::Cookie { name, ttl, path } => match (cookie(headers, name), ttl) {
                (Some(v), _) => Some(fnv(v.as_bytes())),
                (None, Some(ttl)) => {
                    let (value, header) = made_cookie(name, *ttl, path.as_deref(), peer);
                    out.set_cookie = header;
                    Some(fnv(value.as_bytes()))
                }
                (None, None) => None,
            },
        };
        if let Some(k) = key {
            out.hash = Some(out.hash.map_or(k, |h| h.rotate_left(1) ^ k));
            if p.terminal {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stick_and_only_a_leaving_endpoints_keys_move() {
        let addrs: Vec<SocketAddr> = (1..=4)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect();
        let ring = Ring::build(&addrs);
        let owner = |r: &Ring, key: &str| r.from(fnv(key.as_bytes())).next().unwrap();
        let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
        let before: Vec<usize> = keys.iter().map(|k| owner(&ring, k)).collect();
        // Spread: every endpoint owns a fair share.
        for e in 0..4 {
            let n = before.iter().filter(|o| **o == e).count();
            assert!((50..=150).contains(&n), "endpoint {e} owns {n} of 400");
        }
        // Endpoint 3 leaves: only its keys move.
        let smaller = Ring::build(&addrs[..3]);
        for (k, b) in keys.iter().zip(&before) {
            let a = owner(&smaller, k);
            if *b != 3 {
                assert_eq!(a, *b, "{k} moved");
            }
        }
    }
}
