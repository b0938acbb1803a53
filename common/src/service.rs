//! Service traffic: kube-proxy translates a ClusterIP destination to a backend after
//! `from_pod` has seen the packet, so the sender's egress policy cannot be decided there.
//!
//! `from_pod` defers it instead (`Reason::ServicePending`): it writes the packet's original
//! tuple and the sender's interface into a slot of `WARD_SVC_PEND` and carries the slot in
//! the skb mark (marks never cross a network namespace: veth scrubs them, so a pod cannot
//! forge one). Where the translated packet leaves the node's routing (`to_pod` of a local
//! backend, `to_netdev` of an uplink) the sender's egress policy is decided on the backend
//! and its port, and the sender's flow is tracked under the original tuple, which its
//! later packets and the replies (translated back by kube-proxy) carry.
//!
//! A slot is taken only when free or stale, so a fresh slot names exactly one flow.

use crate::addr::Addr16;

/// Set in the skb mark of a deferred packet. The mark is shared: kube-proxy uses 0x4000 and
/// 0x8000, the DNS proxy's steering `fqdn::DNS_PROXY_MARK_MASK` (0x00ff_0000).
pub const MARK_PENDING: u32 = 1 << 24;
/// The slot number lives in the low bits, below kube-proxy's.
pub const MARK_SLOT_SHIFT: u32 = 0;
pub const SLOT_BITS: u32 = 14;
/// Every bit of the mark Ward owns (flag and slot); the rest is left as found.
pub const MARK_MASK: u32 = MARK_PENDING | (((1 << SLOT_BITS) - 1) << MARK_SLOT_SHIFT);
/// `WARD_SVC_PEND` entries.
pub const SLOTS: u32 = 1 << SLOT_BITS;
/// Slots a deferral tries (linear probing) before it refuses the packet as busy.
pub const PROBES: u32 = 4;
/// A pending entry is used within this time or not at all: the translated packet follows
/// its deferral in the same softirq, or after a neighbour resolution (then a retransmission
/// after a stale slot is judged afresh). Short, so that packets which never reach a judge
/// (a Service without endpoints is rejected by kube-proxy) cannot hold many slots.
pub const PENDING_NS: u64 = 100_000_000;

pub const MAP_SVC_PEND: &str = "WARD_SVC_PEND";

/// `WARD_SVC_PEND` value: one deferred packet's original tuple and sender.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pending {
    pub saddr: Addr16,
    /// The Service address the sender used.
    pub daddr: Addr16,
    pub created_ns: u64,
    /// The sender's host veth (its `WARD_ENDPOINTS` key).
    pub ifindex: u32,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<Pending>() == 56);

impl Pending {
    pub const EMPTY: Pending = Pending {
        saddr: [0; 16],
        daddr: [0; 16],
        created_ns: 0,
        ifindex: 0,
        sport_be: [0; 2],
        dport_be: [0; 2],
        proto: 0,
        _pad: [0; 7],
    };

    /// Still in use at `now_ns` (a slot that is not may be taken).
    pub const fn fresh(&self, now_ns: u64) -> bool {
        self.created_ns != 0 && now_ns >= self.created_ns && now_ns - self.created_ns < PENDING_NS
    }

    /// The same original packet (a retransmission may reuse its slot).
    pub fn same_flow(&self, other: &Pending) -> bool {
        self.saddr == other.saddr
            && self.daddr == other.daddr
            && self.sport_be == other.sport_be
            && self.dport_be == other.dport_be
            && self.proto == other.proto
            && self.ifindex == other.ifindex
    }
}

/// The first slot a flow tries: FNV-1a over its original tuple.
pub fn first_slot(p: &Pending) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut mix = |b: u8| {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    };
    let mut i = 0;
    while i < 16 {
        mix(p.saddr[i]);
        mix(p.daddr[i]);
        i += 1;
    }
    mix(p.sport_be[0]);
    mix(p.sport_be[1]);
    mix(p.dport_be[0]);
    mix(p.dport_be[1]);
    mix(p.proto);
    h & (SLOTS - 1)
}

/// The mark of a packet deferred in `slot`, keeping the bits Ward does not own.
pub const fn mark_with(mark: u32, slot: u32) -> u32 {
    (mark & !MARK_MASK) | MARK_PENDING | ((slot & (SLOTS - 1)) << MARK_SLOT_SHIFT)
}

/// The slot a mark carries, if the packet was deferred.
pub const fn slot_of(mark: u32) -> Option<u32> {
    if mark & MARK_PENDING == 0 { None } else { Some((mark >> MARK_SLOT_SHIFT) & (SLOTS - 1)) }
}

/// The mark without Ward's bits.
pub const fn mark_cleared(mark: u32) -> u32 {
    mark & !MARK_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_carries_the_slot_and_leaves_kube_proxy_bits_alone() {
        for slot in [0, 1, 77, SLOTS - 1] {
            let m = mark_with(0x4000 | 0x8000, slot);
            assert_eq!(slot_of(m), Some(slot));
            assert_eq!(m & 0xc000, 0xc000, "kube-proxy's masquerade and drop bits stay");
            assert_eq!(mark_cleared(m), 0xc000);
        }
        assert_eq!(slot_of(0x4000), None, "an unmarked packet is not deferred");
        assert_eq!(MARK_MASK & 0xc000, 0, "Ward's bits stay clear of kube-proxy's");
        assert_eq!(MARK_MASK & crate::fqdn::DNS_PROXY_MARK_MASK, 0, "and of the DNS proxy's steering mark");
    }

    #[test]
    fn a_pending_entry_is_fresh_for_its_window_only() {
        let p = Pending { created_ns: 10, ..Pending::EMPTY };
        assert!(p.fresh(10) && p.fresh(10 + PENDING_NS - 1));
        assert!(!p.fresh(10 + PENDING_NS));
        assert!(!p.fresh(5), "a clock before creation is not trusted");
        assert!(!Pending::EMPTY.fresh(10), "an empty slot is free");
    }

    #[test]
    fn slots_spread_over_the_table() {
        let mut seen = [false; 64];
        for port in 0u16..2048 {
            let p = Pending { sport_be: port.to_be_bytes(), proto: 6, ..Pending::EMPTY };
            let s = first_slot(&p);
            assert!(s < SLOTS);
            seen[(s % 64) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "2048 ports reach every residue mod 64");
    }
}
