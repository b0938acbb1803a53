//! The HTTP datapath: judges every request on connections that only HTTP rules admit.
//!
//! `to_pod` takes the L4 decision as for any packet; for an allowed TCP packet entering an
//! endpoint that has HTTP rules (`EP_HTTP_INGRESS`) it tail-calls [`judge`] (program
//! `ward_http`, slot 0 of `WARD_HTTP_PROG`), so the main programs' verifier budget is
//! untouched. Per packet:
//!
//! 1. A SYN starts a connection: the L4 lookup (`decide_new_flow`) says whether only HTTP
//!    rules admit it, and with which rule sets; `WARD_HTTP_CONN` remembers it.
//! 2. After a policy change (`WARD_CONFIG.policy_rev`) the sets are looked up again before
//!    the next byte is judged: the next request on a kept-alive connection meets the new rules.
//! 3. Client bytes are judged once, in order (`next_seq`): a segment past a gap is dropped
//!    (the client retransmits), one carrying bytes already judged is dropped (the server has
//!    them; after [`RETRANSMIT_RESET`] in a row the connection is reset), so no byte the server
//!    accepts was judged as something else.
//! 4. The bytes run through the shared parser (`ward_common::http::parse`, a `bpf_loop` over
//!    chunks of [`CHUNK`] bytes; bodies are stepped over by count); at each request line the
//!    rule sets are matched (`ward_common::http::rules::match_request`).
//! 5. A denied request turns the segment that carries it into a reset for the server (so the
//!    server never gets the complete request) and sends a copy turned around as a reset to
//!    the client: both ends fail at once. Later packets of the connection are dropped.
//!
//! Every decision is counted in `WARD_HTTP_CNT` and reported as an `HttpEvent`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_INGRESS, TC_ACT_SHOT, tcx_action_base::TCX_NEXT},
    helpers::{bpf_ktime_get_ns, bpf_loop, bpf_skb_load_bytes},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TcContext,
};
use ward_common::{
    Addr16, Direction, Reason,
    addr::v4_mapped,
    http::{
        conn::{
            EVENT_PATH_MAX, EVT_SEEN_CUT, HTTP_CONN_MAX, HTTP_EVENTS_BYTES, HTTP_SETS_MAX, HttpConn, HttpConnKey,
            HttpEvent, HttpReason, MODE_DENIED, MODE_PLAIN, MODE_POLICED, RETRANSMIT_RESET,
        },
        parse::Step,
        rules::{EP_HTTP_INGRESS, HttpSet, match_request},
    },
    lookup::{Decision, Flow, decide_new_flow},
    maps::{Counter, EndpointInfo},
};

use crate::datapath::KernelTables;
use crate::maps::{CONFIG, ENDPOINTS};

#[map(name = "WARD_HTTP_PROG")]
static HTTP_PROG: ProgramArray = ProgramArray::pinned(1, 0);

#[map(name = "WARD_HTTP_CONN")]
static HTTP_CONN: LruHashMap<HttpConnKey, HttpConn> = LruHashMap::pinned(HTTP_CONN_MAX, 0);

#[map(name = "WARD_HTTP_SETS")]
static HTTP_SETS: HashMap<u32, HttpSet> = HashMap::pinned(HTTP_SETS_MAX, 0);

#[map(name = "WARD_HTTP_EVT")]
static HTTP_EVENTS: RingBuf = RingBuf::pinned(HTTP_EVENTS_BYTES, 0);

#[map(name = "WARD_HTTP_CNT")]
static HTTP_CNT: PerCpuArray<Counter> = PerCpuArray::pinned(HttpReason::COUNT, 0);

/// Per-CPU working memory: the connection being judged and the chunk being parsed (too big
/// for the 512-byte stack; TC programs do not nest on a CPU). Not pinned.
#[map(name = "WARD_HTTP_WORK")]
static WORK: PerCpuArray<Work> = PerCpuArray::with_max_entries(1, 0);

/// Bytes loaded from the packet per `bpf_loop` pass.
const CHUNK: usize = 256;
/// Passes per packet: each handles a chunk, a body, or a request line (documented bound: a
/// segment with more requests than fit is reset, `http_budget`).
const ROUNDS: u32 = 64;

