//! A NetworkPolicy evaluator written to read like the spec, independent of the compiler.
//!
//! It answers "is this connection allowed?" straight from the validated cluster, with no
//! identities, maps or prefixes. The property tests hold the compiled maps (run through the
//! kernel's lookup order) to it, and `explain` uses it for pods this node does not police.
//!
//! The spec, as implemented here:
//! * A pod is isolated for a direction when some policy in its namespace selects it
//!   (`podSelector`) and has that direction (`ingress`/`egress` is `Some`). A pod that is not
//!   isolated allows everything in that direction.
//! * An isolated pod allows a connection when at least one rule of one selecting policy of
//!   that direction allows it (the union of all such rules).
//! * A rule allows when one of its peers matches the other end (no peers: everyone) and one
//!   of its ports matches (no ports: every protocol and port).
//! * A pod peer matches pods in the namespaces its `namespaceSelector` selects (absent: the
//!   policy's own namespace) that its `podSelector` selects (absent: all of them): both must
//!   hold. An ipBlock peer matches an address in `cidr` and in no `except`, including pod and
//!   node addresses.
//! * A port matches by protocol and number, by range (`port..=endPort`), or by name: the
//!   destination pod must have a container port of that name and the rule's protocol, with
//!   that number. Containers of one pod may share a name; the name then matches each of
//!   their ports.
//! * A connection needs the egress side at the source (if a pod) and the ingress side at the
//!   destination (if a pod). Connections from the node to a pod are always allowed.
//! * A `WardNetworkPolicy` port with `http` rules allows no connection as such: it admits
//!   the requests its rules match ([`Side::http_by`]). A rule that allows the same peer and
//!   port without `http` allows every request (the union), which makes those rules moot.
//!
//! An end with several addresses (a dual-stack pod, the node) matches an ipBlock when any of
//! its addresses does. A pod key not in the cluster is a pod no policy selects and no
//! selector matches.

use std::fmt;
use std::net::IpAddr;

use ward_common::Direction;

use crate::cluster::{Cluster, PodKey, PolicyRef};
use crate::validate::{self, NamedPort, Policy, Protocol, Rule};

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Pod(PodKey),
    /// The node the pods run on (its addresses are `Cluster::host_addrs`).
    Host,
    /// An address outside the cluster.
    External(IpAddr),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pod(k) => write!(f, "{k}"),
            Peer::Host => f.write_str("the node"),
            Peer::External(ip) => write!(f, "{ip}"),
        }
    }
}

/// Whether a connection from `from` to `to` on `proto`/`port` is allowed.
pub fn allowed(cluster: &Cluster, from: Peer, to: Peer, proto: Protocol, port: u16) -> bool {
    side(cluster, Direction::Egress, &from, &to, proto, port).allowed
        && side(cluster, Direction::Ingress, &from, &to, proto, port).allowed
}

/// The verdict of one side of a connection: egress at the source, or ingress at the
/// destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// The pod this side is about; `None` when that end is not a pod (nothing to police).
    pub subject: Option<PodKey>,
    /// Policies that select the subject and have this direction.
    pub selected_by: Vec<PolicyRef>,
    /// Ingress from the node: always allowed.
    pub from_host: bool,
    /// Every rule that allows the connection, as (policy, rule index).
    pub allowed_by: Vec<(PolicyRef, usize)>,
    /// Every port entry with HTTP rules that matches the connection, as (policy, rule index,
    /// port index): their requests are admitted, when `allowed` is false.
    pub http_by: Vec<(PolicyRef, usize, usize)>,
    pub allowed: bool,
}

impl Side {
    pub fn isolated(&self) -> bool {
        !self.selected_by.is_empty()
    }
}

