//! The identity race through the real programs (BPF_PROG_TEST_RUN) on maps the real compiler
//! made: a new pod's first packets reach this node before its Pod object does. Its address
//! lies in another node's pod range (`spec.podCIDRs`), so the ipcache resolves it to
//! `ID_UNKNOWN_POD` and a default deny of it is counted as `identity_unknown`, not
//! `policy_denied`; a known pod denied by policy stays `policy_denied`, an ipBlock that covers
//! the address still allows it, and once the Pod object arrives its labels decide. Root
//! required.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ward_agent::datapath::MirrorContents;
use ward_common::{Reason, identity::ID_UNKNOWN_POD};
use ward_policy::cluster::{Cluster, PodKey};
use ward_policy::compile::{Compiled, compile};
use ward_policy::identity::Identities;
use ward_policy::model::parse_documents;
use ward_policy::selector::Labels;
use ward_policy::validate::PodInfo;

use support::*;

/// Another node's pod range, and a new pod in it that this node has no Pod object for yet.
const OTHER_NODE_RANGE: &str = "10.244.2.0/24";
const NEW_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);
/// Inside the ipBlock the policy allows (10.244.2.128/25), also without a Pod object.
const IN_BLOCK: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 130);

/// x/a (POD, on loopback) is isolated both ways: it admits pods `app: b` on TCP 81 and the
/// ipBlock 10.244.2.128/25 on TCP 80, and may reach the same. x/b (PEER) is a known pod.
const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: b}}}]
      ports: [{port: 81}]
    - from: [{ipBlock: {cidr: 10.244.2.128/25}}]
      ports: [{port: 80}]
  egress:
    - to: [{podSelector: {matchLabels: {app: b}}}]
      ports: [{port: 81}]
    - to: [{ipBlock: {cidr: 10.244.2.128/25}}]
      ports: [{port: 80}]
"#;

fn pod_info(app: &str, ip: Ipv4Addr) -> PodInfo {
    PodInfo { labels: Labels::from([("app".into(), app.into())]), ports: vec![], ips: vec![IpAddr::V4(ip)] }
}

fn cluster() -> Cluster {
    let mut c = Cluster::new();
    c.set_namespace("x", Labels::new());
    c.pods.insert(PodKey::new("x", "a"), pod_info("a", POD));
    c.pods.insert(PodKey::new("x", "b"), pod_info("b", PEER));
    for o in parse_documents(POLICY, "race.yaml") {
        c.apply(&o.expect("the policy parses"), "race.yaml").expect("the policy validates");
    }
    c.host_addrs = vec![IpAddr::V4(NODE)];
    // This node's range and the other node's.
    c.pod_cidrs = vec!["10.9.0.0/24".parse().expect("range"), OTHER_NODE_RANGE.parse().expect("range")];
    c
}

/// The maps the agent would load for x/a as the local pod on loopback.
fn maps(compiled: &Compiled) -> MirrorContents {
    let a = PodKey::new("x", "a");
    let id = compiled.pod_identity[&a];
    let mut m =
        MirrorContents { ipcache: compiled.ipcache.clone(), policy: compiled.policy.clone(), ..Default::default() };
    m.endpoints.insert(LO, endpoint(EP_ID, id, compiled.isolation_of(&a), POD, Ipv6Addr::UNSPECIFIED));
    m
}

fn syn_in(src: Ipv4Addr, port: u16, sport: u16) -> Vec<u8> {
    packet(src, POD, TCP, sport, port, SYN)
}

fn syn_out(dst: Ipv4Addr, port: u16, sport: u16) -> Vec<u8> {
    packet(POD, dst, TCP, sport, port, SYN)
}

#[test]
fn a_pod_not_known_yet_is_dropped_as_identity_unknown_and_a_real_deny_stays_policy_denied() {
    if !privileged() {
        return;
    }
    let mut c = cluster();
    let mut ids = Identities::new();
    let compiled = compile(&c, &BTreeSet::from([PodKey::new("x", "a")]), &mut ids);
    let new_pod = compiled.ipcache.iter().find(|(k, _)| k.prefixlen == 96 + 24 && k.addr[12..15] == [10, 244, 2]);
    assert_eq!(new_pod.map(|(_, v)| v.identity), Some(ID_UNKNOWN_POD), "the other node's range is in the ipcache");
    let mut t = TestDatapath::new("idrace");
    t.apply(&maps(&compiled));

    // Ingress: the new pod is denied under its own reason, counted once; the known pod x/b
    // denied by the same policy (wrong port) and an address outside every pod range stay
    // policy_denied; the ipBlock covering part of the range still allows.
    assert_eq!(t.run_reason("to_pod", &syn_in(NEW_POD, 81, 40001)), (DROP, Reason::IdentityUnknown));
    assert_eq!(t.run_reason("to_pod", &syn_in(NEW_POD, 80, 40002)), (DROP, Reason::IdentityUnknown));
    assert_eq!(t.run_reason("to_pod", &syn_in(PEER, 80, 40003)), (DROP, Reason::PolicyDenied));
    assert_eq!(t.run_reason("to_pod", &syn_in(OUTSIDE, 80, 40004)), (DROP, Reason::PolicyDenied));
    assert_eq!(t.run_reason("to_pod", &syn_in(IN_BLOCK, 80, 40005)), (PASS, Reason::PolicyAllow));
    assert_eq!(t.run_reason("to_pod", &syn_in(PEER, 81, 40006)), (PASS, Reason::PolicyAllow));
    // Egress the same way.
    assert_eq!(t.run_reason("from_pod", &syn_out(NEW_POD, 81, 40011)), (DROP, Reason::IdentityUnknown));
    assert_eq!(t.run_reason("from_pod", &syn_out(PEER, 80, 40012)), (DROP, Reason::PolicyDenied));
    assert_eq!(t.run_reason("from_pod", &syn_out(IN_BLOCK, 80, 40013)), (PASS, Reason::PolicyAllow));

    // The per-reason counter: the three identity_unknown drops, under their directions.
    let counters = t.dp.maps.reason_counters().expect("counters");
    let count = |dir| counters.get(&(Reason::IdentityUnknown, dir)).map_or(0, |v| v.packets);
    assert_eq!(count(ward_common::Direction::Ingress), 2);
    assert_eq!(count(ward_common::Direction::Egress), 1);

    // The Pod object arrives (labels app: b): the retransmitted SYN is decided by its labels.
    c.pods.insert(PodKey::new("x", "new"), pod_info("b", NEW_POD));
    let compiled = compile(&c, &BTreeSet::from([PodKey::new("x", "a")]), &mut ids);
    t.apply(&maps(&compiled));
    assert_eq!(t.run_reason("to_pod", &syn_in(NEW_POD, 81, 40001)), (PASS, Reason::PolicyAllow));
    assert_eq!(t.run_reason("to_pod", &syn_in(NEW_POD, 80, 40002)), (DROP, Reason::PolicyDenied), "now a real deny");
}