/// The verdict of a packet that may go on: to whatever runs after Ward (see `datapath`).
const PASS: i32 = TCX_NEXT;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ETH_HLEN: usize = 14;
const PROTO_TCP: u8 = 6;

/// What the byte loop stopped for.
const STOP_NONE: u8 = 0;
const STOP_DENY: u8 = 1;
const STOP_ERROR: u8 = 2;
const STOP_UNREADABLE: u8 = 3;

pub struct Work {
    conn: HttpConn,
    key: HttpConnKey,
    seg: Seg,
    ep: EndpointInfo,
    dec: Decision,
    buf: [u8; CHUNK],
    pos: u32,
    len: u32,
    off: u32,
    end: u32,
    stop: u8,
    error: u8,
}

/// Called by `to_pod` once the L4 decision allowed a packet: judges it here when it may carry
/// requests of an HTTP-policed connection. Returns the verdict when it does not (the tail
/// call returns only if the HTTP program is missing: then nothing on such an endpoint passes).
#[inline(always)]
pub fn after_l4(ctx: &TcContext, dir: Direction, reason: Reason, ep_flags: u32, proto: u8) -> i32 {
    if !matches!(dir, Direction::Ingress)
        || proto != PROTO_TCP
        || ep_flags & EP_HTTP_INGRESS == 0
        || !matches!(reason, Reason::PolicyAllow | Reason::Established)
    {
        return PASS;
    }
    // SAFETY: a tail call into a program of the same type; on success it does not return.
    unsafe { HTTP_PROG.tail_call(ctx, 0) };
    count(HttpReason::Unavailable);
    TC_ACT_SHOT as i32
}

/// What the program decided about the connection of the segment it just judged, for
/// `ward trace`: (only HTTP rules admit it, the admitting rule, the peer's identity).
#[inline(always)]
pub fn last_connection() -> Option<(bool, u32, u32)> {
    let w = WORK.get(0)?;
    Some((w.conn.mode == MODE_POLICED, w.dec.rule_id, w.dec.peer.identity))
}

/// The headers of one client segment.
#[derive(Clone, Copy)]
struct Seg {
    v6: bool,
    l4: u32,
    payload: u32,
    payload_len: u32,
    saddr: Addr16,
    daddr: Addr16,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    /// The node's own stack sent it (as `datapath` tells: `skb->ingress_ifindex` is 0).
    from_node_stack: bool,
}

#[inline(always)]
fn count(r: HttpReason) {
    if let Some(c) = HTTP_CNT.get_ptr_mut(r as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { (*c).packets += 1 };
    }
}

