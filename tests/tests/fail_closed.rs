//! Losing track of a pod must never unpolice it: with the agent's endpoint registry gone,
//! the pods' interfaces keep their programs and drop everything as unknown endpoints; the
//! programs leave an interface only once it is deleted. Needs root and the workspace's
//! binaries (`cargo xtask build`).

use std::time::{Duration, Instant};

use serde_yaml::Value;
use ward_lab::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, require_root};

fn pod(name: &str) -> PodSpec {
    PodSpec {
        namespace: "n".into(),
        name: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into_iter().collect(),
        serves: vec![Serve::new(80, Protocol::Tcp, None)],
    }
}

fn lab(pods: &[&str]) -> Node {
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("n", &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
    let specs: Vec<PodSpec> = pods.iter().map(|p| pod(p)).collect();
    node.create_pods(&specs).unwrap_or_else(|e| panic!("pods: {e}"));
    node
}

fn connects(node: &Node, from: &str, to: &str) -> bool {
    let (from, to) = (PodRef::new("n", from), PodRef::new("n", to));
    node.probe(&from, &to, 80, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("probe: {e}")).connected()
}

fn counter(node: &Node, reason: &str) -> u64 {
    let s = node.status().unwrap_or_else(|e| panic!("status: {e}"));
    s.raw["reason_counters"][reason].as_u64().unwrap_or(0)
}

fn pinned_links(node: &Node) -> usize {
    std::fs::read_dir(node.pin_dir().join("links")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_lost_endpoint_registry_leaves_pods_dropping_everything_not_unpoliced() {
    if !require_root("a_lost_endpoint_registry_leaves_pods_dropping_everything_not_unpoliced") {
        return;
    }
    let mut node = lab(&["a", "b"]);
    let deny: Value = serde_yaml::from_str(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny, namespace: n}, \
         spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}}",
    )
    .expect("policy");
    node.apply(&[deny]).unwrap_or_else(|e| panic!("{e}"));
    assert!(!connects(&node, "a", "b"), "b is isolated");
    assert!(connects(&node, "b", "a"), "a is not");

    node.stop_agent().unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(node.state_dir().join("endpoints.json")).expect("removing the registry");
    node.start_agent().unwrap_or_else(|e| panic!("{e}"));
    let before = counter(&node, "unknown_endpoint");
    // Past the agent's garbage-collection period, when a wrong sweep would have detached.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pinned_links(&node), 4, "both pods keep both programs");
    assert!(!connects(&node, "a", "b"), "the denied path stays denied");
    assert!(!connects(&node, "b", "a"), "an unknown endpoint is dropped, never let through unpoliced");
    assert!(counter(&node, "unknown_endpoint") > before, "the drops are counted as unknown_endpoint");
}

#[test]
fn a_deleted_pod_keeps_its_programs_until_its_interface_is_gone_then_its_pins_go() {
    if !require_root("a_deleted_pod_keeps_its_programs_until_its_interface_is_gone_then_its_pins_go") {
        return;
    }
    let mut node = lab(&["a", "b", "c"]);
    assert_eq!(pinned_links(&node), 6);
    node.delete_pod(&PodRef::new("n", "c")).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pinned_links(&node) != 4 {
        assert!(Instant::now() < deadline, "pins of the deleted pod still there: {}", pinned_links(&node));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(connects(&node, "a", "b"), "the other pods are untouched");
}
