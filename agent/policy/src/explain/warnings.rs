//! Warnings `ward policy explain` gives about the policies that select the pods it explains:
//! mistakes that enforce as written but rarely as meant.
//!
//! * An `ipBlock` that covers pod or node addresses. ipBlock is for addresses outside the
//!   cluster: pod addresses come and go with the pods (a policy written for today's address
//!   admits whichever pod gets it tomorrow), and the node's addresses carry its own traffic.
//!   Checked against the addresses the cluster knows now.
//! * A rule shadowed by a broader one: every (peer, protocol, port) it allows at a subject,
//!   another rule of a policy selecting the same subject allows too, so removing it changes
//!   nothing and editing it does not do what its author expects. Decided by the reference
//!   evaluator on points that stand for every cell of the rules' peers and ports (see
//!   [`shadowed`]), so named ports, endPort ranges, ipBlock/except and selectors count as
//!   the spec says, for pods of any node. (The compiled map cannot say it: it keeps one rule
//!   per key, so a duplicated rule has no entries of its own there.)

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use ward_common::Direction;

use crate::cluster::{Cluster, PodKey, PolicyRef};
use crate::compile::RuleInfo;
use crate::reference::{self, Peer as End};
use crate::validate::{NamedPort, Peer, PortRef, Protocol, Rule};

/// Addresses named in a warning before "and N more".
const LISTED: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// `spec.<direction>[rule].<from|to>[peer].ipBlock` covers these pod and node addresses.
    IpBlockCoversCluster {
        policy: PolicyRef,
        direction: Direction,
        rule: usize,
        peer: usize,
        cidr: IpNet,
        pods: Vec<(PodKey, IpAddr)>,
        node: Vec<IpAddr>,
    },
    /// At `subject`, everything `rule` allows, `by` allows too.
    Shadowed { rule: RuleInfo, by: RuleInfo, subject: PodKey },
}

/// `spec.ingress[2]`: the field of a rule in the policy's manifest.
fn rule_field(dir: Direction, index: usize) -> String {
    format!("spec.{}[{index}]", dir.as_str())
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::IpBlockCoversCluster { policy, direction, rule, peer, cidr, pods, node } => {
                let peers = match direction {
                    Direction::Ingress => "from",
                    Direction::Egress => "to",
                };
                write!(
                    f,
                    "{policy} {} rule {rule}: {}.{peers}[{peer}].ipBlock {cidr} covers",
                    direction.as_str(),
                    rule_field(*direction, *rule)
                )?;
                let mut parts = Vec::new();
                if !pods.is_empty() {
                    let mut listed: Vec<String> = pods.iter().take(LISTED).map(|(k, ip)| format!("{k} {ip}")).collect();
                    if pods.len() > LISTED {
                        listed.push(format!("and {} more", pods.len() - LISTED));
                    }
                    parts.push(format!("pod addresses ({})", listed.join(", ")));
                }
                if !node.is_empty() {
                    let listed: Vec<String> = node.iter().map(ToString::to_string).collect();
                    parts.push(format!("node addresses ({})", listed.join(", ")));
                }
                write!(
                    f,
                    " {}: ipBlock is meant for addresses outside the cluster (pod addresses change hands as pods \
                     come and go; select pods with podSelector/namespaceSelector)",
                    parts.join(" and ")
                )
            }
            Warning::Shadowed { rule, by, subject } => write!(
                f,
                "{} {} rule {} ({}) is shadowed by {} {} rule {} ({}): at {subject} everything it allows, that rule \
                 allows too",
                rule.policy,
                rule.direction.as_str(),
                rule.index,
                rule_field(rule.direction, rule.index),
                by.policy,
                by.direction.as_str(),
                by.index,
                rule_field(by.direction, by.index),
            ),
        }
    }
}