/// The program `ward_http`. Its state lives in the per-CPU work area, not on the stack:
/// the BPF stack (512 bytes for the whole call chain) holds little more than pointers.
#[inline(always)]
pub fn judge(ctx: &TcContext) -> i32 {
    let Some(w) = WORK.get_ptr_mut(0) else {
        return TC_ACT_SHOT as i32;
    };
    // SAFETY: this CPU's slot of a one-entry per-CPU array; TC programs do not nest on a CPU.
    let w = unsafe { &mut *w };
    if !segment(ctx, &mut w.seg) {
        // A policed packet we cannot read: fail closed.
        count(HttpReason::Refused);
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: `skb` is the context pointer the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once.
    match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(ep) => {
            // Field by field: what the L4 decision and the flow record read.
            w.ep.ep_id = ep.ep_id;
            w.ep.identity = ep.identity;
            w.ep.flags = ep.flags;
        }
        None => return TC_ACT_SHOT as i32,
    }
    w.key.ep_id = w.ep.ep_id;
    w.key.saddr = w.seg.saddr;
    w.key.daddr = w.seg.daddr;
    w.key.sport_be = w.seg.sport.to_be_bytes();
    w.key.dport_be = w.seg.dport.to_be_bytes();
    let rev = match CONFIG.get(0) {
        Some(c) => c.policy_rev,
        None => 0,
    };
    let flags = w.seg.flags;
    let payload_len = w.seg.payload_len;
    if flags & TCP_RST != 0 {
        // The client gives up the connection: nothing left to judge.
        let _ = HTTP_CONN.remove(&w.key);
        return PASS;
    }
    let syn = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
    // The sequence number of the first payload byte (a SYN takes one).
    let data_seq = if syn { w.seg.seq.wrapping_add(1) } else { w.seg.seq };
    let mut changed = false;
    if syn {
        // A new connection, or a reused port pair: decided afresh.
        l4(w);
        fresh(w, rev, data_seq);
        changed = true;
    } else {
        // SAFETY: copied at once into this CPU's work area (map memory to map memory: an
        // `HttpConn` is larger than the BPF stack).
        match unsafe { HTTP_CONN.get(&w.key) } {
            Some(c) => {
                if unsafe { copy(&mut w.conn, c) }.is_err() {
                    return TC_ACT_SHOT as i32;
                }
            }
            None => {
                l4(w);
                fresh(w, rev, data_seq);
                if w.conn.mode != MODE_POLICED {
                    let _ = HTTP_CONN.insert(&w.key, &w.conn, 0);
                    return PASS;
                }
                if payload_len == 0 {
                    return PASS;
                }
                // Requests of a connection opened before these rules applied (or whose state
                // was evicted): where its requests start is unknown, so none can be trusted.
                return deny(ctx, w, HttpReason::Untracked, 0);
            }
        }
        if w.conn.rev != rev {
            l4(w);
            let http_only = w.dec.http_only();
            w.conn.rev = rev;
            w.conn.sets = w.dec.http;
            w.conn.peer_identity = w.dec.peer.identity;
            changed = true;
            if w.conn.mode == MODE_POLICED && !http_only {
                // Another rule now allows the peer and port at L4.
                w.conn.mode = MODE_PLAIN;
            } else if w.conn.mode == MODE_PLAIN && http_only {
                // Only HTTP rules admit it now, but its framing was never tracked.
                if payload_len == 0 {
                    return PASS;
                }
                return deny(ctx, w, HttpReason::Untracked, 0);
            }
        }
    }
    match w.conn.mode {
        MODE_POLICED => {}
        MODE_DENIED => return TC_ACT_SHOT as i32,
        _ => {
            if changed {
                let _ = HTTP_CONN.insert(&w.key, &w.conn, 0);
            }
            return PASS;
        }
    }
    if payload_len == 0 {
        if changed {
            let _ = HTTP_CONN.insert(&w.key, &w.conn, 0);
        }
        return PASS;
    }
    let gap = data_seq.wrapping_sub(w.conn.next_seq) as i32;
    if gap > 0 {
        // An earlier segment never reached us: this one cannot be judged yet.
        count(HttpReason::OutOfOrder);
        return TC_ACT_SHOT as i32;
    }
    if gap < 0 {
        // Bytes judged already (a retransmission, maybe with other contents): never twice.
        w.conn.retransmits = w.conn.retransmits.saturating_add(1);
        if w.conn.retransmits >= RETRANSMIT_RESET {
            return deny(ctx, w, HttpReason::Retransmit, 0);
        }
        count(HttpReason::Retransmit);
        let _ = HTTP_CONN.insert(&w.key, &w.conn, 0);
        return TC_ACT_SHOT as i32;
    }
    match run(ctx, w) {
        Ok(()) if w.conn.parser.in_request_line() => {
            // The segment ends inside a request line: not decidable yet, so none of it goes
            // to the server. It is dropped and the state stays as it was; the client's
            // retransmission carries the line again, joined with what followed (Linux
            // collapses retransmitted segments up to the MSS). That is the reassembly, and
            // its bound: a line still incomplete after RETRANSMIT_RESET tries is denied.
            if let Some(c) = HTTP_CONN.get_ptr_mut(&w.key) {
                // SAFETY: one counter of the connection's map value.
                let tries = unsafe {
                    (*c).retransmits = (*c).retransmits.saturating_add(1);
                    (*c).retransmits
                };
                if tries >= RETRANSMIT_RESET {
                    return deny(ctx, w, HttpReason::Budget, 0);
                }
            }
            count(HttpReason::Held);
            TC_ACT_SHOT as i32
        }
        Ok(()) => {
            w.conn.next_seq = data_seq.wrapping_add(payload_len);
            if flags & TCP_FIN != 0 {
                w.conn.next_seq = w.conn.next_seq.wrapping_add(1);
            }
            w.conn.retransmits = 0;
            let _ = HTTP_CONN.insert(&w.key, &w.conn, 0);
            PASS
        }
        Err((reason, error)) => deny(ctx, w, reason, error),
    }
}

