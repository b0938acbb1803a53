//! Kernel-logic tests: the real eBPF programs, loaded into this kernel, run on crafted
//! packets with BPF_PROG_TEST_RUN against maps the test fills in. Root required; under CI
//! (CI=true) a missing privilege fails the test instead of skipping it.

use std::net::{Ipv4Addr, Ipv6Addr};

use ward_agent::datapath::{Datapath, MirrorContents};
use ward_common::{
    Direction, Reason, Verdict,
    addr::v4_mapped,
    identity::{CIDR_ID_BIT, ID_ANY, ID_HOST, ID_WORLD},
    maps::{EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EndpointInfo, IpcacheKey, IpcacheValue, PolicyKey, PolicyValue},
    ports::{MAX_BLOCKS, PortBlock, range_to_blocks},
};

/// TCX_NEXT: allowed, and whatever runs after Ward on the hook runs too.
const PASS: i32 = -1;
const DROP: i32 = 2;
const LO: u32 = 1;

fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "kernel-logic tests need root and CI runs as root");
    eprintln!("skipping: not root");
    false
}

/// A datapath pinned under a unique node name, removed on drop (also on panic).
struct TestDatapath {
    dp: Datapath,
    mirror: MirrorContents,
}

impl TestDatapath {
    fn new(tag: &str) -> Self {
        let node = format!("ward-test-{}-{tag}", std::process::id());
        let dp = Datapath::open(std::path::Path::new("/sys/fs/bpf"), &node).expect("load datapath");
        TestDatapath { dp, mirror: MirrorContents::default() }
    }

    fn apply(&mut self, desired: &MirrorContents) {
        let delta = self.mirror.delta_to(desired);
        self.dp.maps.apply(&mut self.mirror, &delta).expect("apply maps");
    }

    fn run(&self, program: &'static str, pkt: &[u8]) -> i32 {
        self.dp.run_program(program, pkt, LO).expect("test run")
    }

    /// Runs a packet and also returns the reason the programs counted for it.
    fn run_reason(&self, program: &'static str, pkt: &[u8]) -> (i32, Reason) {
        let before = self.dp.maps.reason_counters().expect("counters");
        let verdict = self.run(program, pkt);
        let after = self.dp.maps.reason_counters().expect("counters");
        let counted: Vec<Reason> = Reason::ALL.into_iter().filter(|r| after[r].packets != before[r].packets).collect();
        assert_eq!(counted.len(), 1, "exactly one reason counted per packet, got {counted:?}");
        assert_eq!(after[&counted[0]].bytes - before[&counted[0]].bytes, pkt.len() as u64, "bytes counted");
        (verdict, counted[0])
    }
}

impl Drop for TestDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.dp.pin_dir());
    }
}

const POD: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 3);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 3);
const SUBJECT: u32 = 300;
const PEER_ID: u32 = 301;

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn l4(proto: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    let len = match proto {
        TCP => 20,
        SCTP => 12,
        _ => 8,
    };
    let mut l4 = vec![0u8; len];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    if proto == TCP {
        l4[12] = 0x50;
        l4[13] = tcp_flags;
    }
    l4
}

/// Ethernet + IPv4 + L4 (checksums are not checked by the programs).
fn packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    let l4 = l4(proto, sport, dport, tcp_flags);
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&l4);
    p
}

/// Ethernet + IPv6 + L4.
fn packet6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    let l4 = l4(proto, sport, dport, tcp_flags);
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&[0x86, 0xdd]);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[proto, 64]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&l4);
    p
}

fn host_key(ip: Ipv4Addr) -> IpcacheKey {
    IpcacheKey { prefixlen: 128, addr: v4_mapped(ip.octets()) }
}

