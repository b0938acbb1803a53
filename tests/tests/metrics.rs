//! The agent's `/metrics` scraped by a real Prometheus server (Debian's package) in the lab
//! node's network namespace, and read back through Prometheus's query API: the kernel's
//! drop counter for a denied connection, the hit counter of the rule that allowed another,
//! a rule never hit exported as 0, the update latency histogram, and the target up.
//! Needs root, the workspace's binaries and `prometheus` (cargo xtask setup).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ward_lab::prometheus::{self, Prometheus, Sample};
use ward_lab::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, require_root};

/// The agent's `--metrics-addr` inside the node namespace (the namespace is the test's own,
/// so the port is free; it is the DaemonSet's port).
const METRICS_PORT: u16 = 9962;
/// Scrapes come every second; this bounds how long a value may take to show.
const SCRAPE_WAIT: Duration = Duration::from_secs(30);

fn pod(name: &str) -> PodSpec {
    PodSpec {
        namespace: "n".into(),
        name: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into_iter().collect(),
        serves: vec![Serve::new(80, Protocol::Tcp, None), Serve::new(81, Protocol::Tcp, None)],
    }
}

/// `n/b` isolated for ingress: rule 0 allows `app=a` on TCP 80, rule 1 allows a client
/// that does not exist (never hit); TCP 81 from `a` is denied by default.
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: n}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: a}}}]
      ports: [{port: 80, protocol: TCP}]
    - from: [{podSelector: {matchLabels: {app: nobody}}}]
      ports: [{port: 82, protocol: TCP}]
";

fn value(p: &Prometheus, query: &str, done: impl Fn(f64) -> bool) -> f64 {
    let got: Vec<Sample> = p
        .query_until(query, SCRAPE_WAIT, |s| s.len() == 1 && done(s[0].value))
        .unwrap_or_else(|e| panic!("{e}\nprometheus log:\n{}", p.log_tail()));
    assert_eq!(got.len(), 1, "{query}: expected one series, got {got:?}\nprometheus log:\n{}", p.log_tail());
    got[0].value
}

#[test]
fn prometheus_scrapes_drops_rule_hits_unused_rules_and_latency_from_the_agent() {
    let test = "prometheus_scrapes_drops_rule_hits_unused_rules_and_latency_from_the_agent";
    if !require_root(test) || !prometheus::available(test) {
        return;
    }
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT));
    let config = NodeConfig { agent_args: vec!["--metrics-addr".into(), metrics.to_string()], ..NodeConfig::default() };
    let mut node = Node::start(config).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("n", &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
    node.create_pods(&[pod("a"), pod("b")]).unwrap_or_else(|e| panic!("pods: {e}"));
    let policy: serde_yaml::Value = serde_yaml::from_str(POLICY).expect("policy YAML");
    node.apply(&[policy]).unwrap_or_else(|e| panic!("policy: {e}"));

    let (a, b): (PodRef, PodRef) = ("n/a".parse().expect("pod ref"), "n/b".parse().expect("pod ref"));
    let allowed = node.probe(&a, &b, 80, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("probe: {e}"));
    assert!(allowed.connected(), "n/a -> n/b TCP/80 is allowed by rule 0: {allowed:?}");
    let denied = node.probe(&a, &b, 81, Protocol::Tcp, Family::IPv4).unwrap_or_else(|e| panic!("probe: {e}"));
    assert!(!denied.connected(), "n/a -> n/b TCP/81 is denied by default: {denied:?}");

    let prom = Prometheus::start(node.netns(), "ward", &[metrics]).unwrap_or_else(|e| panic!("prometheus: {e}"));
    assert_eq!(value(&prom, r#"up{job="ward"}"#, |v| v == 1.0), 1.0, "the agent's target is up");
    let drops = value(&prom, r#"ward_drop_total{job="ward",reason="policy_denied",direction="ingress"}"#, |v| v >= 1.0);
    assert!(drops >= 1.0, "the denied connection's SYNs are counted as policy_denied ingress drops: {drops}");
    let rule = r#"ward_rule_flows_total{job="ward",policy="n/web",direction="ingress",rule="0"}"#;
    let hits = value(&prom, rule, |v| v >= 1.0);
    assert!(hits >= 1.0, "the allowing rule's hit counter: {hits}");
    // "Rules never hit" as PromQL: rule 1's client does not exist.
    let unused =
        prom.query(r#"ward_rule_flows_total{job="ward",policy="n/web"} == 0"#).unwrap_or_else(|e| panic!("{e}"));
    let unused_rules: Vec<&str> = unused.iter().filter_map(|s| s.labels.get("rule").and_then(|r| r.as_str())).collect();
    assert_eq!(unused_rules, ["1"], "the never-hit rule, and only it, reads 0: {unused:?}");
    let verdicts = value(
        &prom,
        r#"ward_policy_verdicts_total{job="ward",direction="ingress",match="rule",action="allowed"}"#,
        |v| v >= 1.0,
    );
    assert!(verdicts >= 1.0, "the allowed new flow is a rule verdict: {verdicts}");
    let updates = value(&prom, r#"ward_policy_update_latency_seconds_count{job="ward"}"#, |v| v >= 1.0);
    assert!(updates >= 1.0, "the policy write was timed: {updates}");
    let ct_capacity = value(&prom, r#"ward_map_max_entries{job="ward",map="WARD_CT"}"#, |v| v > 0.0);
    assert_eq!(ct_capacity, f64::from(ward_common::maps::CT_MAX), "map capacity is the pinned map's");
    let build = value(&prom, r#"ward_build_info{job="ward"}"#, |v| v == 1.0);
    assert_eq!(build, 1.0);
    // Drops emit flow records (the default): the denied SYNs reached the flow history, and
    // nothing was lost at this rate.
    let delivered = value(&prom, r#"ward_flow_events_total{job="ward"}"#, |v| v >= 1.0);
    assert!(delivered >= 1.0, "the denied connection's drop records were read from the ring: {delivered}");
    let lost = value(&prom, r#"ward_lost_events_total{job="ward",source="kernel_ring_buffer"}"#, |_| true);
    assert_eq!(lost, 0.0, "no flow record lost in the kernel");
}
