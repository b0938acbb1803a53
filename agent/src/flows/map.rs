//! The workload graph behind `ward map`: flow records folded into nodes (workloads, grouped
//! by namespace, and addresses outside the cluster) and edges (from, to, port, protocol) with
//! their connection counts per verdict, the policies that decided them and the newest flows.
//! Pure and deterministic: the same records give the same graph, in the same order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ward_common::identity::{ID_HOST, ID_WORLD};

use super::record::{Endpoint, Flow, FlowTime, FlowVerdict, TrafficDirection};

/// Newest flows kept per edge.
pub const RECENT: usize = 5;

/// What a node stands for. Workloads sort before addresses outside the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeKind {
    Workload,
    /// The world, the node itself, or an address the cluster does not know as a pod.
    External,
}

/// One node of the graph: a workload in its namespace, or an outside identity (`namespace`
/// empty, `name` `world`, `host` or the address).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    pub kind: NodeKind,
    pub namespace: String,
    pub name: String,
}

impl NodeId {
    /// `namespace/name` for a workload, the name alone outside the cluster.
    pub fn label(&self) -> String {
        match self.kind {
            NodeKind::Workload => format!("{}/{}", self.namespace, self.name),
            NodeKind::External => self.name.clone(),
        }
    }
}

/// The workload a pod belongs to. The flow record carries the pod's labels, not its owner
/// references, so the owner's name is read back from the name the controller gave the pod,
/// where a label says which controller that was; any other pod is its own workload.
pub fn workload_of(pod_name: &str, labels: &[String]) -> String {
    let label = |key: &str| labels.iter().find_map(|l| l.strip_prefix(key)?.strip_prefix('='));
    // A Deployment's pod: `<deployment>-<pod-template-hash>-<5 chars>`.
    if let Some(hash) = label("pod-template-hash")
        && let Some((head, _)) = pod_name.rsplit_once('-')
        && let Some(name) = head.strip_suffix(hash).and_then(|h| h.strip_suffix('-'))
        && !name.is_empty()
    {
        return name.to_owned();
    }
    // A Job's pod carries the job's name.
    if let Some(job) = label("job-name")
        && !job.is_empty()
    {
        return job.to_owned();
    }
    // A StatefulSet's pod: `<statefulset>-<ordinal>`.
    if label("statefulset.kubernetes.io/pod-name") == Some(pod_name)
        && let Some((name, ordinal)) = pod_name.rsplit_once('-')
        && !name.is_empty()
        && !ordinal.is_empty()
        && ordinal.bytes().all(|b| b.is_ascii_digit())
    {
        return name.to_owned();
    }
    // A DaemonSet's pod: `<daemonset>-<5 chars>`.
    if label("pod-template-generation").is_some()
        && let Some((name, _)) = pod_name.rsplit_once('-')
        && !name.is_empty()
    {
        return name.to_owned();
    }
    pod_name.to_owned()
}

/// The node one end of a flow belongs to.
pub fn node_of(end: &Endpoint, ip: IpAddr) -> NodeId {
    if end.is_pod() {
        return NodeId {
            kind: NodeKind::Workload,
            namespace: end.namespace.clone(),
            name: workload_of(&end.pod_name, &end.labels),
        };
    }
    let name = match end.identity {
        ID_WORLD => "world".to_owned(),
        ID_HOST => "host".to_owned(),
        _ => ip.to_string(),
    };
    NodeId { kind: NodeKind::External, namespace: String::new(), name }
}

/// One flow record on an edge, as the map shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recent {
    pub time: FlowTime,
    pub verdict: FlowVerdict,
    pub direction: TrafficDirection,
    pub reason: String,
}

/// How an edge is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeClass {
    /// Every connection went through.
    Forwarded,
    /// Every connection was dropped.
    Dropped,
    /// Some of each.
    Mixed,
}

impl EdgeClass {
    pub const fn as_str(self) -> &'static str {
        match self {
            EdgeClass::Forwarded => "forwarded",
            EdgeClass::Dropped => "dropped",
            EdgeClass::Mixed => "mixed",
        }
    }
}

