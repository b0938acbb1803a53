//! Service traffic through the real programs (BPF_PROG_TEST_RUN): a sender's egress to a
//! Service address is deferred by `from_pod` (the skb mark carries its pending slot) and
//! decided where kube-proxy's translated packet leaves routing, `to_pod` of a local backend
//! or `to_netdev` of an uplink, on the backend and its port; the sender's flow is then
//! tracked under the tuple it sent. The translation itself is kube-proxy's: here the test
//! writes the translated frame, as netfilter would, and hands over the mark. Root required.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ward_common::{
    Direction, Reason,
    addr::v4_mapped,
    identity::{ID_SERVICE, ID_WORLD},
    maps::{CtKey, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IpcacheKey, IpcacheValue},
    service::{MARK_MASK, MARK_PENDING, mark_with, slot_of},
};

use support::*;

const BOTH: u32 = EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS;
/// A ClusterIP in the Service range 10.96.0.0/16.
const SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A second local pod, a backend the sender's egress does not allow.
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 4);
const OTHER_ID: u32 = 302;
/// An address outside the cluster with an ipBlock CIDR identity (the API server, say).
const API: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 9);
const API_CIDR_ID: u32 = ward_common::identity::CIDR_ID_BIT | 5;
/// kube-proxy's masquerade bit: Ward leaves it as found.
const KUBE_MASQ: u32 = 0x4000;

struct Lab {
    t: TestDatapath,
    ns: IfaceNs,
}

impl Lab {
    /// The sender POD on loopback (isolated both ways; egress allowed to PEER's pods on TCP
    /// 8080 and to API on TCP 6443), the backend PEER on the first veth (ingress allowed from
    /// the sender on 8080), the backend OTHER on the second (not isolated), an uplink third.
    fn new(tag: &str, sender_flags: u32) -> Lab {
        let ns = IfaceNs::new(tag, 3);
        let mut t = TestDatapath::new(tag);
        t.dp.maps.set_flags(0).expect("no flow events needed");
        let mut m = base(sender_flags);
        allow(&mut m, Direction::Egress, PEER_ID, TCP, 8080, 8080, 70);
        allow(&mut m, Direction::Egress, API_CIDR_ID, TCP, 6443, 6443, 71);
        m.endpoints.insert(ns.ifindexes[0], endpoint(20, PEER_ID, EP_ISOLATED_INGRESS, PEER, Ipv6Addr::UNSPECIFIED));
        m.endpoints.insert(ns.ifindexes[1], endpoint(21, OTHER_ID, 0, OTHER, Ipv6Addr::UNSPECIFIED));
        m.ipcache.insert(host_key(OTHER), IpcacheValue { identity: OTHER_ID, cidr_identity: ID_WORLD });
        m.ipcache.insert(host_key(API), IpcacheValue { identity: ID_WORLD, cidr_identity: API_CIDR_ID });
        m.ipcache.insert(
            IpcacheKey { prefixlen: 96 + 16, addr: v4_mapped([10, 96, 0, 0]) },
            IpcacheValue { identity: ID_SERVICE, cidr_identity: ID_WORLD },
        );
        // The backend PEER admits the sender (SUBJECT) on 8080.
        m.policy.insert(
            ward_common::maps::PolicyKey::lookup(PEER_ID, SUBJECT, Direction::Ingress, TCP, 8080),
            ward_common::maps::PolicyValue { rule_id: 80, flags: 0 },
        );
        t.apply(&m);
        Lab { t, ns }
    }

    fn backend(&self) -> u32 {
        self.ns.ifindexes[0]
    }
    fn other(&self) -> u32 {
        self.ns.ifindexes[1]
    }
    fn uplink(&self) -> u32 {
        self.ns.ifindexes[2]
    }

    /// Runs `program` on `ifindex` with `mark`: (verdict, mark after, what was counted).
    fn run(
        &self,
        program: &'static str,
        frame: &[u8],
        ifindex: u32,
        mark: u32,
    ) -> (i32, u32, Vec<(Reason, Direction)>) {
        let before = self.t.dp.maps.reason_counters().expect("counters");
        let (verdict, mark_out) =
            self.t.dp.run_program_marked(program, frame, ifindex, ifindex, mark).expect("test run");
        let after = self.t.dp.maps.reason_counters().expect("counters");
        let mut counted: Vec<(Reason, Direction)> = after
            .iter()
            .filter(|(k, v)| before.get(*k).map_or(v.packets, |b| v.packets - b.packets) != 0)
            .map(|(k, _)| *k)
            .collect();
        counted.sort();
        (verdict, mark_out, counted)
    }