/// Evaluates one side. For `Egress` the subject is `from` and the peer `to`; for `Ingress`
/// the subject is `to` and the peer `from`.
pub fn side(cluster: &Cluster, dir: Direction, from: &Peer, to: &Peer, proto: Protocol, port: u16) -> Side {
    let (subject, peer) = match dir {
        Direction::Egress => (from, to),
        Direction::Ingress => (to, from),
    };
    let mut out = Side {
        subject: None,
        selected_by: vec![],
        from_host: false,
        allowed_by: vec![],
        http_by: vec![],
        allowed: true,
    };
    let Peer::Pod(subject) = subject else {
        return out;
    };
    out.subject = Some(subject.clone());
    if dir == Direction::Ingress && *peer == Peer::Host {
        out.from_host = true;
        return out;
    }
    // Named ports are looked up on the destination, whichever side is asking.
    let destination_ports = match to {
        Peer::Pod(k) => cluster.pods.get(k).map_or(&[][..], |p| p.ports.as_slice()),
        Peer::Host | Peer::External(_) => &[],
    };
    for (pref, policy) in cluster.policies_selecting(subject) {
        let rules = match dir {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        let Some(rules) = rules else { continue };
        out.selected_by.push(pref.clone());
        for (index, rule) in rules.iter().enumerate() {
            if rule_allows(cluster, policy, rule, peer, proto, port, destination_ports) {
                out.allowed_by.push((pref.clone(), index));
            }
            for port_index in http_ports(cluster, policy, rule, peer, proto, port, destination_ports) {
                out.http_by.push((pref.clone(), index, port_index));
            }
        }
    }
    out.allowed = out.selected_by.is_empty() || !out.allowed_by.is_empty();
    out
}

fn rule_allows(
    cluster: &Cluster,
    policy: &Policy,
    rule: &Rule,
    peer: &Peer,
    proto: Protocol,
    port: u16,
    destination_ports: &[NamedPort],
) -> bool {
    let peer_ok = peers_match(cluster, policy, rule, peer);
    let port_ok = match &rule.ports {
        None => true,
        Some(ports) => ports.iter().any(|p| p.matches(proto, port, destination_ports)),
    };
    peer_ok && port_ok
}

/// The ports of `rule` with HTTP rules that match the connection (none unless its peers do).
fn http_ports(
    cluster: &Cluster,
    policy: &Policy,
    rule: &Rule,
    peer: &Peer,
    proto: Protocol,
    port: u16,
    destination_ports: &[NamedPort],
) -> Vec<usize> {
    let Some(ports) = &rule.ports else { return vec![] };
    if !peers_match(cluster, policy, rule, peer) {
        return vec![];
    }
    ports
        .iter()
        .enumerate()
        .filter(|(_, p)| p.http.is_some() && p.matches_l4(proto, port, destination_ports))
        .map(|(i, _)| i)
        .collect()
}

/// Whether the rule's peers (none: everyone) include `peer`.
fn peers_match(cluster: &Cluster, policy: &Policy, rule: &Rule, peer: &Peer) -> bool {
    match &rule.peers {
        None => true,
        Some(peers) => peers.iter().any(|p| peer_matches(cluster, policy, p, peer)),
    }
}

fn peer_matches(cluster: &Cluster, policy: &Policy, spec: &validate::Peer, peer: &Peer) -> bool {
    match spec {
        validate::Peer::Pods { namespace_selector, pod_selector } => {
            let Peer::Pod(key) = peer else { return false };
            let Some(pod) = cluster.pods.get(key) else { return false };
            let namespace_ok = match namespace_selector {
                None => key.namespace == policy.namespace,
                Some(s) => s.matches(&cluster.namespace_labels(&key.namespace)),
            };
            let pod_ok = match pod_selector {
                None => true,
                Some(s) => s.matches(&pod.labels),
            };
            namespace_ok && pod_ok
        }
        validate::Peer::IpBlock { .. } => addresses(cluster, peer).iter().any(|a| spec.block_contains(*a)),
        // Learned addresses are not part of the cluster state this evaluator reads.
        validate::Peer::Fqdn(_) => false,
    }
}

/// The addresses of one end.
pub fn addresses(cluster: &Cluster, peer: &Peer) -> Vec<IpAddr> {
    match peer {
        Peer::Pod(k) => cluster.pods.get(k).map(|p| p.ips.clone()).unwrap_or_default(),
        Peer::Host => cluster.host_addrs.clone(),
        Peer::External(ip) => vec![*ip],
    }
}
