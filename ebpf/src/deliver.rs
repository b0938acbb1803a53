//! Same-node delivery (`CFG_LOCAL_PEER`, `--local-delivery peer`).
//!
//! A packet one pod sends to another pod of this node would leave `from_pod`, go through the
//! node's routing and netfilter, and enter `to_pod` on the receiver's host veth. With this
//! setting `from_pod`, once the sender's egress has allowed it, asks the node's FIB where the
//! packet goes; when that is another Ward endpoint's host veth it tail-calls `to_peer`,
//! which runs the receiver's ingress decision (the same pipeline `to_pod` runs, with the
//! receiver's endpoint: conntrack, counters, flow event, trace step) and, if it allows,
//! rewrites the Ethernet header as routing would (the FIB's source and neighbour addresses),
//! decrements the TTL and redirects the packet into the receiver's namespace
//! (`bpf_redirect_peer`): the receiver's host veth, the node's routing and its netfilter are
//! skipped.
//!
//! Everything else keeps the routed path: packets with a mark (Service deferral, DNS proxy
//! steering), ARP and neighbour discovery, packets whose TTL would expire, receivers with
//! HTTP rules (their checks run in `ward_http` on the routed path), and anything the FIB does
//! not resolve to an endpoint with a known neighbour. A missing `to_peer` (an agent that
//! never loaded it) also falls back to routing: the tail call returns and the packet passes
//! on as before.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_SHOT, bpf_fib_lookup, tcx_action_base::TCX_NEXT},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_peer},
    macros::map,
    maps::ProgramArray,
    programs::TcContext,
};
use ward_common::{
    Addr16, Direction, Reason,
    http::rules::EP_HTTP_INGRESS,
    maps::{CFG_LOCAL_PEER, ConfigValue},
};

use crate::maps::ENDPOINTS;
use crate::parse::{Kind, Packet};

/// `to_peer`, slot 0.
#[map(name = "WARD_DELIVER")]
static DELIVER_PROG: ProgramArray = ProgramArray::pinned(1, 0);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const ETH_HLEN: usize = 14;
/// IPv4: TTL and protocol, the 16-bit word the header checksum covers them by.
const IPV4_TTL_WORD: usize = ETH_HLEN + 8;
const IPV4_CSUM: usize = ETH_HLEN + 10;
const IPV6_HOP_LIMIT: usize = ETH_HLEN + 7;

/// Where `to_peer` delivers: found by `from_pod`, carried across the tail call in the
/// packet's own control block (`skb->cb`), which no other program of the hook reads. Not in
/// the per-CPU scratch: that map is per load of the object, and while an upgrade replaces
/// the programs of pinned links one by one, an old `from_pod` may tail-call the new `to_peer`.
#[derive(Clone, Copy)]
pub struct Next {
    /// The receiver's host veth.
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub v6: bool,
}

/// `cb[4]` of a packet `from_pod` hands over: this value, plus 1 for IPv6.
const HANDED_OVER: u32 = 0x5744_0000;

impl Next {
    #[inline(always)]
    fn store(&self, ctx: &TcContext) {
        let (d, m) = (self.dmac, self.smac);
        let words = [
            self.ifindex,
            u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
            u32::from_ne_bytes([d[4], d[5], m[0], m[1]]),
            u32::from_ne_bytes([m[2], m[3], m[4], m[5]]),
            HANDED_OVER | u32::from(self.v6),
        ];
        // SAFETY: `cb` of the context is writable by TC programs.
        unsafe { (*ctx.skb.skb).cb = words };
    }

