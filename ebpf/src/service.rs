//! Service traffic: defer the sender's egress decision past kube-proxy's translation and take
//! it where the translated packet leaves the node's routing (the design is written once, in
//! `ward_common::service`).

use aya_ebpf::programs::TcContext;
use ward_common::{
    Direction, Reason, Verdict,
    lookup::{Flow, decide_new_flow},
    maps::{CFG_EVENTS_ALLOWED, CFG_EVENTS_DROPPED, ConfigValue, CtKey, CtValue},
    service::{PROBES, Pending, SLOTS, first_slot, mark_cleared, mark_with},
};

use crate::ct;
use crate::datapath::KernelTables;
use crate::event::{self, EventInfo};
use crate::maps::{ENDPOINTS, SVC_PEND};
use crate::parse::{PROTO_TCP, Packet, Tuple};

const TCP_RST: u8 = 0x04;

#[inline(always)]
fn read_mark(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel handed us.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.skb.skb).mark)) }
}

/// Whole-word volatile store: the verifier refuses the narrower store LLVM may emit for a
/// masked update of `mark` (as in `dns::steer`).
#[inline(always)]
fn write_mark(ctx: &TcContext, mark: u32) {
    // SAFETY: `mark` is writable from TC programs.
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*ctx.skb.skb).mark), mark) }
}

/// The pending slot of a deferred packet, if it is one.
#[inline(always)]
pub fn pending_slot(ctx: &TcContext) -> Option<u32> {
    ward_common::service::slot_of(read_mark(ctx))
}

/// `from_pod`: the packet of tuple `t` from the pod behind `ifindex`, decided
/// `ServicePending`, goes on to translation with its original tuple in a free slot.
/// No free slot among `PROBES`: refused (`ServiceUnresolved`), never passed undecided.
#[inline(always)]
pub fn defer(ctx: &TcContext, ifindex: u32, t: &Tuple, now: u64) -> Reason {
    let p = Pending {
        saddr: t.saddr,
        daddr: t.daddr,
        created_ns: now,
        ifindex,
        sport_be: t.sport.to_be_bytes(),
        dport_be: t.dport.to_be_bytes(),
        proto: t.proto,
        _pad: [0; 7],
    };
    let first = first_slot(&p);
    let mut i = 0;
    while i < PROBES {
        let slot = (first + i) & (SLOTS - 1);
        if let Some(e) = SVC_PEND.get_ptr_mut(slot) {
            // SAFETY: a pointer into an array map value; a concurrent CPU taking the same
            // slot is caught by the judge, which checks the entry against the packet.
            let e = unsafe { &mut *e };
            if !e.fresh(now) || e.same_flow(&p) {
                *e = p;
                write_mark(ctx, mark_with(read_mark(ctx), slot));
                return Reason::ServicePending;
            }
        }
        i += 1;
    }
    Reason::ServiceUnresolved
}

