//! The per-packet pipeline shared by both programs.
//!
//! Order (fail closed at every step):
//! 1. Not IP → pass (`NotPoliced`). IPv6 neighbour discovery/MLD → pass.
//! 2. Endpoint by ifindex; none → drop (`UnknownEndpoint`).
//! 3. Unparseable IP → drop if the pod is isolated in this direction (`Malformed`).
//! 4. Leaving the pod with a source address not its own → drop (`SpoofedSource`).
//! 5. Non-first fragment → drop if isolated (`Fragment`).
//! 6. ICMP error about a tracked flow → pass (`Related`).
//! 7. Conntrack: same direction → `Established`; reverse of the other direction → `Reply`.
//!    A flow checked under an older policy revision is re-decided first and cut if denied.
//! 8. New flow → `ward_common::lookup::decide_new_flow`; allowed flows are tracked.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use ward_common::{
    Addr16, Direction, Reason, Verdict,
    addr::is_v4_mapped,
    fqdn::{LearnedKey, LearnedValue},
    identity::ID_WORLD,
    lookup::{Tables, decide_new_flow},
    maps::{
        CFG_EVENTS_ALLOWED, CFG_EVENTS_DROPPED, ConfigValue, CtKey, CtValue, EndpointInfo, IpcacheValue, PolicyKey,
        PolicyValue,
    },
};

use crate::ct;
use crate::dns;
use crate::event::{self, EventInfo};
use crate::maps::{CONFIG, ENDPOINTS, FQDN, IPCACHE, POLICY, SCRATCH};
use crate::parse::{self, Kind, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Packet, Parsed, Tuple};

/// `ward_common::lookup::Tables` over the BPF maps.
struct KernelTables;

impl Tables for KernelTables {
    #[inline(always)]
    fn ipcache(&self, addr: &Addr16) -> Option<IpcacheValue> {
        IPCACHE.get(Key::new(128, *addr)).copied()
    }

    #[inline(always)]
    fn policy(&self, key: &PolicyKey) -> Option<PolicyValue> {
        POLICY.get(Key::new(key.prefixlen, key.data())).copied()
    }

    #[inline(always)]
    fn learned(&self, key: &LearnedKey) -> Option<LearnedValue> {
        FQDN.get(Key::new(key.prefixlen, key.data)).copied()
    }

    #[inline(always)]
    fn now_ns(&self) -> u64 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_ktime_get_ns() }
    }
}

/// Per-CPU working memory for one packet: the BPF stack is only 512 bytes, too small for
/// the packet, two conntrack keys and the outcome at once. TC programs do not nest on a CPU,
/// so one slot per CPU suffices.
pub struct Scratch {
    pkt: Packet,
    fwd: CtKey,
    back: CtKey,
    o: Outcome,
}

/// What the decision learned, for counters and the flow event.
pub struct Outcome {
    pub ep_id: u32,
    /// The endpoint's `EndpointInfo.flags` (DNS steering reads `EP_DNS_PROXY`).
    pub ep_flags: u32,
    subject: u32,
    peer: IpcacheValue,
    rule_id: u32,
    pub tuple: Tuple,
    pub tcp_flags: u8,
    new_flow: bool,
}

#[inline(always)]
pub fn process(ctx: &TcContext, dir: Direction) -> i32 {
    // SAFETY: `skb` is the context pointer the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let cfg = match CONFIG.get(0) {
        Some(c) => *c,
        None => ConfigValue { layout_version: 0, policy_rev: 0, flags: 0, _pad: 0 },
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        event::count_reason(Reason::MapError, ctx.len());
        return TC_ACT_SHOT;
    };
    // SAFETY: this CPU's slot of a one-entry per-CPU array; TC programs do not nest on a CPU.
    let s = unsafe { &mut *scratch };
    s.o = Outcome {
        ep_id: 0,
        ep_flags: 0,
        subject: 0,
        peer: IpcacheValue { identity: ID_WORLD, cidr_identity: ID_WORLD },
        rule_id: 0,
        tuple: parse::EMPTY,
        tcp_flags: 0,
        new_flow: false,
    };
    let mut reason = decide(ctx, dir, ifindex, cfg.policy_rev, s);
    if matches!(dir, Direction::Egress) {
        reason = dns::steer(ctx, &s.o, reason);
    }
    let o = &s.o;
    let bytes = ctx.len();
    event::count_reason(reason, bytes);
    if reason == Reason::PolicyAllow {
        event::count_rule(o.rule_id, bytes);
    }
    let dropped = matches!(reason.verdict(), Verdict::Drop);
    let wanted = if dropped { cfg.flags & CFG_EVENTS_DROPPED } else { cfg.flags & CFG_EVENTS_ALLOWED };
    if wanted != 0 && (dropped || o.new_flow) {
        event::emit(
            &o.tuple,
            &EventInfo {
                ifindex,
                ep_id: o.ep_id,
                dir: dir as u8,
                reason,
                subject_identity: o.subject,
                peer_identity: o.peer.identity,
                peer_cidr_identity: o.peer.cidr_identity,
                rule_id: o.rule_id,
                tcp_flags: o.tcp_flags,
            },
        );
    }
    if dropped { TC_ACT_SHOT } else { TC_ACT_OK }
}