    /// The sender's first packet to the Service: deferred, with its slot in the mark.
    fn defer(&self, frame: &[u8]) -> u32 {
        let (verdict, mark, counted) = self.run("from_pod", frame, LO, KUBE_MASQ);
        assert_eq!(verdict, PASS, "a deferred packet goes on to translation");
        assert_eq!(counted, vec![(Reason::ServicePending, Direction::Egress)]);
        assert!(slot_of(mark).is_some(), "the mark carries the pending slot: {mark:#x}");
        assert_eq!(mark & KUBE_MASQ, KUBE_MASQ, "kube-proxy's bits are left as found");
        mark
    }

    fn tracked(&self, key: &CtKey) -> bool {
        ct_table(&self.t).get(key, 0).is_ok()
    }
}

fn sent_key(sport: u16, dport: u16) -> CtKey {
    CtKey {
        ep_id: EP_ID,
        saddr: v4_mapped(POD.octets()),
        daddr: v4_mapped(SVC.octets()),
        sport_be: sport.to_be_bytes(),
        dport_be: dport.to_be_bytes(),
        proto: TCP,
        dir: Direction::Egress as u8,
        _pad: [0; 2],
    }
}

fn counts(list: &[(Reason, Direction)]) -> BTreeMap<Direction, Reason> {
    list.iter().map(|(r, d)| (*d, *r)).collect()
}

#[test]
fn egress_through_a_service_is_decided_on_the_backend_it_reaches() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("svc-backend", BOTH);
    lab.ns.run(|| {
        // Allowed backend: the sender's egress rule for PEER:8080 decides, then PEER's ingress.
        let mark = lab.defer(&packet(POD, SVC, TCP, 41000, 80, SYN));
        let (verdict, mark_out, counted) =
            lab.run("to_pod", &packet(POD, PEER, TCP, 41000, 8080, SYN), lab.backend(), mark);
        assert_eq!(verdict, PASS);
        assert_eq!(
            counts(&counted),
            BTreeMap::from([(Direction::Egress, Reason::PolicyAllow), (Direction::Ingress, Reason::PolicyAllow)]),
            "the sender's egress and the backend's ingress, each counted once"
        );
        assert_eq!(mark_out & MARK_MASK, 0, "the mark is spent");
        assert!(lab.tracked(&sent_key(41000, 80)), "the sender's flow is tracked under the tuple it sent");
        // Its later packets and the replies (translated back by kube-proxy) are the flow's.
        let (v, m, c) = lab.run("from_pod", &packet(POD, SVC, TCP, 41000, 80, ACK), LO, 0);
        assert_eq!((v, m & MARK_PENDING, c), (PASS, 0, vec![(Reason::Established, Direction::Egress)]));
        let (v, _, c) = lab.run("to_pod", &packet(SVC, POD, TCP, 80, 41000, SYN | ACK), LO, 0);
        assert_eq!((v, c), (PASS, vec![(Reason::Reply, Direction::Ingress)]));

        // A backend the sender's egress does not allow: dropped there, as the sender's egress.
        let mark = lab.defer(&packet(POD, SVC, TCP, 41001, 80, SYN));
        let (verdict, _, counted) = lab.run("to_pod", &packet(POD, OTHER, TCP, 41001, 8080, SYN), lab.other(), mark);
        assert_eq!((verdict, counted), (DROP, vec![(Reason::PolicyDenied, Direction::Egress)]));
        assert!(!lab.tracked(&sent_key(41001, 80)), "a denied flow is not tracked");
        // ... so nothing comes back through the Service address either.
        let (v, _, c) = lab.run("to_pod", &packet(SVC, POD, TCP, 80, 41001, SYN | ACK), LO, 0);
        assert_eq!((v, c), (DROP, vec![(Reason::PolicyDenied, Direction::Ingress)]));

        // The right backend on the wrong port: the rule names 8080 only.
        let mark = lab.defer(&packet(POD, SVC, TCP, 41002, 80, SYN));
        let (verdict, _, counted) = lab.run("to_pod", &packet(POD, PEER, TCP, 41002, 9090, SYN), lab.backend(), mark);
        assert_eq!((verdict, counted), (DROP, vec![(Reason::PolicyDenied, Direction::Egress)]));
    });
}

