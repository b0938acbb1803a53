//! The per-packet pipeline shared by both programs.
//!
//! Order (fail closed at every step; each exemption as narrow as its protocol needs, and
//! after the source check):
//! 1. Endpoint by ifindex; none → drop (`UnknownEndpoint`), whatever the frame.
//! 2. Neither IP nor ARP → drop (`UnsupportedProtocol`). ARP → pass (`NotPoliced`), but one
//!    leaving a pod must speak for the pod's own IPv4 address (`SpoofedSource`).
//! 3. No usable IP header, or IPv6 with IPv4-mapped addresses → drop (`Malformed`).
//! 4. IPv6 neighbour discovery / MLD within what the protocol needs (`nd::exempt`) → pass
//!    (`NotPoliced`).
//! 5. Leaving the pod with a source address not its own → drop (`SpoofedSource`).
//! 6. L4 or extension headers not decidable → drop if the pod is isolated (`Malformed`).
//! 7. A later fragment → pass if isolation does not apply, or if its first fragment was
//!    allowed here (`TrackedFragment`); else drop (`Fragment`).
//! 8. ICMP errors → pass when related to a current tracked flow and sent back to the sender
//!    of the packet they quote (`Related`); other ICMP errors and ICMP types other than echo
//!    are decided by policy, packet by packet, and never tracked.
//! 9. Conntrack (live entries only): same direction → `Established`; reverse of the other
//!    direction → `Reply`. A flow checked under an older policy revision is re-decided first
//!    and cut if denied (`PolicyRevoked`).
//! 10. New flow → `ward_common::lookup::decide_new_flow`; allowed flows are tracked, within the
//!     endpoint's quota (`CtQuota`), except TCP resets and ICMP echo replies, which start
//!     nothing.
//! An allowed first fragment at an isolated endpoint lets its datagram's later fragments
//! follow (step 7).

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, tcx_action_base::TCX_NEXT},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use ward_common::{
    Addr16, Direction, Reason, Verdict,
    addr::is_v4_mapped,
    fqdn::{LearnedKey, LearnedValue},
    identity::{ID_HOST, ID_WORLD},
    lookup::{Flow, Tables, decide_new_flow},
    maps::{
        CFG_EVENTS_ALLOWED, CFG_EVENTS_DROPPED, CT_FIN_ORIG, CT_FIN_REPLY, CT_REFRESH_NS, CT_RST, CT_SEEN_REPLY,
        ConfigValue, CtKey, CtValue, EndpointInfo, IpcacheValue, PolicyKey, PolicyValue,
    },
};

use crate::ct;
use crate::dns;
use crate::event::{self, EventInfo};
use crate::frag;
use crate::maps::{CONFIG, ENDPOINTS, FQDN, IPCACHE, POLICY, SCRATCH};
use crate::nd;
use crate::parse::{self, Kind, PROTO_TCP, Packet, Parsed, Tuple};
use crate::service;

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
/// Largest ICMP error a host sends: RFC 1812 4.3.2.3 (IPv4, 576 bytes) and RFC 4443 2.4(c)
/// (IPv6, the minimum MTU). Anything larger is no error a stack would generate: a channel.
const ICMP_ERROR_MAX_V4: u32 = 576;
const ICMP_ERROR_MAX_V6: u32 = 1280;
const ETH_HLEN: u32 = 14;
/// A conntrack state bit kept beside the protocol ones: the flow was started by the node's
/// own stack (so a re-check after a policy change still sees the node, not its address).
const CT_FROM_NODE: u8 = 0x80;
/// A conntrack state bit: a pod reaching itself through its Service, whose packets kube-proxy
/// gives a node source address (`Reason::Loopback`, also when re-checked).
const CT_HAIRPIN: u8 = 0x40;
/// A conntrack state bit: the flow's first packet went from pod to pod without the node's
/// routing (`deliver`), so netfilter never saw the flow and cannot have translated it; only
/// such flows' later packets and replies are delivered that way too. A flow that started on
/// the routed path keeps it (kube-proxy's NAT of a NodePort or hostPort reply needs it).
const CT_PEER: u8 = 0x20;

