//! The closest miss of a default-deny drop: the rule of an isolating policy that matched the
//! peer but not the port, or the port but not the peer.
//!
//! Read from the compiled policy map, the same entries the kernel looked up when it dropped
//! the flow, so the answer is about the revision the verdict was taken under, not about what
//! the policies say now. The flow task builds a [`MissIndex`] once per compile (published
//! with its view) and asks it for each default-deny drop; `explain` asks it for each
//! default-deny side of a local pod. A drop scans only its own subject's entries.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use ward_common::Direction;
use ward_common::identity::ID_ANY;
use ward_common::maps::{POLICY_PROTO_BITS, PolicyKey, PolicyValue};
use ward_common::ports::PortBlock;

use crate::compile::RuleInfo;

/// Ports `first..=last` of one IP protocol; `proto` 0: every protocol (and port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub proto: u8,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// What one policy map entry allows: below `POLICY_PROTO_BITS` every protocol, at it
    /// every port of one protocol, past it one aligned block of ports.
    pub fn of_key(k: &PolicyKey) -> PortRange {
        if k.prefixlen < POLICY_PROTO_BITS {
            return PortRange { proto: 0, first: 0, last: u16::MAX };
        }
        // The key's length is at most 96 bits: the block's length fits in a u8.
        let block = PortBlock { base: k.port(), prefix_len: (k.prefixlen - POLICY_PROTO_BITS).min(16) as u8 };
        PortRange { proto: k.proto, first: block.first(), last: block.last() }
    }

    pub fn covers(&self, proto: u8, port: u16) -> bool {
        (self.proto == 0 || self.proto == proto) && (self.first..=self.last).contains(&port)
    }
}

/// An IP protocol's name as policies and flow records write it.
pub fn proto_name(proto: u8) -> String {
    match proto {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        1 => "ICMPv4".into(),
        58 => "ICMPv6".into(),
        n => format!("protocol {n}"),
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = proto_name(self.proto);
        match (self.proto, self.first, self.last) {
            (0, _, _) => f.write_str("every protocol and port"),
            (_, 0, u16::MAX) => write!(f, "every {name} port"),
            (_, a, b) if a == b => write!(f, "{a}/{name}"),
            (_, a, b) => write!(f, "{a}-{b}/{name}"),
        }
    }
}

/// Which half of a rule matched a flow it did not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Matched {
    /// The rule admits this peer, on other ports (or protocols).
    Peer,
    /// The rule admits this port, from or to other peers.
    Port,
}

/// The rule that came closest to allowing a denied flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosestMiss {
    pub rule: RuleInfo,
    pub rule_id: u32,
    pub matched: Matched,
    /// What the rule allows: for [`Matched::Peer`], this peer's ports; for
    /// [`Matched::Port`], the ports of every peer it admits. Merged, in order.
    pub allows: Vec<PortRange>,
}

/// The flow's protocol and port as the miss text names them: `port 81/TCP`, or the protocol
/// alone when it has no ports in policy.
pub fn flow_text(proto: u8, port: u16) -> String {
    match proto {
        6 | 17 | 132 => format!("port {port}/{}", proto_name(proto)),
        other => proto_name(other),
    }
}

/// The sentence both `explain` and `ward observe` show for a miss: `policy` is how the rule's
/// policy is named (`shop/db rule 0`), `flow` the [`flow_text`] of the denied flow.
pub fn miss_text(rule: &str, matched: Matched, allows: &[String], flow: &str) -> String {
    match matched {
        Matched::Port => format!("{rule} allows {flow} but not this peer"),
        Matched::Peer if allows.is_empty() => format!("{rule} allows this peer but not {flow}"),
        Matched::Peer => format!("{rule} allows this peer but not {flow} (only {})", allows.join(", ")),
    }
}

impl ClosestMiss {
    /// [`miss_text`] for a flow of `proto`/`port`, the rule named with its direction.
    pub fn text(&self, proto: u8, port: u16) -> String {
        let rule = format!("{} {} rule {}", self.rule.policy, self.rule.direction.as_str(), self.rule.index);
        let allows: Vec<String> = self.allows.iter().map(ToString::to_string).collect();
        miss_text(&rule, self.matched, &allows, &flow_text(proto, port))
    }
}

/// One allow entry of the compiled policy map, as the miss search reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    peer: u32,
    range: PortRange,
    rule_id: u32,
}

/// The compiled policy map's entries grouped per (subject identity, direction).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MissIndex {
    by_subject: BTreeMap<(u32, u8), Vec<Entry>>,
}

