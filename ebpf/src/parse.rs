//! Packet parsing into what the decision needs, for IPv4 and IPv6 alike (addresses in the
//! 16-byte IPv4-mapped form). Reads through `bpf_skb_load_bytes` (`TcContext::load`), which
//! checks bounds itself, so offsets may vary (IPv4 options, IPv6 extension headers) without
//! the verifier needing a proof for each.
//!
//! The parser is where most doors are closed, so it is strict about what a decision could be
//! fooled by and says which class a packet falls in:
//! * an IP header that cannot be read, or IPv6 carrying IPv4-mapped addresses (never valid
//!   on the wire, and they would pass for IPv4 identities): [`Parsed::BadIp`], dropped always;
//! * an L4 header or extension chain that cannot be read or is not what a receiver would
//!   accept (an IPv6 extension chain longer than [`MAX_EXT_HEADERS`], Hop-by-Hop anywhere but
//!   first, a routing header with segments left, IPv4 source-route options):
//!   [`Parsed::BadL4`], dropped where the pod is isolated;
//! * everything else is classified by [`Kind`].

use aya_ebpf::{cty::c_void, helpers::bpf_skb_load_bytes, programs::TcContext};
use ward_common::{
    Addr16,
    addr::{is_v4_mapped, v4_mapped},
};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86DD;

// IPv6 extension headers the walk steps over (RFC 8200 section 4; AH from RFC 4302).
const NH_HOP_BY_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AH: u8 = 51;
const NH_DEST_OPTS: u8 = 60;
/// Longest extension chain accepted; real traffic carries one or two.
pub const MAX_EXT_HEADERS: usize = 6;

// IPv4 options that make a router forward by a list in the packet instead of the destination
// address (RFC 791): a pod could reach past its egress policy through an allowed router.
const IPOPT_END: u8 = 0;
const IPOPT_NOP: u8 = 1;
const IPOPT_LSRR: u8 = 131;
const IPOPT_SSRR: u8 = 137;
const IPV4_MAX_OPTIONS: usize = 40;

// ICMP and ICMPv6 types the decision tells apart.
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAM_PROBLEM: u8 = 12;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAM_PROBLEM: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ICMPV6_MLD_QUERY: u8 = 130;
pub const ICMPV6_MLD_REPORT: u8 = 131;
pub const ICMPV6_MLD_DONE: u8 = 132;
pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
pub const ICMPV6_NEIGH_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGH_ADVERT: u8 = 136;
pub const ICMPV6_REDIRECT: u8 = 137;
pub const ICMPV6_MLD2_REPORT: u8 = 143;

/// The "port" an ICMP echo puts opposite its identifier in the flow tuple. A request is
/// (sport = id, dport = `ECHO_SIDE`), a reply (sport = `ECHO_SIDE`, dport = id), so a reply
/// reverses into its request and a request never passes for a reply of another request.
pub const ECHO_SIDE: u16 = 0;

/// The five-tuple of a packet; ports in host order (0 for port-less protocols; see
/// [`ECHO_SIDE`] for ICMP echo).
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: Addr16,
    pub daddr: Addr16,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// What kind of packet this is, as far as policy cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP, UDP, SCTP or another protocol: decided by conntrack and policy, tracked.
    Flow,
    /// A fragment other than the first: no L4 header; passes only after its first fragment.
    Fragment,
    /// ICMP/ICMPv6 echo request: a flow like any other.
    EchoRequest,
    /// ICMP/ICMPv6 echo reply: passes as the reply of a tracked request, else by policy
    /// without being tracked itself.
    EchoReply,
    /// An ICMP/ICMPv6 error; `inner` is the tuple of the packet it quotes (when
    /// `inner_valid`).
    IcmpError,
    /// Any other ICMP/ICMPv6 type: decided by policy, packet by packet, never tracked.
    IcmpOther,
    /// IPv6 neighbour discovery (133-137) or MLD (130-132, 143): exempt from policy only
    /// within what the protocol needs (`datapath::nd_exempt`), else treated as `IcmpOther`.
    NeighbourDiscovery,
}

pub struct Packet {
    pub tuple: Tuple,
    pub inner: Tuple,
    pub inner_valid: bool,
    pub kind: Kind,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    pub v6: bool,
    /// Offset 0 with more fragments to come: later fragments may follow it.
    pub first_fragment: bool,
    /// The datagram's fragment identification (IPv4: 16 bits), for both kinds of fragment.
    pub frag_id: u32,
    /// Neighbour solicitation/advertisement/redirect target address.
    pub nd_target: Addr16,
    /// ARP sender protocol address (IPv4-mapped).
    pub arp_sender: Addr16,
    /// IPv4 options, read in one helper call when present.
    options: [u8; IPV4_MAX_OPTIONS],
}

