//! A lab node with the real agent and CNI plugin: pods wired by ward-cni, policy written as
//! manifests and enforced once the agent reports the files applied. Needs root and the
//! workspace's binaries (`cargo xtask build`).

use std::path::Path;

use serde_yaml::Value;
use ward_lab::{Family, Labels, Node, NodeConfig, Outcome, PodRef, PodSpec, Protocol, Serve, require_root};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn pod(ns: &str, name: &str) -> PodSpec {
    PodSpec {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(&[("app", name)]),
        serves: vec![Serve::new(80, Protocol::Tcp, Some("http")), Serve::new(53, Protocol::Udp, Some("dns"))],
    }
}

/// A node with namespace `n` and pods `n/a`, `n/b`.
fn two_pods() -> Node {
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("n", &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
    node.create_pods(&[pod("n", "a"), pod("n", "b")]).unwrap_or_else(|e| panic!("pods through ward-cni: {e}"));
    node
}

fn deny_ingress(ns: &str) -> Value {
    serde_yaml::from_str(&format!(
        "{{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: deny, namespace: {ns}}}, \
         spec: {{podSelector: {{}}, policyTypes: [Ingress]}}}}"
    ))
    .expect("policy YAML")
}

/// In namespace `n`, b admits only a.
fn b_admits_only_a() -> Value {
    serde_yaml::from_str(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: b-in, namespace: n}, \
         spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress], \
         ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}}",
    )
    .expect("policy YAML")
}

fn connects(node: &Node, from: &str, to: &str, port: u16, protocol: Protocol) -> Outcome {
    let (from, to): (PodRef, PodRef) = (from.parse().expect("pod ref"), to.parse().expect("pod ref"));
    node.probe(&from, &to, port, protocol, Family::IPv4).unwrap_or_else(|e| panic!("probe: {e}"))
}

#[test]
fn pods_reach_each_other_before_any_policy() {
    if !require_root("pods_reach_each_other_before_any_policy") {
        return;
    }
    let node = two_pods();
    for (from, to, name) in [("n/a", "n/b", "b"), ("n/b", "n/a", "a")] {
        assert_eq!(
            connects(&node, from, to, 80, Protocol::Tcp),
            Outcome::Connected(name.into()),
            "{from} -> {to} TCP/80"
        );
        assert_eq!(
            connects(&node, from, to, 53, Protocol::Udp),
            Outcome::Connected(name.into()),
            "{from} -> {to} UDP/53"
        );
    }
}

#[test]
fn default_deny_ingress_is_enforced_once_synced_and_lifted_on_delete() {
    if !require_root("default_deny_ingress_is_enforced_once_synced_and_lifted_on_delete") {
        return;
    }
    let mut node = two_pods();
    node.apply(&[deny_ingress("n")]).unwrap_or_else(|e| panic!("applying the policy: {e}"));
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let port = if proto == Protocol::Tcp { 80 } else { 53 };
        let got = connects(&node, "n/a", "n/b", port, proto);
        assert!(!got.connected(), "deny-ingress in force, yet n/a -> n/b {proto}/{port}: {got}");
    }
    node.delete_object("NetworkPolicy", "n", "deny").unwrap_or_else(|e| panic!("deleting the policy: {e}"));
    assert!(connects(&node, "n/a", "n/b", 80, Protocol::Tcp).connected(), "allowed again after delete");
}

#[test]
fn enforcement_survives_an_agent_crash_and_restart() {
    if !require_root("enforcement_survives_an_agent_crash_and_restart") {
        return;
    }
    let mut node = two_pods();
    node.apply(&[deny_ingress("n")]).unwrap_or_else(|e| panic!("applying the policy: {e}"));
    node.kill_agent().unwrap_or_else(|e| panic!("killing the agent: {e}"));
    let got = connects(&node, "n/a", "n/b", 80, Protocol::Tcp);
    assert!(!got.connected(), "pinned policy must hold while the agent is down: {got}");
    node.start_agent().unwrap_or_else(|e| panic!("restarting the agent: {e}"));
    node.sync().unwrap_or_else(|e| panic!("restarted agent re-applying every manifest: {e}"));
    assert!(!connects(&node, "n/a", "n/b", 80, Protocol::Tcp).connected(), "still denied after restart");
    node.delete_object("NetworkPolicy", "n", "deny").unwrap_or_else(|e| panic!("deleting the policy: {e}"));
    assert!(connects(&node, "n/a", "n/b", 80, Protocol::Tcp).connected(), "the restarted agent enforces changes");
}

