//! Header rules of the HTTP path: hop-by-hop headers (RFC 9110 §7.6.1),
//! upgrades, and framings that let two parsers disagree about where a
//! request ends.

use std::sync::atomic::Ordering;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{ProxyBody, text};
use crate::state::Conn;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, and Transfer-Encoding: each hop frames the
/// body itself. `TE: trailers` stays, as Envoy keeps it: gRPC servers may
/// require it.
pub(super) fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    // Most messages have none: one pass over the few names present is
    // cheaper than a lookup per hop-by-hop name.
    let hop = |n: &HeaderName| *n == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(n);
    if !h.keys().any(hop) {
        return;
    }
    h.remove(header::TRANSFER_ENCODING);
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Refuses message framings that let two parsers disagree about where a
/// request ends (request smuggling): Content-Length beside
/// Transfer-Encoding, and transfer codings other than `chunked`. (hyper
/// already refuses differing Content-Length values, obs-fold and bad chunk
/// sizes.)
pub(super) fn refuse_framing(req: &Request<Incoming>, conn: &Conn) -> Option<Response<ProxyBody>> {
    let h = req.headers();
    let te: Vec<_> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    // hyper drops Content-Length when Transfer-Encoding is present; the
    // connection's framing watch saw both.
    let both = conn.ambiguous_framing.load(Ordering::Acquire);
    let refusal = if te.is_empty() && !both {
        return None;
    } else if both || h.contains_key(header::CONTENT_LENGTH) {
        (
            StatusCode::BAD_REQUEST,
            "Content-Length and Transfer-Encoding together are not allowed\n",
        )
    } else if te.len() != 1 || !te[0].as_bytes().eq_ignore_ascii_case(b"chunked") {
        (
            StatusCode::NOT_IMPLEMENTED,
            "only Transfer-Encoding: chunked is supported\n",
        )
    } else {
        return None;
    };
    let mut r = text(refusal.0, refusal.1);
    // The rest of the connection cannot be trusted: close it.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(r)
}

/// The protocol an HTTP/1.1 request asks to upgrade to, if any.
pub(super) fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    (wants && req.version() == http::Version::HTTP_11)
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// Refuses an HTTP/1.1 request whose Host is missing, repeated or not a
/// valid `host[:port]` (RFC 9112 §3.2: a server MUST answer 400). HTTP/1.0
/// may omit it; HTTP/2 carries `:authority` instead.
pub(super) fn refuse_host(req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let problem = match (hosts.next(), hosts.next()) {
        (None, _) => "missing Host header",
        (Some(_), Some(_)) => "more than one Host header",
        (Some(h), None) if !valid_host(h.as_bytes()) => "invalid Host header",
        _ => return None,
    };
    let mut r = text(StatusCode::BAD_REQUEST, format!("{problem}\n"));
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(r)
}

/// `uri-host [":" port]`: an authority without user info, not empty.
fn valid_host(v: &[u8]) -> bool {
    !v.is_empty()
        && !v.contains(&b'@')
        && http::uri::Authority::try_from(v).is_ok_and(|a| !a.host().is_empty())
}