    /// The hand-over `from_pod` stored, once: the mark is cleared as it is read.
    #[inline(always)]
    fn take(ctx: &TcContext) -> Option<Next> {
        // SAFETY: as in `store`.
        let w = unsafe { (*ctx.skb.skb).cb };
        if w[4] & !1 != HANDED_OVER || w[0] == 0 {
            return None;
        }
        // SAFETY: as in `store`.
        unsafe { (*ctx.skb.skb).cb[4] = 0 };
        let (a, b, c) = (w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
        Some(Next {
            ifindex: w[0],
            dmac: [a[0], a[1], a[2], a[3], b[0], b[1]],
            smac: [b[2], b[3], c[0], c[1], c[2], c[3]],
            v6: w[4] & 1 != 0,
        })
    }
}

/// Where a packet leaving a pod would go if delivered by the datapath: the receiver's host
/// veth and the hop's Ethernet addresses, when the setting is on, the packet may skip the
/// node (no mark, no fragment, a TTL that routing would not expire) and the node's FIB sends
/// it to another Ward endpoint without HTTP rules. `from_pod` asks before deciding, so a flow
/// it starts is marked as delivered this way from its first packet (`CT_PEER`).
#[inline(always)]
pub fn target(ctx: &TcContext, cfg: &ConfigValue, pkt: &Packet, sender: u32, p: &mut bpf_fib_lookup) -> Option<Next> {
    if cfg.flags & CFG_LOCAL_PEER == 0 || pkt.hop_limit <= 1 || pkt.first_fragment || pkt.kind == Kind::Fragment {
        return None;
    }
    // SAFETY: `skb` is the context pointer the kernel handed us.
    if unsafe { (*ctx.skb.skb).mark } != 0 {
        return None;
    }
    let next = lookup(ctx, pkt, sender, p)?;
    // SAFETY: copied out at once.
    let ep = unsafe { ENDPOINTS.get(&next.ifindex) }?;
    if ep.flags & EP_HTTP_INGRESS != 0 {
        return None;
    }
    Some(next)
}

/// After the sender's egress decision in `from_pod` (`reason`, already counted and
/// reported), for a packet of a flow delivered by the datapath: hands it to `to_peer`, which
/// does not return. Returns when the packet keeps the routed path.
#[inline(always)]
pub fn hand_over(ctx: &TcContext, reason: Reason, next: &Next) {
    if !delivers(reason) {
        return;
    }
    // Asked again after the decision: DNS steering marks (and assigns to the proxy's socket)
    // a query the policy allowed, and a query to a resolver pod of this node must still reach
    // the proxy, which enforces the pod's `dns` rules.
    // SAFETY: `skb` is the context pointer the kernel handed us.
    if unsafe { (*ctx.skb.skb).mark } != 0 {
        return;
    }
    next.store(ctx);
    // SAFETY: a tail call into a program of the same type; on success it does not return.
    let _ = unsafe { DELIVER_PROG.tail_call(ctx, 0) };
}

/// What an allowed packet leaving a pod may be delivered for: a decided (or tracked) IP
/// packet, never ARP or neighbour discovery (`NotPoliced`), which is the node's to answer,
/// nor a packet deferred to the node (`ServicePending`).
#[inline(always)]
fn delivers(reason: Reason) -> bool {
    matches!(reason, Reason::PolicyAllow | Reason::Established | Reason::Reply | Reason::NotIsolated | Reason::Audit)
}

/// The node's FIB answer for the packet as the sender's host veth received it: the output
/// interface, if it is another interface, with its neighbour resolved.
#[inline(always)]
fn lookup(ctx: &TcContext, pkt: &Packet, sender: u32, p: &mut bpf_fib_lookup) -> Option<Next> {
    // SAFETY: a plain C struct of integers and unions of integers; all-zero is valid.
    *p = unsafe { core::mem::zeroed() };
    let t = &pkt.tuple;
    p.l4_protocol = t.proto;
    p.sport = t.sport.to_be();
    p.dport = t.dport.to_be();
    p.ifindex = sender;
    // tot_len stays 0: no MTU check here (a GSO packet is larger than any MTU; the
    // receiver's veth has the sender's MTU, as both are made by ward-cni).
    if pkt.v6 {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = words(&t.saddr);
        p.__bindgen_anon_4.ipv6_dst = words(&t.daddr);
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([t.saddr[12], t.saddr[13], t.saddr[14], t.saddr[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([t.daddr[12], t.daddr[13], t.daddr[14], t.daddr[15]]);
    }
    // SAFETY: `p` is a valid, writable lookup of the size given.
    let ret = unsafe { fib_lookup(ctx.skb.skb as *mut _, p, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || p.ifindex == sender || p.ifindex == 0 {
        return None;
    }
    Some(Next { ifindex: p.ifindex, smac: p.smac, dmac: p.dmac, v6: pkt.v6 })
}

/// An address as the four 32-bit words of its network-order bytes.
#[inline(always)]
fn words(a: &Addr16) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// `to_peer`: the receiver's ingress decision, then delivery into its namespace.
#[inline(always)]
pub fn to_receiver(ctx: &TcContext) -> i32 {
    // Reached only by `from_pod`'s tail call, which stored the hand-over just before.
    let Some(next) = Next::take(ctx) else {
        return TC_ACT_SHOT;
    };
    let verdict = crate::datapath::decide_at(ctx, Direction::Ingress, next.ifindex, false, true);
    if verdict != TCX_NEXT {
        return verdict;
    }
    if rewrite(ctx, &next).is_err() {
        // The receiver allowed it; routing delivers what cannot be rewritten here.
        return TCX_NEXT;
    }
    // SAFETY: helper without preconditions beyond a valid ifindex (checked by the kernel).
    unsafe { bpf_redirect_peer(next.ifindex, 0) as i32 }
}

/// What the node's routing would have done to the packet: Ethernet addresses of the hop
/// and the TTL (hop limit) one lower.
#[inline(always)]
fn rewrite(ctx: &TcContext, next: &Next) -> Result<(), i64> {
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&next.dmac);
    eth[6..].copy_from_slice(&next.smac);
    ctx.store(0, &eth, 0)?;
    if next.v6 {
        let hop: u8 = ctx.load(IPV6_HOP_LIMIT)?;
        ctx.store(IPV6_HOP_LIMIT, &hop.wrapping_sub(1), 0)?;
    } else {
        let old: u16 = ctx.load(IPV4_TTL_WORD)?;
        // Network order in memory: the TTL is the word's first byte.
        let [ttl, proto] = old.to_ne_bytes();
        let new = u16::from_ne_bytes([ttl.wrapping_sub(1), proto]);
        ctx.store(IPV4_TTL_WORD, &new, 0)?;
        ctx.l3_csum_replace(IPV4_CSUM, u64::from(old), u64::from(new), 2)?;
    }
    Ok(())
}