/// The warnings about the policies selecting any of `pods`, in a stable order.
pub fn for_pods(cluster: &Cluster, pods: &[PodKey]) -> Vec<Warning> {
    let mut out = Vec::new();
    let policies: BTreeSet<&PolicyRef> =
        pods.iter().flat_map(|k| cluster.policies_selecting(k)).map(|(pref, _)| pref).collect();
    for pref in policies {
        if let Some(policy) = cluster.policies.get(pref) {
            for (dir, rules) in [(Direction::Ingress, &policy.ingress), (Direction::Egress, &policy.egress)] {
                for (index, rule) in rules.iter().flatten().enumerate() {
                    for (peer, spec) in rule.peers.iter().flatten().enumerate() {
                        if let Some(w) = ip_block(cluster, pref, dir, index, peer, spec) {
                            out.push(w);
                        }
                    }
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for pod in pods {
        if seen.insert(pod) {
            out.extend(shadowed(cluster, pod));
        }
    }
    out
}

fn ip_block(
    cluster: &Cluster,
    policy: &PolicyRef,
    direction: Direction,
    rule: usize,
    peer: usize,
    spec: &Peer,
) -> Option<Warning> {
    let Peer::IpBlock { cidr, .. } = spec else { return None };
    let pods: Vec<(PodKey, IpAddr)> = cluster
        .pods
        .iter()
        .flat_map(|(k, p)| p.ips.iter().map(move |ip| (k, *ip)))
        .filter(|(_, ip)| spec.block_contains(*ip))
        .map(|(k, ip)| (k.clone(), ip))
        .collect();
    let node: Vec<IpAddr> = cluster.host_addrs.iter().copied().filter(|ip| spec.block_contains(*ip)).collect();
    if pods.is_empty() && node.is_empty() {
        return None;
    }
    Some(Warning::IpBlockCoversCluster { policy: policy.clone(), direction, rule, peer, cidr: *cidr, pods, node })
}

/// One probe point of the allowed-set comparison: a peer, a protocol and a port.
type Point = (End, Protocol, u16);

/// The shadowed rules at `pod`, in both directions.
///
/// Allowed sets are compared on a finite set of points chosen so that every rule allows
/// either all or none of each cell they stand for: every pod (selectors), the node (egress:
/// ingress from the node is always allowed), one address at the start of each interval the
/// rules' ipBlock prefixes cut the address space into, and per protocol each port where a
/// rule's port set starts or ends (numbers, endPort ranges, resolved names). The reference
/// evaluator says which rules allow each point; a rule is shadowed by another when that one
/// allows every point it allows. Rules with HTTP or DNS rules on a port, or `fqdn` peers,
/// allow requests or learned addresses, not a fixed set: they are left out.
fn shadowed(cluster: &Cluster, pod: &PodKey) -> Vec<Warning> {
    let mut out = Vec::new();
    let selecting = cluster.policies_selecting(pod);
    for dir in [Direction::Ingress, Direction::Egress] {
        let mut rules: Vec<(RuleInfo, &Rule)> = Vec::new();
        for (pref, policy) in &selecting {
            let list = match dir {
                Direction::Ingress => &policy.ingress,
                Direction::Egress => &policy.egress,
            };
            for (index, rule) in list.iter().flatten().enumerate() {
                if comparable(rule) {
                    rules.push((RuleInfo { policy: (*pref).clone(), direction: dir, index }, rule));
                }
            }
        }
        if rules.len() < 2 {
            continue;
        }
        let subject = End::Pod(pod.clone());
        let mut allows: BTreeMap<(PolicyRef, usize), BTreeSet<usize>> = BTreeMap::new();
        for (i, (peer, proto, port)) in points(cluster, pod, dir, &rules).into_iter().enumerate() {
            let (from, to) = match dir {
                Direction::Ingress => (&peer, &subject),
                Direction::Egress => (&subject, &peer),
            };
            for key in reference::side(cluster, dir, from, to, proto, port).allowed_by {
                allows.entry(key).or_default().insert(i);
            }
        }
        let empty = BTreeSet::new();
        let set = |r: &RuleInfo| allows.get(&(r.policy.clone(), r.index)).unwrap_or(&empty);
        // A rule without ports also allows the protocols without ports (ICMP...), which no
        // point above stands for: only another rule without ports contains that.
        let contains = |outer: &(RuleInfo, &Rule), inner: &(RuleInfo, &Rule)| {
            (outer.1.ports.is_none() || inner.1.ports.is_some()) && set(&inner.0).is_subset(set(&outer.0))
        };
        for (i, inner) in rules.iter().enumerate() {
            if set(&inner.0).is_empty() {
                continue;
            }
            // Of two rules allowing exactly the same, the later one is reported (by the first).
            let by = rules
                .iter()
                .enumerate()
                .find(|(j, outer)| *j != i && contains(outer, inner) && (*j < i || !contains(inner, outer)));
            if let Some((_, (by, _))) = by {
                out.push(Warning::Shadowed { rule: inner.0.clone(), by: by.clone(), subject: pod.clone() });
            }
        }
    }
    out
}

/// Whether a rule's allowed set is fixed by the cluster (see [`shadowed`]).
fn comparable(rule: &Rule) -> bool {
    !rule.peers.iter().flatten().any(|p| matches!(p, Peer::Fqdn(_)))
        && !rule.ports.iter().flatten().any(|p| p.http.is_some() || p.dns.is_some())
}

/// The points [`shadowed`] compares allowed sets on.
fn points(cluster: &Cluster, subject: &PodKey, dir: Direction, rules: &[(RuleInfo, &Rule)]) -> Vec<Point> {
    let mut peers: Vec<End> = cluster.pods.keys().cloned().map(End::Pod).collect();
    if dir == Direction::Egress {
        peers.push(End::Host);
    }
    let mut starts: BTreeSet<IpAddr> = BTreeSet::from([IpAddr::from([0u8; 4]), IpAddr::from([0u16; 8])]);
    let mut ports: BTreeMap<Protocol, BTreeSet<u16>> = BTreeMap::new();
    for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        ports.insert(proto, BTreeSet::from([0]));
    }
    // Named ports resolve on the destination: the subject on ingress, any pod on egress.
    let named: Vec<&NamedPort> = match dir {
        Direction::Ingress => cluster.pods.get(subject).map(|p| p.ports.iter().collect()).unwrap_or_default(),
        Direction::Egress => cluster.pods.values().flat_map(|p| &p.ports).collect(),
    };
    for (_, rule) in rules {
        for peer in rule.peers.iter().flatten() {
            if let Peer::IpBlock { cidr, except } = peer {
                for net in std::iter::once(cidr).chain(except) {
                    starts.insert(net.network());
                    if let Some(after) = next_addr(net.broadcast()) {
                        starts.insert(after);
                    }
                }
            }
        }
        for spec in rule.ports.iter().flatten() {
            let cut = ports.entry(spec.protocol).or_default();
            let mut range = |first: u16, last: u16| {
                cut.insert(first);
                if let Some(after) = last.checked_add(1) {
                    cut.insert(after);
                }
            };
            match &spec.port {
                PortRef::Any => {}
                PortRef::Number(first) => range(*first, spec.end_port.unwrap_or(*first)),
                PortRef::Named(name) => {
                    for np in named.iter().filter(|np| np.name == *name && np.protocol == spec.protocol) {
                        range(np.port, np.port);
                    }
                }
            }
        }
    }
    peers.extend(starts.into_iter().map(End::External));
    let mut out = Vec::new();
    for peer in &peers {
        for (proto, cuts) in &ports {
            out.extend(cuts.iter().map(|port| (peer.clone(), *proto, *port)));
        }
    }
    out
}

/// The address after `a`, `None` past the last one.
fn next_addr(a: IpAddr) -> Option<IpAddr> {
    match a {
        IpAddr::V4(v) => u32::from(v).checked_add(1).map(|n| IpAddr::from(std::net::Ipv4Addr::from(n))),
        IpAddr::V6(v) => u128::from(v).checked_add(1).map(|n| IpAddr::from(std::net::Ipv6Addr::from(n))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::explain;
    use crate::identity::Identities;
    use crate::reference::Peer as End;
    use crate::testkit::{apply, compile_all, lab, pod};
    use crate::validate::Protocol;

    fn warnings(policies: &str, pods: &[&str]) -> Vec<String> {
        let mut c = lab();
        apply(&mut c, policies);
        let keys: Vec<PodKey> = pods.iter().map(|p| pod(p)).collect();
        for_pods(&c, &keys).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_ip_block_over_pod_or_node_addresses_is_named_with_its_field() {
        let mut c = lab();
        let pod_ip = c.pods.get(&pod("x/b")).and_then(|p| p.ips.first().copied()).expect("x/b has an address");
        c.host_addrs = vec!["10.255.0.1".parse().expect("ip")];
        apply(
            &mut c,
            &format!(
                r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: by-address, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  egress:
    - to: [{{ipBlock: {{cidr: 192.0.2.0/24}}}}, {{ipBlock: {{cidr: {pod_ip}/32}}}}]
    - to: [{{ipBlock: {{cidr: 10.255.0.0/16}}}}]
"#
            ),
        );
        let compiled = compile_all(&c, &mut Identities::new());
        let w: Vec<String> = for_pods(&c, &[pod("x/a")]).iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].starts_with(&format!(
                "x/by-address egress rule 0: spec.egress[0].to[1].ipBlock {pod_ip}/32 covers pod addresses (x/b \
                 {pod_ip}): ipBlock is meant for addresses outside the cluster"
            )),
            "{w:#?}"
        );
        assert!(
            w[1].starts_with(
                "x/by-address egress rule 1: spec.egress[1].to[0].ipBlock 10.255.0.0/16 covers node addresses \
                 (10.255.0.1)"
            ),
            "{w:#?}"
        );
        // The outside-only block is fine; a pod no policy selects gets no warning.
        assert!(w.iter().all(|l| !l.contains("192.0.2.0/24")), "{w:#?}");
        assert!(for_pods(&c, &[pod("y/a")]).is_empty());
        // Explain shows them.
        let e = explain(&c, &compiled, End::Pod(pod("x/a")), End::Pod(pod("x/b")), Protocol::Tcp, 80);
        assert!(e.to_string().contains("\n  WARNING: x/by-address egress rule 0: spec.egress[0].to[1].ipBlock"), "{e}");
    }

    #[test]
    fn an_except_that_removes_every_pod_address_leaves_no_warning() {
        let w = warnings(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: outside, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]
"#,
            &["x/a"],
        );
        assert!(w.is_empty(), "the lab's pods are in 10.0.0.0/8: {w:#?}");
    }

    #[test]
    fn a_rule_inside_another_rule_of_a_policy_selecting_the_same_pod_is_shadowed() {
        let w = warnings(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: narrow, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: a}}}]
      ports: [{port: 80}]
    - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
      ports: [{port: 81, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broad, namespace: x}
spec:
  podSelector: {}
  ingress:
    - from: [{podSelector: {}}]
      ports: [{port: 80, endPort: 90}]
"#,
            &["x/b"],
        );
        assert_eq!(
            w,
            [
                "x/narrow ingress rule 0 (spec.ingress[0]) is shadowed by x/broad ingress rule 0 (spec.ingress[0]): at x/b \
              everything it allows, that rule allows too"
            ],
            "rule 1 (namespace y, UDP) is not inside broad's rule (own namespace, TCP)"
        );
    }

    #[test]
    fn of_two_equal_rules_only_the_later_is_shadowed_and_a_wider_port_is_not() {
        let w = warnings(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: a}}}]
      ports: [{port: 80}]
    - from: [{podSelector: {matchLabels: {pod: a}}}]
      ports: [{port: 80}]
    - from: [{podSelector: {matchLabels: {pod: a}}}]
      ports: [{port: 80, endPort: 81}]
    - from: [{podSelector: {matchLabels: {pod: c}}}]
"#,
            &["x/b"],
        );
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(w[0].starts_with("x/p ingress rule 0 (spec.ingress[0]) is shadowed by x/p ingress rule 2"), "{w:#?}");
        assert!(w[1].starts_with("x/p ingress rule 1 (spec.ingress[1]) is shadowed by x/p ingress rule 0"), "{w:#?}");
        // A rule open to everyone shadows every rule of the same ports, never the reverse.
        let w = warnings(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: a}}}, {ipBlock: {cidr: 192.0.2.0/24}}]
    - {}
"#,
            &["x/b"],
        );
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].starts_with("x/p ingress rule 0 (spec.ingress[0]) is shadowed by x/p ingress rule 1"), "{w:#?}");
    }
}
