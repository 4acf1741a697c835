//! Request ids and trace context. Each call through a proxy is a span of
//! its own, a child of the caller's: the proxy reads the caller's context
//! from B3 (multi or single header) or W3C `traceparent`, makes a new span
//! id, and writes the context back in B3 multi-header form, and in each
//! other form the caller used (a new trace gets `traceparent` too), so the
//! app forwards whichever it knows. `tracestate` passes untouched.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// Writes `n` as lowercase hex, most significant digit first, filling `out`.
fn hex(mut n: u128, out: &mut [u8]) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 0xF) as usize];
        n >>= 4;
    }
}

fn hex_value(n: u128, digits: usize) -> HeaderValue {
    let mut s = [0u8; 32];
    hex(n, &mut s[..digits]);
    HeaderValue::from_bytes(&s[..digits]).expect("hex is a valid header value")
}

/// Reads 16 or 32 hex digits (B3 allows both for trace ids), not all zero.
fn parse_id(v: &[u8], widths: &[usize]) -> Option<u128> {
    if !widths.contains(&v.len()) {
        return None;
    }
    let n = u128::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()?;
    (n != 0).then_some(n)
}

fn sampled_flag(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"true" | b"d" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

/// The trace a caller's call belongs to, as its headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caller {
    trace: u128,
    span: u64,
    /// The trace id came in 32 hex digits.
    wide: bool,
}

/// The forms of trace context a request carried.
#[derive(Debug, Default, Clone, Copy)]
struct Forms {
    b3_single: bool,
    w3c: bool,
}

