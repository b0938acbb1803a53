//! The policy lookup order, written once for the kernel and for user space.
//!
//! The eBPF programs call [`decide_new_flow`] with tables backed by BPF maps; the agent's
//! `explain` and the compiler's tests call it with tables backed by the compiled map contents.
//!
//! Lookup order for a packet that starts a flow at an endpoint, in direction `dir`:
//! 1. Resolve the peer address in the ipcache to (label identity, CIDR identity); a miss is
//!    (`ID_WORLD`, `ID_WORLD`).
//! 2. Ingress from a node address (`ID_HOST`): allowed (`FromHost`).
//! 3. The endpoint is not isolated in `dir`: allowed (`NotIsolated`).
//! 4. Policy LPM lookups, full key, peer = label identity, then CIDR identity, then `ID_ANY`:
//!    the first hit allows (`PolicyAllow`, with the entry's rule id).
//! 5. Egress of a pod behind the DNS proxy only: the learned-address entry of (endpoint, destination, protocol, port) that
//!    the DNS proxy wrote for an `fqdn` rule (`fqdn::decide_learned`): allowed while live,
//!    `FqdnExpired` once expired.
//! 6. Otherwise dropped (`PolicyDenied`): default deny.
//!
//! Four lookups at most, whatever the number of rules, peers, port ranges or learned names.

use crate::addr::Addr16;
use crate::fqdn::{EP_DNS_PROXY, LearnedKey, LearnedValue, decide_learned};
use crate::identity::{ID_ANY, ID_HOST, ID_WORLD};
use crate::maps::{EndpointInfo, IpcacheValue, PolicyKey, PolicyValue};
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
}

const WORLD: IpcacheValue = IpcacheValue { identity: ID_WORLD, cidr_identity: ID_WORLD };

/// Decides a packet that no tracked flow covers. `peer` is the remote address (source for
/// ingress, destination for egress); `port` is the destination port (0 for port-less
/// protocols).
#[inline(always)]
pub fn decide_new_flow<T: Tables>(
    tables: &T,
    ep: &EndpointInfo,
    dir: Direction,
    peer_addr: &Addr16,
    proto: u8,
    port: u16,
) -> Decision {
    let peer = match tables.ipcache(peer_addr) {
        Some(v) => v,
        None => WORLD,
    };
    if matches!(dir, Direction::Ingress) && peer.identity == ID_HOST {
        return Decision { reason: Reason::FromHost, rule_id: 0, peer };
    }
    if !ep.isolated(dir) {
        return Decision { reason: Reason::NotIsolated, rule_id: 0, peer };
    }
    let key = PolicyKey::lookup(ep.identity, peer.identity, dir, proto, port);
    if let Some(v) = tables.policy(&key) {
        return Decision { reason: Reason::PolicyAllow, rule_id: v.rule_id, peer };
    }
    let key = PolicyKey::lookup(ep.identity, peer.cidr_identity, dir, proto, port);
    if let Some(v) = tables.policy(&key) {
        return Decision { reason: Reason::PolicyAllow, rule_id: v.rule_id, peer };
    }
    let key = PolicyKey::lookup(ep.identity, ID_ANY, dir, proto, port);
    if let Some(v) = tables.policy(&key) {
        return Decision { reason: Reason::PolicyAllow, rule_id: v.rule_id, peer };
    }
    // Only pods behind the DNS proxy have learned addresses.
    if matches!(dir, Direction::Egress) && ep.flags & EP_DNS_PROXY != 0 {
        let learned = tables.learned(&LearnedKey::lookup(ep.ep_id, *peer_addr, proto, port));
        if let Some((reason, rule_id)) = decide_learned(learned, tables.now_ns()) {
            return Decision { reason, rule_id, peer };
        }
    }
    Decision { reason: Reason::PolicyDenied, rule_id: 0, peer }
}