/// Copies a whole value in one helper call: a struct this size would otherwise become a
/// byte loop the verifier walks through.
///
/// # Safety
/// Both point at valid, non-overlapping `T`s.
#[inline(always)]
unsafe fn copy<T>(dst: *mut T, src: *const T) -> Result<(), ()> {
    // SAFETY: per the contract.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            dst as *mut c_void,
            core::mem::size_of::<T>() as u32,
            src as *const c_void,
        )
    };
    if r == 0 { Ok(()) } else { Err(()) }
}

/// The connection's state as its first packet (or first packet seen) makes it, from the
/// L4 decision in `w.dec`.
#[inline(always)]
fn fresh(w: &mut Work, rev: u32, next_seq: u32) {
    let c = &mut w.conn;
    c.next_seq = next_seq;
    c.rev = rev;
    c.sets = w.dec.http;
    c.peer_identity = w.dec.peer.identity;
    c.mode = if w.dec.http_only() { MODE_POLICED } else { MODE_PLAIN };
    c.retransmits = 0;
    c.requests = 0;
    c.rule_id = 0;
    c.rule_port = 0;
    c.rule_http = 0;
    c.parser.reset();
}

/// The L4 decision for the segment, into `w.dec` (a function of its own: its lookup keys
/// stay off the caller's stack frame).
#[inline(never)]
fn l4(w: &mut Work) {
    let flow =
        Flow::of_packet(Direction::Ingress, &w.seg.saddr, &w.seg.daddr, PROTO_TCP, w.seg.dport, w.seg.from_node_stack);
    w.dec = decide_new_flow(&KernelTables, &w.ep, Direction::Ingress, &flow);
}

/// Judges the segment's payload; `Err` names why a request was denied. The passes run as a
/// `bpf_loop` too, so the verifier checks one pass rather than [`ROUNDS`] of them.
///
/// The work area is reached through a raw pointer here: the callbacks write it while
/// `bpf_loop` runs, which a `&mut` parameter would tell the compiler cannot happen.
#[inline(always)]
fn run(ctx: &TcContext, w: *mut Work) -> Result<(), (HttpReason, u8)> {
    // SAFETY: `w` is this CPU's work area (see `judge`); every access below is a plain load
    // or store through it, ordered around the `bpf_loop` call.
    unsafe {
        (*w).off = (*w).seg.payload;
        (*w).end = (*w).seg.payload.wrapping_add((*w).seg.payload_len);
        (*w).stop = STOP_NONE;
        let mut outer = Outer { skb: ctx.skb.skb };
        bpf_loop(ROUNDS, round as *mut c_void, &mut outer as *mut Outer as *mut c_void, 0);
        let stop = core::ptr::read_volatile(&(*w).stop);
        let (off, end) = (core::ptr::read_volatile(&(*w).off), core::ptr::read_volatile(&(*w).end));
        match stop {
            STOP_DENY => Err((HttpReason::NoRule, 0)),
            STOP_ERROR => Err((HttpReason::Refused, core::ptr::read_volatile(&(*w).error))),
            STOP_UNREADABLE => Err((HttpReason::Refused, 0)),
            _ if off < end => Err((HttpReason::Budget, 0)),
            _ => Ok(()),
        }
    }
}

/// What the pass callback needs besides the work area: the packet.
struct Outer {
    skb: *mut __sk_buff,
}