fn base(flags: u32) -> MirrorContents {
    let mut m = MirrorContents::default();
    m.endpoints.insert(
        LO,
        EndpointInfo {
            ep_id: 7,
            identity: SUBJECT,
            flags,
            _pad: 0,
            addr_v4: v4_mapped(POD.octets()),
            addr_v6: POD6.octets(),
        },
    );
    m.ipcache.insert(host_key(POD), IpcacheValue { identity: SUBJECT, cidr_identity: ID_WORLD });
    m.ipcache.insert(host_key(PEER), IpcacheValue { identity: PEER_ID, cidr_identity: ID_WORLD });
    m.ipcache.insert(host_key(NODE), IpcacheValue { identity: ID_HOST, cidr_identity: ID_WORLD });
    m.ipcache.insert(
        IpcacheKey { prefixlen: 128, addr: PEER6.octets() },
        IpcacheValue { identity: PEER_ID, cidr_identity: ID_WORLD },
    );
    m
}

fn allow(m: &mut MirrorContents, dir: Direction, peer: u32, proto: u8, first: u16, last: u16, rule_id: u32) {
    let mut blocks = [PortBlock { base: 0, prefix_len: 0 }; MAX_BLOCKS];
    let n = range_to_blocks(first, last, &mut blocks);
    for b in &blocks[..n] {
        m.policy.insert(PolicyKey::port_block(SUBJECT, peer, dir, proto, *b), PolicyValue { rule_id, flags: 0 });
    }
}

#[test]
fn unisolated_pod_passes_everything() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("unisolated");
    t.apply(&base(0));
    assert_eq!(t.run("to_pod", &packet(PEER, POD, TCP, 40000, 80, SYN)), PASS);
    assert_eq!(t.run("from_pod", &packet(POD, OUTSIDE, UDP, 40000, 53, 0)), PASS);
}

#[test]
fn default_deny_ingress_drops_unless_a_rule_allows_peer_and_port() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("ingress");
    let mut m = base(EP_ISOLATED_INGRESS);
    allow(&mut m, Direction::Ingress, PEER_ID, TCP, 80, 80, 11);
    t.apply(&m);
    assert_eq!(t.run("to_pod", &packet(PEER, POD, TCP, 40001, 80, SYN)), PASS, "allowed peer and port");
    assert_eq!(t.run("to_pod", &packet(PEER, POD, TCP, 40002, 81, SYN)), DROP, "port not allowed");
    assert_eq!(t.run("to_pod", &packet(OUTSIDE, POD, TCP, 40003, 80, SYN)), DROP, "peer not allowed");
    assert_eq!(t.run("to_pod", &packet(PEER, POD, UDP, 40004, 80, 0)), DROP, "UDP is not TCP");
    assert_eq!(t.run("to_pod", &packet(PEER, POD, SCTP, 40004, 80, 0)), DROP, "SCTP is not TCP");
    assert_eq!(t.run("to_pod", &packet(NODE, POD, TCP, 40005, 9999, SYN)), PASS, "the node may always reach its pods");
    // Egress is not isolated.
    assert_eq!(t.run("from_pod", &packet(POD, OUTSIDE, TCP, 40006, 443, SYN)), PASS);
}

#[test]
fn end_port_ranges_and_sctp_match_exactly() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("ranges");
    let mut m = base(EP_ISOLATED_INGRESS);
    allow(&mut m, Direction::Ingress, PEER_ID, SCTP, 53, 84, 15);
    t.apply(&m);
    for (port, want) in [(52, DROP), (53, PASS), (64, PASS), (80, PASS), (84, PASS), (85, DROP)] {
        assert_eq!(t.run("to_pod", &packet(PEER, POD, SCTP, 40100 + port, port, 0)), want, "SCTP port {port}");
    }
    assert_eq!(t.run("to_pod", &packet(PEER, POD, TCP, 40200, 60, SYN)), DROP, "TCP is not SCTP");
}

