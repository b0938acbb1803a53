//! The `ward` CLI against a live lab node: status, endpoints and explain answer from the
//! agent's real state. Needs root and the workspace's binaries (`cargo xtask build`).

use serde_yaml::Value;
use ward_lab::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, require_root};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn pod(name: &str) -> PodSpec {
    PodSpec {
        namespace: "shop".into(),
        name: name.into(),
        labels: labels(&[("app", name)]),
        serves: vec![Serve::new(5432, Protocol::Tcp, Some("pg"))],
    }
}

fn lab() -> Node {
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("shop", &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
    node.create_pods(&[pod("db"), pod("api"), pod("stranger")]).unwrap_or_else(|e| panic!("pods: {e}"));
    let policy: Value = serde_yaml::from_str(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: db-from-api, namespace: shop}, \
         spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], \
         ports: [{port: pg}]}]}}",
    )
    .expect("policy YAML");
    node.apply(&[policy]).unwrap_or_else(|e| panic!("policy: {e}"));
    node
}

/// Runs `ward --socket <node's socket> <args>`; returns (success, stdout).
fn ward(node: &Node, args: &[&str]) -> (bool, String) {
    let out = node.ward(args);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn status_endpoints_and_explain_report_the_enforced_state() {
    if !require_root("status_endpoints_and_explain_report_the_enforced_state") {
        return;
    }
    let node = lab();

    let (ok, out) = ward(&node, &["status", "--json"]);
    assert!(ok, "status failed: {out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let report = &status;
    assert_eq!(report["result"], "status", "{out}");
    assert_eq!(report["endpoints"], 3, "{out}");
    assert_eq!(report["policies"], 1, "{out}");
    assert!(report["map_entries"]["WARD_POLICY"].as_u64().unwrap_or(0) > 0, "{out}");

    let (ok, out) = ward(&node, &["endpoints"]);
    assert!(ok, "{out}");
    let db_line = out.lines().find(|l| l.contains("shop/db")).unwrap_or_else(|| panic!("no shop/db in {out}"));
    assert!(db_line.contains("deny"), "db is isolated for ingress: {db_line}");
    let api_line = out.lines().find(|l| l.contains("shop/api")).unwrap_or_else(|| panic!("no shop/api in {out}"));
    assert!(!api_line.contains("deny"), "api is not isolated: {api_line}");

    let (ok, out) = ward(&node, &["policy", "explain", "--from", "shop/api", "--to", "shop/db", "--port", "5432"]);
    assert!(ok, "{out}");
    assert!(out.contains("ALLOWED") && out.contains("shop/db-from-api"), "{out}");
    let (ok, out) = ward(&node, &["policy", "explain", "--from", "shop/stranger", "--to", "shop/db", "--port", "5432"]);
    assert!(ok, "{out}");
    assert!(out.contains("DENIED") && out.contains("default deny"), "{out}");
    let (ok, out) = ward(&node, &["policy", "explain", "--from", "shop/api", "--to", "shop/db", "--port", "5433"]);
    assert!(ok && out.contains("DENIED"), "another port is denied: {out}");

    let (ok, _) = ward(&node, &["policy", "explain", "--from", "shop/nobody", "--to", "shop/db", "--port", "1"]);
    assert!(!ok, "an unknown pod is an error, not an answer");

    // Per-rule counters: one allowed connection shows up under the rule that allowed it.
    let (api, db) = (PodRef::new("shop", "api"), PodRef::new("shop", "db"));
    let probe = node.probe(&api, &db, 5432, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
    assert!(probe.connected(), "api reaches db: {probe}");
    let (_, out) = ward(&node, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let rules = status["rule_counters"].as_array().unwrap_or_else(|| panic!("no rule_counters in {out}"));
    let rule = rules
        .iter()
        .find(|r| r["policy"] == "shop/db-from-api")
        .unwrap_or_else(|| panic!("no counter for shop/db-from-api in {out}"));
    assert_eq!((rule["direction"].as_str(), rule["index"].as_u64()), (Some("ingress"), Some(0)), "{rule}");
    assert!(rule["flows"].as_u64().unwrap_or(0) >= 1, "{rule}");
    let (_, text) = ward(&node, &["status"]);
    assert!(text.contains("shop/db-from-api ingress rule 0"), "{text}");
}