#[inline(always)]
fn decide(ctx: &TcContext, dir: Direction, ifindex: u32, rev: u32, s: &mut Scratch) -> Reason {
    let parsed = match parse::parse(ctx, &mut s.pkt) {
        Parsed::NotIp => return Reason::NotPoliced,
        Parsed::Ip => true,
        Parsed::Malformed => false,
    };
    let o = &mut s.o;
    // SAFETY: copied out at once.
    let ep = match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(ep) => *ep,
        None => return Reason::UnknownEndpoint,
    };
    o.ep_id = ep.ep_id;
    o.ep_flags = ep.flags;
    o.subject = ep.identity;
    let isolated = ep.isolated(dir);
    if !parsed {
        return if isolated { Reason::Malformed } else { Reason::NotIsolated };
    }
    let pkt = &s.pkt;
    o.tuple = pkt.tuple;
    o.tcp_flags = pkt.tcp_flags;
    if pkt.kind == Kind::NeighbourDiscovery {
        return Reason::NotPoliced;
    }
    if matches!(dir, Direction::Egress) && !source_is_pod(&ep, &pkt.tuple.saddr) {
        return Reason::SpoofedSource;
    }
    if pkt.kind == Kind::Fragment {
        return if isolated { Reason::Fragment } else { Reason::NotIsolated };
    }
    if pkt.kind == Kind::IcmpError && related(&ep, dir, &pkt.inner, &mut s.back) {
        return Reason::Related;
    }

    ct::fill_key(&mut s.fwd, ep.ep_id, dir as u8, &pkt.tuple, false);
    if let Some(v) = ct::get(&s.fwd) {
        return recheck(&ep, dir, &s.fwd, &v, rev, Reason::Established, o);
    }
    ct::fill_key(&mut s.back, ep.ep_id, dir.opposite() as u8, &pkt.tuple, true);
    if let Some(v) = ct::get(&s.back) {
        return recheck(&ep, dir.opposite(), &s.back, &v, rev, Reason::Reply, o);
    }

    let t = &pkt.tuple;
    let peer = match dir {
        Direction::Egress => &t.daddr,
        Direction::Ingress => &t.saddr,
    };
    let d = decide_new_flow(&KernelTables, &ep, dir, peer, t.proto, policy_port(t.proto, t.dport));
    o.peer = d.peer;
    o.rule_id = d.rule_id;
    if matches!(d.reason.verdict(), Verdict::Allow) {
        o.new_flow = true;
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if !ct::put(&s.fwd, &CtValue { rev, rule_id: d.rule_id, created_ns: now }) {
            // Untracked, the replies would be judged as new flows; refuse rather than
            // half-open a connection.
            return Reason::MapError;
        }
    }
    d.reason
}

/// A tracked flow: pass while its policy revision is current; otherwise decide it again
/// under the current policy (from the direction it was first seen in) and cut it if denied.
#[inline(always)]
fn recheck(
    ep: &EndpointInfo,
    orig_dir: Direction,
    key: &CtKey,
    v: &CtValue,
    rev: u32,
    ok: Reason,
    o: &mut Outcome,
) -> Reason {
    o.rule_id = v.rule_id;
    if v.rev == rev {
        return ok;
    }
    let peer = match orig_dir {
        Direction::Egress => &key.daddr,
        Direction::Ingress => &key.saddr,
    };
    let d = decide_new_flow(
        &KernelTables,
        ep,
        orig_dir,
        peer,
        key.proto,
        policy_port(key.proto, u16::from_be_bytes(key.dport_be)),
    );
    o.peer = d.peer;
    // An expired learned address still allows the flows started while it was live.
    if matches!(d.reason.verdict(), Verdict::Allow) || d.reason == Reason::FqdnExpired {
        o.rule_id = d.rule_id;
        let _ = ct::put(key, &CtValue { rev, rule_id: d.rule_id, created_ns: v.created_ns });
        ok
    } else {
        ct::remove(key);
        Reason::PolicyRevoked
    }
}

/// An ICMP error is related when it reports on a packet of a tracked flow of this endpoint:
/// a packet the pod sent (tracked in the other direction as is) or one it answered.
#[inline(always)]
fn related(ep: &EndpointInfo, dir: Direction, inner: &Tuple, key: &mut CtKey) -> bool {
    ct::fill_key(key, ep.ep_id, dir.opposite() as u8, inner, false);
    if ct::get(key).is_some() {
        return true;
    }
    ct::fill_key(key, ep.ep_id, dir as u8, inner, true);
    ct::get(key).is_some()
}

/// Only TCP, UDP and SCTP have ports in policy; for the rest only port-less rules apply.
#[inline(always)]
fn policy_port(proto: u8, dport: u16) -> u16 {
    match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => dport,
        _ => 0,
    }
}

#[inline(always)]
fn source_is_pod(ep: &EndpointInfo, saddr: &Addr16) -> bool {
    let s = u128::from_ne_bytes(*saddr);
    if is_v4_mapped(saddr) { s == u128::from_ne_bytes(ep.addr_v4) } else { s == u128::from_ne_bytes(ep.addr_v6) }
}
