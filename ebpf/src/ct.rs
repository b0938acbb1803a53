//! Conntrack: one LRU entry per (endpoint, direction, flow as first seen). A full table
//! evicts the least recently used flow; an evicted flow is simply decided afresh by policy on
//! its next packet, so eviction can cost a lookup but never grant an allow.

use ward_common::maps::{CtKey, CtValue};

use crate::maps::CT;
use crate::parse::Tuple;

/// Writes the key of `t` (or of its reverse: ends swapped) in place, to keep it off the stack.
#[inline(always)]
pub fn fill_key(k: &mut CtKey, ep_id: u32, dir: u8, t: &Tuple, reverse: bool) {
    k.ep_id = ep_id;
    if reverse {
        k.saddr = t.daddr;
        k.daddr = t.saddr;
        k.sport_be = t.dport.to_be_bytes();
        k.dport_be = t.sport.to_be_bytes();
    } else {
        k.saddr = t.saddr;
        k.daddr = t.daddr;
        k.sport_be = t.sport.to_be_bytes();
        k.dport_be = t.dport.to_be_bytes();
    }
    k.proto = t.proto;
    k.dir = dir;
    k._pad = [0; 2];
}

#[inline(always)]
pub fn get(k: &CtKey) -> Option<CtValue> {
    // SAFETY: the value is copied out at once; a concurrent update can only give an older rev.
    unsafe { CT.get(k) }.copied()
}

#[inline(always)]
pub fn put(k: &CtKey, v: &CtValue) -> bool {
    CT.insert(k, v, 0).is_ok()
}

#[inline(always)]
pub fn remove(k: &CtKey) {
    // A missing entry (raced with eviction) is fine.
    let _ = CT.remove(k);
}
