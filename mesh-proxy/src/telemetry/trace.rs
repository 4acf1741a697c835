//! Request ids and trace context: `x-request-id` made when absent, B3
//! multi-header spans started or continued per hop, W3C `traceparent`
//! moved on to a new parent id.

use http::HeaderValue;
use http::header::HeaderName;

/// Writes `n` as lowercase hex, most significant digit first, filling `out`.
fn hex(mut n: u128, out: &mut [u8]) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 0xF) as usize];
        n >>= 4;
    }
}

/// A random non-zero 64-bit id in 16 hex digits (B3 trace and span ids).
fn b3_id() -> HeaderValue {
    let mut s = [0u8; 16];
    hex(u128::from(fastrand::u64(1..)), &mut s);
    HeaderValue::from_bytes(&s).expect("hex is a valid header value")
}

/// Starts a trace (no trace headers yet), or continues the caller's: with
/// `child`, in a child span of the caller's (its span becomes the parent),
/// in B3 multi-header form, moving a W3C `traceparent` on to a new parent
/// id the same way; without, in the caller's own span (the receiving side
/// of a call). Apps forward these headers; each call between two
/// workloads is one span.
pub fn continue_trace(headers: &mut http::HeaderMap, child: bool) {
    match headers.get("x-b3-spanid").cloned() {
        Some(_) if !child && headers.contains_key("x-b3-traceid") => {}
        Some(parent) if headers.contains_key("x-b3-traceid") => {
            headers.insert(HeaderName::from_static("x-b3-parentspanid"), parent);
            headers.insert(HeaderName::from_static("x-b3-spanid"), b3_id());
        }
        _ if !headers.contains_key("x-b3-traceid") && !headers.contains_key("b3") => {
            headers.insert(HeaderName::from_static("x-b3-traceid"), b3_id());
            headers.insert(HeaderName::from_static("x-b3-spanid"), b3_id());
            headers.remove("x-b3-parentspanid");
        }
        _ => {}
    }
    if !headers.contains_key("x-b3-sampled") && !headers.contains_key("b3") {
        headers.insert(
            HeaderName::from_static("x-b3-sampled"),
            HeaderValue::from_static("1"),
        );
    }
    // traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>
    if let Some(tp) = headers.get("traceparent").filter(|_| child)
        && let Ok::<[u8; 55], _>(mut next) = tp.as_bytes().try_into()
        && [next[2], next[35], next[52]] == [b'-'; 3]
    {
        hex(u128::from(fastrand::u64(1..)), &mut next[36..52]);
        if let Ok(v) = HeaderValue::from_bytes(&next) {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
    }
}

/// A random request id in UUID v4 form (8-4-4-4-12 hex digits).
pub fn request_id() -> HeaderValue {
    let n = fastrand::u128(..);
    let n = (n & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut s = [b'-'; 36];
    hex(n >> 96, &mut s[0..8]);
    hex(n >> 80, &mut s[9..13]);
    hex(n >> 64, &mut s[14..18]);
    hex(n >> 48, &mut s[19..23]);
    hex(n, &mut s[24..36]);
    HeaderValue::from_bytes(&s).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = request_id();
        let id = a.to_str().unwrap();
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(
            id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(groups[2].starts_with('4'), "version 4: {id}");
        assert!("89ab".contains(&groups[3][..1]), "RFC 9562 variant: {id}");
        assert_ne!(request_id(), a);
    }

    #[test]
    fn traces_start_and_continue_per_hop() {
        let mut h = http::HeaderMap::new();
        continue_trace(&mut h, true);
        let trace = h["x-b3-traceid"].clone();
        let span = h["x-b3-spanid"].clone();
        assert_eq!(trace.len(), 16);
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(!h.contains_key("x-b3-parentspanid"));
        // The receiving side keeps the caller's span.
        let before = h.clone();
        continue_trace(&mut h, false);
        assert_eq!(h, before);
        // The next call: same trace, the caller's span is the parent.
        continue_trace(&mut h, true);
        assert_eq!(h["x-b3-traceid"], trace);
        assert_eq!(h["x-b3-parentspanid"], span);
        assert_ne!(h["x-b3-spanid"], span);
        // A sampling decision made upstream is kept; W3C context moves on.
        let mut h = http::HeaderMap::new();
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        continue_trace(&mut h, true);
        assert_eq!(h["x-b3-sampled"], "0");
        let tp = h["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(
            tp.ends_with("-01") && !tp.contains("b7ad6b7169203331"),
            "{tp}"
        );
    }
}