impl MissIndex {
    pub fn build(policy: &BTreeMap<PolicyKey, PolicyValue>) -> MissIndex {
        let mut by_subject: BTreeMap<(u32, u8), Vec<Entry>> = BTreeMap::new();
        for (k, v) in policy {
            let entry = Entry { peer: k.peer(), range: PortRange::of_key(k), rule_id: v.rule_id };
            by_subject.entry((k.subject(), k.dir)).or_default().push(entry);
        }
        MissIndex { by_subject }
    }

    /// The closest miss for a flow that `subject` (a label identity) dropped by default deny
    /// in `dir`, with the peer resolved to `peers` (its label and CIDR identity, as the kernel
    /// looked them up), on `proto`/`port` (0 for protocols without ports). A rule naming this
    /// peer (by label or CIDR identity) wins over one that matches the port (the peer is the
    /// harder half to get right by accident), and that over a rule open to every peer on other
    /// ports; among equals, the first rule in policy order. `None` when no rule of the subject
    /// matches either half, or its rule ids are unknown to `rules`.
    pub fn closest_miss(
        &self,
        rules: &BTreeMap<u32, RuleInfo>,
        subject: u32,
        dir: Direction,
        peers: [u32; 2],
        proto: u8,
        port: u16,
    ) -> Option<ClosestMiss> {
        let entries = self.by_subject.get(&(subject, dir as u8))?;
        let named = |e: &Entry| peers.contains(&e.peer);
        let peer_ok = |e: &Entry| e.peer == ID_ANY || named(e);
        // Peer matches by this peer's own identity first, then port matches, then rules open
        // to every peer (they match anyone, which says little about this one).
        let pick = |matched: Matched, any_peer: bool| {
            let (rule_id, rule) = entries
                .iter()
                .filter(|e| match matched {
                    Matched::Peer => named(e) != any_peer && peer_ok(e) && !e.range.covers(proto, port),
                    Matched::Port => !peer_ok(e) && e.range.covers(proto, port),
                })
                .filter_map(|e| rules.get(&e.rule_id).map(|r| (e.rule_id, r)))
                .min_by(|a, b| a.1.cmp(b.1))?;
            let ranges = entries
                .iter()
                .filter(|e| e.rule_id == rule_id && (matched == Matched::Port || peer_ok(e)))
                .map(|e| e.range);
            Some(ClosestMiss { rule: rule.clone(), rule_id, matched, allows: merge(ranges) })
        };
        pick(Matched::Peer, false).or_else(|| pick(Matched::Port, false)).or_else(|| pick(Matched::Peer, true))
    }
}

