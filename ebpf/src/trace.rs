//! `ward trace` in the kernel: one step record per program for the armed probe only.
//!
//! The agent arms a trace in `WARD_TRACE` (`ward_common::trace::TraceConfig`) and sends one
//! crafted probe from the source pod. Every packet reads that one-entry array and stops at
//! `id == 0`: untraced traffic pays one array lookup (inlined by the verifier for arrays)
//! and one compare. While armed, a packet is compared with the probe's marker at fixed
//! offsets (the probe has no IPv4 options or IPv6 extension headers), ports first since they
//! are the most selective; only the probe gets a `TraceStep` in `WARD_TRACE_EVT`.
//!
//! Why a ring of fixed records rather than aya-log: see docs/architecture.md, "Flows".

use aya_ebpf::{
    bindings::tcx_action_base::TCX_NEXT,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TcContext,
};
use ward_common::{
    Direction, Reason, Verdict,
    trace::{
        ETHERTYPE_IPV4, ETHERTYPE_IPV6, FLOW_LABEL_MASK, OFF_ETHERTYPE, OFF_V4_ID, OFF_V4_PORTS, OFF_V4_PROTO,
        OFF_V4_SADDR, OFF_V4_VIHL, OFF_V6_NEXT, OFF_V6_PORTS, OFF_V6_SADDR, OFF_V6_WORD0, STEP_HTTP_POLICED,
        STEP_NEW_FLOW, TRACE_EVENTS_BYTES, TraceConfig, TraceProgram, TraceStep,
    },
};

use crate::datapath::Outcome;
use crate::maps::ENDPOINTS;

/// The armed trace (id 0: none). Not pinned: a trace belongs to the agent that armed it.
#[map(name = "WARD_TRACE")]
static TRACE: Array<TraceConfig> = Array::with_max_entries(1, 0);

#[map(name = "WARD_TRACE_EVT")]
static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(TRACE_EVENTS_BYTES, 0);

/// Step records written or lost, per CPU: stays put while no trace is armed.
#[map(name = "WARD_TRACE_CNT")]
static TRACE_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The armed trace, when this packet is its probe (read in place: the stack is spoken for).
#[inline(always)]
fn probe_of(ctx: &TcContext) -> Option<&'static TraceConfig> {
    let cfg = TRACE.get(0)?;
    // The gate: everything below runs only while a trace is armed.
    if cfg.id == 0 {
        return None;
    }
    if is_probe(ctx, cfg) { Some(cfg) } else { None }
}

/// Compares the packet with the probe's marker (see `TraceConfig::matches_frame`, the same
/// check over a byte slice).
#[inline(always)]
fn is_probe(ctx: &TcContext, cfg: &TraceConfig) -> bool {
    let Ok(ethertype) = ctx.load::<[u8; 2]>(OFF_ETHERTYPE as usize) else { return false };
    let ethertype = u16::from_be_bytes(ethertype);
    if cfg.v6 != 0 {
        if ethertype != ETHERTYPE_IPV6 || !same_ports(ports(ctx, OFF_V6_PORTS), cfg) {
            return false;
        }
        let Ok(word0) = ctx.load::<[u8; 4]>(OFF_V6_WORD0 as usize) else { return false };
        let word0 = u32::from_be_bytes(word0);
        if word0 >> 28 != 6 || word0 & FLOW_LABEL_MASK != cfg.id {
            return false;
        }
        let Ok(next) = ctx.load::<u8>(OFF_V6_NEXT as usize) else { return false };
        let Ok(saddr) = ctx.load::<[u8; 16]>(OFF_V6_SADDR as usize) else { return false };
        let Ok(daddr) = ctx.load::<[u8; 16]>(OFF_V6_SADDR as usize + 16) else { return false };
        // As integers: an array compare would become a `bcmp` call, which BPF has not.
        next == cfg.proto
            && u128::from_ne_bytes(saddr) == u128::from_ne_bytes(cfg.saddr)
            && u128::from_ne_bytes(daddr) == u128::from_ne_bytes(cfg.daddr)
    } else {
        if ethertype != ETHERTYPE_IPV4 || !same_ports(ports(ctx, OFF_V4_PORTS), cfg) {
            return false;
        }
        let Ok(vihl) = ctx.load::<u8>(OFF_V4_VIHL as usize) else { return false };
        let Ok(id) = ctx.load::<[u8; 2]>(OFF_V4_ID as usize) else { return false };
        let Ok(proto) = ctx.load::<u8>(OFF_V4_PROTO as usize) else { return false };
        let Ok(saddr) = ctx.load::<[u8; 4]>(OFF_V4_SADDR as usize) else { return false };
        let Ok(daddr) = ctx.load::<[u8; 4]>(OFF_V4_SADDR as usize + 4) else { return false };
        let v4 = |a: &[u8; 16]| [a[12], a[13], a[14], a[15]];
        vihl == 0x45
            && u16::from_be_bytes(id) as u32 == cfg.id
            && proto == cfg.proto
            && u32::from_ne_bytes(saddr) == u32::from_ne_bytes(v4(&cfg.saddr))
            && u32::from_ne_bytes(daddr) == u32::from_ne_bytes(v4(&cfg.daddr))
    }
}

