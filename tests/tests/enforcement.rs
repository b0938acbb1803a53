//! Privileged enforcement tests: what Ward promises about NetworkPolicy semantics, measured
//! with real connections between lab pods (network namespaces wired by `ward-cni`, the real
//! agent and datapath). Each test builds its own node, so tests run in parallel and clean up
//! through the lab's guards.
//!
//! A denied probe must time out (the packet was dropped); a refusal would mean the packet
//! reached the pod. Before policies, every probed pair is shown to connect, so a denial is
//! the policy's doing and not a missing server.

use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use serde_yaml::Value;
use ward_lab::echo::Echo;
use ward_lab::probe::{self, Probe};
use ward_lab::{Family, Labels, Node, NodeConfig, Outcome, PodRef, PodSpec, Protocol, Serve, require_root};

// ---- lab set-up ----

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A pod serving TCP/80 (`http`) and UDP/53 (`dns`), plus `extra` served ports.
fn pod(ns: &str, name: &str, pod_labels: &[(&str, &str)], extra: &[Serve]) -> PodSpec {
    let mut serves = vec![Serve::new(80, Protocol::Tcp, Some("http")), Serve::new(53, Protocol::Udp, Some("dns"))];
    serves.extend_from_slice(extra);
    PodSpec { namespace: ns.into(), name: name.into(), labels: labels(pod_labels), serves }
}

/// A node with these namespaces (name, labels) and pods.
fn lab(namespaces: &[(&str, &[(&str, &str)])], pods: &[PodSpec]) -> Node {
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("starting a lab node: {e}"));
    for (ns, ns_labels) in namespaces {
        node.set_namespace(ns, &labels(ns_labels)).unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    }
    node.create_pods(pods).unwrap_or_else(|e| panic!("pods through ward-cni: {e}"));
    node
}

fn pref(s: &str) -> PodRef {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

/// A NetworkPolicy `ns/name` with `spec` given as (flow-style) YAML.
fn netpol(ns: &str, name: &str, spec: &str) -> Value {
    let spec: Value = serde_yaml::from_str(spec).unwrap_or_else(|e| panic!("policy {ns}/{name} spec {spec}: {e}"));
    let mut obj: Value = serde_yaml::from_str(&format!(
        "{{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: {name}, namespace: {ns}}}}}"
    ))
    .unwrap_or_else(|e| panic!("policy skeleton: {e}"));
    obj["spec"] = spec;
    obj
}

fn apply(node: &mut Node, policies: &[Value]) {
    if let Err(e) = node.apply(policies) {
        panic!("applying {} policies: {e}\nrejections: {:?}", policies.len(), node.rejections());
    }
}

fn delete_policy(node: &mut Node, ns: &str, name: &str) {
    node.delete_object("NetworkPolicy", ns, name).unwrap_or_else(|e| panic!("deleting NetworkPolicy {ns}/{name}: {e}"));
}

/// `/32` or `/128` of a pod's address.
fn host_cidr(node: &Node, pod: &str, family: Family) -> String {
    match node.pod_ip(&pref(pod), family) {
        Ok(IpAddr::V4(a)) => format!("{a}/32"),
        Ok(IpAddr::V6(a)) => format!("{a}/128"),
        Err(e) => panic!("{e}"),
    }
}

/// The node's pod CIDR of `family`.
fn pod_cidr(node: &Node, family: Family) -> String {
    node.config()
        .pod_cidrs()
        .into_iter()
        .find(|n| matches!((n, family), (ipnet::IpNet::V4(_), Family::IPv4) | (ipnet::IpNet::V6(_), Family::IPv6)))
        .map(|n| n.to_string())
        .unwrap_or_else(|| panic!("no {family} pod CIDR"))
}

fn reason_counter(node: &Node, reason: &str) -> u64 {
    let status = node.status().unwrap_or_else(|e| panic!("agent status: {e}"));
    status.raw["reason_counters"][reason].as_u64().unwrap_or(0)
}

fn policy_revision(node: &Node) -> u64 {
    let status = node.status().unwrap_or_else(|e| panic!("agent status: {e}"));
    status.raw["policy_revision"].as_u64().unwrap_or_else(|| panic!("status without policy_revision: {}", status.raw))
}

// ---- expectations ----

/// One probe and what it must show.
#[derive(Clone, Debug)]
struct Check {
    from: PodRef,
    to: PodRef,
    port: u16,
    protocol: Protocol,
    family: Family,
    allowed: bool,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} {}/{} {}", self.from, self.to, self.protocol, self.port, self.family)
    }
}