#[test]
fn dropping_a_node_removes_its_namespaces_pins_and_files() {
    if !require_root("dropping_a_node_removes_its_namespaces_pins_and_files") {
        return;
    }
    let node = two_pods();
    let mut paths = vec![node.netns().path().to_owned(), node.pin_dir(), node.dir().to_owned()];
    paths.extend(node.pods().map(|p| p.netns().path().to_owned()));
    assert!(node.pin_dir().exists(), "the agent pins under {}", node.pin_dir().display());
    drop(node);
    for p in paths {
        assert!(!Path::new(&p).exists(), "{} survived teardown", p.display());
    }
}

/// `NodeConfig::services`: probes go to each pod's Service address, netfilter translates
/// them as kube-proxy would, and the agent decides egress on the pod they reach: the lab's
/// `--services` mode does probe through Services, and its verdicts are the direct ones.
#[test]
fn the_services_mode_probes_through_translated_service_addresses() {
    if !require_root("the_services_mode_probes_through_translated_service_addresses") {
        return;
    }
    let mut node =
        Node::start(NodeConfig { services: true, ..NodeConfig::default() }).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("n", &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
    node.create_pods(&[pod("n", "a"), pod("n", "b")]).unwrap_or_else(|e| panic!("pods: {e}"));
    let (a, b): (PodRef, PodRef) = ("n/a".parse().expect("ref"), "n/b".parse().expect("ref"));
    let spec = node.probe_spec(&a, &b, 80, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
    let range: ipnet::IpNet = ward_lab::services::cidrs(1)[0];
    assert!(range.contains(&spec.to.ip()), "the probe goes to b's Service address, not {}", spec.to);
    // a may send only to b's TCP 80 (its egress decided on b, behind the Service address).
    let egress: Value = serde_yaml::from_str(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: a-out, namespace: n}, \
         spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress], \
         egress: [{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80, protocol: TCP}]}]}}",
    )
    .expect("policy YAML");
    node.apply(&[egress]).unwrap_or_else(|e| panic!("applying the policy: {e}"));
    assert_eq!(connects(&node, "n/a", "n/b", 80, Protocol::Tcp), Outcome::Connected("b".into()));
    assert!(!connects(&node, "n/a", "n/b", 53, Protocol::Udp).connected(), "UDP/53 is not in the rule");
    assert_eq!(connects(&node, "n/b", "n/a", 80, Protocol::Tcp), Outcome::Connected("a".into()), "b is not isolated");
    // A pod reaching itself through its own Service address is its loopback.
    assert_eq!(connects(&node, "n/a", "n/a", 80, Protocol::Tcp), Outcome::Connected("a".into()));
    let status = node.status().unwrap_or_else(|e| panic!("status: {e}"));
    let counted = |r: &str| status.raw["reason_counters"][r].as_u64().unwrap_or(0);
    assert!(counted("service_pending") >= 2, "a's connections were deferred to translation: {}", status.raw);
    assert!(counted("loopback") >= 1, "the hairpin was seen as such: {}", status.raw);
}