/// `ward_common::lookup::Tables` over the BPF maps.
pub(crate) struct KernelTables;

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
    /// The sender's view of a Service flow judged at its backend (`service::judge`).
    alt: Tuple,
    /// The FIB query of same-node delivery (`deliver::target`).
    fib: aya_ebpf::bindings::bpf_fib_lookup,
}

/// What the decision learned, for counters and the flow event.
pub struct Outcome {
    pub ep_id: u32,
    /// The endpoint's `EndpointInfo.flags` (DNS steering reads `EP_DNS_PROXY`).
    pub ep_flags: u32,
    pub subject: u32,
    pub peer: IpcacheValue,
    pub rule_id: u32,
    pub tuple: Tuple,
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type and code (0 for other protocols), for the flow record.
    icmp: [u8; 2],
    pub new_flow: bool,
    /// The flow's first packet was delivered by the datapath (`CT_PEER`), so this one may be.
    pub peer_path: bool,
}

/// What one packet's decision needs besides the packet.
struct Ctx {
    dir: Direction,
    rev: u32,
    ct_quota: u32,
    now: u64,
    /// `to_pod` only: the node's own stack sent the packet (`skb->ingress_ifindex` is 0 for
    /// locally generated packets and the receiving device for forwarded ones).
    from_node_stack: bool,
    /// Bytes from the IP header on.
    len_l3: u32,
    /// `to_pod` only: the pod reaching itself through its Service (`service::judge`).
    hairpin: bool,
    /// The packet is delivered by the datapath (`deliver`): a flow it starts is marked so.
    peer: bool,
}

/// `from_pod` and `to_pod`: the packet's endpoint is the device it is on.
#[inline(always)]
pub fn process(ctx: &TcContext, dir: Direction) -> i32 {
    // SAFETY: `skb` is the context pointer the kernel handed us.
    let (ifindex, ingress_ifindex) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
    decide_at(ctx, dir, ifindex, matches!(dir, Direction::Ingress) && ingress_ifindex == 0, false)
}

