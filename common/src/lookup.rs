//! The policy lookup order, written once for the kernel and for user space.
//!
//! The eBPF programs call [`decide_new_flow`] with tables backed by BPF maps; the agent's
//! `explain` and the compiler's tests call it with tables backed by the compiled map contents.
//!
//! Lookup order for a packet that starts a flow at an endpoint, in direction `dir`:
//! 1. Resolve the peer address in the ipcache to (label identity, CIDR identity); a miss is
//!    (`ID_WORLD`, `ID_WORLD`).
//! 2. Ingress from a node address (`ID_HOST`) that the node's own stack sent: allowed
//!    (`FromHost`). A packet forwarded from elsewhere with a node address as its source is
//!    not the node's traffic and goes on to policy like any other.
//! 3. The endpoint is not isolated in `dir`: allowed (`NotIsolated`). When audited policies
//!    would isolate it (`EP_AUDIT_*`), the same three peer lookups run over their entries
//!    (`POLICY_AUDIT`): a miss is still allowed, as `Audit` (what they would deny). An audited
//!    policy therefore never changes what passes; and for a pod an enforced policy isolates,
//!    audited ones could only add allows, so they have nothing to report there.
//! 3a. Egress to a Service address (`ID_SERVICE`): deferred to the translated backend
//!    (`ServicePending`, see `crate::service`), where this same function decides it.
//! 4. Policy LPM lookups, full key, peer = label identity, then CIDR identity, then `ID_ANY`:
//!    the first plain hit allows (`PolicyAllow`, with the entry's rule id; an audit entry
//!    never allows). A hit on an HTTP entry (`http::rules::POLICY_HTTP`) admits the
//!    connection only for the requests its rule set admits: its set is noted and the lookups go on, because a plain allow for the same
//!    peer and port, under any of the three peer identities, moots the HTTP rules (the union
//!    of NetworkPolicy rules). HTTP hits only: `PolicyAllow` with `Decision::http` set.
//! 5. Egress of a pod behind the DNS proxy only: the learned-address entry of (endpoint, destination, protocol, port) that
//!    the DNS proxy wrote for an `fqdn` rule (`fqdn::decide_learned`): allowed while live,
//!    `FqdnExpired` once expired.
//! 6. Otherwise dropped (`PolicyDenied`): default deny. When the peer's label identity is
//!    `ID_UNKNOWN_POD` (an address in a cluster pod range that no known pod holds: a pod
//!    whose Pod object has not reached this node yet, see `ward_policy::compile`), the same
//!    drop is named `IdentityUnknown`. Only the name differs: every allow above is reached
//!    exactly as it would be for `ID_WORLD`, since no policy entry names `ID_UNKNOWN_POD`.
//!
//! Four lookups at most, whatever the number of rules, peers, port ranges or learned names.

use crate::addr::Addr16;
use crate::fqdn::{EP_DNS_PROXY, LearnedKey, LearnedValue, decide_learned};
use crate::http::rules::policy_http_set;
use crate::identity::{ID_ANY, ID_HOST, ID_SERVICE, ID_UNKNOWN_POD, ID_WORLD};
use crate::maps::{EndpointInfo, IpcacheValue, POLICY_AUDIT, PolicyKey, PolicyValue};
use crate::reason::{Direction, Reason};

/// The two lookups the decision needs; implemented over BPF maps in the kernel and over the
/// compiled map contents in user space.
pub trait Tables {
    /// Longest-prefix match of `addr` in the ipcache.
    fn ipcache(&self, addr: &Addr16) -> Option<IpcacheValue>;
    /// Longest-prefix match of a full-length policy key.
    fn policy(&self, key: &PolicyKey) -> Option<PolicyValue>;
    /// Longest-prefix match of a full-length learned-address key (`fqdn`).
    fn learned(&self, key: &LearnedKey) -> Option<LearnedValue>;
    /// The clock learned entries expire by (CLOCK_MONOTONIC ns, `bpf_ktime_get_ns`).
    fn now_ns(&self) -> u64;
}

/// The outcome of [`decide_new_flow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub reason: Reason,
    /// The deciding rule for `PolicyAllow`, else 0.
    pub rule_id: u32,
    pub peer: IpcacheValue,
    /// HTTP rule sets (label, CIDR, any peer; 0 = none) when only HTTP entries admit the
    /// connection: then every request must match one of them.
    pub http: [u32; 3],
}