/// One pass: steps over body bytes, or parses up to a chunk of head bytes.
#[inline(never)]
unsafe extern "C" fn round(_index: u64, ctx: *mut c_void) -> i64 {
    let Some(w) = WORK.get_ptr_mut(0) else { return 1 };
    // SAFETY: `run` passes a pointer to its `Outer`; `w` is this CPU's work area, as in
    // `judge`, which is waiting in `bpf_loop` (raw accesses: `step` writes it during the
    // inner `bpf_loop`).
    unsafe {
        let skb = (*(ctx as *const Outer)).skb;
        if (*w).stop != STOP_NONE || (*w).off >= (*w).end {
            return 1;
        }
        if (*w).conn.parser.in_body() {
            let n = (*w).conn.parser.skip(((*w).end - (*w).off) as u64) as u32;
            (*w).off += n;
            return 0;
        }
        let rest = (*w).end - (*w).off;
        let n = if rest as usize > CHUNK { CHUNK as u32 } else { rest };
        // Verifier: the length must be provably in 1..=CHUNK (it loses `off < end` above).
        let n = ((n.wrapping_sub(1)) & (CHUNK as u32 - 1)) + 1;
        // `buf` has CHUNK bytes and 0 < n <= CHUNK; the helper checks the packet bounds.
        let r = bpf_skb_load_bytes(skb as *const c_void, (*w).off, (*w).buf.as_mut_ptr() as *mut c_void, n);
        if r != 0 {
            (*w).stop = STOP_UNREADABLE;
            return 1;
        }
        core::ptr::write_volatile(&mut (*w).len, n);
        core::ptr::write_volatile(&mut (*w).pos, 0);
        // `step` is a static function with the callback signature; it reads only the
        // per-CPU work area.
        bpf_loop(n, step as *mut c_void, core::ptr::null_mut(), 0);
        let pos = core::ptr::read_volatile(&(*w).pos);
        (*w).off += pos;
        if core::ptr::read_volatile(&(*w).stop) != STOP_NONE { 1 } else { 0 }
    }
}

/// One byte of the chunk through the parser, as a `bpf_loop` callback (verified once, not
/// once per byte). At a request line it matches the rule sets; at a complete head it records
/// the allowed request; it stops the loop at a denial and when a body starts (bodies are
/// stepped over by count, not byte by byte).
#[inline(never)]
unsafe extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = WORK.get_ptr_mut(0) else { return 1 };
    // SAFETY: this CPU's slot, as in `judge`, which is waiting in `bpf_loop`.
    let w = unsafe { &mut *w };
    let pos = w.pos as usize;
    if pos >= CHUNK || w.pos >= w.len {
        return 1;
    }
    let b = w.buf[pos];
    w.pos += 1;
    match w.conn.parser.feed(b) {
        Ok(Step::More) => {}
        Ok(Step::Line) => {
            w.conn.requests = w.conn.requests.wrapping_add(1);
            if !admitted(w) {
                w.stop = STOP_DENY;
                return 1;
            }
        }
        Ok(Step::Head) => {
            count(HttpReason::Allowed);
            event(w, HttpReason::Allowed, 0);
        }
        Err(e) => {
            w.stop = STOP_ERROR;
            w.error = e as u8;
            return 1;
        }
    }
    if w.conn.parser.in_body() { 1 } else { 0 }
}

/// Whether one of the connection's rule sets admits the request whose line just ended;
/// notes the rule for the flow record.
#[inline(always)]
fn admitted(w: &mut Work) -> bool {
    let mut i = 0;
    while i < 3 {
        let id = w.conn.sets[i];
        i += 1;
        if id == 0 {
            continue;
        }
        // SAFETY: read only for the match.
        let Some(set) = (unsafe { HTTP_SETS.get(&id) }) else { continue };
        let p = &w.conn.parser;
        if let Some(r) = match_request(set, &p.method, p.method_len, &p.path.out, p.path.len as usize) {
            w.conn.rule_id = r.rule_id;
            w.conn.rule_port = r.port_index;
            w.conn.rule_http = r.http_index;
            return true;
        }
    }
    w.conn.rule_id = 0;
    false
}

/// Denies: records the decision, keeps dropping the connection, and resets both ends.
#[inline(never)]
fn deny(ctx: &TcContext, w: &mut Work, reason: HttpReason, error: u8) -> i32 {
    count(reason);
    w.conn.rule_id = 0;
    event(w, reason, error);
    w.conn.mode = MODE_DENIED;
    let _ = HTTP_CONN.insert(&w.key, &w.conn, 0);
    match rewrite_resets(ctx, &w.seg) {
        Ok(()) => PASS,
        // The server still never gets the request.
        Err(()) => TC_ACT_SHOT as i32,
    }
}

