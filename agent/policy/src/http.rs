//! HTTP request rules of `WardNetworkPolicy` ingress ports: which requests a port admits.
//!
//! A rule names a method (exact, case-sensitive, as HTTP defines methods; absent = any) and an
//! exact path or a path prefix. Rule paths must already be in the normal form requests are
//! normalised to before matching (README, "HTTP rules"): a rule path equals its own
//! normalisation by the datapath's normaliser (`ward_common::http::path`), so matching is a
//! plain comparison: starting with `/`, no empty or dot segments, no query or fragment, and
//! percent-encoding (upper-case hex) only where a character must stay encoded.

use std::fmt;

use serde::{Deserialize, Serialize};

use ward_common::http::path::{Error, PathNorm, normalize};
use ward_common::http::rules::{HttpRuleEntry, RULE_PATH_MAX};

use crate::model::HttpRuleSpec;

/// Longest method the datapath compares.
pub const MAX_METHOD: usize = ward_common::http::parse::METHOD_MAX;
/// Longest rule path the datapath compares.
pub const MAX_PATH: usize = RULE_PATH_MAX;

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

/// A rule path must be in normal form: it starts with `/`, has no query or fragment, and
/// equals what the request normaliser (`ward_common::http::path`, the kernel's own code)
/// makes of it, so that matching is a plain comparison.
fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.len() > MAX_PATH {
        return Err(format!("{p:?} is longer than {MAX_PATH} characters"));
    }
    if let Some(c) = p.chars().find(|c| *c == '?' || *c == '#') {
        return Err(format!("{p:?}: {c:?} starts the query or fragment, which are not part of the path"));
    }
    let mut norm = PathNorm::EMPTY;
    match normalize(p.as_bytes(), &mut norm) {
        Ok(n) if n == p.as_bytes() => Ok(()),
        Ok(n) => Err(format!(
            "{p:?} is not in normal form: requests are matched after normalisation, which makes it {:?}",
            String::from_utf8_lossy(n)
        )),
        Err(e) => Err(format!("{p:?}: requests with such a path are always denied ({})", refusal(e))),
    }
}

/// Why the normaliser refuses a path, for messages.
pub fn refusal(e: Error) -> &'static str {
    match e {
        Error::EncodedNul | Error::ControlByte => "control bytes and %00 are refused",
        Error::BadPercent => "'%' must be followed by two hex digits",
        Error::BadUtf8 => "encoded bytes must be well-formed UTF-8",
        Error::EncodedSlash => "an encoded slash or backslash never matches",
        Error::Backslash => "a backslash never matches",
        Error::Semicolon => "';' path parameters are refused",
        Error::AboveRoot => "it climbs above '/'",
        Error::PathTooLong => "the normalised path is too long",
        Error::NonAscii => "non-ASCII bytes must be percent-encoded",
        Error::Fragment => "a fragment is not part of a request",
        _ => "characters outside a URI path must be percent-encoded",
    }
}

impl HttpRule {
    /// The rule as the datapath stores it.
    pub fn entry(&self, rule_id: u32, port_index: u8, http_index: u8) -> Option<HttpRuleEntry> {
        let (path, prefix) = match &self.path {
            HttpPath::Exact(p) => (p, false),
            HttpPath::Prefix(p) => (p, true),
        };
        HttpRuleEntry::new(
            rule_id,
            port_index,
            http_index,
            self.method.as_deref().map(str::as_bytes),
            path.as_bytes(),
            prefix,
        )
    }
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