#[test]
fn a_deferred_packet_without_its_own_pending_entry_is_dropped() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("svc-forged", BOTH);
    lab.ns.run(|| {
        // A mark nobody deferred (the node's own process could set one): nothing pending.
        let forged = mark_with(0, 1234);
        let (v, _, c) = lab.run("to_pod", &packet(POD, PEER, TCP, 42000, 8080, SYN), lab.backend(), forged);
        assert_eq!((v, c), (DROP, vec![(Reason::ServiceUnresolved, Direction::Egress)]));
        // Deferred, but another flow shows up with the slot: its source port is not the entry's.
        let mark = lab.defer(&packet(POD, SVC, TCP, 42001, 80, SYN));
        let (v, _, c) = lab.run("to_pod", &packet(POD, PEER, TCP, 42999, 8080, SYN), lab.backend(), mark);
        assert_eq!((v, c), (DROP, vec![(Reason::ServiceUnresolved, Direction::Egress)]));
        // A mark is good for one packet: once judged, the slot is free and a replay fails.
        let mark = lab.defer(&packet(POD, SVC, TCP, 42002, 80, SYN));
        let frame = packet(POD, PEER, TCP, 42002, 8080, SYN);
        assert_eq!(lab.run("to_pod", &frame, lab.backend(), mark).0, PASS);
        let (v, _, c) = lab.run("to_pod", &packet(POD, OTHER, TCP, 42002, 8080, SYN), lab.other(), mark);
        assert_eq!((v, c), (DROP, vec![(Reason::ServiceUnresolved, Direction::Egress)]));
        // A source rewritten on the way (masquerade) is accepted only for a pod reaching itself.
        let mark = lab.defer(&packet(POD, SVC, TCP, 42003, 80, SYN));
        let (v, _, c) = lab.run("to_pod", &packet(NODE, PEER, TCP, 50000, 8080, SYN), lab.backend(), mark);
        assert_eq!((v, c), (DROP, vec![(Reason::ServiceUnresolved, Direction::Egress)]));
    });
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_its_loopback() {
    if !privileged() {
        return;
    }
    // The sender may reach neither itself nor anything but PEER, and admits only PEER.
    let lab = Lab::new("svc-hairpin", BOTH);
    // kube-proxy masquerades hairpin traffic: the pod sees a node source address.
    let hairpin = |sport: u16, flags: u8| packet(NODE, POD, TCP, sport, 8080, flags);
    lab.ns.run(|| {
        let mark = lab.defer(&packet(POD, SVC, TCP, 43000, 80, SYN));
        let (v, _, c) = lab.run("to_pod", &hairpin(61000, SYN), LO, mark);
        assert_eq!(
            (v, counts(&c)),
            (PASS, BTreeMap::from([(Direction::Egress, Reason::Loopback), (Direction::Ingress, Reason::Loopback)])),
            "a pod reaching itself is its own loopback, whatever its policies"
        );
        // Its reply, before kube-proxy translates it back, and the translated reply.
        let (v, _, c) = lab.run("from_pod", &packet(POD, NODE, TCP, 8080, 61000, SYN | ACK), LO, 0);
        assert_eq!((v, c), (PASS, vec![(Reason::Reply, Direction::Egress)]));
        let (v, _, c) = lab.run("to_pod", &packet(SVC, POD, TCP, 80, 43000, SYN | ACK), LO, 0);
        assert_eq!((v, c), (PASS, vec![(Reason::Reply, Direction::Ingress)]));
        // The same masqueraded packet without the deferral is the node's address forwarded:
        // policed as such, and denied.
        let (v, _, c) = lab.run("to_pod", &hairpin(61002, SYN), LO, 0);
        assert_eq!((v, c), (DROP, vec![(Reason::PolicyDenied, Direction::Ingress)]));
        // A deferral of another pod cannot pass for a hairpin here: its sender is not this pod.
        let mark = lab.defer(&packet(POD, SVC, TCP, 43003, 80, SYN));
        let (v, _, c) = lab.run("to_pod", &packet(NODE, PEER, TCP, 61003, 8080, SYN), lab.backend(), mark);
        assert_eq!((v, c), (DROP, vec![(Reason::ServiceUnresolved, Direction::Egress)]));
    });
    // The hairpin flow survives a policy revision (re-checked as the loopback it is).
    let mut lab = lab;
    lab.t.dp.maps.bump_revision().expect("bump");
    lab.ns.run(|| {
        let (v, _, c) = lab.run("to_pod", &hairpin(61000, ACK), LO, 0);
        assert_eq!((v, c), (PASS, vec![(Reason::Established, Direction::Ingress)]));
    });
}