/// The pipeline for the endpoint whose host veth is `ifindex` (`to_peer` decides a
/// same-node packet's ingress at its receiver while the packet is still on the sender's
/// device); `from_node_stack` as in `Ctx`; `delivered`: `to_peer` delivers it.
#[inline(always)]
pub fn decide_at(ctx: &TcContext, dir: Direction, ifindex: u32, from_node_stack: bool, delivered: bool) -> i32 {
    let cfg = config();
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        event::count_reason(Reason::MapError, dir, ctx.len());
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
        icmp: [0; 2],
        new_flow: false,
        peer_path: false,
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let parsed = parse::parse(ctx, &mut s.pkt);
    // Entering a pod, a packet its sender's egress deferred to Service translation: that
    // decision first, on the backend this is (accounted as the sender's).
    let mut hairpin = false;
    if matches!(dir, Direction::Ingress)
        && let Some(slot) = service::pending_slot(ctx)
    {
        if !matches!(parsed, Parsed::Ip) {
            event::count_reason(Reason::ServiceUnresolved, Direction::Egress, ctx.len());
            return TC_ACT_SHOT;
        }
        match service::judge(ctx, slot, ifindex, &s.pkt, &mut s.back, &mut s.alt, now, &cfg) {
            Ok(h) => hairpin = h,
            Err(()) => return TC_ACT_SHOT,
        }
    }
    // Leaving a pod: would the datapath deliver it (asked before deciding, so that a flow
    // it starts is marked from its first packet)?
    let next = if matches!(dir, Direction::Egress) && matches!(parsed, Parsed::Ip) {
        crate::deliver::target(ctx, &cfg, &s.pkt, ifindex, &mut s.fib)
    } else {
        None
    };
    let c = Ctx {
        peer: delivered || next.is_some(),
        dir,
        rev: cfg.policy_rev,
        ct_quota: cfg.ct_quota,
        now,
        from_node_stack,
        len_l3: ctx.len().saturating_sub(ETH_HLEN),
        hairpin,
    };
    let mut reason = decide(&c, parsed, ifindex, s);
    if matches!(dir, Direction::Egress) {
        if reason == Reason::ServicePending {
            reason = service::defer(ctx, ifindex, &s.o.tuple, now);
        }
        reason = dns::steer(ctx, &s.o, reason);
    }
    let o = &s.o;
    let bytes = ctx.len();
    event::count_reason(reason, dir, bytes);
    if reason == Reason::PolicyAllow {
        event::count_rule(o.rule_id, bytes);
    }
    let dropped = matches!(reason.verdict(), Verdict::Drop);
    // What audited policies would drop is recorded as drops are (it passes all the same).
    let audit = reason == Reason::Audit;
    let wanted = if dropped || audit { cfg.flags & CFG_EVENTS_DROPPED } else { cfg.flags & CFG_EVENTS_ALLOWED };
    if wanted != 0 && (dropped || audit || o.new_flow) {
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
                icmp: o.icmp,
            },
        );
    }
    // `ward trace`: the armed probe's step (one array read for any other packet).
    crate::trace::after_decision(ctx, dir, ifindex, reason, o);
    if dropped {
        return TC_ACT_SHOT;
    }
    // An allowed packet goes on to whatever runs after Ward (`TCX_NEXT`, which passes it when
    // nothing does): `TC_ACT_OK` would end the hook there and skip, for instance, the
    // bandwidth plugin's classic tc filter on the same device. Requests on ports with HTTP
    // rules are judged first, by the HTTP program (it returns the same verdicts). Leaving a
    // pod for another pod of this node, it may instead be delivered by the datapath (no
    // return if so).
    if let Some(next) = &next
        && s.o.peer_path
    {
        crate::deliver::hand_over(ctx, reason, next);
    }
    let o = &s.o;
    crate::http::after_l4(ctx, dir, reason, o.ep_flags, o.tuple.proto)
}

#[inline(always)]
fn decide(c: &Ctx, parsed: Parsed, ifindex: u32, s: &mut Scratch) -> Reason {
    let dir = c.dir;
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
    let pkt = &s.pkt;
    let l4_ok = match parsed {
        Parsed::Other => return Reason::UnsupportedProtocol,
        Parsed::Arp => {
            let own = is_unspecified_v4(&pkt.arp_sender) || same(&pkt.arp_sender, &ep.addr_v4);
            return if matches!(dir, Direction::Egress) && !own { Reason::SpoofedSource } else { Reason::NotPoliced };
        }
        Parsed::BadIp => return Reason::Malformed,
        Parsed::BadL4 => false,
        Parsed::Ip => true,
    };
    o.tuple = pkt.tuple;
    o.tcp_flags = pkt.tcp_flags;
    o.icmp = [pkt.icmp_type, pkt.icmp_code];
    if l4_ok && pkt.kind == Kind::NeighbourDiscovery && nd::exempt(&ep, dir, pkt) {
        return Reason::NotPoliced;
    }
    if matches!(dir, Direction::Egress) && !source_is_pod(&ep, &pkt.tuple.saddr) {
        return Reason::SpoofedSource;
    }
    // Entering the pod, a packet must be for one of its addresses (its neighbour discovery
    // was exempted above): only the node itself, its stack sending from a node address, may
    // reach it at others (link-local, say). This keeps every tracked flow and every quoted
    // packet between the pod's own addresses.
    if matches!(dir, Direction::Ingress)
        && !source_is_pod(&ep, &pkt.tuple.daddr)
        && !(c.from_node_stack && is_node_address(&pkt.tuple.saddr))
    {
        return Reason::NotForPod;
    }
    if !l4_ok {
        return if isolated { Reason::Malformed } else { Reason::NotIsolated };
    }
    if pkt.kind == Kind::Fragment {
        if !isolated {
            return Reason::NotIsolated;
        }
        return if frag::follows_allowed(ep.ep_id, dir as u8, pkt, c.now) {
            Reason::TrackedFragment
        } else {
            Reason::Fragment
        };
    }
    let reason = decide_ip(c, &ep, s);
    let pkt = &s.pkt;
    if pkt.first_fragment && isolated && matches!(reason.verdict(), Verdict::Allow) {
        frag::remember(ep.ep_id, dir as u8, pkt, c.now);
    }
    reason
}

