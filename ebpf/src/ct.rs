//! Conntrack: one entry per (endpoint, direction, flow as first seen) in a hash with no
//! eviction. A full table refuses new flows (`map_error`) rather than silently forgetting
//! someone else's; each endpoint may hold at most `ConfigValue::ct_quota` entries, counted in
//! `WARD_CT_COUNT` (programs add and remove their own, the agent's expiry sweep records what
//! it removed), so one pod's flood of new flows is refused (`ct_quota`) once it has filled its
//! own share. Entries expire after a per-state idle time (`CtValue::expired`): an expired
//! entry is removed on sight and the packet decided afresh, and the agent sweeps the rest.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use ward_common::{
    Reason,
    maps::{CT_COUNT_AGENT, CT_COUNT_KERNEL, CT_QUOTA_DEFAULT, CtCountKey, CtKey, CtValue},
};

use crate::maps::{CT, CT_COUNT};
use crate::parse::Tuple;

/// `BPF_NOEXIST`: insert only if absent (so a flow is counted once).
const BPF_NOEXIST: u64 = 1;
/// `-EEXIST`: another CPU inserted the same flow first.
const EEXIST: i32 = -17;

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

/// The live entry of `k`: an expired one is removed (and counted) and reads as absent.
#[inline(always)]
pub fn live(k: &CtKey, now: u64) -> Option<*mut CtValue> {
    let p = CT.get_ptr_mut(k)?;
    // SAFETY: a pointer into the map's value, valid for this program run; concurrent updates
    // of the same flow from another CPU can only race on timestamps and state bits.
    let v = unsafe { &*p };
    if v.expired(k.proto, now) {
        remove(k);
        return None;
    }
    Some(p)
}

/// Inserts a new flow if the endpoint's quota allows it. `Err` carries the drop reason.
#[inline(always)]
pub fn insert(k: &CtKey, v: &CtValue, quota: u32) -> Result<(), Reason> {
    let quota = if quota == 0 { CT_QUOTA_DEFAULT } else { quota };
    if in_use(k.ep_id) >= quota as i64 {
        return Err(Reason::CtQuota);
    }
    match CT.insert(k, v, BPF_NOEXIST) {
        Ok(()) => {
            count(k.ep_id, 1);
            Ok(())
        }
        // Raced with the same flow's first packet on another CPU: tracked, counted once.
        Err(e) if e == EEXIST => Ok(()),
        Err(_) => Err(Reason::MapError),
    }
}

/// Removes a flow (counted only if this call removed it: a concurrent remover counts its own).
#[inline(always)]
pub fn remove(k: &CtKey) {
    if CT.remove(k).is_ok() {
        count(k.ep_id, -1);
    }
}

/// Entries the endpoint holds: what the programs added minus what they and the agent removed.
#[inline(always)]
fn in_use(ep_id: u32) -> i64 {
    // SAFETY: values copied out at once.
    let kernel = unsafe { CT_COUNT.get(&CtCountKey { ep_id, writer: CT_COUNT_KERNEL }) }.copied().unwrap_or(0);
    let agent = unsafe { CT_COUNT.get(&CtCountKey { ep_id, writer: CT_COUNT_AGENT }) }.copied().unwrap_or(0);
    kernel - agent
}

#[inline(always)]
fn count(ep_id: u32, delta: i64) {
    let key = CtCountKey { ep_id, writer: CT_COUNT_KERNEL };
    if CT_COUNT.get_ptr_mut(&key).is_none() {
        // First flow of this endpoint: create its counter (another CPU may win the race).
        let _ = CT_COUNT.insert(&key, &0, BPF_NOEXIST);
    }
    if let Some(p) = CT_COUNT.get_ptr_mut(&key) {
        // The bpf target has no `AtomicI64::fetch_add` (no compare-and-swap); the intrinsic
        // with its result unused compiles to BPF_ATOMIC_ADD, so concurrent CPUs never lose
        // an update.
        // SAFETY: an aligned i64 inside a map value.
        let _ = unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}
