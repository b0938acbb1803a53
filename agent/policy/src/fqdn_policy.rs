//! What the DNS proxy enforces for one subject identity, compiled from the `fqdn` peers and
//! `dns` rules of the WardNetworkPolicies that select it for egress (`compile` calls
//! [`FqdnPolicyBuilder`] for each egress rule), and the pure decisions the proxy takes with it:
//! which names a pod may query ([`FqdnPolicy::query_allowed`]) and which learned entries an
//! answer opens ([`FqdnPolicy::learned_entries`]).
//!
//! Learned entries are per (endpoint, address, protocol, port block), written into
//! `WARD_FQDN` by the proxy (see `ward_common::fqdn`): the kernel allows a flow with one LPM
//! lookup, and an address several allowed names share (a CDN) simply gets the union of their
//! rules, with no identity to allocate at run time.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use ward_common::addr::Addr16;
use ward_common::fqdn::{LearnedKey, LearnedValue};
use ward_common::identity::ID_ANY;
use ward_common::ports::{MAX_BLOCKS, PortBlock, range_to_blocks};

use crate::fqdn::FqdnSelector;
use crate::validate::{NamedPort, PortRef, PortSpec, Protocol, Rule};

/// One block of ports of one protocol (a `ward_common::ports::PortBlock` with its protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct L4Block {
    pub proto: u8,
    pub base: u16,
    pub prefix_len: u8,
}

/// An `fqdn` peer of one egress rule and what that rule allows to its addresses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FqdnRule {
    pub selector: FqdnSelector,
    pub rule_id: u32,
    /// `None`: every protocol and port (the rule has no `ports`).
    pub ports: Option<Vec<L4Block>>,
}

/// One way a subject may reach DNS: to a peer identity (`ID_ANY` for every peer) on UDP or
/// TCP port 53, asking any name (`names: None`) or only names these select.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DnsEntry {
    pub peer: u32,
    pub proto: u8,
    pub names: Option<Vec<FqdnSelector>>,
}

/// The DNS proxy's rules for one subject identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FqdnPolicy {
    pub rules: Vec<FqdnRule>,
    /// Empty unless some port entry of the subject carries `dns` rules: then every way the
    /// subject may reach port 53, so a query is allowed by the union of those that cover it.
    pub dns: Vec<DnsEntry>,
}

/// Whether a query may go on (see [`FqdnPolicy::query_allowed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryVerdict {
    Allowed,
    /// No `dns` rule that covers this resolver selects the name: answered REFUSED.
    Refused,
}

impl FqdnPolicy {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.dns.is_empty()
    }

    /// Whether the subject may ask `qname` of a resolver whose identities are `peers` (label
    /// and CIDR identity from the ipcache) over `proto`. Without `dns` rules every name is.
    pub fn query_allowed(&self, peers: [u32; 2], proto: u8, qname: &str) -> QueryVerdict {
        if self.dns.is_empty() {
            return QueryVerdict::Allowed;
        }
        let covering = self.dns.iter().filter(|e| e.proto == proto && (e.peer == ID_ANY || peers.contains(&e.peer)));
        for e in covering {
            match &e.names {
                None => return QueryVerdict::Allowed,
                Some(names) if names.iter().any(|s| s.matches(qname)) => return QueryVerdict::Allowed,
                Some(_) => {}
            }
        }
        QueryVerdict::Refused
    }

    /// The rules whose selector matches the queried name (the name asked, not the names of
    /// its CNAME chain: a name that merely points at an allowed one opens nothing).
    pub fn matching_rules<'a>(&'a self, qname: &'a str) -> impl Iterator<Item = &'a FqdnRule> + 'a {
        self.rules.iter().filter(move |r| r.selector.matches(qname))
    }

    /// Whether an answer for `qname` opens anything.
    pub fn opens(&self, qname: &str) -> bool {
        self.matching_rules(qname).next().is_some()
    }

    /// The `WARD_FQDN` entries that the names in `names` open for `addr` at endpoint `ep_id`,
    /// expiring at `expires_ns`: one per port block of every rule that matches one of the
    /// names (the lowest rule id where several give the same block).
    pub fn learned_entries<'n>(
        &self,
        ep_id: u32,
        addr: Addr16,
        names: impl IntoIterator<Item = &'n str>,
        expires_ns: u64,
        out: &mut BTreeMap<LearnedKey, LearnedValue>,
    ) {
        for name in names {
            for rule in self.matching_rules(name) {
                let mut put = |key: LearnedKey| {
                    let v = out.entry(key).or_insert(LearnedValue { rule_id: rule.rule_id, _pad: 0, expires_ns });
                    v.rule_id = v.rule_id.min(rule.rule_id);
                    v.expires_ns = v.expires_ns.max(expires_ns);
                };
                match &rule.ports {
                    None => put(LearnedKey::any_proto(ep_id, addr)),
                    Some(blocks) => {
                        for b in blocks {
                            let block = PortBlock { base: b.base, prefix_len: b.prefix_len };
                            put(LearnedKey::port_block(ep_id, addr, b.proto, block));
                        }
                    }
                }
            }
        }
    }
}