fn allow(from: &str, to: &str, port: u16, protocol: Protocol) -> Check {
    Check { from: pref(from), to: pref(to), port, protocol, family: Family::IPv4, allowed: true }
}

fn deny(from: &str, to: &str, port: u16, protocol: Protocol) -> Check {
    Check { allowed: false, ..allow(from, to, port, protocol) }
}

fn v6(mut c: Check) -> Check {
    c.family = Family::IPv6;
    c
}

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

fn probes(node: &Node, checks: &[Check]) -> Vec<Probe> {
    checks
        .iter()
        .map(|c| {
            node.probe_spec(&c.from, &c.to, c.port, c.protocol, c.family).unwrap_or_else(|e| panic!("probe {c}: {e}"))
        })
        .collect()
}

/// Why `outcome` does not meet `check`, if it does not: an allowed probe must get the
/// destination pod's own name back; a denied one must time out (dropped, not refused).
fn mismatch(check: &Check, outcome: &Outcome) -> Option<String> {
    let ok = match outcome {
        Outcome::Connected(reply) => check.allowed && *reply == check.to.name,
        Outcome::Failed(why) => !check.allowed && why == "timed out",
    };
    (!ok)
        .then(|| format!("{check}: want {}, got {outcome}", if check.allowed { "allowed" } else { "denied (dropped)" }))
}

/// Runs every check in parallel; returns the mismatches.
fn run_checks(node: &Node, checks: &[Check]) -> Vec<String> {
    let outcomes = probe::probe_all(&probes(node, checks), 32);
    checks.iter().zip(&outcomes).filter_map(|(c, o)| mismatch(c, o)).collect()
}

fn verify(node: &Node, context: &str, checks: &[Check]) {
    let wrong = run_checks(node, checks);
    assert!(
        wrong.is_empty(),
        "{context}: {} of {} probes wrong:\n  {}\nrejections: {:?}",
        wrong.len(),
        checks.len(),
        wrong.join("\n  "),
        node.rejections()
    );
}