#[inline(always)]
fn ports(ctx: &TcContext, off: u32) -> Option<([u8; 2], [u8; 2])> {
    let p = ctx.load::<[u8; 4]>(off as usize).ok()?;
    Some(([p[0], p[1]], [p[2], p[3]]))
}

/// The two port fields as one integer, for one compare.
#[inline(always)]
fn same_ports(got: Option<([u8; 2], [u8; 2])>, cfg: &TraceConfig) -> bool {
    match got {
        Some((s, d)) => {
            u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
                == u32::from_ne_bytes([cfg.sport_be[0], cfg.sport_be[1], cfg.dport_be[0], cfg.dport_be[1]])
        }
        None => false,
    }
}

#[inline(always)]
fn write(step: TraceStep) {
    if let Some(c) = TRACE_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
    // Written in place in the ring; a full ring loses the step (the agent then reports the
    // trace incomplete), never the packet.
    if let Some(mut entry) = TRACE_EVENTS.reserve::<TraceStep>(0) {
        entry.write(step);
        entry.submit(0);
    }
}

/// `from_pod`/`to_pod`, once the verdict is known: the probe's step, from the same outcome the
/// flow event is made of. Inlined: a call of its own would add its frame to `process`'s 424
/// bytes, past the 512-byte stack; inlined, its locals share that frame's dead slots.
#[inline(always)]
pub fn after_decision(ctx: &TcContext, dir: Direction, ifindex: u32, reason: Reason, o: &Outcome) {
    let Some(cfg) = probe_of(ctx) else { return };
    let program = match dir {
        Direction::Egress => TraceProgram::FromPod,
        Direction::Ingress => TraceProgram::ToPod,
    };
    write(TraceStep {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        trace_id: cfg.id,
        program: program as u8,
        dir: dir as u8,
        verdict: reason.verdict() as u8,
        reason: reason as u8,
        ifindex,
        ep_id: o.ep_id,
        subject_identity: o.subject,
        peer_identity: o.peer.identity,
        peer_cidr_identity: o.peer.cidr_identity,
        rule_id: o.rule_id,
        saddr: cfg.saddr,
        daddr: cfg.daddr,
        sport_be: cfg.sport_be,
        dport_be: cfg.dport_be,
        proto: cfg.proto,
        flags: if o.new_flow { STEP_NEW_FLOW } else { 0 },
        tcp_flags: o.tcp_flags,
        _pad: [0],
    });
}

/// `ward_http`, once it judged the packet (`verdict` is its return value): the probe's step.
/// Verifier: not inlined, so its locals stay out of `ward_http`'s main frame, whose parser
/// call chain below it already takes 424 of the 512 stack bytes.
#[inline(never)]
pub fn after_http(ctx: &TcContext, verdict: i32) {
    let Some(cfg) = probe_of(ctx) else { return };
    // SAFETY: `skb` is the context pointer the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once.
    let (ep_id, subject) = match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(ep) => (ep.ep_id, ep.identity),
        None => (0, 0),
    };
    let (policed, rule_id, peer) = crate::http::last_connection().unwrap_or((false, 0, 0));
    write(TraceStep {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        trace_id: cfg.id,
        program: TraceProgram::Http as u8,
        dir: Direction::Ingress as u8,
        verdict: if verdict == TCX_NEXT { Verdict::Allow as u8 } else { Verdict::Drop as u8 },
        reason: 0,
        ifindex,
        ep_id,
        subject_identity: subject,
        peer_identity: peer,
        peer_cidr_identity: 0,
        rule_id,
        saddr: cfg.saddr,
        daddr: cfg.daddr,
        sport_be: cfg.sport_be,
        dport_be: cfg.dport_be,
        proto: cfg.proto,
        flags: if policed { STEP_HTTP_POLICED } else { 0 },
        tcp_flags: 0,
        _pad: [0],
    });
}
