//! DNS-based egress (`fqdn` peers of WardNetworkPolicy), as kernel and user space share it:
//! the learned-address map the agent's DNS proxy writes and the datapath reads, the steering
//! of a pod's DNS traffic to the proxy, and the one step the policy lookup adds for learned
//! addresses ([`decide_learned`], called from `lookup::decide_new_flow`).
//!
//! Data flow: a proxied pod's DNS packet (UDP or TCP to port 53, already allowed by policy) is
//! marked and assigned to the proxy's socket by `from_pod`; the proxy forwards the query to the
//! resolver the pod asked, and for an answer to a name an `fqdn` rule allows it writes one
//! `WARD_FQDN` entry per (pod, answered address, port block of the allowing rules) *before* it
//! releases the answer. A new flow from that pod to that address is then allowed by one LPM
//! lookup, until the entry expires (record TTL plus grace); after that new flows are dropped
//! as `fqdn_expired`, while tracked flows go on.

use core::mem::size_of;

use crate::addr::Addr16;
use crate::ports::PortBlock;
use crate::reason::Reason;

pub const MAP_FQDN: &str = "WARD_FQDN";
pub const MAP_DNS_CFG: &str = "WARD_DNS_CFG";

/// Learned entries, all pods of the node together. A full map makes the proxy answer SERVFAIL.
pub const FQDN_MAX: u32 = 256 * 1024;

/// The port DNS is steered on (UDP and TCP).
pub const DNS_PORT: u16 = 53;

/// `EndpointInfo.flags` bit (beside `EP_ISOLATED_*` in `maps`): the pod's DNS goes through
/// the proxy. Set for pods a WardNetworkPolicy with `fqdn` peers or `dns` rules selects for
/// egress.
pub const EP_DNS_PROXY: u32 = 4;

/// `skb->mark` bits `from_pod` sets on a steered DNS packet. The agent routes packets with
/// this mark to the local stack (`ip rule fwmark DNS_PROXY_MARK/DNS_PROXY_MARK_MASK lookup
/// DNS_PROXY_TABLE`, a `local` default route in that table), where the socket the program
/// assigned receives them. Bits 16..24: clear of kube-proxy's 0x4000/0x8000.
pub const DNS_PROXY_MARK: u32 = 0x00d5_0000;
pub const DNS_PROXY_MARK_MASK: u32 = 0x00ff_0000;
/// The routing table holding the local default routes for marked packets.
pub const DNS_PROXY_TABLE: u32 = 2053;

/// `WARD_FQDN` key (LPM trie): endpoint, answered address, protocol, port, big-endian so
/// prefixes work bit by bit. An entry for one protocol and a port block stores
/// `prefixlen = LEARNED_PROTO_BITS + block bits`; an entry for every protocol (a rule without
/// ports) stores `LEARNED_ANY_PROTO_BITS`. Lookups use [`LEARNED_KEY_BITS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LearnedKey {
    pub prefixlen: u32,
    pub data: LearnedKeyData,
}

/// The data part of [`LearnedKey`] (what the trie compares).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LearnedKeyData {
    pub ep_id_be: [u8; 4],
    pub addr: Addr16,
    pub proto: u8,
    pub port_be: [u8; 2],
    /// Never compared (past every prefix length), always zero.
    pub _pad: u8,
}

pub const LEARNED_KEY_BITS: u32 = 32 + 128 + 8 + 16;
pub const LEARNED_ANY_PROTO_BITS: u32 = 32 + 128;
pub const LEARNED_PROTO_BITS: u32 = 32 + 128 + 8;

impl LearnedKey {
    /// The key a packet looks up.
    pub const fn lookup(ep_id: u32, addr: Addr16, proto: u8, port: u16) -> Self {
        LearnedKey {
            prefixlen: LEARNED_KEY_BITS,
            data: LearnedKeyData { ep_id_be: ep_id.to_be_bytes(), addr, proto, port_be: port.to_be_bytes(), _pad: 0 },
        }
    }

