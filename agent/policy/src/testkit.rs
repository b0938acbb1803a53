//! Test fixtures: the conformance suite's 9-pod lab, manifest loading, and the datapath's
//! verdict (the kernel's lookup order on the compiled maps) beside the reference's.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ward_common::Direction;
use ward_common::lookup::Decision;

use crate::cluster::{Cluster, PodKey};
use crate::compile::{Compiled, compile};
use crate::identity::Identities;
use crate::model::parse_documents;
use crate::reference::{self, Peer};
use crate::selector::Labels;
use crate::tables::CompiledTables;
use crate::validate::{NamedPort, PodInfo, Protocol};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const LETTERS: [&str; 3] = ["a", "b", "c"];
pub const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 1);

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn pod(s: &str) -> PodKey {
    let (ns, name) = s.split_once('/').expect("test pod names are ns/name");
    PodKey::new(ns, name)
}

/// Pod `x/a` at 10.0.1.1, `y/b` at 10.0.2.2 and so on; all in one /4 (0.0.0.0/4).
pub fn lab_ip(ns: usize, letter: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, ns as u8 + 1, letter as u8 + 1)
}

/// The conformance lab: namespaces x, y, z labelled `ns: <name>`; pods a, b, c labelled
/// `pod: <letter>`, each serving TCP and UDP on 80 and 81 under `serve-<port>-<proto>`.
pub fn lab() -> Cluster {
    let mut c = Cluster::new();
    for (ni, ns) in NAMESPACES.iter().enumerate() {
        c.set_namespace(ns, labels(&[("ns", ns)]));
        for (li, letter) in LETTERS.iter().enumerate() {
            let mut ports = Vec::new();
            for port in [80u16, 81] {
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    let name = format!("serve-{port}-{}", protocol.as_str().to_lowercase());
                    ports.push(NamedPort { name, protocol, port });
                }
            }
            ports.sort();
            let info = PodInfo { labels: labels(&[("pod", letter)]), ports, ips: vec![IpAddr::V4(lab_ip(ni, li))] };
            c.pods.insert(PodKey::new(*ns, *letter), info);
        }
    }
    c.host_addrs = vec![IpAddr::V4(HOST)];
    c
}

/// Applies every object of a manifest; panics on any error, naming it.
pub fn apply(c: &mut Cluster, yaml: &str) {
    for o in parse_documents(yaml, "test.yaml") {
        let o = o.unwrap_or_else(|e| panic!("fixture does not parse: {e}"));
        c.apply(&o, "test.yaml").unwrap_or_else(|e| panic!("fixture does not validate: {e}"));
    }
}

pub fn all_pods(c: &Cluster) -> BTreeSet<PodKey> {
    c.pods.keys().cloned().collect()
}

/// Compiles with every pod local.
pub fn compile_all(c: &Cluster, ids: &mut Identities) -> Compiled {
    compile(c, &all_pods(c), ids)
}

/// The address a packet from or to this end carries: its first one.
pub fn addr_of(c: &Cluster, peer: &Peer) -> Option<IpAddr> {
    reference::addresses(c, peer).first().copied()
}

/// One side's datapath decision for a local pod: `decide_new_flow` on the compiled maps.
pub fn datapath_decision(
    compiled: &Compiled,
    dir: Direction,
    subject: &PodKey,
    peer_addr: IpAddr,
    proto: Protocol,
    port: u16,
) -> Decision {
    // A node address here stands for the node itself (the lab's host peer).
    CompiledTables(compiled)
        .decide_for(subject, dir, peer_addr, proto, port, true)
        .unwrap_or_else(|| panic!("{subject} is not a local pod"))
}

/// One side's datapath verdict for every request: allowed, and not only for HTTP requests.
pub fn datapath_side(
    compiled: &Compiled,
    dir: Direction,
    subject: &PodKey,
    peer_addr: IpAddr,
    proto: Protocol,
    port: u16,
) -> bool {
    let d = datapath_decision(compiled, dir, subject, peer_addr, proto, port);
    d.reason.verdict() == ward_common::Verdict::Allow && !d.http_only()
}

/// What the datapath does with a connection: egress at the source if it is a (local) pod,
/// and ingress at the destination if it is one.
pub fn datapath_allows(c: &Cluster, compiled: &Compiled, from: &Peer, to: &Peer, proto: Protocol, port: u16) -> bool {
    let from_addr = addr_of(c, from).expect("source has an address");
    let to_addr = addr_of(c, to).expect("destination has an address");
    let egress = match from {
        Peer::Pod(k) => datapath_side(compiled, Direction::Egress, k, to_addr, proto, port),
        Peer::Host | Peer::External(_) => true,
    };
    let ingress = match to {
        Peer::Pod(k) => datapath_side(compiled, Direction::Ingress, k, from_addr, proto, port),
        Peer::Host | Peer::External(_) => true,
    };
    egress && ingress
}

fn lab_pods() -> Vec<PodKey> {
    NAMESPACES.iter().flat_map(|ns| LETTERS.iter().map(move |l| PodKey::new(*ns, *l))).collect()
}

/// The 9x9 matrix in the conformance files' notation (rows from, columns to, `.` allowed).
pub fn matrix(allows: impl Fn(&Peer, &Peer) -> bool) -> Vec<String> {
    let pods = lab_pods();
    pods.iter()
        .map(|from| {
            pods.iter()
                .map(|to| if allows(&Peer::Pod(from.clone()), &Peer::Pod(to.clone())) { '.' } else { 'X' })
                .collect()
        })
        .collect()
}

/// Asserts that both the datapath and the reference produce `expected` on the lab.
pub fn assert_matrix(c: &Cluster, compiled: &Compiled, proto: Protocol, port: u16, expected: [&str; 9]) {
    let datapath = matrix(|f, t| datapath_allows(c, compiled, f, t, proto, port));
    let spec = matrix(|f, t| reference::allowed(c, f.clone(), t.clone(), proto, port));
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(spec, expected, "reference evaluator, {proto} {port}");
    assert_eq!(datapath, expected, "datapath, {proto} {port}");
}
