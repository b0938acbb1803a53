//! Fragments: a later fragment carries no L4 header, so it cannot be decided on its own. The
//! first fragment of a datagram is decided like any packet; when it is allowed at an isolated
//! endpoint its datagram is remembered (`WARD_FRAGS`: endpoint, direction, addresses,
//! protocol, fragment id; an LRU with [`FRAG_TIMEOUT_NS`]), and later fragments with the same
//! key pass. A later fragment whose first fragment was not allowed here, or not seen yet (an
//! out-of-order datagram), is dropped: the receiver can never reassemble a datagram policy did
//! not see the head of.

use ward_common::maps::{FRAG_TIMEOUT_NS, FragKey, FragValue};

use crate::maps::FRAGS;
use crate::parse::Packet;

#[inline(always)]
fn key(ep_id: u32, dir: u8, p: &Packet) -> FragKey {
    FragKey {
        ep_id,
        id: p.frag_id,
        saddr: p.tuple.saddr,
        daddr: p.tuple.daddr,
        proto: p.tuple.proto,
        dir,
        _pad: [0; 2],
    }
}

/// Remembers an allowed first fragment. A full table evicts the oldest datagram: its later
/// fragments are then dropped, never passed.
#[inline(always)]
pub fn remember(ep_id: u32, dir: u8, p: &Packet, now: u64) {
    let _ = FRAGS.insert(&key(ep_id, dir, p), &FragValue { created_ns: now }, 0);
}

/// Whether a later fragment belongs to a datagram whose first fragment was allowed here.
#[inline(always)]
pub fn follows_allowed(ep_id: u32, dir: u8, p: &Packet, now: u64) -> bool {
    // SAFETY: copied out at once.
    match unsafe { FRAGS.get(&key(ep_id, dir, p)) } {
        Some(v) => now >= v.created_ns && now - v.created_ns <= FRAG_TIMEOUT_NS,
        None => false,
    }
}