pub enum Parsed {
    /// ARP: `arp_sender` is set.
    Arp,
    /// Neither IP nor ARP.
    Other,
    /// Parsed into the caller's `Packet`.
    Ip,
    /// The IP header is fine (addresses, `v6` and `hop_limit` are set) but what follows cannot
    /// be decided on.
    BadL4,
    /// No usable IP header.
    BadIp,
}

#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    ctx.load::<T>(off).map_err(|_| ())
}

/// Why parsing stopped early.
enum Stop {
    /// What follows the IP header is unusable.
    L4,
    /// The IP header itself is.
    Ip,
}

/// Parses into `out` (which lives in the per-CPU scratch map, not on the 512-byte stack).
#[inline(always)]
pub fn parse(ctx: &TcContext, out: &mut Packet) -> Parsed {
    // The kernel has already read the EtherType into skb->protocol (network order): no
    // helper call. Frames too short for an Ethernet header never get here as IP.
    // SAFETY: `skb` is the context pointer the kernel handed us.
    let ethertype = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    out.kind = Kind::Flow;
    out.tcp_flags = 0;
    out.icmp_type = 0;
    out.icmp_code = 0;
    out.inner_valid = false;
    out.first_fragment = false;
    out.frag_id = 0;
    let r = match ethertype {
        ETH_P_IP => parse_v4(ctx, out),
        ETH_P_IPV6 => parse_v6(ctx, out),
        ETH_P_ARP => {
            return match parse_arp(ctx, out) {
                Ok(()) => Parsed::Arp,
                // An ARP frame that cannot be read says nothing we could check.
                Err(()) => Parsed::Other,
            };
        }
        _ => return Parsed::Other,
    };
    match r {
        Ok(()) => Parsed::Ip,
        Err(Stop::L4) => Parsed::BadL4,
        Err(Stop::Ip) => Parsed::BadIp,
    }
}

pub const EMPTY: Tuple = Tuple { saddr: [0; 16], daddr: [0; 16], sport: 0, dport: 0, proto: 0 };

/// ARP over Ethernet for IPv4: the sender protocol address at byte 14 of the ARP payload.
#[inline(always)]
fn parse_arp(ctx: &TcContext, out: &mut Packet) -> Result<(), ()> {
    let h: [u8; 8] = load(ctx, ETH_HLEN)?;
    // htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4.
    if h != [0, 1, 8, 0, 6, 4, h[6], h[7]] {
        return Err(());
    }
    out.arp_sender = v4_mapped(load::<[u8; 4]>(ctx, ETH_HLEN + 14)?);
    Ok(())
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, out: &mut Packet) -> Result<(), Stop> {
    let off = ETH_HLEN;
    // The fixed header in one helper call rather than one call per field: helper calls are
    // most of what parsing costs per packet.
    let h: [u8; 20] = load(ctx, off).map_err(|_| Stop::Ip)?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(Stop::Ip);
    }
    // A header that claims more bytes than the frame holds, or fewer than itself, is no
    // packet a receiver accepts (0: a BIG TCP aggregate, whose length is the skb's).
    let total = u16::from_be_bytes([h[2], h[3]]) as usize;
    if total != 0 && (total < ihl || total > frame_len(ctx) - off) {
        return Err(Stop::Ip);
    }
    out.v6 = false;
    out.hop_limit = h[8];
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let proto = h[9];
    let saddr = v4_mapped([h[12], h[13], h[14], h[15]]);
    let daddr = v4_mapped([h[16], h[17], h[18], h[19]]);
    out.tuple = Tuple { saddr, daddr, sport: 0, dport: 0, proto };
    out.frag_id = u16::from_be_bytes([h[4], h[5]]) as u32;
    if ihl > 20 {
        check_v4_options(ctx, off + 20, ihl - 20, out)?;
    }
    if frag & 0x1fff != 0 {
        out.kind = Kind::Fragment;
        return Ok(());
    }
    out.first_fragment = frag & 0x2000 != 0;
    parse_l4(ctx, off + ihl, out).map_err(|_| Stop::L4)
}

/// The frame's length in bytes (at least the fixed headers, which were just read).
#[inline(always)]
fn frame_len(ctx: &TcContext) -> usize {
    ctx.len() as usize
}