impl Decision {
    /// The connection is admitted for the requests of `http` only.
    pub const fn http_only(&self) -> bool {
        self.http[0] != 0 || self.http[1] != 0 || self.http[2] != 0
    }
}

const WORLD: IpcacheValue = IpcacheValue { identity: ID_WORLD, cidr_identity: ID_WORLD };

/// IP protocol numbers whose ports policy rules name.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// What the decision needs to know about a packet that starts a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The remote end: the source for ingress, the destination for egress.
    pub peer: Addr16,
    pub proto: u8,
    /// The destination port, 0 for protocols without ports in policy.
    pub port: u16,
    /// The node's own stack sent the packet (ingress only): a node source address makes it
    /// the node's traffic only then.
    pub from_node_stack: bool,
}

impl Flow {
    /// The flow of a packet from `saddr` to `daddr` seen at an endpoint in `dir`. Only TCP,
    /// UDP and SCTP have ports in policy; for every other protocol only port-less rules apply.
    #[inline(always)]
    pub fn of_packet(
        dir: Direction,
        saddr: &Addr16,
        daddr: &Addr16,
        proto: u8,
        dport: u16,
        from_node_stack: bool,
    ) -> Flow {
        let peer = match dir {
            Direction::Ingress => *saddr,
            Direction::Egress => *daddr,
        };
        let port = match proto {
            PROTO_TCP | PROTO_UDP | PROTO_SCTP => dport,
            _ => 0,
        };
        Flow { peer, proto, port, from_node_stack: from_node_stack && matches!(dir, Direction::Ingress) }
    }
}

/// Decides a packet that no tracked flow covers.
#[inline(always)]
pub fn decide_new_flow<T: Tables>(tables: &T, ep: &EndpointInfo, dir: Direction, flow: &Flow) -> Decision {
    let peer = match tables.ipcache(&flow.peer) {
        Some(v) => v,
        None => WORLD,
    };
    let (proto, port) = (flow.proto, flow.port);
    if matches!(dir, Direction::Ingress) && peer.identity == ID_HOST && flow.from_node_stack {
        return Decision { reason: Reason::FromHost, rule_id: 0, peer, http: [0; 3] };
    }
    // The backend behind a Service address is known only after kube-proxy's translation:
    // decided there (`crate::service`), never on the Service address itself. So is what
    // audited policies would say of it.
    let to_service = matches!(dir, Direction::Egress) && peer.identity == ID_SERVICE;
    if !ep.isolated(dir) {
        if to_service && ep.audited(dir) {
            return Decision { reason: Reason::ServicePending, rule_id: 0, peer, http: [0; 3] };
        }
        let reason = if ep.audited(dir) && !audited_allow(tables, ep.identity, &peer, dir, proto, port) {
            Reason::Audit
        } else {
            Reason::NotIsolated
        };
        return Decision { reason, rule_id: 0, peer, http: [0; 3] };
    }
    if to_service {
        return Decision { reason: Reason::ServicePending, rule_id: 0, peer, http: [0; 3] };
    }
    let mut http = [0u32; 3];
    let mut http_rule = 0;
    let peers = [peer.identity, peer.cidr_identity, ID_ANY];
    let mut i = 0;
    while i < peers.len() {
        let key = PolicyKey::lookup(ep.identity, peers[i], dir, proto, port);
        // An audit entry under an isolated subject would be a compiler bug: it never allows.
        if let Some(v) = tables.policy(&key)
            && v.flags & POLICY_AUDIT == 0
        {
            match policy_http_set(v.flags) {
                None => return Decision { reason: Reason::PolicyAllow, rule_id: v.rule_id, peer, http: [0; 3] },
                Some(set) => {
                    http[i] = set;
                    if http_rule == 0 {
                        http_rule = v.rule_id;
                    }
                }
            }
        }
        i += 1;
    }
    if http[0] != 0 || http[1] != 0 || http[2] != 0 {
        return Decision { reason: Reason::PolicyAllow, rule_id: http_rule, peer, http };
    }
    // Only pods behind the DNS proxy have learned addresses (egress; HTTP rules are ingress).
    if matches!(dir, Direction::Egress) && ep.flags & EP_DNS_PROXY != 0 {
        let learned = tables.learned(&LearnedKey::lookup(ep.ep_id, flow.peer, proto, port));
        if let Some((reason, rule_id)) = decide_learned(learned, tables.now_ns()) {
            return Decision { reason, rule_id, peer, http: [0; 3] };
        }
    }
    // The identity race: tell a peer not known yet from one policy denies (the drop is the
    // same either way).
    let reason = if peer.identity == ID_UNKNOWN_POD { Reason::IdentityUnknown } else { Reason::PolicyDenied };
    Decision { reason, rule_id: 0, peer, http: [0; 3] }
}