/// Traffic from one node to another on one port and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub from: NodeId,
    pub to: NodeId,
    /// The destination port; 0 for protocols without ports.
    pub port: u16,
    pub protocol: String,
    /// Connections (distinct source address, port and destination) by their verdict.
    pub connections: BTreeMap<FlowVerdict, u64>,
    /// Policies that allowed some of them (`namespace/name`, with kind and rule).
    pub allowed_by: BTreeSet<String>,
    /// Policies that isolated the destination or source of a dropped one.
    pub denied_by: BTreeSet<String>,
    /// The newest flow records, newest first, at most [`RECENT`].
    pub recent: Vec<Recent>,
}

impl Edge {
    pub fn total(&self) -> u64 {
        self.connections.values().sum()
    }

    pub fn count(&self, v: FlowVerdict) -> u64 {
        self.connections.get(&v).copied().unwrap_or(0)
    }

    pub fn class(&self) -> EdgeClass {
        let denied = self.count(FlowVerdict::Dropped) + self.count(FlowVerdict::Error);
        if denied == 0 {
            EdgeClass::Forwarded
        } else if denied == self.total() {
            EdgeClass::Dropped
        } else {
            EdgeClass::Mixed
        }
    }

    /// `port/protocol`, or the protocol alone when it has no ports.
    pub fn service(&self) -> String {
        if self.port == 0 { self.protocol.clone() } else { format!("{}/{}", self.port, self.protocol) }
    }
}

/// The graph: nodes in order (workloads by namespace and name, then outside addresses), and
/// edges in order of their ends, port and protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    pub nodes: Vec<NodeId>,
    pub edges: Vec<Edge>,
}

impl Graph {
    /// The nodes grouped by namespace (the outside addresses last, under `""`), in order.
    pub fn groups(&self) -> Vec<(&str, Vec<&NodeId>)> {
        let mut out: Vec<(&str, Vec<&NodeId>)> = Vec::new();
        for n in &self.nodes {
            match out.last_mut() {
                Some((ns, members)) if *ns == n.namespace => members.push(n),
                _ => out.push((&n.namespace, vec![n])),
            }
        }
        out
    }
}