/// Sorted ranges with overlapping or adjacent ones of a protocol joined; an every-protocol
/// range stands for all the others.
pub(super) fn merge(ranges: impl Iterator<Item = PortRange>) -> Vec<PortRange> {
    let mut all: Vec<PortRange> = ranges.collect();
    if let Some(any) = all.iter().find(|r| r.proto == 0) {
        return vec![*any];
    }
    all.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(last) if last.proto == r.proto && u32::from(r.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::PolicyRef;
    use ward_common::ports::{MAX_BLOCKS, range_to_blocks};

    const SUBJECT: u32 = 300;
    const API: u32 = 301;
    const WEB: u32 = 302;

    fn rule(name: &str, index: usize) -> RuleInfo {
        RuleInfo { policy: PolicyRef::new("shop", name), direction: Direction::Ingress, index }
    }

    /// Rule 10 (shop/db rule 0): API on 5432/TCP. Rule 11 (shop/db rule 1): WEB on
    /// 8000-8010/TCP and 53/UDP. Rule 12 (shop/metrics rule 0): anyone on 9090/TCP.
    fn index() -> (MissIndex, BTreeMap<u32, RuleInfo>) {
        let dir = Direction::Ingress;
        let mut policy = BTreeMap::new();
        let mut add = |peer, proto, first, last, rule_id| {
            let mut blocks = [PortBlock { base: 0, prefix_len: 0 }; MAX_BLOCKS];
            let n = range_to_blocks(first, last, &mut blocks);
            for b in &blocks[..n] {
                policy.insert(PolicyKey::port_block(SUBJECT, peer, dir, proto, *b), PolicyValue { rule_id, flags: 0 });
            }
        };
        add(API, 6, 5432, 5432, 10);
        add(WEB, 6, 8000, 8010, 11);
        add(WEB, 17, 53, 53, 11);
        add(ID_ANY, 6, 9090, 9090, 12);
        // Another subject's entry never answers for this one.
        policy.insert(PolicyKey::any_proto(SUBJECT + 1, API, dir), PolicyValue { rule_id: 13, flags: 0 });
        let rules = BTreeMap::from([
            (10, rule("db", 0)),
            (11, rule("db", 1)),
            (12, rule("metrics", 0)),
            (13, rule("other", 0)),
        ]);
        (MissIndex::build(&policy), rules)
    }

    #[test]
    fn a_rule_that_admits_the_peer_on_other_ports_is_the_closest_miss() {
        let (ix, rules) = index();
        let miss = ix.closest_miss(&rules, SUBJECT, Direction::Ingress, [WEB, 2], 6, 8443).expect("a miss");
        assert_eq!((miss.rule_id, miss.matched), (11, Matched::Peer));
        assert_eq!(
            miss.allows,
            [PortRange { proto: 6, first: 8000, last: 8010 }, PortRange { proto: 17, first: 53, last: 53 }],
            "the blocks of 8000-8010 merged back into one range"
        );
        assert_eq!(
            miss.text(6, 8443),
            "shop/db ingress rule 1 allows this peer but not port 8443/TCP (only 8000-8010/TCP, 53/UDP)"
        );
        // The peer known by its CIDR identity only matches just the same.
        let by_cidr = ix.closest_miss(&rules, SUBJECT, Direction::Ingress, [1, API], 17, 5432).expect("a miss");
        assert_eq!((by_cidr.rule_id, by_cidr.matched), (10, Matched::Peer));
        assert_eq!(
            by_cidr.text(17, 5432),
            "shop/db ingress rule 0 allows this peer but not port 5432/UDP (only 5432/TCP)"
        );
    }

    #[test]
    fn a_rule_that_admits_the_port_to_other_peers_is_the_miss_when_no_rule_admits_the_peer() {
        let (ix, rules) = index();
        let stranger = 399;
        let miss = ix.closest_miss(&rules, SUBJECT, Direction::Ingress, [stranger, 2], 6, 5432).expect("a miss");
        assert_eq!((miss.rule_id, miss.matched), (10, Matched::Port));
        assert_eq!(miss.text(6, 5432), "shop/db ingress rule 0 allows port 5432/TCP but not this peer");
        // 9090 is open to every peer: with no rule naming the peer or the port, that rule's
        // peer match is the miss (the ICMP flow here has no port at all).
        let icmp = ix.closest_miss(&rules, SUBJECT, Direction::Ingress, [stranger, 2], 1, 0).expect("a miss");
        assert_eq!((icmp.rule_id, icmp.matched), (12, Matched::Peer));
        assert_eq!(icmp.text(1, 0), "shop/metrics ingress rule 0 allows this peer but not ICMPv4 (only 9090/TCP)");
    }

    #[test]
    fn no_miss_without_a_half_match_another_direction_or_unknown_rules() {
        let (ix, rules) = index();
        // A peer no rule names, on a port no rule opens: only the ID_ANY rule matches the peer.
        let m = ix.closest_miss(&rules, SUBJECT, Direction::Ingress, [399, 2], 6, 1).expect("the open rule");
        assert_eq!(m.rule_id, 12);
        let mut without_any = rules.clone();
        without_any.remove(&12);
        assert_eq!(ix.closest_miss(&without_any, SUBJECT, Direction::Ingress, [399, 2], 6, 1), None);
        assert_eq!(ix.closest_miss(&rules, SUBJECT, Direction::Egress, [API, 2], 6, 1), None, "no egress entries");
        assert_eq!(ix.closest_miss(&rules, 999, Direction::Ingress, [API, 2], 6, 1), None, "not a subject");
        assert_eq!(ix.closest_miss(&BTreeMap::new(), SUBJECT, Direction::Ingress, [API, 2], 6, 1), None);
    }

    #[test]
    fn ranges_print_as_policies_write_them() {
        let r = |proto, first, last| PortRange { proto, first, last }.to_string();
        assert_eq!(r(6, 80, 80), "80/TCP");
        assert_eq!(r(132, 1, 9), "1-9/SCTP");
        assert_eq!(r(17, 0, u16::MAX), "every UDP port");
        assert_eq!(r(0, 0, u16::MAX), "every protocol and port");
        let merged = merge([r2(6, 10, 19), r2(6, 20, 29), r2(6, 40, 49), r2(17, 1, 1)].into_iter());
        assert_eq!(merged, [r2(6, 10, 29), r2(6, 40, 49), r2(17, 1, 1)]);
        assert_eq!(merge([r2(6, 1, 1), r2(0, 0, u16::MAX)].into_iter()), [r2(0, 0, u16::MAX)]);
    }

    fn r2(proto: u8, first: u16, last: u16) -> PortRange {
        PortRange { proto, first, last }
    }
}