#[test]
fn a_lab_of_two_nodes_spreads_pods_and_each_agent_knows_the_other_nodes_pods() {
    if !require_root("a_lab_of_two_nodes_spreads_pods_and_each_agent_knows_the_other_nodes_pods") {
        return;
    }
    let mut node =
        Node::start(NodeConfig { nodes: 2, ..NodeConfig::default() }).unwrap_or_else(|e| panic!("lab nodes: {e}"));
    node.set_namespace("n", &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
    node.create_pods(&[pod("n", "a"), pod("n", "b"), pod("n", "c")]).unwrap_or_else(|e| panic!("pods: {e}"));
    let r = |s: &str| -> PodRef { s.parse().expect("ref") };
    let (first, peer) = (node.name().to_owned(), node.peers()[0].name().to_owned());
    let on = |p: &str| node.node_of(&r(p)).unwrap_or_else(|e| panic!("{e}")).to_owned();
    assert_eq!((on("n/a"), on("n/b"), on("n/c")), (first.clone(), peer.clone(), first));
    let b_ip = node.pod_ip(&r("n/b"), Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
    let peer_cidrs = node.peers()[0].config().pod_cidrs();
    assert!(peer_cidrs.iter().any(|c| c.contains(&b_ip)), "b's address {b_ip} is from the peer's range");
    assert_eq!(connects(&node, "n/a", "n/b", 80, Protocol::Tcp), Outcome::Connected("b".into()), "across nodes");
    for family in [Family::IPv4, Family::IPv6] {
        let o = probe_family(&node, "n/b", "n/c", family);
        assert_eq!(o, Outcome::Connected("c".into()), "back across nodes over {family:?}");
    }
    // b (on the peer) admits only a (on the first node): the peer's agent must know a's
    // identity from a's Pod object alone (its status.podIPs), and deny c.
    let only_a = b_admits_only_a();
    node.apply(&[only_a]).unwrap_or_else(|e| panic!("applying the policy: {e}"));
    assert_eq!(connects(&node, "n/a", "n/b", 80, Protocol::Tcp), Outcome::Connected("b".into()), "a is admitted");
    assert!(!connects(&node, "n/c", "n/b", 80, Protocol::Tcp).connected(), "c is not");
    let denied =
        |status: &ward_lab::agent::Status| status.raw["reason_counters"]["policy_denied"].as_u64().unwrap_or(0);
    let on_peer = denied(&node.peers()[0].status().unwrap_or_else(|e| panic!("peer status: {e}")));
    let on_first = denied(&node.status().unwrap_or_else(|e| panic!("status: {e}")));
    assert!(
        on_peer >= 1 && on_first == 0,
        "b's node denied c's packets ({on_peer}), c's node let them out ({on_first})"
    );
}

fn probe_family(node: &Node, from: &str, to: &str, family: Family) -> Outcome {
    let (from, to): (PodRef, PodRef) = (from.parse().expect("ref"), to.parse().expect("ref"));
    node.probe(&from, &to, 80, Protocol::Tcp, family).unwrap_or_else(|e| panic!("probe: {e}"))
}

#[test]
fn a_rebooted_node_protects_its_pods_from_their_first_packet() {
    if !require_root("a_rebooted_node_protects_its_pods_from_their_first_packet") {
        return;
    }
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("n", &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
    node.create_pods(&[pod("n", "a"), pod("n", "b"), pod("n", "x")]).unwrap_or_else(|e| panic!("pods: {e}"));
    let only_a = b_admits_only_a();
    node.apply(&[only_a]).unwrap_or_else(|e| panic!("applying the policy: {e}"));
    assert_eq!(connects(&node, "n/a", "n/b", 80, Protocol::Tcp), Outcome::Connected("b".into()));
    assert!(!connects(&node, "n/x", "n/b", 80, Protocol::Tcp).connected(), "x is denied before the reboot");
    let b: PodRef = "n/b".parse().expect("ref");
    let before = node.pod(&b).map(|p| p.container_id().to_owned()).unwrap_or_else(|e| panic!("{e}"));

    node.reboot().unwrap_or_else(|e| panic!("rebooting the node: {e}"));
    let after = node.pod(&b).map(|p| p.container_id().to_owned()).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(before, after, "b is a new sandbox");
    // The first probes after the pods are back, with no wait and no retry: each pod's ADD
    // returned only once it was enforced.
    assert!(!connects(&node, "n/x", "n/b", 80, Protocol::Tcp).connected(), "x's first packets after the reboot");
    assert_eq!(connects(&node, "n/a", "n/b", 80, Protocol::Tcp), Outcome::Connected("b".into()), "a's");
    let status = node.status().unwrap_or_else(|e| panic!("status: {e}"));
    // bpffs was empty at boot, so these counters are the new datapath's.
    let counted = |r: &str| status.raw["reason_counters"][r].as_u64().unwrap_or(0);
    assert!(counted("policy_denied") >= 1, "the rebooted datapath dropped x: {}", status.raw);
    assert!(counted("policy_allow") >= 1, "and admitted a: {}", status.raw);
    assert_eq!(status.raw["endpoints"], 3, "the three new sandboxes and none of the old: {}", status.raw);
}

/// Packets the node's netfilter forwarded to or from `b` (a counting rule in its FORWARD chain).
fn forwarded_packets(node: &Node, b: std::net::IpAddr) -> u64 {
    let list = std::process::Command::new("ip")
        .args(["netns", "exec", node.netns().name(), "iptables", "-w", "-L", "FORWARD", "-v", "-x", "-n"])
        .output()
        .expect("iptables -L");
    assert!(list.status.success(), "iptables -L: {}", String::from_utf8_lossy(&list.stderr));
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| l.contains(&b.to_string()))
        .filter_map(|l| l.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

fn count_forwarded(node: &Node, ip: std::net::IpAddr) {
    for dir in ["-s", "-d"] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", node.netns().name(), "iptables", "-w", "-I", "FORWARD", dir])
            .arg(format!("{ip}/32"))
            .output()
            .expect("iptables -I");
        assert!(out.status.success(), "iptables -I: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn same_node_packets_skip_the_nodes_routing_and_netfilter_and_keep_every_decision() {
    if !require_root("same_node_packets_skip_the_nodes_routing_and_netfilter_and_keep_every_decision") {
        return;
    }
    let only_a = b_admits_only_a();
    // (the agent's setting, whether the node's netfilter forwards b's packets)
    for (delivery, routed) in [("peer", false), ("route", true)] {
        let config =
            NodeConfig { agent_args: vec!["--local-delivery".into(), delivery.into()], ..NodeConfig::default() };
        let mut node = Node::start(config).unwrap_or_else(|e| panic!("lab node: {e}"));
        node.set_namespace("n", &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
        node.create_pods(&[pod("n", "a"), pod("n", "b"), pod("n", "x")]).unwrap_or_else(|e| panic!("pods: {e}"));
        node.apply(std::slice::from_ref(&only_a)).unwrap_or_else(|e| panic!("applying the policy: {e}"));
        let b = node.pod_ip(&"n/b".parse().expect("ref"), Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
        count_forwarded(&node, b);
        for _ in 0..3 {
            assert_eq!(connects(&node, "n/a", "n/b", 80, Protocol::Tcp), Outcome::Connected("b".into()), "{delivery}");
            assert_eq!(connects(&node, "n/a", "n/b", 53, Protocol::Udp), Outcome::Connected("b".into()), "{delivery}");
            assert!(!connects(&node, "n/x", "n/b", 80, Protocol::Tcp).connected(), "{delivery}: x is denied");
        }
        for family in [Family::IPv4, Family::IPv6] {
            let o = probe_family(&node, "n/b", "n/a", family);
            assert_eq!(o, Outcome::Connected("a".into()), "{delivery}: b -> a over {family:?}");
        }
        let forwarded = forwarded_packets(&node, b);
        assert_eq!(forwarded > 0, routed, "{delivery}: the node's netfilter forwarded {forwarded} of b's packets");
        let status = node.status().unwrap_or_else(|e| panic!("status: {e}"));
        assert_eq!(status.raw["local_delivery"], delivery, "ward status names the setting");
        let counted = |r: &str| status.raw["reason_counters"][r].as_u64().unwrap_or(0);
        // Three TCP and three UDP flows admitted by rule at b, three SYNs (and retries) denied.
        assert!(counted("policy_allow") >= 6, "{delivery}: b's ingress decisions: {}", status.raw);
        assert!(counted("policy_denied") >= 3, "{delivery}: {}", status.raw);
        assert!(counted("reply") > 0 && counted("established") > 0, "{delivery}: tracked both ways: {}", status.raw);
    }
}