/// Steps 8-10 for a parsed IP packet that is not a later fragment.
#[inline(always)]
fn decide_ip(c: &Ctx, ep: &EndpointInfo, s: &mut Scratch) -> Reason {
    let dir = c.dir;
    let pkt = &s.pkt;
    let o = &mut s.o;
    let t = &pkt.tuple;
    let flow = Flow::of_packet(dir, &t.saddr, &t.daddr, t.proto, t.dport, c.from_node_stack);
    match pkt.kind {
        Kind::IcmpError => {
            if related(c, ep, pkt, &mut s.back) {
                return Reason::Related;
            }
            return untracked(c, ep, &flow, o);
        }
        // Everything ICMP but echo (and neighbour discovery beyond its exemption) is decided
        // packet by packet: tracking it would let any ICMP "reply" pass.
        Kind::IcmpOther | Kind::NeighbourDiscovery => return untracked(c, ep, &flow, o),
        Kind::Flow | Kind::EchoRequest | Kind::EchoReply | Kind::Fragment => {}
    }

    let tcp = t.proto == PROTO_TCP;
    ct::fill_key(&mut s.fwd, ep.ep_id, dir as u8, t, false);
    if pkt.kind != Kind::EchoReply
        && let Some(v) = ct::live(&s.fwd, c.now)
        && started_alike(c, v)
    {
        o.peer_path = peer_path(v);
        let r = recheck(c, ep, dir, &s.fwd, v, Reason::Established, o);
        touch(v, c.now, tcp, pkt.tcp_flags, false);
        return r;
    }
    ct::fill_key(&mut s.back, ep.ep_id, dir.opposite() as u8, t, true);
    if let Some(v) = ct::live(&s.back, c.now) {
        o.peer_path = peer_path(v);
        let r = recheck(c, ep, dir.opposite(), &s.back, v, Reason::Reply, o);
        touch(v, c.now, tcp, pkt.tcp_flags, true);
        return r;
    }

    let d = if c.hairpin { loopback(ep) } else { decide_new_flow(&KernelTables, ep, dir, &flow) };
    o.peer = d.peer;
    o.rule_id = d.rule_id;
    let starts_flow = pkt.kind != Kind::EchoReply && !(tcp && pkt.tcp_flags & TCP_RST != 0);
    // A deferred flow is tracked by its judge (`service::judge`), under the tuple sent.
    if matches!(d.reason.verdict(), Verdict::Allow) && starts_flow && d.reason != Reason::ServicePending {
        o.new_flow = true;
        let mut state = if d.reason == Reason::FromHost { CT_FROM_NODE } else { 0 };
        if c.hairpin {
            state |= CT_HAIRPIN;
        }
        if c.peer {
            state |= CT_PEER;
            o.peer_path = true;
        }
        if tcp && pkt.tcp_flags & TCP_FIN != 0 {
            state |= CT_FIN_ORIG;
        }
        let v = CtValue { rev: c.rev, rule_id: d.rule_id, created_ns: c.now, seen_ns: c.now, state, _pad: [0; 7] };
        if let Err(reason) = ct::insert(&s.fwd, &v, c.ct_quota) {
            // Untracked, the replies would be judged as new flows; refuse rather than
            // half-open a connection.
            return reason;
        }
    }
    d.reason
}

/// Whether a tracked flow is delivered by the datapath (`CT_PEER`).
#[inline(always)]
fn peer_path(v: *mut CtValue) -> bool {
    // SAFETY: see `touch`; only read here.
    unsafe { (*v).state & CT_PEER != 0 }
}