/// Writes the flow record of one decision.
#[inline(never)]
fn event(w: &Work, reason: HttpReason, error: u8) {
    let (seg, ep) = (&w.seg, &w.ep);
    let Some(mut entry) = HTTP_EVENTS.reserve::<HttpEvent>(0) else {
        return;
    };
    let p = &w.conn.parser;
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved, writable `HttpEvent`; every field is written below
    // before the entry is submitted.
    unsafe {
        (*e).ts_ns = bpf_ktime_get_ns();
        (*e).saddr = seg.saddr;
        (*e).daddr = seg.daddr;
        (*e).sport_be = seg.sport.to_be_bytes();
        (*e).dport_be = seg.dport.to_be_bytes();
        (*e).ep_id = ep.ep_id;
        (*e).subject_identity = ep.identity;
        (*e).peer_identity = w.conn.peer_identity;
        (*e).rule_id = w.conn.rule_id;
        (*e).rule_port = w.conn.rule_port;
        (*e).rule_http = w.conn.rule_http;
        (*e).reason = reason as u8;
        (*e).error = error;
        (*e).method_len = p.method_len;
        (*e).seen_len = p.seen_len;
        (*e).flags = if p.seen_cut() { EVT_SEEN_CUT } else { 0 };
        (*e)._pad = 0;
        (*e).path_len = p.path.len;
        (*e)._pad2 = [0; 2];
        core::ptr::copy_nonoverlapping(p.method.as_ptr(), (*e).method.as_mut_ptr(), p.method.len());
        core::ptr::copy_nonoverlapping(p.seen.as_ptr(), (*e).seen.as_mut_ptr(), p.seen.len());
        core::ptr::copy_nonoverlapping(p.path.out.as_ptr(), (*e).path.as_mut_ptr(), EVENT_PATH_MAX);
    }
    entry.submit(0);
}

/// Reads the IP and TCP headers of a client segment (IPv4, or IPv6 with TCP as the next
/// header: extension headers on a policed connection are refused).
#[inline(always)]
fn segment(ctx: &TcContext, out: &mut Seg) -> bool {
    match read_segment(ctx, out) {
        Some(()) => true,
        None => false,
    }
}

/// A function of its own: the header copies stay off `judge`'s stack frame.
#[inline(never)]
fn read_segment(ctx: &TcContext, out: &mut Seg) -> Option<()> {
    // SAFETY: `skb` is the context pointer the kernel handed us.
    let (ethertype, skb_len) = unsafe { (u16::from_be((*ctx.skb.skb).protocol as u16), (*ctx.skb.skb).len) };
    let (v6, l4, ip_end, saddr, daddr) = match ethertype {
        0x0800 => {
            let h: [u8; 20] = ctx.load(ETH_HLEN).ok()?;
            let ihl = ((h[0] & 0x0f) as u32) * 4;
            if h[9] != PROTO_TCP || ihl < 20 {
                return None;
            }
            let tot = u16::from_be_bytes([h[2], h[3]]) as u32;
            // 0 with BIG TCP: the skb's length counts.
            let ip_end = if tot == 0 { skb_len } else { ETH_HLEN as u32 + tot };
            (
                false,
                ETH_HLEN as u32 + ihl,
                ip_end,
                v4_mapped([h[12], h[13], h[14], h[15]]),
                v4_mapped([h[16], h[17], h[18], h[19]]),
            )
        }
        0x86dd => {
            let h: [u8; 40] = ctx.load(ETH_HLEN).ok()?;
            if h[6] != PROTO_TCP {
                return None;
            }
            let plen = u16::from_be_bytes([h[4], h[5]]) as u32;
            let ip_end = if plen == 0 { skb_len } else { ETH_HLEN as u32 + 40 + plen };
            out.saddr.copy_from_slice(&h[8..24]);
            out.daddr.copy_from_slice(&h[24..40]);
            (true, ETH_HLEN as u32 + 40, ip_end, out.saddr, out.daddr)
        }
        _ => return None,
    };
    let t: [u8; 20] = ctx.load(l4 as usize).ok()?;
    let doff = ((t[12] >> 4) as u32) * 4;
    if doff < 20 {
        return None;
    }
    let payload = l4 + doff;
    let end = if ip_end < skb_len { ip_end } else { skb_len };
    let payload_len = end.saturating_sub(payload);
    out.v6 = v6;
    out.l4 = l4;
    out.payload = payload;
    out.payload_len = payload_len;
    out.saddr = saddr;
    out.daddr = daddr;
    out.sport = u16::from_be_bytes([t[0], t[1]]);
    out.dport = u16::from_be_bytes([t[2], t[3]]);
    out.seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    out.ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    out.flags = t[13];
    // SAFETY: `skb` is the context pointer the kernel handed us.
    out.from_node_stack = unsafe { (*ctx.skb.skb).ingress_ifindex } == 0;
    Some(())
}

