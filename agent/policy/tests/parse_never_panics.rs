//! Fuzz-style property tests for the manifest parser and validation: whatever bytes a
//! manifest holds, parsing and validating never panic, and every error names a field.

use proptest::prelude::*;
use ward_policy::model::{Object, parse_documents};
use ward_policy::validate;

fn check(text: &str) {
    for doc in parse_documents(text, "fuzz.yaml") {
        match doc {
            Ok(Object::NetworkPolicy(np)) => {
                if let Err(e) = validate::policy(&np, "fuzz.yaml") {
                    assert!(!e.object.is_empty(), "{e}");
                }
            }
            Ok(Object::Pod(p)) => {
                let _ = validate::pod(&p, "fuzz.yaml");
            }
            Ok(Object::Namespace(n)) => {
                let _ = validate::namespace(&n, "fuzz.yaml");
            }
            Ok(_) => {}
            Err(e) => assert_eq!(e.file, "fuzz.yaml"),
        }
    }
}

/// Pieces of plausible manifests, so mutations reach deep into the policy structure.
const FRAGMENTS: &[&str] = &[
    "apiVersion: networking.k8s.io/v1\n",
    "kind: NetworkPolicy\n",
    "kind: List\nitems:\n",
    "metadata: {name: p, namespace: x}\n",
    "spec:\n  podSelector: {}\n",
    "  policyTypes: [Ingress, Egress]\n",
    "  ingress:\n    - from: [{podSelector: {matchLabels: {a: b}}}]\n",
    "      ports: [{port: 80, endPort: 90, protocol: SCTP}]\n",
    "  egress:\n    - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n",
    "    - ports: [{port: http}]\n",
    "  podSelector: {matchExpressions: [{key: k, operator: In, values: [v]}]}\n",
    "---\n",
    "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n",
    "spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}\n",
    "{\n",
    "- [\n",
    "port: -1\n",
    "cidr: 300.1.1.1/99\n",
    "\t\u{0}\n",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        check(&text);
    }

    #[test]
    fn shuffled_manifest_fragments_never_panic(picks in proptest::collection::vec(0..FRAGMENTS.len(), 0..24)) {
        let text: String = picks.iter().map(|i| FRAGMENTS[*i]).collect();
        check(&text);
    }
}
