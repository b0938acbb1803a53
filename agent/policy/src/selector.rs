//! Validated label selectors and their matching, shared by the compiler, the reference
//! evaluator and `explain`.
//!
//! A [`Selector`] can only be built from a valid `LabelSelector` (see
//! `validate::selector`), so matching never meets a bad operator.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operator {
    /// The label exists and its value is in the set (never empty).
    In(BTreeSet<String>),
    /// The label is absent, or its value is not in the set (never empty).
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// A validated `LabelSelector`: all of `match_labels` and all of `requirements` must hold.
/// The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Selector {
    pub match_labels: Labels,
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every label set (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// Kubernetes' own selector syntax (`pod=a,tier in (x,y),!debug`); `{}` for the empty one.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.requirements {
            let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match &r.op {
                Operator::In(s) => format!("{} in ({})", r.key, join(s)),
                Operator::NotIn(s) => format!("{} notin ({})", r.key, join(s)),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn req(key: &str, op: Operator) -> Selector {
        Selector { match_labels: Labels::new(), requirements: vec![Requirement { key: key.into(), op }] }
    }

    #[test]
    fn empty_selector_matches_everything_including_no_labels() {
        assert!(Selector::everything().matches(&Labels::new()));
        assert!(Selector::everything().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = Selector { match_labels: labels(&[("pod", "a"), ("env", "prod")]), requirements: vec![] };
        assert!(s.matches(&labels(&[("pod", "a"), ("env", "prod"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
        assert!(!s.matches(&labels(&[("pod", "a"), ("env", "dev")])));
    }

    #[test]
    fn in_requires_the_key_and_a_listed_value() {
        let s = req("pod", Operator::In(set(&["b", "c"])));
        assert!(s.matches(&labels(&[("pod", "b")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
        assert!(!s.matches(&Labels::new()));
    }

    #[test]
    fn not_in_matches_when_the_key_is_absent() {
        let s = req("ns", Operator::NotIn(set(&["x"])));
        assert!(!s.matches(&labels(&[("ns", "x")])));
        assert!(s.matches(&labels(&[("ns", "y")])));
        assert!(s.matches(&Labels::new()));
    }

    #[test]
    fn exists_and_does_not_exist_ignore_the_value() {
        assert!(req("k", Operator::Exists).matches(&labels(&[("k", "")])));
        assert!(!req("k", Operator::Exists).matches(&labels(&[("j", "v")])));
        assert!(req("k", Operator::DoesNotExist).matches(&labels(&[("j", "v")])));
        assert!(!req("k", Operator::DoesNotExist).matches(&labels(&[("k", "v")])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let mut s = req("tier", Operator::In(set(&["web"])));
        s.match_labels = labels(&[("app", "shop")]);
        assert!(s.matches(&labels(&[("app", "shop"), ("tier", "web")])));
        assert!(!s.matches(&labels(&[("app", "shop"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("app", "blog"), ("tier", "web")])));
        assert_eq!(s.to_string(), "app=shop,tier in (web)");
    }
}