#[test]
fn replies_of_allowed_flows_pass_and_revoked_flows_are_cut() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("ct");
    let mut m = base(EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS);
    allow(&mut m, Direction::Ingress, PEER_ID, TCP, 80, 80, 12);
    t.apply(&m);
    assert_eq!(t.run("to_pod", &packet(PEER, POD, TCP, 40010, 80, SYN)), PASS);
    // The reply leaves an egress-isolated pod with no egress rule: conntrack lets it out.
    assert_eq!(t.run("from_pod", &packet(POD, PEER, TCP, 80, 40010, SYN | ACK)), PASS, "reply");
    // A new connection from the pod is still denied.
    assert_eq!(t.run("from_pod", &packet(POD, PEER, TCP, 40011, 80, SYN)), DROP, "egress default deny");
    // An unrelated policy change keeps the flow.
    let mut churn = m.clone();
    allow(&mut churn, Direction::Ingress, PEER_ID, UDP, 5000, 5000, 99);
    t.apply(&churn);
    assert_eq!(t.run("to_pod", &packet(PEER, POD, TCP, 40010, 80, ACK)), PASS, "survives churn");
    // Revoke the rule: the established flow's next packet is dropped, both ways.
    t.apply(&base(EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS));
    assert_eq!(t.run_reason("from_pod", &packet(POD, PEER, TCP, 80, 40010, ACK)), (DROP, Reason::PolicyRevoked));
    assert_eq!(t.run("to_pod", &packet(PEER, POD, TCP, 40010, 80, ACK)), DROP, "revoked");
}

#[test]
fn wildcard_peer_and_cidr_identity_allow() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("peers");
    let mut m = base(EP_ISOLATED_EGRESS);
    let cidr_id = CIDR_ID_BIT | 5;
    m.ipcache.insert(
        IpcacheKey { prefixlen: 96 + 16, addr: v4_mapped([10, 77, 0, 0]) },
        IpcacheValue { identity: ID_WORLD, cidr_identity: cidr_id },
    );
    m.policy.insert(PolicyKey::any_proto(SUBJECT, cidr_id, Direction::Egress), PolicyValue { rule_id: 13, flags: 0 });
    allow(&mut m, Direction::Egress, ID_ANY, UDP, 53, 53, 14);
    t.apply(&m);
    assert_eq!(t.run("from_pod", &packet(POD, OUTSIDE, TCP, 40020, 9999, SYN)), PASS, "CIDR peer, any port");
    assert_eq!(t.run("from_pod", &packet(POD, PEER, UDP, 40021, 53, 0)), PASS, "any peer, UDP 53");
    assert_eq!(t.run("from_pod", &packet(POD, PEER, TCP, 40022, 53, SYN)), DROP, "TCP 53 not allowed");
    assert_eq!(t.run("from_pod", &packet(POD, Ipv4Addr::new(10, 78, 0, 1), TCP, 40023, 80, SYN)), DROP, "world");
}

#[test]
fn ipv6_uses_the_same_policy_path() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("v6");
    let mut m = base(EP_ISOLATED_INGRESS);
    allow(&mut m, Direction::Ingress, PEER_ID, TCP, 80, 80, 16);
    t.apply(&m);
    assert_eq!(t.run("to_pod", &packet6(PEER6, POD6, TCP, 40300, 80, SYN)), PASS);
    assert_eq!(t.run("to_pod", &packet6(PEER6, POD6, TCP, 40301, 81, SYN)), DROP);
    assert_eq!(t.run("from_pod", &packet6(POD6, PEER6, TCP, 80, 40300, SYN | ACK)), PASS, "reply");
    let spoofed = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 99);
    assert_eq!(t.run("from_pod", &packet6(spoofed, PEER6, TCP, 1, 2, SYN)), DROP, "spoofed v6 source");
}