/// Resets both ends of the connection `seg` belongs to. The segment becomes, in place, a
/// reset from the server to the client (addresses, ports and MAC addresses swapped: the
/// checksums do not change; sequence numbers set so the client accepts it), a copy of which
/// goes back into the node as if the server had sent it; then it becomes a reset from the
/// client at the server's next expected byte, and goes on to the server. Its payload stays
/// (a reset's data is never delivered). If a rewrite fails the segment is dropped: the
/// server still never gets the request.
#[inline(always)]
fn rewrite_resets(ctx: &TcContext, seg: &Seg) -> Result<(), ()> {
    let data_seq = if seg.flags & TCP_SYN != 0 { seg.seq.wrapping_add(1) } else { seg.seq };
    let l4 = seg.l4 as usize;
    let csum = l4 + 16;
    let old_flags_word = ctx.load::<[u8; 2]>(l4 + 12).map_err(|_| ())?;
    let rst_word = [old_flags_word[0], TCP_RST | TCP_ACK];
    // 1. The client's reset: from the server, at the sequence number the client expects next
    //    (its acknowledgement), acknowledging this segment.
    swap_ends(ctx, seg)?;
    set_word(ctx, l4 + 4, csum, seg.seq, seg.ack)?;
    set_word(ctx, l4 + 8, csum, seg.ack, data_seq.wrapping_add(seg.payload_len))?;
    set_half(ctx, l4 + 12, csum, old_flags_word, rst_word)?;
    // SAFETY: `skb` is the context pointer the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    ctx.clone_redirect(ifindex, BPF_F_INGRESS as u64).map_err(|_| ())?;
    // 2. The server's reset: from the client, at the first byte of this segment.
    swap_ends(ctx, seg)?;
    set_word(ctx, l4 + 4, csum, seg.ack, data_seq)?;
    set_word(ctx, l4 + 8, csum, data_seq.wrapping_add(seg.payload_len), seg.ack)?;
    Ok(())
}

/// Swaps MAC addresses, IP addresses and ports: checksum-neutral (the sums only add them).
#[inline(always)]
fn swap_ends(ctx: &TcContext, seg: &Seg) -> Result<(), ()> {
    let macs: [u8; 12] = ctx.load(0).map_err(|_| ())?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0).map_err(|_| ())?;
    if seg.v6 {
        let a: [u8; 32] = ctx.load(ETH_HLEN + 8).map_err(|_| ())?;
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&a[16..]);
        b[16..].copy_from_slice(&a[..16]);
        ctx.store(ETH_HLEN + 8, &b, 0).map_err(|_| ())?;
    } else {
        let a: [u8; 8] = ctx.load(ETH_HLEN + 12).map_err(|_| ())?;
        let b = [a[4], a[5], a[6], a[7], a[0], a[1], a[2], a[3]];
        ctx.store(ETH_HLEN + 12, &b, 0).map_err(|_| ())?;
    }
    let p: [u8; 4] = ctx.load(seg.l4 as usize).map_err(|_| ())?;
    ctx.store(seg.l4 as usize, &[p[2], p[3], p[0], p[1]], 0).map_err(|_| ())
}

/// Sets a 32-bit TCP header field from `old` to `new`, updating the checksum.
#[inline(always)]
fn set_word(ctx: &TcContext, off: usize, csum: usize, old: u32, new: u32) -> Result<(), ()> {
    let old_be = old.to_be();
    let new_be = new.to_be();
    ctx.store(off, &new_be, 0).map_err(|_| ())?;
    ctx.l4_csum_replace(csum, old_be as u64, new_be as u64, 4).map_err(|_| ())
}

/// Sets a 16-bit TCP header field, updating the checksum.
#[inline(always)]
fn set_half(ctx: &TcContext, off: usize, csum: usize, old: [u8; 2], new: [u8; 2]) -> Result<(), ()> {
    ctx.store(off, &new, 0).map_err(|_| ())?;
    let o = u16::from_ne_bytes(old);
    let n = u16::from_ne_bytes(new);
    ctx.l4_csum_replace(csum, o as u64, n as u64, 2).map_err(|_| ())
}
