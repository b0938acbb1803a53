//! HTTP request rules of `WardNetworkPolicy` ingress ports: which requests a port admits.
//!
//! A rule names a method (exact, case-sensitive, as HTTP defines methods; absent = any) and an
//! exact path or a path prefix. Rule paths must already be in the normal form requests are
//! normalised to before matching (README, "HTTP rules"), so that matching is a plain
//! comparison: starting with `/`, no empty or dot segments, no query or fragment, and
//! percent-encoding only where a character must stay encoded.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::HttpRuleSpec;

/// Longest method the datapath compares.
pub const MAX_METHOD: usize = 16;
/// Longest rule path the datapath compares.
pub const MAX_PATH: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HttpRule {
    /// `None`: any method.
    pub method: Option<String>,
    pub path: HttpPath,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HttpPath {
    Exact(String),
    Prefix(String),
}

impl HttpRule {
    /// Validates one rule; on error the sub-field (`.method`, `.path`, ...) and the message.
    pub fn from_spec(spec: &HttpRuleSpec) -> Result<HttpRule, (String, String)> {
        let method = match &spec.method {
            None => None,
            Some(m) => {
                check_method(m).map_err(|e| (".method".to_string(), e))?;
                Some(m.clone())
            }
        };
        let path = match (&spec.path, &spec.path_prefix) {
            (Some(p), None) => {
                check_path(p).map_err(|e| (".path".to_string(), e))?;
                HttpPath::Exact(p.clone())
            }
            (None, Some(p)) => {
                check_path(p).map_err(|e| (".pathPrefix".to_string(), e))?;
                HttpPath::Prefix(p.clone())
            }
            _ => return Err((String::new(), "exactly one of path and pathPrefix".into())),
        };
        Ok(HttpRule { method, path })
    }
}

impl fmt::Display for HttpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.method.as_deref().unwrap_or("*");
        match &self.path {
            HttpPath::Exact(p) => write!(f, "{m} {p}"),
            HttpPath::Prefix(p) => write!(f, "{m} {p}*"),
        }
    }
}

/// RFC 9110 `token`.
fn check_method(m: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if m.is_empty() || m.len() > MAX_METHOD || !m.bytes().all(tchar) {
        return Err(format!("{m:?} is not an HTTP method (1-{MAX_METHOD} token characters, case-sensitive)"));
    }
    Ok(())
}

/// A path in normal form (see the module docs).
fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.len() > MAX_PATH {
        return Err(format!("{p:?} is longer than {MAX_PATH} characters"));
    }
    let bytes = p.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(format!("{p:?}: incomplete percent-encoding"));
                };
                if !hex(h) || !hex(l) {
                    return Err(format!("{p:?}: percent-encoding must be two uppercase hex digits"));
                }
                let v = (hex_val(h) << 4) | hex_val(l);
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    return Err(format!("{p:?}: write {:?} unencoded (normal form)", v as char));
                }
                if v == b'/' || v == b'\\' || v == 0 || v < 0x20 || v == 0x7f {
                    return Err(format!("{p:?}: an encoded slash, backslash or control byte never matches"));
                }
                i += 3;
                continue;
            }
            b'?' | b'#' => return Err(format!("{p:?}: the query string and fragment are not part of the path")),
            b';' => return Err(format!("{p:?}: ';' path parameters are rejected in requests, so never matched")),
            b'\\' => return Err(format!("{p:?}: a backslash never matches")),
            _ if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/".contains(&b) => {}
            _ => return Err(format!("{p:?}: {:?} must be percent-encoded", b as char)),
        }
        i += 1;
    }
    for (n, seg) in p.split('/').enumerate().skip(1) {
        let last = n == p.split('/').count() - 1;
        if seg.is_empty() && !last {
            return Err(format!("{p:?}: empty segment ('//')"));
        }
        if seg == "." || seg == ".." {
            return Err(format!("{p:?}: dot segments are resolved before matching"));
        }
    }
    Ok(())
}

fn hex_val(c: u8) -> u8 {
    if c.is_ascii_digit() { c - b'0' } else { c - b'A' + 10 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: Option<&str>, path: Option<&str>, prefix: Option<&str>) -> Result<HttpRule, (String, String)> {
        HttpRule::from_spec(&HttpRuleSpec {
            method: method.map(Into::into),
            path: path.map(Into::into),
            path_prefix: prefix.map(Into::into),
        })
    }

    #[test]
    fn valid_rules_and_their_display() {
        assert_eq!(rule(Some("GET"), Some("/api/v1/products"), None).expect("ok").to_string(), "GET /api/v1/products");
        assert_eq!(rule(None, None, Some("/api/v1/orders/")).expect("ok").to_string(), "* /api/v1/orders/*");
        assert!(rule(Some("PATCH"), Some("/a%20b"), None).is_ok());
        assert!(rule(Some("GET"), Some("/"), None).is_ok());
    }

    #[test]
    fn rules_not_in_normal_form_or_malformed_are_rejected_with_the_subfield() {
        let cases = [
            (rule(Some("GET"), Some("api"), None), ".path"),
            (rule(Some("GE T"), Some("/a"), None), ".method"),
            (rule(Some(""), Some("/a"), None), ".method"),
            (rule(Some("GET"), Some("/a//b"), None), ".path"),
            (rule(Some("GET"), Some("/a/../b"), None), ".path"),
            (rule(Some("GET"), Some("/a/./b"), None), ".path"),
            (rule(Some("GET"), Some("/a?x=1"), None), ".path"),
            (rule(Some("GET"), Some("/a%2Fb"), None), ".path"),
            (rule(Some("GET"), Some("/a%61"), None), ".path"),
            (rule(Some("GET"), Some("/a%2f"), None), ".path"),
            (rule(Some("GET"), Some("/a;b"), None), ".path"),
            (rule(Some("GET"), None, Some("/a\\b")), ".pathPrefix"),
            (rule(Some("GET"), Some("/a"), Some("/a")), ""),
            (rule(Some("GET"), None, None), ""),
        ];
        for (got, field) in cases {
            let (f, msg) = got.expect_err(field);
            assert_eq!(f, field, "{msg}");
        }
    }
}
