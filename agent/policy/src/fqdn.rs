//! DNS names and name patterns of `fqdn` egress peers (WardNetworkPolicy), and the one
//! wildcard grammar Ward uses everywhere (README, "FQDN egress"):
//!
//! * `api.bank.example` matches exactly that name.
//! * `*.bank.example` (`*` as the whole leftmost label) matches exactly one label in its place:
//!   `api.bank.example`, not `bank.example` itself, not `a.b.bank.example`.
//! * `**.bank.example` (`**.` as the leftmost part) matches one or more labels in its place:
//!   `api.bank.example` and `a.b.bank.example`, not `bank.example`.
//! * a bare `*` matches every name.
//!
//! No other wildcard position exists (`a*.example`, `api.*.example`, `*` in `matchName` are
//! rejected). Names compare case-insensitively, with or without the trailing dot: both are
//! normalised to lowercase without it, here and for every queried name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest DNS name in presentation form without the trailing dot (RFC 1035: 255 octets on the
/// wire).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// A validated `fqdn` peer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FqdnSelector {
    kind: Kind,
    /// The name, or the suffix after the wildcard; normalised (lowercase, no trailing dot).
    /// Empty for [`Kind::Everything`].
    name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Kind {
    Exact,
    /// `*.suffix`
    OneLabel,
    /// `**.suffix`
    AnyLabels,
    /// `*`
    Everything,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("{0:?} is longer than {MAX_NAME} characters")]
    TooLong(String),
    #[error("{0:?} has an empty label")]
    EmptyLabel(String),
    #[error("label {0:?} is longer than {MAX_LABEL} characters")]
    LabelTooLong(String),
    #[error("{name:?}: {ch:?} is not allowed in a DNS name (letters, digits, '-' and '_')")]
    BadChar { name: String, ch: char },
    #[error(
        "{0:?}: a wildcard is only allowed as the whole leftmost label (`*.example.com`), as `**.` in front \
         (`**.example.com`), or alone (`*`)"
    )]
    WildcardPosition(String),
    #[error("{0:?}: matchName takes a plain name; use matchPattern for wildcards")]
    WildcardInName(String),
}

impl FqdnSelector {
    /// `matchName`: one DNS name.
    pub fn name(s: &str) -> Result<Self, NameError> {
        if s.contains('*') {
            return Err(NameError::WildcardInName(s.into()));
        }
        Ok(FqdnSelector { kind: Kind::Exact, name: normalise(s)? })
    }

    /// `matchPattern`: a name with at most one wildcard, in the positions the grammar allows.
    pub fn pattern(s: &str) -> Result<Self, NameError> {
        let trimmed = s.strip_suffix('.').unwrap_or(s);
        if trimmed == "*" {
            return Ok(FqdnSelector { kind: Kind::Everything, name: String::new() });
        }
        let (kind, rest) = if let Some(rest) = trimmed.strip_prefix("**.") {
            (Kind::AnyLabels, rest)
        } else if let Some(rest) = trimmed.strip_prefix("*.") {
            (Kind::OneLabel, rest)
        } else {
            (Kind::Exact, trimmed)
        };
        if rest.contains('*') {
            return Err(NameError::WildcardPosition(s.into()));
        }
        Ok(FqdnSelector { kind, name: normalise(rest)? })
    }

    /// Whether a queried name (any case, trailing dot or not) is selected.
    pub fn matches(&self, qname: &str) -> bool {
        let q = qname.strip_suffix('.').unwrap_or(qname).to_ascii_lowercase();
        match self.kind {
            Kind::Everything => true,
            Kind::Exact => q == self.name,
            Kind::OneLabel | Kind::AnyLabels => {
                let Some(front) = q.strip_suffix(self.name.as_str()).and_then(|f| f.strip_suffix('.')) else {
                    return false;
                };
                !front.is_empty() && (self.kind == Kind::AnyLabels || !front.contains('.'))
            }
        }
    }
}

impl fmt::Display for FqdnSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Exact => write!(f, "{}", self.name),
            Kind::OneLabel => write!(f, "*.{}", self.name),
            Kind::AnyLabels => write!(f, "**.{}", self.name),
            Kind::Everything => f.write_str("*"),
        }
    }
}

/// Lowercase, without the trailing dot, checked label by label.
fn normalise(s: &str) -> Result<String, NameError> {
    let t = s.strip_suffix('.').unwrap_or(s);
    if t.is_empty() {
        return Err(NameError::Empty);
    }
    if t.len() > MAX_NAME {
        return Err(NameError::TooLong(s.into()));
    }
    let lower = t.to_ascii_lowercase();
    for label in lower.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel(s.into()));
        }
        if label.len() > MAX_LABEL {
            return Err(NameError::LabelTooLong(label.into()));
        }
        if let Some(ch) =
            label.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(NameError::BadChar { name: s.into(), ch });
        }
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_label_wildcard_matches_exactly_one_label() {
        let p = FqdnSelector::pattern("*.example.com").expect("valid");
        assert!(p.matches("a.example.com"));
        assert!(p.matches("A.Example.COM."));
        assert!(!p.matches("example.com"), "not the name itself");
        assert!(!p.matches("a.b.example.com"), "not two labels");
        assert!(!p.matches("aexample.com"), "a label boundary, not a string suffix");
    }

    #[test]
    fn any_labels_wildcard_matches_one_or_more() {
        let p = FqdnSelector::pattern("**.example.com").expect("valid");
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.c.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
    }

    #[test]
    fn names_compare_case_insensitively_with_or_without_the_trailing_dot() {
        let n = FqdnSelector::name("API.Bank.Example.").expect("valid");
        assert!(n.matches("api.bank.example"));
        assert!(n.matches("api.BANK.example."));
        assert!(!n.matches("www.api.bank.example"));
        assert_eq!(n.to_string(), "api.bank.example");
        assert!(FqdnSelector::pattern("*").expect("valid").matches("anything.at.all"));
    }

    #[test]
    fn other_wildcard_positions_and_bad_names_are_rejected() {
        for bad in ["a*.example.com", "api.*.example", "*example.com", "***.example", "*.*.example", "**"] {
            assert!(
                matches!(FqdnSelector::pattern(bad), Err(NameError::WildcardPosition(_) | NameError::BadChar { .. })),
                "{bad}"
            );
        }
        assert!(matches!(FqdnSelector::name("*.example.com"), Err(NameError::WildcardInName(_))));
        assert!(matches!(FqdnSelector::name(""), Err(NameError::Empty)));
        assert!(matches!(FqdnSelector::name("a..b"), Err(NameError::EmptyLabel(_))));
        assert!(matches!(FqdnSelector::name("a b.example"), Err(NameError::BadChar { .. })));
        assert!(matches!(FqdnSelector::name(&"a".repeat(64)), Err(NameError::LabelTooLong(_))));
    }
}