    /// An entry allowing every protocol and port to `addr`.
    pub const fn any_proto(ep_id: u32, addr: Addr16) -> Self {
        LearnedKey {
            prefixlen: LEARNED_ANY_PROTO_BITS,
            data: LearnedKeyData { ep_id_be: ep_id.to_be_bytes(), addr, proto: 0, port_be: [0, 0], _pad: 0 },
        }
    }

    /// An entry allowing one protocol on one block of ports to `addr`.
    pub const fn port_block(ep_id: u32, addr: Addr16, proto: u8, block: PortBlock) -> Self {
        LearnedKey {
            prefixlen: LEARNED_PROTO_BITS + block.prefix_len as u32,
            data: LearnedKeyData {
                ep_id_be: ep_id.to_be_bytes(),
                addr,
                proto,
                port_be: block.base.to_be_bytes(),
                _pad: 0,
            },
        }
    }

    pub const fn ep_id(&self) -> u32 {
        u32::from_be_bytes(self.data.ep_id_be)
    }
}

/// `WARD_FQDN` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LearnedValue {
    /// The egress rule that allows this entry (the lowest, when several do).
    pub rule_id: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`) after which new flows are refused.
    pub expires_ns: u64,
}

/// `WARD_DNS_CFG` (array, one entry) value: where the proxy listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsConfig {
    /// The proxy's UDP and TCP port in the agent's network namespace (host order); 0 while
    /// no proxy was ever configured, which makes steered DNS fail (`dns_proxy_down`).
    pub port: u16,
    pub _pad: [u8; 2],
    pub _pad2: u32,
}

const _: () = assert!(size_of::<LearnedKeyData>() == 24);
const _: () = assert!(size_of::<LearnedKey>() == 28);
const _: () = assert!(size_of::<LearnedValue>() == 16);
const _: () = assert!(size_of::<DnsConfig>() == 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), integers and byte arrays with explicit padding: every bit pattern is
    // valid and no byte is uninitialised.
    unsafe impl aya::Pod for LearnedKey {}
    unsafe impl aya::Pod for LearnedKeyData {}
    unsafe impl aya::Pod for LearnedValue {}
    unsafe impl aya::Pod for DnsConfig {}
}

/// The learned-address step of the lookup: for an egress flow that no policy entry allowed,
/// an entry for (endpoint, destination, protocol, port) allows it while it is live; an
/// expired one gives `FqdnExpired` (a drop for a new flow; a tracked flow keeps going, see
/// the datapath's recheck). `None`: nothing learned, the caller denies.
#[inline(always)]
pub fn decide_learned(value: Option<LearnedValue>, now_ns: u64) -> Option<(Reason, u32)> {
    let v = value?;
    if now_ns >= v.expires_ns { Some((Reason::FqdnExpired, v.rule_id)) } else { Some((Reason::PolicyAllow, v.rule_id)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_keys_put_their_fields_in_prefix_order() {
        let k = LearnedKey::lookup(0x0102_0304, [9; 16], 6, 443);
        assert_eq!(k.data.ep_id_be, [1, 2, 3, 4]);
        assert_eq!(k.data.port_be, 443u16.to_be_bytes());
        assert_eq!(k.ep_id(), 0x0102_0304);
        assert_eq!(LearnedKey::any_proto(1, [0; 16]).prefixlen, 160);
        assert_eq!(LearnedKey::port_block(1, [0; 16], 17, PortBlock { base: 53, prefix_len: 16 }).prefixlen, 184);
    }

    #[test]
    fn a_live_entry_allows_and_an_expired_one_says_so() {
        let v = LearnedValue { rule_id: 7, _pad: 0, expires_ns: 100 };
        assert_eq!(decide_learned(Some(v), 99), Some((Reason::PolicyAllow, 7)));
        assert_eq!(decide_learned(Some(v), 100), Some((Reason::FqdnExpired, 7)));
        assert_eq!(decide_learned(None, 0), None);
    }
}