#[test]
fn spoofed_source_unknown_endpoint_and_malformed_packets_are_dropped() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("failclosed");
    t.apply(&base(EP_ISOLATED_INGRESS));
    assert_eq!(t.run_reason("from_pod", &packet(PEER, OUTSIDE, TCP, 40030, 80, SYN)), (DROP, Reason::SpoofedSource));
    let mut truncated = packet(PEER, POD, TCP, 40031, 80, SYN);
    truncated.truncate(14 + 20 + 2);
    assert_eq!(t.run_reason("to_pod", &truncated), (DROP, Reason::Malformed), "truncated L4 to an isolated pod");
    let mut frag = packet(PEER, POD, TCP, 40032, 80, SYN);
    frag[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
    assert_eq!(t.run_reason("to_pod", &frag), (DROP, Reason::Fragment), "non-first fragment to an isolated pod");
    t.apply(&MirrorContents::default());
    assert_eq!(t.run_reason("to_pod", &packet(PEER, POD, TCP, 40033, 80, SYN)), (DROP, Reason::UnknownEndpoint));
}

/// Ethernet + IPv4 + ICMP with the given type and rest-of-header/payload bytes.
fn icmp(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 4 + body.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&[ty, 0, 0, 0]);
    p.extend_from_slice(body);
    p
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 1]);
    icmp(src, dst, ty, &body)
}

#[test]
fn icmp_echo_needs_a_rule_without_ports_and_its_reply_passes() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("icmp");
    let mut m = base(EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS);
    allow(&mut m, Direction::Ingress, PEER_ID, TCP, 1, 65535, 20);
    t.apply(&m);
    assert_eq!(t.run("to_pod", &echo(PEER, POD, 8, 77)), DROP, "a rule with ports does not open ICMP");
    m.policy.insert(PolicyKey::any_proto(SUBJECT, PEER_ID, Direction::Ingress), PolicyValue { rule_id: 21, flags: 0 });
    t.apply(&m);
    assert_eq!(t.run("to_pod", &echo(PEER, POD, 8, 78)), PASS, "a rule without ports allows the peer");
    assert_eq!(t.run("from_pod", &echo(POD, PEER, 0, 78)), PASS, "the echo reply of an allowed request");
    assert_eq!(t.run("from_pod", &echo(POD, PEER, 8, 79)), DROP, "egress is still isolated");
}

#[test]
fn icmp_errors_pass_only_when_related_to_a_tracked_flow() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("related");
    let mut m = base(EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS);
    allow(&mut m, Direction::Egress, PEER_ID, UDP, 53, 53, 22);
    t.apply(&m);
    // The pod sends a datagram (allowed, tracked); the peer answers "port unreachable",
    // quoting the pod's datagram.
    let sent = packet(POD, PEER, UDP, 40400, 53, 0);
    assert_eq!(t.run("from_pod", &sent), PASS);
    let mut quoted = vec![0u8; 4];
    quoted.extend_from_slice(&sent[14..14 + 28]);
    assert_eq!(t.run_reason("to_pod", &icmp(PEER, POD, 3, &quoted)), (PASS, Reason::Related), "related error");
    let other = packet(POD, PEER, UDP, 40401, 53, 0);
    let mut unrelated = vec![0u8; 4];
    unrelated.extend_from_slice(&other[14..14 + 28]);
    assert_eq!(t.run("to_pod", &icmp(PEER, POD, 3, &unrelated)), DROP, "error about an untracked flow");
}

