//! Kernel-logic tests: the real eBPF programs, loaded into this kernel, run on crafted
//! packets with BPF_PROG_TEST_RUN against maps the test fills in. Root required; under CI
//! (CI=true) a missing privilege fails the test instead of skipping it. The crafted-packet
//! suite (`crafted_packets.rs`) holds the attacker's cases; these are the basic semantics.

mod support;

use std::net::{Ipv4Addr, Ipv6Addr};

use ward_common::{
    Direction, Reason, Verdict,
    addr::v4_mapped,
    identity::{CIDR_ID_BIT, ID_ANY, ID_WORLD},
    maps::{
        EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EVENTS_BYTES, FlowEvent, IpcacheKey, IpcacheValue, PolicyKey,
        PolicyValue,
    },
};

use support::*;
use ward_agent::datapath::MirrorContents;

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
fn icmp(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, ty: u8, body: &[u8]) -> Vec<u8> {
    let mut rest = [0u8; 4];
    let n = body.len().min(4);
    rest[..n].copy_from_slice(&body[..n]);
    V4::new(src, dst, ICMP).frame(&icmp_msg(ty, 0, rest, body.get(4..).unwrap_or(&[])))
}

fn echo(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, ty: u8, id: u16) -> Vec<u8> {
    V4::new(src, dst, ICMP).frame(&icmp_msg(ty, 0, echo_rest(id, 1), &[]))
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
    let expected: [(&str, usize, usize, u32); 10] = [
        (MAP_ENDPOINTS, size_of::<EndpointKey>(), size_of::<EndpointInfo>(), ENDPOINTS_MAX),
        (MAP_IPCACHE, size_of::<IpcacheKey>(), size_of::<IpcacheValue>(), IPCACHE_MAX),
        (MAP_POLICY, size_of::<PolicyKey>(), size_of::<PolicyValue>(), POLICY_MAX),
        (MAP_CT, size_of::<CtKey>(), size_of::<CtValue>(), CT_MAX),
        (MAP_CONFIG, 4, size_of::<ConfigValue>(), 1),
        (MAP_REASON_DIR, 4, size_of::<Counter>(), REASON_DIR_MAX),
        (MAP_RULE_CNT, 4, size_of::<Counter>(), RULE_CNT_MAX),
        (MAP_CT_COUNT, size_of::<CtCountKey>(), size_of::<i64>(), CT_COUNT_MAX),
        (MAP_FRAGS, size_of::<FragKey>(), size_of::<FragValue>(), FRAGS_MAX),
        (MAP_EVENTS_LOST, 4, size_of::<u64>(), ward_common::Reason::COUNT),
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
fn every_pinned_http_map_has_the_sizes_of_its_shared_type() {
    use std::mem::size_of;

    use aya::maps::MapInfo;
    use ward_common::http::conn::*;
    use ward_common::http::rules::HttpSet;
    use ward_common::maps::Counter;
    if !privileged() {
        return;
    }
    let t = TestDatapath::new("http-layout");
    let expected: [(&str, usize, usize, u32); 4] = [
        (MAP_HTTP_PROG, 4, 4, 1),
        (MAP_HTTP_CONN, size_of::<HttpConnKey>(), size_of::<HttpConn>(), HTTP_CONN_MAX),
        (MAP_HTTP_SETS, 4, size_of::<HttpSet>(), HTTP_SETS_MAX),
        (MAP_HTTP_CNT, 4, size_of::<Counter>(), HttpReason::COUNT),
    ];
    for (name, key, value, max) in expected {
        let info = MapInfo::from_pin(t.dp.pin_dir().join(name)).unwrap_or_else(|e| panic!("{name} not pinned: {e}"));
        assert_eq!(info.key_size() as usize, key, "{name} key size");
        assert_eq!(info.value_size() as usize, value, "{name} value size");
        assert_eq!(info.max_entries(), max, "{name} capacity");
    }
    let events = MapInfo::from_pin(t.dp.pin_dir().join(MAP_HTTP_EVENTS)).expect("HTTP events pinned");
    assert_eq!(events.max_entries(), HTTP_EVENTS_BYTES);
    assert_eq!(HTTP_MAPS.len(), expected.len() + 1, "every HTTP map name is checked");
}

/// A full ring buffer loses events, never verdicts, and counts each loss by reason:
/// emitted = delivered + lost, exactly.
#[test]
fn a_full_event_ring_counts_every_lost_event_by_reason() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("lost");
    t.apply(&base(EP_ISOLATED_INGRESS));
    while t.dp.maps.next_event().is_some() {}
    let before = t.dp.maps.events_lost().expect("loss counters");
    // Each record takes 80 bytes plus an 8-byte header: the ring holds fewer than this many.
    let capacity = (EVENTS_BYTES as usize) / (std::mem::size_of::<FlowEvent>() + 8);
    let sent = capacity + 100;
    let pkt = packet(OUTSIDE, POD, TCP, 40600, 81, SYN);
    for _ in 0..sent {
        assert_eq!(t.run_reason("to_pod", &pkt), (DROP, Reason::PolicyDenied), "a full ring never changes a verdict");
    }
    let mut delivered = 0;
    while t.dp.maps.next_event().is_some() {
        delivered += 1;
    }
    let lost = t.dp.maps.events_lost().expect("loss counters");
    let lost_now =
        lost.get(&Reason::PolicyDenied).copied().unwrap_or(0) - before.get(&Reason::PolicyDenied).copied().unwrap_or(0);
    assert!(lost_now >= 100, "at least the overflow is lost: {lost_now} (delivered {delivered})");
    assert_eq!(delivered + lost_now as usize, sent, "emitted = delivered + lost");
    assert_eq!(lost.keys().copied().collect::<Vec<_>>(), [Reason::PolicyDenied], "counted under its reason: {lost:?}");
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
    assert_eq!((ev.icmp_type, ev.icmp_code), (0, 0), "no ICMP fields for TCP");
    // An ICMP drop carries the message's type and code (an unrelated "administratively
    // prohibited" destination unreachable, then an echo request with a nonzero code).
    let unreach = V4::new(OUTSIDE, POD, ICMP).frame(&icmp_msg(3, 13, [0; 4], &[]));
    assert_eq!(t.run_reason("to_pod", &unreach).0, DROP);
    let ev = t.dp.maps.next_event().expect("a flow event for the ICMP drop");
    assert_eq!((ev.proto, ev.icmp_type, ev.icmp_code), (ICMP, 3, 13), "{ev:?}");
    let echo = V4::new(OUTSIDE, POD, ICMP).frame(&icmp_msg(8, 5, echo_rest(9, 1), &[]));
    assert_eq!(t.run_reason("to_pod", &echo), (DROP, Reason::PolicyDenied));
    let ev = t.dp.maps.next_event().expect("a flow event for the echo drop");
    assert_eq!((ev.icmp_type, ev.icmp_code), (8, 5), "{ev:?}");
    // Rule counters count the allowing rule.
    let rules = t.dp.maps.rule_counters().expect("rule counters");
    assert_eq!(rules.get(&31).map(|c| c.packets), Some(1), "rule 31 allowed one new flow: {rules:?}");
}

/// Audit mode in the kernel: an endpoint no enforced policy isolates but audited ones would
/// (`EP_AUDIT_INGRESS`) passes everything; a new flow the audited entries (`POLICY_AUDIT`) do
/// not allow is `Audit` with a flow event (emitted with drops), one they allow is
/// `NotIsolated` without one, and the flow is tracked like any allowed flow. An audit entry
/// under an isolated endpoint never allows.
#[test]
fn audited_entries_never_allow_and_mark_what_they_would_deny() {
    use ward_common::maps::{EP_AUDIT_INGRESS, POLICY_AUDIT};
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new("audit");
    let mut m = base(EP_AUDIT_INGRESS);
    m.policy.insert(
        PolicyKey::port_block(
            SUBJECT,
            PEER_ID,
            Direction::Ingress,
            TCP,
            ward_common::ports::PortBlock { base: 80, prefix_len: 16 },
        ),
        PolicyValue { rule_id: 41, flags: POLICY_AUDIT },
    );
    t.apply(&m);
    while t.dp.maps.next_event().is_some() {}
    assert_eq!(t.run_reason("to_pod", &packet(PEER, POD, TCP, 40600, 80, SYN)), (PASS, Reason::NotIsolated));
    assert!(t.dp.maps.next_event().is_none(), "what the audited policies allow is not reported");
    assert_eq!(t.run_reason("to_pod", &packet(OUTSIDE, POD, TCP, 40601, 80, SYN)), (PASS, Reason::Audit));
    let ev = t.dp.maps.next_event().expect("a flow event for the audit");
    assert_eq!((ev.reason, ev.verdict, ev.dir), (Reason::Audit as u8, Verdict::Allow as u8, Direction::Ingress as u8));
    assert_eq!((ev.ep_id, ev.subject_identity, ev.rule_id), (7, SUBJECT, 0));
    // Tracked: its next packet is established, its reply passes, neither reported again.
    assert_eq!(t.run_reason("to_pod", &packet(OUTSIDE, POD, TCP, 40601, 80, ACK)), (PASS, Reason::Established));
    assert_eq!(t.run_reason("from_pod", &packet(POD, OUTSIDE, TCP, 80, 40601, SYN | ACK)), (PASS, Reason::Reply));
    assert!(t.dp.maps.next_event().is_none(), "one event per audited flow");
    assert_eq!(
        t.run_reason("to_pod", &packet(PEER, POD, TCP, 40602, 81, SYN)),
        (PASS, Reason::Audit),
        "port not in the audited rule"
    );

    // Enforce it (the compiler's switch: isolation bit, plain entry): the tracked flow is cut.
    let mut enforced = base(EP_ISOLATED_INGRESS);
    allow(&mut enforced, Direction::Ingress, PEER_ID, TCP, 80, 80, 41);
    t.apply(&enforced);
    assert_eq!(t.run_reason("to_pod", &packet(OUTSIDE, POD, TCP, 40601, 80, ACK)), (DROP, Reason::PolicyRevoked));
    assert_eq!(t.run_reason("to_pod", &packet(PEER, POD, TCP, 40603, 80, SYN)), (PASS, Reason::PolicyAllow));

    // An audit entry under an isolated endpoint is never an allow.
    let mut wrong = base(EP_ISOLATED_INGRESS);
    wrong.policy.insert(
        PolicyKey::any_proto(SUBJECT, PEER_ID, Direction::Ingress),
        PolicyValue { rule_id: 42, flags: POLICY_AUDIT },
    );
    t.apply(&wrong);
    assert_eq!(t.run_reason("to_pod", &packet(PEER, POD, TCP, 40604, 80, SYN)), (DROP, Reason::PolicyDenied));
}