/// An edge: from, to, destination port, protocol.
type EdgeKey = (NodeId, NodeId, u16, &'static str);

/// A connection on an edge: its edge (records to one multicast address can reach different
/// pods) and its source and destination addresses and source port.
type ConnKey = (EdgeKey, IpAddr, u16, IpAddr);

/// Verdicts a connection can end with, worst last: a connection one end's policy dropped is
/// dropped even if the other end's let it out.
fn rank(v: FlowVerdict) -> u8 {
    match v {
        FlowVerdict::Forwarded => 0,
        FlowVerdict::Audit => 1,
        FlowVerdict::Error => 2,
        FlowVerdict::Dropped => 3,
    }
}

/// Folds flow records into the graph. Replies are left out (they belong to the connection
/// their request opened, drawn from its client); the egress and ingress records of one
/// connection, and its retransmissions, count as one connection with the worst verdict.
pub fn build(flows: &[Flow]) -> Graph {
    let mut edges: BTreeMap<EdgeKey, Edge> = BTreeMap::new();
    let mut conns: BTreeMap<ConnKey, FlowVerdict> = BTreeMap::new();
    let mut nodes = BTreeSet::new();
    for f in flows.iter().filter(|f| !f.is_reply) {
        let (proto, sport, dport) = f.l4.parts();
        let from = node_of(&f.source, f.ip.source);
        let to = node_of(&f.destination, f.ip.destination);
        nodes.insert(from.clone());
        nodes.insert(to.clone());
        let key = (from.clone(), to.clone(), dport, proto);
        let edge = edges.entry(key.clone()).or_insert_with(|| Edge {
            from,
            to,
            port: dport,
            protocol: proto.to_owned(),
            connections: BTreeMap::new(),
            allowed_by: BTreeSet::new(),
            denied_by: BTreeSet::new(),
            recent: Vec::new(),
        });
        edge.allowed_by.extend(f.ingress_allowed_by.iter().chain(&f.egress_allowed_by).map(ToString::to_string));
        if matches!(f.verdict, FlowVerdict::Dropped | FlowVerdict::Error) {
            edge.denied_by.extend(f.ingress_denied_by.iter().chain(&f.egress_denied_by).map(ToString::to_string));
        }
        edge.recent.push(Recent {
            time: f.time,
            verdict: f.verdict,
            direction: f.traffic_direction,
            reason: f.reason.clone(),
        });
        let seen = conns.entry((key, f.ip.source, sport, f.ip.destination)).or_insert(f.verdict);
        if rank(f.verdict) > rank(*seen) {
            *seen = f.verdict;
        }
    }
    for ((key, ..), verdict) in conns {
        if let Some(e) = edges.get_mut(&key) {
            *e.connections.entry(verdict).or_insert(0) += 1;
        }
    }
    let mut edges: Vec<Edge> = edges.into_values().collect();
    for e in &mut edges {
        // Newest first; equal times keep their record order, so the result is stable.
        e.recent.sort_by(|a, b| b.time.cmp(&a.time));
        e.recent.truncate(RECENT);
    }
    Graph { nodes: nodes.into_iter().collect(), edges }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flows::filter::tests::{attribution, flow};
    use crate::flows::record::{FlowVerdict::*, TrafficDirection::*};

    /// api -> db allowed (egress and ingress records of one connection, and a reply), a
    /// second api connection dropped, a stranger dropped, web (a Deployment's pod) out to the
    /// world, and a pod in another namespace.
    pub(crate) fn sample() -> Vec<Flow> {
        let mut out = Vec::new();
        let mut ok = flow("shop/api", "shop/db", 5432, Forwarded, Ingress);
        ok.ingress_allowed_by.push(attribution("shop", "db-from-api", "NetworkPolicy", Some(0)));
        let mut ok_egress = ok.clone();
        ok_egress.traffic_direction = Egress;
        ok_egress.ingress_allowed_by.clear();
        let mut reply = flow("shop/db", "shop/api", 40000, Forwarded, Egress);
        reply.is_reply = true;
        let mut again = flow("shop/api", "shop/db", 5432, Dropped, Ingress);
        again.l4 = crate::flows::record::L4::Tcp(crate::flows::record::Tcp {
            source_port: 40001,
            destination_port: 5432,
            flags: Default::default(),
        });
        again.time.0 += 5;
        again.reason = "policy_denied".into();
        again.ingress_denied_by.push(attribution("shop", "db-from-api", "NetworkPolicy", None));
        let mut stranger = flow("shop/stranger", "shop/db", 5432, Dropped, Ingress);
        stranger.ip.source = "10.1.0.9".parse().expect("address");
        stranger.reason = "policy_denied".into();
        stranger.ingress_denied_by.push(attribution("shop", "db-from-api", "NetworkPolicy", None));
        let mut web = flow("shop/web-7c9f8d6b5-x2x9q", "192.0.2.7", 443, Forwarded, Egress);
        web.source.labels.push("pod-template-hash=7c9f8d6b5".into());
        web.destination.identity = ID_WORLD;
        let mut web2 = web.clone();
        web2.source.pod_name = "web-7c9f8d6b5-abcde".into();
        web2.ip.source = "10.1.0.3".parse().expect("address");
        let other = flow("billing/worker", "shop/db", 5432, Forwarded, Ingress);
        let mut other = other;
        other.ip.source = "10.1.0.4".parse().expect("address");
        out.extend([ok, ok_egress, reply, again, stranger, web, web2, other]);
        out
    }

    fn node(ns: &str, name: &str) -> NodeId {
        let kind = if ns.is_empty() { NodeKind::External } else { NodeKind::Workload };
        NodeId { kind, namespace: ns.into(), name: name.into() }
    }

    #[test]
    fn connections_count_once_per_verdict_with_their_deciding_policies() {
        let g = build(&sample());
        let names: Vec<String> = g.nodes.iter().map(NodeId::label).collect();
        assert_eq!(names, ["billing/worker", "shop/api", "shop/db", "shop/stranger", "shop/web", "world"]);
        let ends: Vec<(String, String, String)> =
            g.edges.iter().map(|e| (e.from.label(), e.to.label(), e.service())).collect();
        assert_eq!(
            ends,
            [
                ("billing/worker".into(), "shop/db".into(), "5432/TCP".into()),
                ("shop/api".into(), "shop/db".into(), "5432/TCP".into()),
                ("shop/stranger".into(), "shop/db".into(), "5432/TCP".into()),
                ("shop/web".into(), "world".into(), "443/TCP".into()),
            ],
            "no edge for the reply; web's two pods are one workload"
        );
        let api = &g.edges[1];
        assert_eq!(
            (api.count(Forwarded), api.count(Dropped), api.total()),
            (1, 1, 2),
            "egress + ingress of one connection count once"
        );
        assert_eq!(api.class(), EdgeClass::Mixed);
        assert_eq!(api.allowed_by.iter().collect::<Vec<_>>(), ["shop/db-from-api rule 0"]);
        assert_eq!(api.denied_by.iter().collect::<Vec<_>>(), ["shop/db-from-api"]);
        assert_eq!(api.recent.len(), 3);
        assert_eq!(api.recent[0].verdict, Dropped, "newest first");
        let stranger = &g.edges[2];
        assert_eq!((stranger.class(), stranger.total()), (EdgeClass::Dropped, 1));
        assert!(stranger.allowed_by.is_empty());
        let web = &g.edges[3];
        assert_eq!((web.class(), web.count(Forwarded)), (EdgeClass::Forwarded, 2), "two pods, two connections");
        assert!(web.denied_by.is_empty() && web.allowed_by.is_empty());
        let groups: Vec<(&str, usize)> = g.groups().iter().map(|(ns, m)| (*ns, m.len())).collect();
        assert_eq!(groups, [("billing", 1), ("shop", 4), ("", 1)]);
    }

    #[test]
    fn one_address_reaching_two_pods_counts_on_both_edges() {
        // Neighbour discovery to a multicast address: one source address, one destination
        // address, delivered to two pods.
        let mut to_db = flow("fe80::1", "shop/db", 0, Forwarded, Ingress);
        to_db.source.identity = ID_WORLD;
        to_db.l4 = crate::flows::record::L4::Icmpv6(Default::default());
        to_db.ip.source = "fe80::1".parse().expect("address");
        to_db.ip.destination = "ff02::1".parse().expect("address");
        let mut to_api = to_db.clone();
        to_api.destination.pod_name = "api".into();
        let g = build(&[to_db, to_api]);
        let got: Vec<(String, u64)> = g.edges.iter().map(|e| (e.to.label(), e.total())).collect();
        assert_eq!(got, [("shop/api".to_owned(), 1), ("shop/db".to_owned(), 1)]);
    }

    #[test]
    fn recent_flows_are_bounded_and_the_order_does_not_depend_on_input_order() {
        let mut many = Vec::new();
        for i in 0..(RECENT as u16 + 4) {
            let mut f = flow("shop/api", "shop/db", 5432, Forwarded, Ingress);
            f.time.0 += i128::from(i);
            f.l4 = crate::flows::record::L4::Tcp(crate::flows::record::Tcp {
                source_port: 40000 + i,
                destination_port: 5432,
                flags: Default::default(),
            });
            many.push(f);
        }
        let g = build(&many);
        assert_eq!(g.edges[0].total(), u64::from(RECENT as u16 + 4));
        assert_eq!(g.edges[0].recent.len(), RECENT);
        assert_eq!(g.edges[0].recent[0].time, many[many.len() - 1].time);
        let mut s = sample();
        let forward = build(&s);
        s.reverse();
        let backward = build(&s);
        assert_eq!(forward.nodes, backward.nodes);
        let key = |g: &Graph| g.edges.iter().map(|e| (e.from.clone(), e.to.clone(), e.total())).collect::<Vec<_>>();
        assert_eq!(key(&forward), key(&backward));
    }

    #[test]
    fn outside_addresses_are_world_host_or_the_address_and_pods_find_their_workload() {
        let ip: IpAddr = "192.0.2.9".parse().expect("address");
        let end = |identity| Endpoint { identity, ..Endpoint::default() };
        assert_eq!(node_of(&end(ID_WORLD), ip), node("", "world"));
        assert_eq!(node_of(&end(ID_HOST), ip), node("", "host"));
        assert_eq!(node_of(&end(16_777_217), ip), node("", "192.0.2.9"));
        let l = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(workload_of("web-7c9f8d6b5-x2x9q", &l(&["app=web", "pod-template-hash=7c9f8d6b5"])), "web");
        assert_eq!(workload_of("web-x2x9q", &l(&["pod-template-hash=7c9f8d6b5"])), "web-x2x9q", "hash not in name");
        assert_eq!(workload_of("pg-2", &l(&["statefulset.kubernetes.io/pod-name=pg-2"])), "pg");
        assert_eq!(workload_of("agent-k8x2p", &l(&["pod-template-generation=3"])), "agent");
        assert_eq!(workload_of("backup-28374-abcde", &l(&["job-name=backup-28374"])), "backup-28374");
        assert_eq!(workload_of("db", &l(&["app=db"])), "db");
    }
}