fn b3_multi(h: &HeaderMap) -> Option<Caller> {
    let trace = h.get("x-b3-traceid")?.as_bytes();
    Some(Caller {
        trace: parse_id(trace, &[16, 32])?,
        span: parse_id(h.get("x-b3-spanid")?.as_bytes(), &[16])? as u64,
        wide: trace.len() == 32,
    })
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`, or just `b3: {sampled}`.
fn b3_single(h: &HeaderMap) -> (Option<Caller>, Option<bool>) {
    let Some(v) = h.get("b3") else {
        return (None, None);
    };
    let parts: Vec<&[u8]> = v.as_bytes().split(|&b| b == b'-').collect();
    if let [flag] = parts[..] {
        return (None, sampled_flag(flag));
    }
    let caller = match (parts.first(), parts.get(1)) {
        (Some(t), Some(s)) => {
            parse_id(t, &[16, 32])
                .zip(parse_id(s, &[16]))
                .map(|(trace, span)| Caller {
                    trace,
                    span: span as u64,
                    wide: t.len() == 32,
                })
        }
        _ => None,
    };
    (caller, parts.get(2).and_then(|f| sampled_flag(f)))
}

/// `traceparent: 00-{32 hex trace}-{16 hex parent}-{2 hex flags}`.
fn w3c(h: &HeaderMap) -> Option<(Caller, bool)> {
    let v = h.get("traceparent")?.as_bytes();
    let parts: Vec<&[u8]> = v.split(|&b| b == b'-').collect();
    let [version, trace, span, flags] = parts[..] else {
        return None;
    };
    if version.len() != 2 || version == b"ff" || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
    let caller = Caller {
        trace: parse_id(trace, &[32])?,
        span: parse_id(span, &[16])? as u64,
        wide: true,
    };
    Some((caller, flags & 1 == 1))
}

/// The caller's context (B3 multi first, then single, then W3C), the
/// sampling decision the caller made (if any), and the forms it used.
fn read(h: &HeaderMap) -> (Option<Caller>, Option<bool>, Forms) {
    let (single, single_sampled) = b3_single(h);
    let w3c = w3c(h);
    let forms = Forms {
        b3_single: h.contains_key("b3"),
        w3c: w3c.is_some(),
    };
    let multi_sampled = h
        .get("x-b3-flags")
        .filter(|f| f.as_bytes() == b"1")
        .map(|_| true)
        .or_else(|| {
            h.get("x-b3-sampled")
                .and_then(|v| sampled_flag(v.as_bytes()))
        });
    let caller = b3_multi(h).or(single).or(w3c.map(|(c, _)| c));
    let sampled = multi_sampled
        .or(single_sampled)
        .or(w3c.filter(|_| caller.is_some()).map(|(_, s)| s));
    (caller, sampled, forms)
}

/// One call's span, as written into the request it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    /// The trace id.
    pub trace: u128,
    /// This span's id.
    pub span: u64,
    /// The caller's span id (none for a trace's first span).
    pub parent: Option<u64>,
    /// Whether the trace is recorded.
    pub sampled: bool,
}

/// How a proxy samples the traces it starts or that come without a
/// decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// The share of such traces recorded, 0.0 to 1.0.
    pub rate: f64,
    /// New traces get 128-bit ids (else 64-bit, as B3 began).
    pub wide_ids: bool,
}

/// Starts this call's span: a child of the caller's, or a new trace's
/// first. A decision the caller sent (`x-b3-sampled`, `x-b3-flags`, `b3`,
/// `traceparent`'s flag) overrides `sampling`, also on a request with no
/// ids yet (`x-b3-sampled: 1` forces a trace).
pub fn next_span(headers: &mut HeaderMap, sampling: Sampling) -> SpanIds {
    let (caller, decided, forms) = read(headers);
    let sampled = decided.unwrap_or_else(|| fastrand::f64() < sampling.rate);
    let span = fastrand::u64(1..);
    let (ids, wide) = match caller {
        Some(c) => (
            SpanIds {
                trace: c.trace,
                span,
                parent: Some(c.span),
                sampled,
            },
            c.wide,
        ),
        None => {
            let trace = if sampling.wide_ids {
                fastrand::u128(1..)
            } else {
                u128::from(fastrand::u64(1..))
            };
            let ids = SpanIds {
                trace,
                span,
                parent: None,
                sampled,
            };
            (ids, sampling.wide_ids)
        }
    };
    write(headers, ids, wide, forms, caller.is_none());
    ids
}

fn write(h: &mut HeaderMap, ids: SpanIds, wide: bool, forms: Forms, new: bool) {
    let trace_digits = if wide { 32 } else { 16 };
    let trace = hex_value(ids.trace, trace_digits);
    let span = hex_value(u128::from(ids.span), 16);
    let flag = HeaderValue::from_static(if ids.sampled { "1" } else { "0" });
    h.insert(HeaderName::from_static("x-b3-traceid"), trace.clone());
    h.insert(HeaderName::from_static("x-b3-spanid"), span.clone());
    match ids.parent {
        Some(p) => {
            h.insert(
                HeaderName::from_static("x-b3-parentspanid"),
                hex_value(u128::from(p), 16),
            );
        }
        None => {
            h.remove("x-b3-parentspanid");
        }
    }
    h.insert(HeaderName::from_static("x-b3-sampled"), flag.clone());
    if forms.b3_single {
        let mut v = format!(
            "{}-{}-{}",
            trace.to_str().unwrap_or_default(),
            span.to_str().unwrap_or_default(),
            flag.to_str().unwrap_or_default()
        );
        if let Some(p) = ids.parent {
            v.push_str(&format!("-{p:016x}"));
        }
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static("b3"), v);
        }
    }
    if forms.w3c || new {
        let v = format!(
            "00-{:032x}-{:016x}-{}",
            ids.trace,
            ids.span,
            if ids.sampled { "01" } else { "00" }
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static("traceparent"), v);
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

    const ALL: Sampling = Sampling {
        rate: 1.0,
        wide_ids: false,
    };

    #[test]
    fn each_hop_is_a_child_span_of_the_callers() {
        let mut h = http::HeaderMap::new();
        let first = next_span(&mut h, ALL);
        assert_eq!(first.parent, None);
        assert!(first.sampled);
        assert_eq!(h["x-b3-traceid"].len(), 16);
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(!h.contains_key("x-b3-parentspanid"));
        assert_eq!(
            h["traceparent"].to_str().unwrap(),
            format!("00-{:032x}-{:016x}-01", first.trace, first.span)
        );
        // The receiving side: same trace, the caller's span is the parent.
        let second = next_span(&mut h, ALL);
        assert_eq!(second.trace, first.trace);
        assert_eq!(second.parent, Some(first.span));
        assert_ne!(second.span, first.span);
        assert_eq!(h["x-b3-parentspanid"], format!("{:016x}", first.span));
        assert_eq!(h["x-b3-spanid"], format!("{:016x}", second.span));
        assert_eq!(h["x-b3-traceid"], format!("{:016x}", first.trace));
    }

    #[test]
    fn a_callers_decision_overrides_the_rate() {
        let none = Sampling {
            rate: 0.0,
            wide_ids: true,
        };
        let mut h = http::HeaderMap::new();
        h.insert("x-b3-sampled", HeaderValue::from_static("1"));
        let forced = next_span(&mut h, none);
        assert!(forced.sampled);
        assert_eq!(h["x-b3-traceid"].len(), 32, "wide ids for new traces");
        let mut h = http::HeaderMap::new();
        assert!(!next_span(&mut h, none).sampled);
        assert_eq!(h["x-b3-sampled"], "0");
        let mut h = http::HeaderMap::new();
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        assert!(!next_span(&mut h, ALL).sampled);
        let mut h = http::HeaderMap::new();
        h.insert("b3", HeaderValue::from_static("0"));
        assert!(!next_span(&mut h, ALL).sampled);
        assert_eq!(h["b3"].to_str().unwrap().rsplit('-').next(), Some("0"));
    }

    #[test]
    fn w3c_context_continues_with_tracestate_untouched() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
        );
        h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        let ids = next_span(&mut h, ALL);
        assert_eq!(ids.trace, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(ids.parent, Some(0xb7ad6b7169203331));
        assert!(!ids.sampled, "the caller's flag decides");
        assert_eq!(
            h["traceparent"].to_str().unwrap(),
            format!("00-0af7651916cd43dd8448eb211c80319c-{:016x}-00", ids.span)
        );
        assert_eq!(h["x-b3-traceid"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
    }

    #[test]
    fn b3_single_header_continues_in_its_own_form() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "b3",
            HeaderValue::from_static(
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            ),
        );
        let ids = next_span(&mut h, ALL);
        assert_eq!(ids.trace, 0x80f198ee56343ba864fe8b2a57d3eff7);
        assert_eq!(ids.parent, Some(0xe457b5a2e4d86bd1));
        assert_eq!(
            h["b3"].to_str().unwrap(),
            format!(
                "80f198ee56343ba864fe8b2a57d3eff7-{:016x}-1-e457b5a2e4d86bd1",
                ids.span
            )
        );
        assert!(
            !h.contains_key("traceparent"),
            "forms the caller did not use stay off"
        );
        // Malformed ids start a new trace rather than continue a broken one.
        let mut h = http::HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("xyz"));
        h.insert("x-b3-spanid", HeaderValue::from_static("0000000000000000"));
        assert_eq!(next_span(&mut h, ALL).parent, None);
    }
}