/// Whether a policy puts the pods it selects behind the DNS proxy: a WardNetworkPolicy with
/// an `fqdn` peer or a `dns` rule in its egress.
pub fn has_fqdn(p: &crate::validate::Policy) -> bool {
    p.egress.iter().flatten().any(|r| {
        r.peers.iter().flatten().any(|peer| matches!(peer, crate::validate::Peer::Fqdn(_)))
            || r.ports.iter().flatten().any(|s| s.dns.is_some())
    })
}

/// Collects the [`FqdnPolicy`] of each subject while `compile` walks its egress rules.
#[derive(Debug, Default)]
pub struct FqdnPolicyBuilder {
    subjects: BTreeMap<u32, Building>,
}

#[derive(Debug, Default)]
struct Building {
    rules: BTreeSet<FqdnRule>,
    dns: BTreeSet<DnsEntry>,
    constrained: bool,
}

impl FqdnPolicyBuilder {
    /// One egress rule of a policy selecting `subject`; `peers` are its peer identities with
    /// their named ports, as `compile` resolved them.
    pub fn add_rule(&mut self, subject: u32, rule: &Rule, rule_id: u32, peers: &BTreeMap<u32, &[NamedPort]>) {
        let b = self.subjects.entry(subject).or_default();
        for peer in rule.peers.iter().flatten() {
            if let crate::validate::Peer::Fqdn(selector) = peer
                && let Some(ports) = l4_blocks(&rule.ports)
            {
                b.rules.insert(FqdnRule { selector: selector.clone(), rule_id, ports });
            }
        }
        // Every way this rule lets the subject reach port 53, and the names it lets it ask.
        for proto in [Protocol::Udp, Protocol::Tcp] {
            match &rule.ports {
                None => {
                    for peer in peers.keys() {
                        b.dns.insert(DnsEntry { peer: *peer, proto: proto.number(), names: None });
                    }
                }
                Some(specs) => {
                    for spec in specs {
                        b.constrained |= spec.dns.is_some();
                        for (peer, dst_ports) in peers {
                            if spec.matches_l4(proto, ward_common::fqdn::DNS_PORT, dst_ports) {
                                let names = spec.dns.clone();
                                b.dns.insert(DnsEntry { peer: *peer, proto: proto.number(), names });
                            }
                        }
                    }
                }
            }
        }
    }

    /// The non-empty policies by subject identity.
    pub fn finish(self) -> BTreeMap<u32, FqdnPolicy> {
        self.subjects
            .into_iter()
            .map(|(id, b)| {
                let dns = if b.constrained { b.dns.into_iter().collect() } else { Vec::new() };
                (id, FqdnPolicy { rules: b.rules.into_iter().collect(), dns })
            })
            .filter(|(_, p)| !p.is_empty())
            .collect()
    }
}

