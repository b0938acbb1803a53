//! Observability from the datapath: per-(reason, direction) and per-rule counters (per-CPU, always on)
//! and flow events into the ring buffer (gated by `WARD_CONFIG.flags`). A full ring buffer
//! loses the event, never the verdict, and counts the loss per reason in `WARD_EVT_LOST`.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use ward_common::{
    maps::{Counter, FlowEvent, reason_slot},
    reason::{Direction, Reason},
};

use crate::maps::{EVENTS, EVENTS_LOST, REASON_CNT, RULE_CNT};
use crate::parse::Tuple;

#[inline(always)]
pub fn count_reason(reason: Reason, dir: Direction, bytes: u32) {
    if let Some(c) = REASON_CNT.get_ptr_mut(reason_slot(reason, dir)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

#[inline(always)]
pub fn count_rule(rule_id: u32, bytes: u32) {
    if let Some(c) = RULE_CNT.get_ptr_mut(rule_id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    } else {
        let _ = RULE_CNT.insert(rule_id, Counter { packets: 1, bytes: bytes as u64 }, 0);
    }
}

pub struct EventInfo {
    pub ifindex: u32,
    pub ep_id: u32,
    pub dir: u8,
    pub reason: Reason,
    pub subject_identity: u32,
    pub peer_identity: u32,
    pub peer_cidr_identity: u32,
    pub rule_id: u32,
    pub tcp_flags: u8,
    pub icmp: [u8; 2],
}

#[inline(always)]
pub fn emit(t: &Tuple, info: &EventInfo) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        // The ring is full: the event is lost, and counted, never waited for.
        if let Some(c) = EVENTS_LOST.get_ptr_mut(info.reason as u32) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *c += 1 };
        }
        return;
    };
    // SAFETY: `ts` comes from a helper with no preconditions.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    entry.write(FlowEvent {
        ts_ns,
        saddr: t.saddr,
        daddr: t.daddr,
        sport_be: t.sport.to_be_bytes(),
        dport_be: t.dport.to_be_bytes(),
        proto: t.proto,
        dir: info.dir,
        verdict: info.reason.verdict() as u8,
        reason: info.reason as u8,
        ifindex: info.ifindex,
        ep_id: info.ep_id,
        subject_identity: info.subject_identity,
        peer_identity: info.peer_identity,
        peer_cidr_identity: info.peer_cidr_identity,
        rule_id: info.rule_id,
        tcp_flags: info.tcp_flags,
        icmp_type: info.icmp[0],
        icmp_code: info.icmp[1],
        _pad: [0; 5],
    });
    entry.submit(0);
}