#[test]
fn every_pinned_map_has_the_key_value_sizes_and_capacity_of_its_shared_type() {
    use std::mem::size_of;

    use aya::maps::MapInfo;
    use ward_common::maps::*;
    if !privileged() {
        return;
    }
    let t = TestDatapath::new("layout");
    // LPM trie keys are the 4-byte prefix length plus the data.
    let expected: [(&str, usize, usize, u32); 7] = [
        (MAP_ENDPOINTS, size_of::<EndpointKey>(), size_of::<EndpointInfo>(), ENDPOINTS_MAX),
        (MAP_IPCACHE, size_of::<IpcacheKey>(), size_of::<IpcacheValue>(), IPCACHE_MAX),
        (MAP_POLICY, size_of::<PolicyKey>(), size_of::<PolicyValue>(), POLICY_MAX),
        (MAP_CT, size_of::<CtKey>(), size_of::<CtValue>(), CT_MAX),
        (MAP_CONFIG, 4, size_of::<ConfigValue>(), 1),
        (MAP_REASON_CNT, 4, size_of::<Counter>(), ward_common::Reason::COUNT),
        (MAP_RULE_CNT, 4, size_of::<Counter>(), RULE_CNT_MAX),
    ];
    for (name, key, value, max) in expected {
        let info = MapInfo::from_pin(t.dp.pin_dir().join(name)).unwrap_or_else(|e| panic!("{name} not pinned: {e}"));
        assert_eq!(info.key_size() as usize, key, "{name} key size");
        assert_eq!(info.value_size() as usize, value, "{name} value size");
        assert_eq!(info.max_entries(), max, "{name} capacity");
    }
    let events = MapInfo::from_pin(t.dp.pin_dir().join(MAP_EVENTS)).expect("events pinned");
    assert_eq!(events.max_entries(), EVENTS_BYTES);
    assert_eq!(ALL_MAPS.len(), expected.len() + 1, "every shared map name is checked");
}

#[test]
fn every_verdict_counts_its_reason_and_a_drop_emits_a_flow_event() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("reasons");
    let mut m = base(EP_ISOLATED_INGRESS);
    allow(&mut m, Direction::Ingress, PEER_ID, TCP, 80, 80, 31);
    t.apply(&m);
    while t.dp.maps.next_event().is_some() {}
    assert_eq!(t.run_reason("to_pod", &packet(PEER, POD, TCP, 40500, 80, SYN)), (PASS, Reason::PolicyAllow));
    assert_eq!(t.run_reason("to_pod", &packet(PEER, POD, TCP, 40500, 80, ACK)), (PASS, Reason::Established));
    assert_eq!(t.run_reason("from_pod", &packet(POD, PEER, TCP, 80, 40500, ACK)), (PASS, Reason::Reply));
    assert_eq!(t.run_reason("from_pod", &packet(POD, OUTSIDE, UDP, 1, 2, 0)), (PASS, Reason::NotIsolated));
    assert_eq!(t.run_reason("to_pod", &packet(NODE, POD, TCP, 40501, 22, SYN)), (PASS, Reason::FromHost));
    assert_eq!(t.run_reason("from_pod", &packet(PEER, POD, TCP, 1, 2, SYN)), (DROP, Reason::SpoofedSource));
    // The default-deny drop, with its flow event (drop events are on by default).
    while t.dp.maps.next_event().is_some() {}
    assert_eq!(t.run_reason("to_pod", &packet(OUTSIDE, POD, TCP, 40502, 81, SYN)), (DROP, Reason::PolicyDenied));
    let ev = t.dp.maps.next_event().expect("a flow event for the drop");
    assert_eq!(ev.reason, Reason::PolicyDenied as u8);
    assert_eq!(ev.verdict, Verdict::Drop as u8);
    assert_eq!(ev.dir, Direction::Ingress as u8);
    assert_eq!(ev.saddr, v4_mapped(OUTSIDE.octets()));
    assert_eq!(ev.daddr, v4_mapped(POD.octets()));
    assert_eq!((u16::from_be_bytes(ev.sport_be), u16::from_be_bytes(ev.dport_be)), (40502, 81));
    assert_eq!((ev.proto, ev.tcp_flags), (TCP, SYN));
    assert_eq!((ev.ep_id, ev.subject_identity, ev.peer_identity), (7, SUBJECT, ID_WORLD));
    assert!(t.dp.maps.next_event().is_none(), "one event per drop");
    // Rule counters count the allowing rule.
    let rules = t.dp.maps.rule_counters().expect("rule counters");
    assert_eq!(rules.get(&31).map(|c| c.packets), Some(1), "rule 31 allowed one new flow: {rules:?}");
}