/// A flow the node's own stack started continues only with packets its stack sends: the same
/// addresses forwarded from elsewhere are not the node's (see `Flow::from_node_stack`).
#[inline(always)]
fn started_alike(c: &Ctx, v: *mut CtValue) -> bool {
    // SAFETY: see `touch`; only read here.
    let from_node = unsafe { (*v).state } & CT_FROM_NODE != 0;
    !from_node || c.from_node_stack || matches!(c.dir, Direction::Egress)
}

/// A policy decision for a packet that neither uses nor creates conntrack state.
#[inline(always)]
fn untracked(c: &Ctx, ep: &EndpointInfo, flow: &Flow, o: &mut Outcome) -> Reason {
    let d = decide_new_flow(&KernelTables, ep, c.dir, flow);
    o.peer = d.peer;
    o.rule_id = d.rule_id;
    d.reason
}

/// Refreshes a live flow's idle clock (at most once per `CT_REFRESH_NS`) and state bits
/// (only when they change): at most a few writes per flow, not per packet.
#[inline(always)]
fn touch(v: *mut CtValue, now: u64, tcp: bool, flags: u8, reply: bool) {
    // SAFETY: a pointer into the map value `ct::live` returned; races with other CPUs only
    // lose a refresh or a state bit that the next packet sets again.
    let v = unsafe { &mut *v };
    if now > v.seen_ns && now - v.seen_ns > CT_REFRESH_NS {
        v.seen_ns = now;
    }
    let mut state = v.state;
    if reply {
        state |= CT_SEEN_REPLY;
    }
    if tcp {
        if flags & TCP_RST != 0 {
            state |= CT_RST;
        }
        if flags & TCP_FIN != 0 {
            state |= if reply { CT_FIN_REPLY } else { CT_FIN_ORIG };
        }
    }
    if state != v.state {
        v.state = state;
    }
}

/// A tracked flow: pass while its policy revision is current; otherwise decide it again
/// under the current policy (from the direction it was first seen in) and cut it if denied.
#[inline(always)]
fn recheck(
    c: &Ctx,
    ep: &EndpointInfo,
    orig_dir: Direction,
    key: &CtKey,
    v: *mut CtValue,
    ok: Reason,
    o: &mut Outcome,
) -> Reason {
    // SAFETY: see `touch`.
    let v = unsafe { &mut *v };
    o.rule_id = v.rule_id;
    if v.rev == c.rev {
        return ok;
    }
    let d = redecide(ep, orig_dir, key, v.state);
    o.peer = d.peer;
    if d.reason == Reason::ServicePending {
        // A Service flow: its sender's packet is deferred again and decided on its backend
        // under the current policy (`service::judge` brings the entry up to date or removes
        // it); replies pass until then.
        if matches!(c.dir, Direction::Egress) {
            return Reason::ServicePending;
        }
        return ok;
    }
    // An expired learned address still allows the flows started while it was live.
    if matches!(d.reason.verdict(), Verdict::Allow) || d.reason == Reason::FqdnExpired {
        o.rule_id = d.rule_id;
        v.rule_id = d.rule_id;
        v.rev = c.rev;
        ok
    } else {
        ct::remove(key);
        Reason::PolicyRevoked
    }
}

/// The current policy's decision for a tracked flow, from the direction it was first seen in.
#[inline(always)]
fn redecide(ep: &EndpointInfo, orig_dir: Direction, key: &CtKey, state: u8) -> ward_common::lookup::Decision {
    if state & CT_HAIRPIN != 0 {
        return loopback(ep);
    }
    let flow = Flow::of_packet(
        orig_dir,
        &key.saddr,
        &key.daddr,
        key.proto,
        u16::from_be_bytes(key.dport_be),
        state & CT_FROM_NODE != 0,
    );
    decide_new_flow(&KernelTables, ep, orig_dir, &flow)
}

/// A pod reaching itself through its Service: what its loopback would be, never policed
/// (the peer is the pod itself).
#[inline(always)]
pub(crate) fn loopback(ep: &EndpointInfo) -> ward_common::lookup::Decision {
    ward_common::lookup::Decision {
        reason: Reason::Loopback,
        rule_id: 0,
        peer: IpcacheValue { identity: ep.identity, cidr_identity: ID_WORLD },
        http: [0; 3],
    }
}