/// Before any policy: every pair of `checks` connects (polled: IPv6 neighbour discovery may
/// hold back the first packets). Proves the servers listen, so a later timeout is a drop.
fn baseline(node: &Node, checks: &[Check]) {
    let open: Vec<Check> = checks.iter().map(|c| Check { allowed: true, ..c.clone() }).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let wrong = run_checks(node, &open);
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "without any policy every pair must connect; still wrong after 15 s:\n  {}",
            wrong.join("\n  ")
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// ---- 1. default deny per direction ----

/// `x/p` and `y/p` carry `lock: yes`, `x/q` does not; policies live in `x`, so `y/p` is never
/// selected.
fn lock_lab() -> Node {
    lab(
        &[("x", &[]), ("y", &[])],
        &[
            pod("x", "p", &[("app", "p"), ("lock", "yes")], &[]),
            pod("x", "q", &[("app", "q")], &[]),
            pod("y", "p", &[("app", "p"), ("lock", "yes")], &[]),
        ],
    )
}

/// Traffic between the pods no policy selects, both ways: never affected.
fn unselected_pairs() -> Vec<Check> {
    vec![
        allow("x/q", "y/p", 80, TCP),
        allow("x/q", "y/p", 53, UDP),
        allow("y/p", "x/q", 80, TCP),
        allow("y/p", "x/q", 53, UDP),
    ]
}

#[test]
fn ingress_only_default_deny_isolates_ingress_but_not_egress_of_the_selected_pods() {
    if !require_root("ingress_only_default_deny_isolates_ingress_but_not_egress_of_the_selected_pods") {
        return;
    }
    let mut node = lock_lab();
    let mut checks = vec![
        deny("x/q", "x/p", 80, TCP),
        deny("x/q", "x/p", 53, UDP),
        deny("y/p", "x/p", 80, TCP),
        deny("y/p", "x/p", 53, UDP),
        allow("x/p", "x/q", 80, TCP),
        allow("x/p", "x/q", 53, UDP),
        allow("x/p", "y/p", 80, TCP),
        allow("x/p", "y/p", 53, UDP),
    ];
    checks.extend(unselected_pairs());
    baseline(&node, &checks);
    apply(&mut node, &[netpol("x", "lock", "{podSelector: {matchLabels: {lock: 'yes'}}, policyTypes: [Ingress]}")]);
    verify(&node, "ingress-only default deny on x/p", &checks);
    delete_policy(&mut node, "x", "lock");
    baseline(&node, &checks);
}

#[test]
fn egress_only_default_deny_isolates_egress_but_not_ingress_of_the_selected_pods() {
    if !require_root("egress_only_default_deny_isolates_egress_but_not_ingress_of_the_selected_pods") {
        return;
    }
    let mut node = lock_lab();
    let mut checks = vec![
        deny("x/p", "x/q", 80, TCP),
        deny("x/p", "x/q", 53, UDP),
        deny("x/p", "y/p", 80, TCP),
        deny("x/p", "y/p", 53, UDP),
        // Replies of these leave x/p through its egress: they pass as replies.
        allow("x/q", "x/p", 80, TCP),
        allow("x/q", "x/p", 53, UDP),
        allow("y/p", "x/p", 80, TCP),
        allow("y/p", "x/p", 53, UDP),
    ];
    checks.extend(unselected_pairs());
    baseline(&node, &checks);
    apply(&mut node, &[netpol("x", "lock", "{podSelector: {matchLabels: {lock: 'yes'}}, policyTypes: [Egress]}")]);
    verify(&node, "egress-only default deny on x/p", &checks);
    delete_policy(&mut node, "x", "lock");
    baseline(&node, &checks);
}

// ---- 2. allow by each peer kind ----

/// Namespaces `x` (team x), `y` (team y), `z` (team z). `x/target` serves TCP 80 (`http`),
/// 81-84 and UDP 53; `x/target2` names TCP 81 `http` instead. Clients `x/a`, `x/b`, `y/a`,
/// `y/b`, `z/a` carry `app: a|b`.
fn peers_lab() -> Node {
    let tcp = |port| Serve::new(port, TCP, None);
    lab(
        &[("x", &[("team", "x")]), ("y", &[("team", "y")]), ("z", &[("team", "z")])],
        &[
            pod("x", "target", &[("app", "target"), ("role", "web")], &[tcp(81), tcp(82), tcp(83), tcp(84)]),
            PodSpec {
                namespace: "x".into(),
                name: "target2".into(),
                labels: labels(&[("app", "target2"), ("role", "web")]),
                serves: vec![tcp(80), Serve::new(81, TCP, Some("http"))],
            },
            pod("x", "a", &[("app", "a")], &[]),
            pod("x", "b", &[("app", "b")], &[]),
            pod("y", "a", &[("app", "a")], &[]),
            pod("y", "b", &[("app", "b")], &[]),
            pod("z", "a", &[("app", "a")], &[]),
        ],
    )
}

/// The policy every ingress case applies: `x/target` isolated for ingress with `ingress`.
fn target_ingress(ingress: &str) -> Value {
    netpol(
        "x",
        "case",
        &format!("{{podSelector: {{matchLabels: {{app: target}}}}, policyTypes: [Ingress], ingress: {ingress}}}"),
    )
}

/// Applies each case's policy, probes, deletes it; reports every wrong probe of every case.
fn run_cases(node: &mut Node, cases: Vec<(&str, Value, Vec<Check>)>) {
    let all: Vec<Check> = cases.iter().flat_map(|(_, _, c)| c.clone()).collect();
    baseline(node, &all);
    let mut failures = Vec::new();
    for (name, policy, checks) in cases {
        if let Err(e) = node.apply(std::slice::from_ref(&policy)) {
            failures.push(format!("{name}: not applied: {e}; rejections {:?}", node.rejections()));
            node.remove_objects_of_kind("NetworkPolicy").unwrap_or_else(|e| panic!("{e}"));
            node.sync().unwrap_or_else(|e| panic!("{e}"));
            continue;
        }
        for w in run_checks(node, &checks) {
            failures.push(format!("{name}: {w}"));
        }
        node.remove_objects_of_kind("NetworkPolicy").unwrap_or_else(|e| panic!("{e}"));
        node.sync().unwrap_or_else(|e| panic!("removing the policy of {name}: {e}"));
    }
    assert!(failures.is_empty(), "{} wrong probes:\n  {}", failures.len(), failures.join("\n  "));
}

#[test]
fn ingress_rules_admit_exactly_the_peers_each_peer_kind_selects() {
    if !require_root("ingress_rules_admit_exactly_the_peers_each_peer_kind_selects") {
        return;
    }
    let mut node = peers_lab();
    let except = host_cidr(&node, "x/b", Family::IPv4);
    let cidr = pod_cidr(&node, Family::IPv4);
    let t = "x/target";
    let cases = vec![
        (
            "podSelector: same namespace only",
            target_ingress("[{from: [{podSelector: {matchLabels: {app: a}}}]}]"),
            vec![
                allow("x/a", t, 80, TCP),
                allow("x/a", t, 53, UDP),
                deny("x/b", t, 80, TCP),
                deny("x/b", t, 53, UDP),
                deny("y/a", t, 80, TCP),
            ],
        ),
        (
            "namespaceSelector: every pod of the selected namespaces",
            target_ingress("[{from: [{namespaceSelector: {matchLabels: {team: y}}}]}]"),
            vec![
                allow("y/a", t, 80, TCP),
                allow("y/b", t, 53, UDP),
                deny("x/a", t, 80, TCP),
                deny("z/a", t, 80, TCP),
                deny("z/a", t, 53, UDP),
            ],
        ),
        (
            "namespaceSelector AND podSelector in one peer",
            target_ingress(
                "[{from: [{namespaceSelector: {matchLabels: {team: y}}, podSelector: {matchExpressions: [{key: app, operator: In, values: [a]}]}}]}]",
            ),
            vec![allow("y/a", t, 80, TCP), deny("y/b", t, 80, TCP), deny("x/a", t, 80, TCP), deny("z/a", t, 80, TCP)],
        ),
        (
            "namespaceSelector OR podSelector as two peers",
            target_ingress(
                "[{from: [{namespaceSelector: {matchLabels: {team: y}}}, {podSelector: {matchLabels: {app: a}}}]}]",
            ),
            vec![
                allow("y/a", t, 80, TCP),
                allow("y/b", t, 80, TCP),
                allow("x/a", t, 80, TCP),
                deny("x/b", t, 80, TCP),
                deny("z/a", t, 80, TCP),
            ],
        ),
        (
            "ipBlock with except (a pod address inside the except is denied)",
            target_ingress(&format!("[{{from: [{{ipBlock: {{cidr: '{cidr}', except: ['{except}']}}}}]}}]")),
            vec![
                allow("x/a", t, 80, TCP),
                allow("y/b", t, 80, TCP),
                allow("z/a", t, 53, UDP),
                deny("x/b", t, 80, TCP),
                deny("x/b", t, 53, UDP),
            ],
        ),
        (
            "named port, resolved per destination pod",
            netpol(
                "x",
                "case",
                "{podSelector: {matchLabels: {role: web}}, ingress: [{ports: [{port: http, protocol: TCP}]}]}",
            ),
            vec![
                allow("x/a", t, 80, TCP),
                deny("x/a", t, 81, TCP),
                deny("x/a", t, 53, UDP),
                allow("x/a", "x/target2", 81, TCP),
                deny("x/a", "x/target2", 80, TCP),
            ],
        ),
        (
            "endPort range 81-83",
            target_ingress("[{ports: [{port: 81, endPort: 83, protocol: TCP}]}]"),
            vec![
                deny("x/a", t, 80, TCP),
                allow("x/a", t, 81, TCP),
                allow("y/b", t, 82, TCP),
                allow("x/a", t, 83, TCP),
                deny("x/a", t, 84, TCP),
                deny("x/a", t, 53, UDP),
            ],
        ),
        (
            "a rule without from admits every peer on its ports",
            target_ingress("[{ports: [{port: 53, protocol: UDP}]}]"),
            vec![
                allow("x/a", t, 53, UDP),
                allow("y/b", t, 53, UDP),
                allow("z/a", t, 53, UDP),
                deny("x/a", t, 80, TCP),
                deny("z/a", t, 80, TCP),
            ],
        ),
    ];
    run_cases(&mut node, cases);
}

#[test]
fn egress_rules_admit_exactly_the_peers_each_peer_kind_selects() {
    if !require_root("egress_rules_admit_exactly_the_peers_each_peer_kind_selects") {
        return;
    }
    let mut node = peers_lab();
    let except = host_cidr(&node, "x/target", Family::IPv4);
    let cidr = pod_cidr(&node, Family::IPv4);
    let egress = |rules: &str| {
        netpol(
            "x",
            "case",
            &format!("{{podSelector: {{matchLabels: {{app: a}}}}, policyTypes: [Egress], egress: {rules}}}"),
        )
    };
    let cases = vec![
        (
            "egress podSelector",
            egress("[{to: [{podSelector: {matchLabels: {app: target}}}]}]"),
            vec![
                allow("x/a", "x/target", 80, TCP),
                allow("x/a", "x/target", 53, UDP),
                deny("x/a", "x/b", 80, TCP),
                deny("x/a", "y/a", 53, UDP),
                // Not selected (other namespace): untouched.
                allow("y/a", "x/b", 80, TCP),
            ],
        ),
        (
            "egress namespaceSelector",
            egress("[{to: [{namespaceSelector: {matchLabels: {team: z}}}]}]"),
            vec![
                allow("x/a", "z/a", 80, TCP),
                allow("x/a", "z/a", 53, UDP),
                deny("x/a", "y/a", 80, TCP),
                deny("x/a", "x/target", 80, TCP),
            ],
        ),
        (
            "egress ipBlock with except",
            egress(&format!("[{{to: [{{ipBlock: {{cidr: '{cidr}', except: ['{except}']}}}}]}}]")),
            vec![
                allow("x/a", "x/b", 80, TCP),
                allow("x/a", "y/b", 53, UDP),
                deny("x/a", "x/target", 80, TCP),
                deny("x/a", "x/target", 53, UDP),
                allow("x/a", "x/target2", 80, TCP),
            ],
        ),
        (
            "egress endPort range and protocol",
            egress("[{ports: [{port: 82, endPort: 84, protocol: TCP}]}]"),
            vec![
                deny("x/a", "x/target", 80, TCP),
                deny("x/a", "x/target", 81, TCP),
                allow("x/a", "x/target", 82, TCP),
                allow("x/a", "x/target", 84, TCP),
                deny("x/a", "x/target", 53, UDP),
            ],
        ),
    ];
    run_cases(&mut node, cases);
}

// ---- 3. replies of an egress-isolated server ----

#[test]
fn egress_isolated_server_answers_allowed_tcp_and_udp_clients_but_opens_no_connections() {
    if !require_root("egress_isolated_server_answers_allowed_tcp_and_udp_clients_but_opens_no_connections") {
        return;
    }
    let mut node = lab(
        &[("x", &[])],
        &[
            pod("x", "server", &[("app", "server")], &[]),
            pod("x", "client", &[("app", "client")], &[]),
            pod("x", "other", &[("app", "other")], &[]),
        ],
    );
    let checks = vec![
        // Replies travel through the server's isolated egress on conntrack alone.
        allow("x/client", "x/server", 80, TCP),
        allow("x/client", "x/server", 53, UDP),
        deny("x/other", "x/server", 80, TCP),
        deny("x/other", "x/server", 53, UDP),
        // No egress rules: nothing new leaves the server.
        deny("x/server", "x/client", 80, TCP),
        deny("x/server", "x/client", 53, UDP),
        deny("x/server", "x/other", 80, TCP),
        deny("x/server", "x/other", 53, UDP),
    ];
    baseline(&node, &checks);
    apply(
        &mut node,
        &[netpol(
            "x",
            "server",
            "{podSelector: {matchLabels: {app: server}}, policyTypes: [Ingress, Egress], \
             ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]}",
        )],
    );
    let replies_before = reason_counter(&node, "reply");
    verify(&node, "server isolated both ways, ingress from client only", &checks);
    let replies = reason_counter(&node, "reply") - replies_before;
    assert!(replies > 0, "the allowed exchanges passed, so the datapath must have counted their replies as `reply`");
}

// ---- 4. established flows under churn, cut on revocation ----

const ECHO_PORT: u16 = 7000;

fn echo_policy(port: u16) -> Value {
    netpol(
        "x",
        "echo",
        &format!(
            "{{podSelector: {{matchLabels: {{app: server}}}}, policyTypes: [Ingress], \
             ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}], ports: [{{port: {port}}}]}}]}}"
        ),
    )
}

/// Unrelated policy number `i` (0..5) in `x`: selects `x/other` with a port that varies with
/// `version`, so every change really changes the maps.
fn churn_policy(i: usize, version: usize) -> Value {
    netpol(
        "x",
        &format!("churn-{i}"),
        &format!(
            "{{podSelector: {{matchLabels: {{app: other}}}}, \
             ingress: [{{from: [{{podSelector: {{matchLabels: {{app: v{version}}}}}}}], ports: [{{port: {}}}]}}], \
             egress: [{{ports: [{{port: {}, protocol: UDP}}]}}]}}",
            1000 + version,
            2000 + version
        ),
    )
}

#[test]
fn established_connection_survives_policy_churn_and_is_cut_when_its_rule_is_revoked() {
    if !require_root("established_connection_survives_policy_churn_and_is_cut_when_its_rule_is_revoked") {
        return;
    }
    let mut node = lab(
        &[("x", &[])],
        &[
            pod("x", "server", &[("app", "server")], &[]),
            pod("x", "client", &[("app", "client")], &[]),
            pod("x", "other", &[("app", "other")], &[]),
        ],
    );
    apply(&mut node, &[echo_policy(ECHO_PORT)]);
    let server_ip = node.pod_ip(&pref("x/server"), Family::IPv4).unwrap_or_else(|e| panic!("{e}"));
    let mut echo = {
        let server = node.pod(&pref("x/server")).unwrap_or_else(|e| panic!("{e}"));
        let client = node.pod(&pref("x/client")).unwrap_or_else(|e| panic!("{e}"));
        Echo::open(server.netns(), client.netns(), SocketAddr::new(server_ip, ECHO_PORT))
    };
    echo.exchange().unwrap_or_else(|e| panic!("the allowed connection before any churn: {e}"));

    let rev_before = policy_revision(&node);
    const CHURN: usize = 50;
    for op in 0..CHURN {
        let i = op % 5;
        match (op / 5) % 3 {
            0 => apply(&mut node, &[churn_policy(i, op)]),
            1 => apply(&mut node, &[churn_policy(i, op + 100)]),
            _ => delete_policy(&mut node, "x", &format!("churn-{i}")),
        }
        if op % 10 == 9 {
            echo.exchange().unwrap_or_else(|e| {
                panic!("the established connection after {} unrelated policy changes: {e}", op + 1)
            });
        }
    }
    let rev_after = policy_revision(&node);
    assert!(
        rev_after >= rev_before + CHURN as u64 / 2,
        "the churn must really change the maps (revision {rev_before} -> {rev_after}), or this test proves nothing"
    );
    verify(&node, "after churn the echo policy still isolates the server", &[deny("x/client", "x/server", 80, TCP)]);

    let revoked_before = reason_counter(&node, "policy_revoked");
    // Still isolated, but the rule now names another port: the flow is no longer allowed.
    apply(&mut node, &[echo_policy(ECHO_PORT + 1)]);
    let started = Instant::now();
    let result = echo.exchange();
    let took = started.elapsed();
    assert!(result.is_err(), "the connection's rule was revoked, yet it still exchanged data ({result:?})");
    assert!(took < Duration::from_millis(1500), "the revoked exchange must fail within ~1 s, took {took:?}");
    let revoked = reason_counter(&node, "policy_revoked") - revoked_before;
    assert!(revoked > 0, "the cut must be the revocation (`policy_revoked`), counted {revoked}; exchange: {result:?}");
}

// ---- 5. IPv6 ----

#[test]
fn ipv6_pods_get_the_same_allow_and_deny_including_ipv6_ip_blocks() {
    if !require_root("ipv6_pods_get_the_same_allow_and_deny_including_ipv6_ip_blocks") {
        return;
    }
    let mut node = lab(
        &[("x", &[("team", "x")]), ("y", &[("team", "y")])],
        &[
            pod("x", "target", &[("app", "target")], &[]),
            pod("x", "a", &[("app", "a")], &[]),
            pod("x", "b", &[("app", "b")], &[]),
            pod("y", "a", &[("app", "a")], &[]),
        ],
    );
    let t = "x/target";
    let cidr6 = pod_cidr(&node, Family::IPv6);
    let cidr4 = pod_cidr(&node, Family::IPv4);
    let except6 = host_cidr(&node, "x/b", Family::IPv6);
    let target6 = host_cidr(&node, t, Family::IPv6);
    let cases = vec![
        (
            "IPv6 default deny ingress",
            target_ingress("[]"),
            vec![v6(deny("x/a", t, 80, TCP)), v6(deny("y/a", t, 53, UDP)), v6(allow(t, "x/a", 80, TCP))],
        ),
        (
            "IPv6 podSelector",
            target_ingress("[{from: [{podSelector: {matchLabels: {app: a}}}]}]"),
            vec![
                v6(allow("x/a", t, 80, TCP)),
                v6(allow("x/a", t, 53, UDP)),
                v6(deny("x/b", t, 80, TCP)),
                v6(deny("y/a", t, 80, TCP)),
            ],
        ),
        (
            "IPv6 namespaceSelector and port",
            target_ingress(
                "[{from: [{namespaceSelector: {matchLabels: {team: y}}}], ports: [{port: 53, protocol: UDP}]}]",
            ),
            vec![v6(allow("y/a", t, 53, UDP)), v6(deny("y/a", t, 80, TCP)), v6(deny("x/a", t, 53, UDP))],
        ),
        (
            "ipBlock on the IPv6 pod CIDR with an except; covers no IPv4 address",
            target_ingress(&format!("[{{from: [{{ipBlock: {{cidr: '{cidr6}', except: ['{except6}']}}}}]}}]")),
            vec![
                v6(allow("x/a", t, 80, TCP)),
                v6(allow("y/a", t, 53, UDP)),
                v6(deny("x/b", t, 80, TCP)),
                v6(deny("x/b", t, 53, UDP)),
                deny("x/a", t, 80, TCP),
                deny("y/a", t, 53, UDP),
            ],
        ),
        (
            "an IPv4 ipBlock covers no IPv6 address",
            target_ingress(&format!("[{{from: [{{ipBlock: {{cidr: '{cidr4}'}}}}]}}]")),
            vec![allow("x/a", t, 80, TCP), v6(deny("x/a", t, 80, TCP)), v6(deny("y/a", t, 53, UDP))],
        ),
        (
            "egress to one IPv6 address",
            netpol(
                "x",
                "case",
                &format!(
                    "{{podSelector: {{matchLabels: {{app: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: '{target6}'}}}}]}}]}}"
                ),
            ),
            vec![
                v6(allow("x/a", t, 80, TCP)),
                v6(allow("x/a", t, 53, UDP)),
                v6(deny("x/a", "x/b", 80, TCP)),
                deny("x/a", t, 80, TCP),
                v6(allow("x/b", t, 80, TCP)),
            ],
        ),
    ];
    run_cases(&mut node, cases);
}

// ---- the node itself ----

#[test]
fn the_node_always_reaches_its_pods_even_when_they_deny_all_ingress() {
    if !require_root("the_node_always_reaches_its_pods_even_when_they_deny_all_ingress") {
        return;
    }
    let mut node = lock_lab();
    apply(&mut node, &[netpol("x", "lock", "{podSelector: {}, policyTypes: [Ingress, Egress]}")]);
    let from_node = |family: Family| {
        let ip = node.pod_ip(&pref("x/p"), family).unwrap_or_else(|e| panic!("{e}"));
        Probe {
            from_netns: node.netns().name().to_owned(),
            from_path: node.netns().path().to_owned(),
            to: SocketAddr::new(ip, 80),
            protocol: Protocol::Tcp,
            timeout: probe::DEFAULT_TIMEOUT,
            http: None,
        }
    };
    for family in [Family::IPv4, Family::IPv6] {
        let got = probe::probe(&from_node(family));
        assert_eq!(got, Outcome::Connected("p".into()), "node -> x/p over {family}: host traffic is always allowed");
    }
    verify(&node, "the pods themselves stay isolated", &[deny("y/p", "x/p", 80, TCP), deny("x/p", "y/p", 80, TCP)]);
}