/// Refuses source-route options (and option lists that do not parse).
#[inline(always)]
fn check_v4_options(ctx: &TcContext, off: usize, len: usize, out: &mut Packet) -> Result<(), Stop> {
    if len == 0 || len > IPV4_MAX_OPTIONS {
        return Err(Stop::Ip);
    }
    // The helper directly rather than `load_bytes` (which clamps the length to what the
    // packet holds and so may pass 0, which the verifier refuses): 1..=40 bytes, checked
    // just above, into the options buffer; a short packet fails the call.
    // SAFETY: `skb` is the context pointer; the destination holds `IPV4_MAX_OPTIONS` bytes.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            off as u32,
            out.options.as_mut_ptr() as *mut c_void,
            len as u32,
        )
    };
    if r != 0 {
        return Err(Stop::L4);
    }
    let mut i = 0usize;
    // Bounded walk (verifier: constant trip count); each option is at least one byte.
    for _ in 0..IPV4_MAX_OPTIONS {
        if i >= len || i >= IPV4_MAX_OPTIONS {
            break;
        }
        let ty = out.options[i];
        match ty {
            IPOPT_END => break,
            IPOPT_NOP => i += 1,
            IPOPT_LSRR | IPOPT_SSRR => return Err(Stop::L4),
            _ => {
                let Some(&olen) = out.options.get(i + 1) else {
                    return Err(Stop::L4);
                };
                if olen < 2 {
                    return Err(Stop::L4);
                }
                i += olen as usize;
            }
        }
    }
    if i > len {
        return Err(Stop::L4);
    }
    Ok(())
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, out: &mut Packet) -> Result<(), Stop> {
    let off = ETH_HLEN;
    // The fixed header in one helper call (see parse_v4).
    let h: [u8; 40] = load(ctx, off).map_err(|_| Stop::Ip)?;
    if h[0] >> 4 != 6 {
        return Err(Stop::Ip);
    }
    // As for IPv4 (0: a jumbogram or BIG TCP aggregate).
    let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
    if payload != 0 && payload > frame_len(ctx) - off - 40 {
        return Err(Stop::Ip);
    }
    out.v6 = true;
    out.hop_limit = h[7];
    let mut next = h[6];
    for i in 0..16 {
        out.tuple.saddr[i] = h[8 + i];
        out.tuple.daddr[i] = h[24 + i];
    }
    // IPv4-mapped addresses are never valid on the wire (RFC 4291 2.5.5.2), and here they
    // would take the identity of the IPv4 address they embed.
    if is_v4_mapped(&out.tuple.saddr) || is_v4_mapped(&out.tuple.daddr) {
        return Err(Stop::Ip);
    }
    out.tuple.sport = 0;
    out.tuple.dport = 0;
    out.tuple.proto = next;
    let mut l4 = off + 40;
    let mut done = false;
    // Bounded walk over extension headers (verifier: constant trip count).
    for i in 0..MAX_EXT_HEADERS {
        match next {
            NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS => {
                // Hop-by-Hop is only valid right after the fixed header (RFC 8200 4.1).
                if next == NH_HOP_BY_HOP && i != 0 {
                    return Err(Stop::L4);
                }
                let e: [u8; 4] = load(ctx, l4).map_err(|_| Stop::L4)?;
                // A routing header with segments left would make the destination forward the
                // packet past the address policy decided on.
                if next == NH_ROUTING && e[3] != 0 {
                    return Err(Stop::L4);
                }
                next = e[0];
                l4 += (e[1] as usize + 1) * 8;
            }
            NH_AH => {
                let e: [u8; 2] = load(ctx, l4).map_err(|_| Stop::L4)?;
                next = e[0];
                l4 += (e[1] as usize + 2) * 4;
            }
            NH_FRAGMENT => {
                let e: [u8; 8] = load(ctx, l4).map_err(|_| Stop::L4)?;
                let frag = u16::from_be_bytes([e[2], e[3]]);
                out.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                next = e[0];
                l4 += 8;
                if frag & 0xfff8 != 0 {
                    // Every fragment of a datagram carries the same next header: the key of
                    // its first fragment.
                    out.tuple.proto = next;
                    out.kind = Kind::Fragment;
                    return Ok(());
                }
                out.first_fragment = frag & 1 != 0;
            }
            _ => {
                done = true;
                break;
            }
        }
    }
    if !done {
        // Still an extension header after the bound: nothing a decision could rest on.
        return Err(Stop::L4);
    }
    out.tuple.proto = next;
    parse_l4(ctx, l4, out).map_err(|_| Stop::L4)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, off: usize, out: &mut Packet) -> Result<(), ()> {
    let v6 = out.v6;
    let tuple = &mut out.tuple;
    match tuple.proto {
        PROTO_TCP => {
            // The whole fixed header in one helper call (ports, flags at byte 13); a data
            // offset below five words, or past the frame, is no TCP segment a receiver accepts.
            let h: [u8; 20] = load(ctx, off)?;
            let doff = ((h[12] >> 4) as usize) * 4;
            if doff < 20 || off + doff > frame_len(ctx) {
                return Err(());
            }
            tuple.sport = u16::from_be_bytes([h[0], h[1]]);
            tuple.dport = u16::from_be_bytes([h[2], h[3]]);
            out.tcp_flags = h[13];
        }
        PROTO_UDP | PROTO_SCTP => {
            let h: [u8; 4] = load(ctx, off)?;
            tuple.sport = u16::from_be_bytes([h[0], h[1]]);
            tuple.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        PROTO_ICMP if !v6 => parse_icmp(ctx, off, out, false)?,
        PROTO_ICMPV6 if v6 => parse_icmp(ctx, off, out, true)?,
        // ICMP in the other family's packet is no ICMP at all: a protocol without ports.
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn parse_icmp(ctx: &TcContext, off: usize, out: &mut Packet, v6: bool) -> Result<(), ()> {
    let h: [u8; 8] = load(ctx, off)?;
    let ty = h[0];
    out.icmp_type = ty;
    out.icmp_code = h[1];
    let id = u16::from_be_bytes([h[4], h[5]]);
    match (v6, ty) {
        (false, ICMP_ECHO_REQUEST) | (true, ICMPV6_ECHO_REQUEST) => {
            out.kind = Kind::EchoRequest;
            out.tuple.sport = id;
            out.tuple.dport = ECHO_SIDE;
        }
        (false, ICMP_ECHO_REPLY) | (true, ICMPV6_ECHO_REPLY) => {
            out.kind = Kind::EchoReply;
            out.tuple.sport = ECHO_SIDE;
            out.tuple.dport = id;
        }
        (false, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM)
        | (true, ICMPV6_DEST_UNREACH..=ICMPV6_PARAM_PROBLEM) => {
            out.kind = Kind::IcmpError;
            // A quoted header that does not parse relates to nothing; the error itself is
            // still an ordinary ICMP packet.
            out.inner_valid = parse_inner(ctx, off + 8, v6, &mut out.inner).is_ok();
        }
        (true, ICMPV6_MLD_QUERY..=ICMPV6_REDIRECT | ICMPV6_MLD2_REPORT) => {
            out.kind = Kind::NeighbourDiscovery;
            if matches!(ty, ICMPV6_NEIGH_SOLICIT | ICMPV6_NEIGH_ADVERT | ICMPV6_REDIRECT) {
                out.nd_target = load(ctx, off + 8)?;
            }
        }
        _ => out.kind = Kind::IcmpOther,
    }
    Ok(())
}

/// The header quoted inside an ICMP error: IP header plus at least the first 8 bytes of L4.
/// Only what a real error can quote is accepted: a first (or only) fragment, no IPv6
/// extension headers, and for ICMP only echo (errors are never sent about errors).
#[inline(always)]
fn parse_inner(ctx: &TcContext, off: usize, v6: bool, t: &mut Tuple) -> Result<(), ()> {
    t.sport = 0;
    t.dport = 0;
    let l4 = if v6 {
        let h: [u8; 40] = load(ctx, off)?;
        if h[0] >> 4 != 6 {
            return Err(());
        }
        t.proto = h[6];
        for i in 0..16 {
            t.saddr[i] = h[8 + i];
            t.daddr[i] = h[24 + i];
        }
        off + 40
    } else {
        let h: [u8; 20] = load(ctx, off)?;
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if h[0] >> 4 != 4 || ihl < 20 || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
            return Err(());
        }
        t.proto = h[9];
        t.saddr = v4_mapped([h[12], h[13], h[14], h[15]]);
        t.daddr = v4_mapped([h[16], h[17], h[18], h[19]]);
        off + ihl
    };
    let p: [u8; 8] = load(ctx, l4)?;
    match (t.proto, v6) {
        (PROTO_TCP | PROTO_UDP | PROTO_SCTP, _) => {
            t.sport = u16::from_be_bytes([p[0], p[1]]);
            t.dport = u16::from_be_bytes([p[2], p[3]]);
        }
        (PROTO_ICMP, false) | (PROTO_ICMPV6, true) => {
            let id = u16::from_be_bytes([p[4], p[5]]);
            match (v6, p[0]) {
                (false, ICMP_ECHO_REQUEST) | (true, ICMPV6_ECHO_REQUEST) => {
                    t.sport = id;
                    t.dport = ECHO_SIDE;
                }
                (false, ICMP_ECHO_REPLY) | (true, ICMPV6_ECHO_REPLY) => {
                    t.sport = ECHO_SIDE;
                    t.dport = id;
                }
                _ => return Err(()),
            }
        }
        _ => return Err(()),
    }
    Ok(())
}