/// The L4 blocks a rule allows to an fqdn peer's addresses: `Some(None)` for every protocol
/// and port, `None` when it allows none (only named ports, which addresses outside the
/// cluster do not have, or only HTTP ports).
fn l4_blocks(ports: &Option<Vec<PortSpec>>) -> Option<Option<Vec<L4Block>>> {
    let Some(specs) = ports else {
        return Some(None);
    };
    let mut out = Vec::new();
    for spec in specs {
        if spec.http.is_some() {
            continue;
        }
        let proto = spec.protocol.number();
        match (&spec.port, spec.end_port) {
            (PortRef::Any, _) => out.push(L4Block { proto, base: 0, prefix_len: 0 }),
            (PortRef::Number(p), None) => out.push(L4Block { proto, base: *p, prefix_len: 16 }),
            (PortRef::Number(first), Some(last)) => {
                let mut blocks = [PortBlock { base: 0, prefix_len: 0 }; MAX_BLOCKS];
                let n = range_to_blocks(*first, last, &mut blocks);
                out.extend(blocks[..n].iter().map(|b| L4Block { proto, base: b.base, prefix_len: b.prefix_len }));
            }
            (PortRef::Named(_), _) => {}
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() { None } else { Some(Some(out)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_common::fqdn::LEARNED_PROTO_BITS;

    fn sel(p: &str) -> FqdnSelector {
        FqdnSelector::pattern(p).expect("test pattern")
    }

    fn policy() -> FqdnPolicy {
        FqdnPolicy {
            rules: vec![
                FqdnRule {
                    selector: sel("api.bank.example"),
                    rule_id: 5,
                    ports: Some(vec![L4Block { proto: 6, base: 443, prefix_len: 16 }]),
                },
                FqdnRule {
                    selector: sel("*.bank.example"),
                    rule_id: 3,
                    ports: Some(vec![
                        L4Block { proto: 6, base: 443, prefix_len: 16 },
                        L4Block { proto: 6, base: 80, prefix_len: 16 },
                    ]),
                },
                FqdnRule { selector: sel("**.s3.example"), rule_id: 9, ports: None },
            ],
            dns: vec![],
        }
    }

    #[test]
    fn an_answer_opens_the_union_of_the_matching_rules_with_the_lowest_rule_id() {
        let mut out = BTreeMap::new();
        policy().learned_entries(7, [1; 16], ["api.bank.example"], 1000, &mut out);
        let k443 = LearnedKey::port_block(7, [1; 16], 6, PortBlock { base: 443, prefix_len: 16 });
        let k80 = LearnedKey::port_block(7, [1; 16], 6, PortBlock { base: 80, prefix_len: 16 });
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[&k443].rule_id, 3);
        assert_eq!(out[&k80].rule_id, 3);
        assert_eq!(out[&k443].expires_ns, 1000);
        assert_eq!(k443.prefixlen, LEARNED_PROTO_BITS + 16);
    }

    #[test]
    fn names_no_rule_selects_open_nothing_and_port_less_rules_open_everything() {
        let p = policy();
        let mut out = BTreeMap::new();
        p.learned_entries(7, [1; 16], ["bank.example", "a.b.bank.example", "tracker.ads.example"], 5, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert!(!p.opens("bank.example"));
        p.learned_entries(7, [1; 16], ["x.y.s3.example"], 5, &mut out);
        assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![LearnedKey::any_proto(7, [1; 16])]);
    }

    #[test]
    fn dns_rules_refuse_names_no_covering_entry_selects() {
        let mut p = policy();
        assert_eq!(p.query_allowed([300, 1], 17, "anything.example"), QueryVerdict::Allowed, "no dns rules");
        p.dns = vec![
            DnsEntry { peer: 300, proto: 17, names: Some(vec![sel("*.bank.example")]) },
            DnsEntry { peer: 400, proto: 17, names: None },
        ];
        assert_eq!(p.query_allowed([300, 1], 17, "api.bank.example"), QueryVerdict::Allowed);
        assert_eq!(p.query_allowed([300, 1], 17, "evil.example"), QueryVerdict::Refused);
        assert_eq!(p.query_allowed([300, 1], 6, "api.bank.example"), QueryVerdict::Refused, "not over TCP");
        assert_eq!(p.query_allowed([400, 1], 17, "evil.example"), QueryVerdict::Allowed, "unconstrained peer");
    }
}