#[test]
fn service_traffic_leaving_by_an_uplink_is_decided_there_and_other_traffic_passes_untouched() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("svc-uplink", BOTH);
    lab.ns.run(|| {
        // Unmarked traffic: passed without a look (nothing counted, mark as found).
        let (v, m, c) = lab.run("to_netdev", &packet(PEER, API, TCP, 1000, 6443, SYN), lab.uplink(), KUBE_MASQ);
        assert_eq!((v, m, c), (PASS, KUBE_MASQ, vec![]));
        // The sender's egress to the translated backend outside (ipBlock rule 71).
        let mark = lab.defer(&packet(POD, SVC, TCP, 44000, 443, SYN));
        let (v, m, c) = lab.run("to_netdev", &packet(POD, API, TCP, 44000, 6443, SYN), lab.uplink(), mark);
        assert_eq!((v, m & MARK_MASK, c), (PASS, 0, vec![(Reason::PolicyAllow, Direction::Egress)]));
        assert!(lab.tracked(&sent_key(44000, 443)));
        let (v, _, c) = lab.run("to_pod", &packet(SVC, POD, TCP, 443, 44000, SYN | ACK), LO, 0);
        assert_eq!((v, c), (PASS, vec![(Reason::Reply, Direction::Ingress)]));
        // A port the ipBlock rule does not name.
        let mark = lab.defer(&packet(POD, SVC, TCP, 44001, 443, SYN));
        let (v, _, c) = lab.run("to_netdev", &packet(POD, API, TCP, 44001, 6444, SYN), lab.uplink(), mark);
        assert_eq!((v, c), (DROP, vec![(Reason::PolicyDenied, Direction::Egress)]));
        // Still a Service address after "translation" (no backend, kube-proxy passed it on).
        let mark = lab.defer(&packet(POD, SVC, TCP, 44002, 443, SYN));
        let (v, _, c) = lab.run("to_netdev", &packet(POD, SVC, TCP, 44002, 443, SYN), lab.uplink(), mark);
        assert_eq!((v, c), (DROP, vec![(Reason::ServiceUnresolved, Direction::Egress)]));
    });
}

#[test]
fn a_service_flow_is_decided_again_on_its_backend_after_a_policy_change() {
    if !privileged() {
        return;
    }
    let mut lab = Lab::new("svc-revoke", BOTH);
    let backend = lab.backend();
    lab.ns.run(|| {
        let mark = lab.defer(&packet(POD, SVC, TCP, 45000, 80, SYN));
        assert_eq!(lab.run("to_pod", &packet(POD, PEER, TCP, 45000, 8080, SYN), backend, mark).0, PASS);
    });
    // An unrelated change: the flow is deferred again and allowed again on its backend.
    lab.t.dp.maps.bump_revision().expect("bump");
    lab.ns.run(|| {
        let (v, mark, c) = lab.run("from_pod", &packet(POD, SVC, TCP, 45000, 80, ACK), LO, 0);
        assert_eq!((v, c), (PASS, vec![(Reason::ServicePending, Direction::Egress)]));
        // A reply in between still passes (the sender's next packet re-decides the flow).
        let (v, _, c) = lab.run("to_pod", &packet(SVC, POD, TCP, 80, 45000, ACK), LO, 0);
        assert_eq!((v, c), (PASS, vec![(Reason::Reply, Direction::Ingress)]));
        let (v, _, c) = lab.run("to_pod", &packet(POD, PEER, TCP, 45000, 8080, ACK), backend, mark);
        assert_eq!(counts(&c).get(&Direction::Egress), Some(&Reason::PolicyAllow));
        assert_eq!(v, PASS);
    });
    // The sender's rule for PEER goes: its next packet is deferred and denied on the backend.
    let mut m = lab.t.mirror.clone();
    m.policy.retain(|_, v| v.rule_id != 70);
    lab.t.apply(&m);
    lab.ns.run(|| {
        let (v, mark, c) = lab.run("from_pod", &packet(POD, SVC, TCP, 45000, 80, ACK), LO, 0);
        assert_eq!((v, c), (PASS, vec![(Reason::ServicePending, Direction::Egress)]));
        let (v, _, c) = lab.run("to_pod", &packet(POD, PEER, TCP, 45000, 8080, ACK), backend, mark);
        assert_eq!((v, c), (DROP, vec![(Reason::PolicyRevoked, Direction::Egress)]));
        assert!(!lab.tracked(&sent_key(45000, 80)), "the revoked flow is gone");
        let (v, _, c) = lab.run("to_pod", &packet(SVC, POD, TCP, 80, 45000, ACK), LO, 0);
        assert_eq!((v, c), (DROP, vec![(Reason::PolicyDenied, Direction::Ingress)]), "and its replies with it");
    });
}

#[test]
fn a_sender_not_isolated_for_egress_is_not_deferred() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("svc-open", EP_ISOLATED_INGRESS);
    lab.ns.run(|| {
        let (v, m, c) = lab.run("from_pod", &packet(POD, SVC, TCP, 46000, 80, SYN), LO, 0);
        assert_eq!((v, m, c), (PASS, 0, vec![(Reason::NotIsolated, Direction::Egress)]));
        let (v, _, c) = lab.run("to_pod", &packet(SVC, POD, TCP, 80, 46000, SYN | ACK), LO, 0);
        assert_eq!((v, c), (PASS, vec![(Reason::Reply, Direction::Ingress)]), "tracked as usual");
    });
}