/// Whether the audited policies' entries allow the flow (step 3): the same three lookups as
/// step 4. Their HTTP rules count as admitting the connection (audit is judged at L4).
#[inline(always)]
fn audited_allow<T: Tables>(
    tables: &T,
    subject: u32,
    peer: &IpcacheValue,
    dir: Direction,
    proto: u8,
    port: u16,
) -> bool {
    let peers = [peer.identity, peer.cidr_identity, ID_ANY];
    let mut i = 0;
    while i < peers.len() {
        if let Some(v) = tables.policy(&PolicyKey::lookup(subject, peers[i], dir, proto, port))
            && v.flags & POLICY_AUDIT != 0
        {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fqdn::LearnedValue;
    use crate::identity::CIDR_ID_BIT;
    use crate::maps::{EP_AUDIT_INGRESS, EP_ISOLATED_INGRESS};

    const SUBJECT: u32 = 300;
    const BLOCK: u32 = CIDR_ID_BIT | 7;

    /// One peer address with a fixed ipcache answer, and policy entries keyed by exact peer
    /// identity and port (`PolicyKey::lookup` keys: what the decision asks for).
    struct One {
        peer: IpcacheValue,
        allow: [(u32, u16, u32, u32); 2],
    }

    impl Tables for One {
        fn ipcache(&self, _addr: &Addr16) -> Option<IpcacheValue> {
            Some(self.peer)
        }
        fn policy(&self, key: &PolicyKey) -> Option<PolicyValue> {
            self.allow
                .iter()
                .find(|(peer, port, _, _)| {
                    *key == PolicyKey::lookup(SUBJECT, *peer, Direction::Ingress, PROTO_TCP, *port)
                })
                .map(|(_, _, rule_id, flags)| PolicyValue { rule_id: *rule_id, flags: *flags })
        }
        fn learned(&self, _key: &LearnedKey) -> Option<LearnedValue> {
            None
        }
        fn now_ns(&self) -> u64 {
            0
        }
    }

    fn ep(flags: u32) -> EndpointInfo {
        EndpointInfo { ep_id: 1, identity: SUBJECT, flags, _pad: 0, addr_v4: [0; 16], addr_v6: [0; 16] }
    }

    fn decide(peer: IpcacheValue, flags: u32, port: u16) -> Decision {
        // Rule 5 allows the ipBlock `BLOCK` on port 80; rule 6 any peer on port 443.
        let t = One { peer, allow: [(BLOCK, 80, 5, 0), (ID_ANY, 443, 6, 0)] };
        let flow = Flow { peer: [0; 16], proto: PROTO_TCP, port, from_node_stack: false };
        decide_new_flow(&t, &ep(flags), Direction::Ingress, &flow)
    }

    /// An unknown pod is denied as the world is, under its own name; whatever allows the
    /// world (an ipBlock, an allow-all rule, not being isolated) allows it just the same.
    #[test]
    fn an_unknown_pod_is_denied_as_identity_unknown_and_allowed_as_before() {
        let unknown = IpcacheValue { identity: ID_UNKNOWN_POD, cidr_identity: BLOCK };
        let world = IpcacheValue { identity: ID_WORLD, cidr_identity: BLOCK };
        let iso = EP_ISOLATED_INGRESS;
        assert_eq!(decide(unknown, iso, 22).reason, Reason::IdentityUnknown);
        assert_eq!(decide(world, iso, 22).reason, Reason::PolicyDenied, "a real deny keeps its name");
        let known = IpcacheValue { identity: 400, cidr_identity: BLOCK };
        assert_eq!(decide(known, iso, 22).reason, Reason::PolicyDenied, "so does a known pod's");
        for port in [80, 443] {
            let (u, w) = (decide(unknown, iso, port), decide(world, iso, port));
            assert_eq!((u.reason, u.rule_id), (w.reason, w.rule_id), "port {port}");
            assert_eq!(u.reason, Reason::PolicyAllow);
        }
        assert_eq!(decide(unknown, 0, 22).reason, Reason::NotIsolated);
        assert_eq!(decide(unknown, EP_AUDIT_INGRESS, 22).reason, Reason::Audit, "audit judges it, and passes it");
        assert_eq!(Reason::IdentityUnknown.verdict(), crate::reason::Verdict::Drop);
    }
}
