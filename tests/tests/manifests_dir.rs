//! Privileged tests of what an edit of the manifests directory does to enforcement, through
//! the real agent and datapath: the datastore half of issue 13 (an object declared in two
//! files, a manifest without a namespace). Needs root and the workspace's binaries.

use ward_lab::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, require_root};

fn lab(namespace: &str) -> Node {
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace(namespace, &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
    let pod = |name: &str| PodSpec {
        namespace: namespace.into(),
        name: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into_iter().collect(),
        serves: vec![Serve::new(80, Protocol::Tcp, None)],
    };
    node.create_pods(&[pod("client"), pod("db")]).unwrap_or_else(|e| panic!("pods: {e}"));
    node
}

fn connects(node: &Node, namespace: &str, from: &str, to: &str) -> bool {
    let (from, to) = (PodRef::new(namespace, from), PodRef::new(namespace, to));
    node.probe(&from, &to, 80, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("probe: {e}")).connected()
}

/// An allowed path, probed until it connects (a freshly started server on a loaded machine
/// may miss the first probe); bounded in time.
fn eventually_connects(node: &Node, namespace: &str, from: &str, to: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if connects(node, namespace, from, to) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn status(node: &Node) -> serde_json::Value {
    node.status().unwrap_or_else(|e| panic!("status: {e}")).raw
}

/// Issue 13 item 4, the reported scenario: a copy of the policy file is added, then
/// removed. The copy was the file loaded last, its removal took the policy with it, and the
/// isolated pod was reachable again although the original file still declared the policy.
#[test]
fn a_copy_of_a_policy_file_added_then_removed_leaves_the_pod_isolated() {
    if !require_root("a_copy_of_a_policy_file_added_then_removed_leaves_the_pod_isolated") {
        return;
    }
    let mut node = lab("n");
    assert!(eventually_connects(&node, "n", "client", "db"), "db is not isolated yet");
    let deny: serde_yaml::Value = serde_yaml::from_str(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: db-deny, namespace: n}, \
         spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}}",
    )
    .expect("policy");
    let files = node.apply(&[deny]).unwrap_or_else(|e| panic!("{e}"));
    let original = &files[0];
    assert!(!connects(&node, "n", "client", "db"), "db is isolated");

    let content = std::fs::read_to_string(node.manifests_dir().join(original)).expect("the policy file");
    let copy = "zzzz-copy-of-the-policy.yaml";
    assert!(copy > original.as_str(), "the copy must load after {original}");
    node.write_manifest(copy, &content).unwrap_or_else(|e| panic!("{e}"));
    node.sync().unwrap_or_else(|e| panic!("{e}"));
    let with_copy = status(&node);
    node.remove_manifest(copy).unwrap_or_else(|e| panic!("{e}"));
    node.sync().unwrap_or_else(|e| panic!("{e}"));
    assert!(!connects(&node, "n", "client", "db"), "db must stay isolated");
    let s = status(&node);
    assert_eq!(s["policies"], 1, "{original} still declares the policy: {s}");
    assert_eq!(s["duplicates"], serde_json::json!([]), "{s}");

    // While both existed, `ward status` named both files and the one in force.
    let duplicates = with_copy["duplicates"].as_array().cloned().unwrap_or_default();
    assert_eq!(duplicates.len(), 1, "the copy is reported: {with_copy}");
    assert_eq!(duplicates[0]["object"], "NetworkPolicy n/db-deny", "{with_copy}");
    assert_eq!(duplicates[0]["files"], serde_json::json!([original, copy]), "{with_copy}");
    assert_eq!(duplicates[0]["in_force"], copy, "{with_copy}");
}

/// Issue 13 item 9: the upstream docs' default-deny example has no `metadata.namespace`.
/// It was rejected, so it silently did nothing; kubectl applies it to `default`.
#[test]
fn the_upstream_default_deny_example_isolates_the_pods_of_default() {
    if !require_root("the_upstream_default_deny_example_isolates_the_pods_of_default") {
        return;
    }
    let mut node = lab("default");
    assert!(eventually_connects(&node, "default", "client", "db"), "nothing is isolated yet");
    // Verbatim from the Kubernetes documentation (Network Policies, "Default deny all ingress traffic").
    let example = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
spec:
  podSelector: {}
  policyTypes:
  - Ingress
";
    node.write_manifest("default-deny.yaml", example).unwrap_or_else(|e| panic!("{e}"));
    node.sync().unwrap_or_else(|e| panic!("{e}"));
    assert!(!connects(&node, "default", "client", "db"), "default deny applies to default");
    assert!(!connects(&node, "default", "db", "client"), "to every pod of default");
    let s = status(&node);
    assert_eq!(s["rejected"], serde_json::json!([]), "{s}");
    assert_eq!(
        s["notices"],
        serde_json::json!([{
            "file": "default-deny.yaml",
            "object": "NetworkPolicy default/default-deny-ingress",
            "field": "metadata.namespace",
            "message": "not set: namespace defaulted to default (as kubectl does)",
        }]),
        "{s}"
    );
}