/// An ICMP error is related, as Linux conntrack means it, when it quotes a packet of a live
/// tracked flow of this endpoint that the current policy still allows, and goes back to the
/// sender of the quoted packet; and when it is no larger than a stack would send. Leaving the
/// pod, it quotes a packet the pod received; entering it, one the pod sent.
#[inline(always)]
fn related(c: &Ctx, ep: &EndpointInfo, pkt: &Packet, key: &mut CtKey) -> bool {
    if !pkt.inner_valid || !same(&pkt.tuple.daddr, &pkt.inner.saddr) {
        return false;
    }
    let max = if pkt.v6 { ICMP_ERROR_MAX_V6 } else { ICMP_ERROR_MAX_V4 };
    if c.len_l3 > max {
        return false;
    }
    let dir = c.dir;
    // The flow was first seen in the other direction (the quoted packet is of its first
    // direction), or in this one (the quoted packet is a reply).
    for (orig_dir, reverse) in [(dir.opposite(), false), (dir, true)] {
        ct::fill_key(key, ep.ep_id, orig_dir as u8, &pkt.inner, reverse);
        if let Some(v) = ct::live(key, c.now) {
            // SAFETY: see `touch`; only read here.
            let (rev, state) = unsafe { ((*v).rev, (*v).state) };
            let again = redecide(ep, orig_dir, key, state).reason;
            return rev == c.rev || matches!(again.verdict(), Verdict::Allow) || again == Reason::FqdnExpired;
        }
    }
    false
}

#[inline(always)]
fn same(a: &Addr16, b: &Addr16) -> bool {
    u128::from_ne_bytes(*a) == u128::from_ne_bytes(*b)
}

#[inline(always)]
fn is_unspecified_v4(a: &Addr16) -> bool {
    a[12..].iter().all(|b| *b == 0)
}

/// One of the node's own addresses (the ipcache's host identity): with `from_node_stack`,
/// what `FromHost` admits.
#[inline(always)]
fn is_node_address(a: &Addr16) -> bool {
    matches!(KernelTables.ipcache(a), Some(v) if v.identity == ID_HOST)
}

/// The pod's own address of the packet's family (a pod without one has none to send from or
/// be reached at).
#[inline(always)]
fn source_is_pod(ep: &EndpointInfo, saddr: &Addr16) -> bool {
    let own = if is_v4_mapped(saddr) { &ep.addr_v4 } else { &ep.addr_v6 };
    u128::from_ne_bytes(*own) != 0 && same(saddr, own)
}

/// The agent's settings; all zero (no events, revision 0, the default quota) before it wrote
/// them.
#[inline(always)]
fn config() -> ConfigValue {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => ConfigValue { layout_version: 0, policy_rev: 0, flags: 0, ct_quota: 0 },
    }
}

/// `to_netdev` (TCX egress of an uplink): a packet leaving the node whose sender's egress was
/// deferred to Service translation is decided here, on the backend; everything else passes
/// untouched (one mark test).
#[inline(always)]
pub fn leave_node(ctx: &TcContext) -> i32 {
    let Some(slot) = service::pending_slot(ctx) else {
        return TCX_NEXT;
    };
    // SAFETY: `skb` is the context pointer the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let cfg = config();
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        event::count_reason(Reason::MapError, Direction::Egress, ctx.len());
        return TC_ACT_SHOT;
    };
    // SAFETY: as in `process`.
    let s = unsafe { &mut *scratch };
    if !matches!(parse::parse(ctx, &mut s.pkt), Parsed::Ip) {
        event::count_reason(Reason::ServiceUnresolved, Direction::Egress, ctx.len());
        return TC_ACT_SHOT;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match service::judge(ctx, slot, ifindex, &s.pkt, &mut s.back, &mut s.alt, now, &cfg) {
        Ok(_) => TCX_NEXT,
        Err(()) => TC_ACT_SHOT,
    }
}