/// Where the translated packet leaves routing (`to_pod` of a backend on this node:
/// `ifindex` is its host veth; `to_netdev`: an uplink): the deferred sender's egress policy,
/// decided on the backend address and port, counted and reported as the sender's. `Ok`
/// passes the packet on, with `true` when it is a pod reaching itself through its Service
/// (kube-proxy then rewrites the source to a node address): that is the pod's loopback,
/// allowed both ways (`Reason::Loopback`). `Err`: drop, already accounted.
#[inline(always)]
pub fn judge(
    ctx: &TcContext,
    slot: u32,
    ifindex: u32,
    pkt: &Packet,
    key: &mut CtKey,
    alt: &mut Tuple,
    now: u64,
    cfg: &ConfigValue,
) -> Result<bool, ()> {
    write_mark(ctx, mark_cleared(read_mark(ctx)));
    let t = &pkt.tuple;
    let bytes = ctx.len();
    let Some(p) = SVC_PEND.get_ptr_mut(slot) else {
        return unresolved(t, bytes, cfg);
    };
    // SAFETY: a pointer into an array map value, valid for this run.
    let p = unsafe { &mut *p };
    let translated_source = p.saddr != t.saddr;
    // kube-proxy rewrites the source of Service traffic only for a pod reaching itself
    // (hairpin), and then delivers it to that pod; anywhere else the source and its port are
    // the sender's.
    let hairpin = translated_source && p.ifindex == ifindex;
    let own = if translated_source { hairpin } else { p.sport_be == t.sport.to_be_bytes() };
    if !p.fresh(now) || p.proto != t.proto || !own {
        return unresolved(t, bytes, cfg);
    }
    p.created_ns = 0;
    // SAFETY: copied out at once.
    let Some(ep) = (unsafe { ENDPOINTS.get(&p.ifindex) }).copied() else {
        event::count_reason(Reason::UnknownEndpoint, Direction::Egress, bytes);
        return Err(());
    };
    // The sender's flow is tracked under the tuple it sent: its later packets carry it, and so
    // do the replies kube-proxy translates back.
    key.ep_id = ep.ep_id;
    key.saddr = p.saddr;
    key.daddr = p.daddr;
    key.sport_be = p.sport_be;
    key.dport_be = p.dport_be;
    key.proto = p.proto;
    key.dir = Direction::Egress as u8;
    key._pad = [0; 2];
    // The sender's view of the flow, with the backend: what its flow record shows.
    alt.saddr = p.saddr;
    alt.daddr = t.daddr;
    alt.sport = u16::from_be_bytes(p.sport_be);
    alt.dport = t.dport;
    alt.proto = t.proto;
    let tracked = ct::live(key, now);
    if let Some(v) = tracked
        // SAFETY: a pointer into the map value `ct::live` returned; only read here.
        && unsafe { (*v).rev } == cfg.policy_rev
    {
        // A retransmission of a packet already judged under this policy.
        return Ok(hairpin);
    }
    let d = if hairpin {
        crate::datapath::loopback(&ep)
    } else {
        let flow = Flow::of_packet(Direction::Egress, &alt.saddr, &alt.daddr, alt.proto, alt.dport, false);
        decide_new_flow(&KernelTables, &ep, Direction::Egress, &flow)
    };
    let mut reason = d.reason;
    if reason == Reason::ServicePending {
        // Translated to another Service address: no backend to decide on.
        reason = Reason::ServiceUnresolved;
    }
    let allowed = matches!(reason.verdict(), Verdict::Allow);
    let starts_flow = !(t.proto == PROTO_TCP && pkt.tcp_flags & TCP_RST != 0);
    match tracked {
        // A tracked flow deferred again after a policy change: brought up to date, or cut.
        Some(v) if allowed => {
            // SAFETY: as above; a racing CPU writes the same values.
            unsafe {
                (*v).rev = cfg.policy_rev;
                (*v).rule_id = d.rule_id;
            }
        }
        Some(_) => {
            ct::remove(key);
            if matches!(reason, Reason::PolicyDenied | Reason::IdentityUnknown) {
                reason = Reason::PolicyRevoked;
            }
        }
        None if allowed && starts_flow => {
            let v = CtValue {
                rev: cfg.policy_rev,
                rule_id: d.rule_id,
                created_ns: now,
                seen_ns: now,
                state: 0,
                _pad: [0; 7],
            };
            if let Err(r) = ct::insert(key, &v, cfg.ct_quota) {
                reason = r;
            }
        }
        None => {}
    }
    let dropped = matches!(reason.verdict(), Verdict::Drop);
    event::count_reason(reason, Direction::Egress, bytes);
    if reason == Reason::PolicyAllow {
        event::count_rule(d.rule_id, bytes);
    }
    let wanted = if dropped { cfg.flags & CFG_EVENTS_DROPPED } else { cfg.flags & CFG_EVENTS_ALLOWED };
    if wanted != 0 {
        event::emit(
            alt,
            &EventInfo {
                ifindex: p.ifindex,
                ep_id: ep.ep_id,
                dir: Direction::Egress as u8,
                reason,
                subject_identity: ep.identity,
                peer_identity: d.peer.identity,
                peer_cidr_identity: d.peer.cidr_identity,
                rule_id: d.rule_id,
                tcp_flags: pkt.tcp_flags,
                icmp: [pkt.icmp_type, pkt.icmp_code],
            },
        );
    }
    if dropped { Err(()) } else { Ok(hairpin) }
}

#[inline(always)]
fn unresolved(t: &Tuple, bytes: u32, cfg: &ConfigValue) -> Result<bool, ()> {
    event::count_reason(Reason::ServiceUnresolved, Direction::Egress, bytes);
    if cfg.flags & CFG_EVENTS_DROPPED != 0 {
        event::emit(
            t,
            &EventInfo {
                ifindex: 0,
                ep_id: 0,
                dir: Direction::Egress as u8,
                reason: Reason::ServiceUnresolved,
                subject_identity: 0,
                peer_identity: 0,
                peer_cidr_identity: 0,
                rule_id: 0,
                tcp_flags: 0,
                icmp: [0; 2],
            },
        );
    }
    Err(())
}
