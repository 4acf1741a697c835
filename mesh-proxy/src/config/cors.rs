//! CORS, as Envoy's `envoy.filters.http.cors` filter with a route's
//! `CorsPolicy`: a preflight from an allowed origin is answered by the
//! proxy; other requests from an allowed origin get the origin (and the
//! exposed headers, and credentials when allowed) on their response.
//! Requests from other origins pass untouched.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use mesh_proto::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use mesh_rules::FieldError;

use super::route::{StringMatch, string_match};

/// The filter's name, as routes name it in `typed_per_filter_config`.
pub const FILTER: &str = "envoy.filters.http.cors";
/// The filter's own typed config (no fields mesh-proxy applies).
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
/// A route's policy.
pub const POLICY_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";

/// A route's CORS policy.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<StringMatch>,
    /// `access-control-*` headers of a preflight answer, beside the origin.
    preflight: HeaderMap,
    /// Those added to other responses, beside the origin.
    simple: HeaderMap,
}

fn header(value: &str, path: &str) -> Result<HeaderValue, FieldError> {
    HeaderValue::from_str(value).map_err(|_| super::err(path, "not a valid header value"))
}

/// Reads a `CorsPolicy` (its other fields were refused by name).
pub fn build(p: &CorsPolicy, path: &str) -> Result<Cors, FieldError> {
    let origins = p
        .allow_origin_string_match
        .iter()
        .enumerate()
        .map(|(i, m)| string_match(m, &format!("{path}.allow_origin_string_match[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let credentials = p.allow_credentials.is_some_and(|b| b.value);
    let (mut preflight, mut simple) = (HeaderMap::new(), HeaderMap::new());
    if credentials {
        let yes = HeaderValue::from_static("true");
        preflight.insert("access-control-allow-credentials", yes.clone());
        simple.insert("access-control-allow-credentials", yes);
    }
    for (name, value, field) in [
        (
            "access-control-allow-methods",
            &p.allow_methods,
            "allow_methods",
        ),
        (
            "access-control-allow-headers",
            &p.allow_headers,
            "allow_headers",
        ),
        ("access-control-max-age", &p.max_age, "max_age"),
        (
            "access-control-expose-headers",
            &p.expose_headers,
            "expose_headers",
        ),
    ] {
        if !value.is_empty() {
            let v = header(value, &format!("{path}.{field}"))?;
            preflight.insert(HeaderName::from_static(name), v.clone());
            if field == "expose_headers" {
                simple.insert(HeaderName::from_static(name), v);
            }
        }
    }
    Ok(Cors {
        origins,
        preflight,
        simple,
    })
}

impl Cors {
    /// The request's origin, when this policy allows it.
    pub fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(http::header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|m| m.matches(text))
            .then(|| origin.clone())
    }

    /// Whether a request from an allowed origin is a preflight.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS && headers.contains_key("access-control-request-method")
    }

    /// The headers of a preflight answer for `origin`.
    pub fn preflight_headers(&self, origin: HeaderValue, out: &mut HeaderMap) {
        out.insert("access-control-allow-origin", origin);
        out.extend(self.preflight.clone());
    }

    /// The headers added to another response for `origin`.
    pub fn response_headers(&self, origin: HeaderValue, out: &mut HeaderMap) {
        out.insert("access-control-allow-origin", origin);
        out.extend(self.simple.clone());
    }
}
