//! Kubernetes naming rules (names, namespaces, label keys and values) and
//! HTTP header names, each returning the reason a value is refused.

use crate::error::FieldError;

/// Checks a DNS-1123 subdomain (object names): at most 253 characters of
/// lowercase letters, digits, `-` and `.`, starting and ending alphanumeric.
pub fn check_dns_subdomain(s: &str) -> Result<(), FieldError> {
    if s.is_empty() || s.len() > 253 {
        return Err(FieldError::message(format!(
            "`{s}` must be 1 to 253 characters long (lowercase letters, digits, '-' and '.')"
        )));
    }
    for part in s.split('.') {
        check_label_chars(part).map_err(|_| {
            FieldError::message(format!(
                "`{s}` is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
            ))
        })?;
    }
    Ok(())
}

/// Checks a DNS-1123 label (namespaces, service names): at most 63
/// characters of lowercase letters, digits and `-`, starting and ending
/// alphanumeric.
pub fn check_dns_label(s: &str) -> Result<(), FieldError> {
    if s.is_empty() || s.len() > 63 {
        return Err(FieldError::message(format!(
            "`{s}` must be 1 to 63 characters long (lowercase letters, digits and '-')"
        )));
    }
    check_label_chars(s).map_err(|_| {
        FieldError::message(format!(
            "`{s}` is not a valid DNS label: use lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    })
}

fn check_label_chars(s: &str) -> Result<(), ()> {
    let b = s.as_bytes();
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !ok(b[0]) || !ok(b[b.len() - 1]) {
        return Err(());
    }
    if b.iter().all(|&c| ok(c) || c == b'-') {
        Ok(())
    } else {
        Err(())
    }
}

/// The shape of a label name or value: alphanumerics with `-`, `_`, `.`
/// inside, starting and ending alphanumeric.
fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && ok(b[0])
        && ok(b[b.len() - 1])
        && b.iter().all(|&c| ok(c) || matches!(c, b'-' | b'_' | b'.'))
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 characters.
pub fn check_label_key(key: &str) -> Result<(), FieldError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        check_dns_subdomain(p).map_err(|_| {
            FieldError::message(format!("label key `{key}` has an invalid prefix `{p}`: it must be a DNS subdomain such as `example.com`"))
        })?;
    }
    if name.len() > 63 || !is_qualified_part(name) {
        return Err(FieldError::message(format!(
            "label key `{key}` is invalid: the name part must be 1 to 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 characters of letters,
/// digits, `-`, `_` and `.`, starting and ending alphanumeric.
pub fn check_label_value(value: &str) -> Result<(), FieldError> {
    if value.is_empty() || (value.len() <= 63 && is_qualified_part(value)) {
        Ok(())
    } else {
        Err(FieldError::message(format!(
            "label value `{value}` is invalid: it must be empty or 1 to 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )))
    }
}

/// Checks an HTTP header name (an RFC 9110 token).
pub fn check_header_name(name: &str) -> Result<(), FieldError> {
    let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    if !name.is_empty() && name.bytes().all(token) {
        Ok(())
    } else {
        Err(FieldError::message(format!(
            "`{name}` is not a valid HTTP header name: use letters, digits and !#$%&'*+-.^_`|~"
        )))
    }
}

/// Checks a host name as used by egress rules: DNS labels separated by
/// dots, optionally starting with the wildcard label `*`.
pub fn check_host_name(host: &str) -> Result<(), FieldError> {
    let rest = host.strip_prefix("*.").unwrap_or(host);
    let valid = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(FieldError::message(format!(
            "`{host}` is not a valid host: use a DNS name (`api.example.com`), a wildcard (`*.example.com`), an IP address or a CIDR"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_dns_subdomain("route-rules-svcb").is_ok());
        assert!(check_dns_subdomain("a.b-c").is_ok());
        assert!(check_dns_subdomain("Route").is_err());
        assert!(check_dns_subdomain("-a").is_err());
        assert!(check_dns_label("default").is_ok());
        assert!(check_dns_label("a.b").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn labels() {
        assert!(check_label_key("version").is_ok());
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("a/b/c").is_err());
        assert!(check_label_key("-x").is_err());
        assert!(check_label_value("v0.1").is_ok());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v0.1-").is_err());
        assert!(check_label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn hosts_and_headers() {
        assert!(check_host_name("*.example.com").is_ok());
        assert!(check_host_name("msgd").is_ok());
        assert!(check_host_name("a.*.com").is_err());
        assert!(check_header_name("x-user").is_ok());
        assert!(check_header_name("x user").is_err());
    }
}
