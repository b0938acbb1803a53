//! Packet parsing into the flow tuple, for IPv4 and IPv6 alike (addresses in the 16-byte
//! IPv4-mapped form). Reads through `bpf_skb_load_bytes` (`TcContext::load`), which checks
//! bounds itself, so offsets may vary (IPv4 options, IPv6 extension headers) without the
//! verifier needing a proof for each.

use aya_ebpf::programs::TcContext;
use ward_common::{Addr16, addr::v4_mapped};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// The five-tuple of a packet; ports in host order (0 for port-less protocols; the echo id
/// for ICMP echo, on both ends, so request and reply reverse into each other).
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
    /// An ordinary packet: decided by conntrack and policy.
    Flow,
    /// A non-first fragment: no L4 header.
    Fragment,
    /// An ICMP/ICMPv6 error; `inner` is the tuple of the packet it reports on.
    IcmpError,
    /// IPv6 neighbour discovery or router solicitation: link plumbing, not policed.
    NeighbourDiscovery,
}

pub struct Packet {
    pub tuple: Tuple,
    pub inner: Tuple,
    pub kind: Kind,
    pub tcp_flags: u8,
}

pub enum Parsed {
    /// Not IP (ARP and the like): not policed.
    NotIp,
    /// Parsed into the caller's `Packet`.
    Ip,
    /// IP, but not parseable far enough to decide.
    Malformed,
}

#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    ctx.load::<T>(off).map_err(|_| ())
}

#[inline(always)]
fn load_be16(ctx: &TcContext, off: usize) -> Result<u16, ()> {
    Ok(u16::from_be(load::<u16>(ctx, off)?))
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
    let r = match ethertype {
        ETH_P_IP => parse_v4(ctx, out),
        ETH_P_IPV6 => parse_v6(ctx, out),
        _ => return Parsed::NotIp,
    };
    match r {
        Ok(()) => Parsed::Ip,
        Err(()) => Parsed::Malformed,
    }
}

pub const EMPTY: Tuple = Tuple { saddr: [0; 16], daddr: [0; 16], sport: 0, dport: 0, proto: 0 };

#[inline(always)]
fn parse_v4(ctx: &TcContext, out: &mut Packet) -> Result<(), ()> {
    let off = ETH_HLEN;
    // The fixed header in one helper call rather than one call per field: helper calls are
    // most of what parsing costs per packet.
    let h: [u8; 20] = load(ctx, off)?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(());
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let proto = h[9];
    let saddr = v4_mapped([h[12], h[13], h[14], h[15]]);
    let daddr = v4_mapped([h[16], h[17], h[18], h[19]]);
    out.tuple = Tuple { saddr, daddr, sport: 0, dport: 0, proto };
    if frag & 0x1fff != 0 {
        out.kind = Kind::Fragment;
        return Ok(());
    }
    parse_l4(ctx, off + ihl, out, false)
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, out: &mut Packet) -> Result<(), ()> {
    let off = ETH_HLEN;
    // The fixed header in one helper call (see parse_v4).
    let h: [u8; 40] = load(ctx, off)?;
    if h[0] >> 4 != 6 {
        return Err(());
    }
    let mut next = h[6];
    for i in 0..16 {
        out.tuple.saddr[i] = h[8 + i];
        out.tuple.daddr[i] = h[24 + i];
    }
    out.tuple.sport = 0;
    out.tuple.dport = 0;
    let mut l4 = off + 40;
    // Bounded walk over extension headers (verifier: constant trip count).
    for _ in 0..4 {
        match next {
            0 | 43 | 60 => {
                let nh: u8 = load(ctx, l4)?;
                let len: u8 = load(ctx, l4 + 1)?;
                next = nh;
                l4 += (len as usize + 1) * 8;
            }
            51 => {
                let nh: u8 = load(ctx, l4)?;
                let len: u8 = load(ctx, l4 + 1)?;
                next = nh;
                l4 += (len as usize + 2) * 4;
            }
            44 => {
                let nh: u8 = load(ctx, l4)?;
                let frag = load_be16(ctx, l4 + 2)?;
                next = nh;
                l4 += 8;
                if frag & 0xfff8 != 0 {
                    out.tuple.proto = next;
                    out.kind = Kind::Fragment;
                    return Ok(());
                }
            }
            _ => break,
        }
    }
    out.tuple.proto = next;
    parse_l4(ctx, l4, out, true)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, off: usize, out: &mut Packet, v6: bool) -> Result<(), ()> {
    let tuple = &mut out.tuple;
    match tuple.proto {
        PROTO_TCP => {
            // Ports and flags (byte 13) in one helper call.
            let h: [u8; 14] = load(ctx, off)?;
            tuple.sport = u16::from_be_bytes([h[0], h[1]]);
            tuple.dport = u16::from_be_bytes([h[2], h[3]]);
            out.tcp_flags = h[13];
        }
        PROTO_UDP | PROTO_SCTP => {
            let h: [u8; 4] = load(ctx, off)?;
            tuple.sport = u16::from_be_bytes([h[0], h[1]]);
            tuple.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let ty: u8 = load(ctx, off)?;
            match (v6, ty) {
                // Echo request/reply: the id stands for both ports.
                (false, 0 | 8) | (true, 128 | 129) => {
                    let id = load_be16(ctx, off + 4)?;
                    tuple.sport = id;
                    tuple.dport = id;
                }
                // Errors: destination unreachable, time exceeded, parameter problem (and
                // IPv6 packet too big).
                (false, 3 | 11 | 12) | (true, 1..=4) => {
                    out.kind = Kind::IcmpError;
                    parse_inner(ctx, off + 8, v6, &mut out.inner)?;
                }
                // MLD, router/neighbour solicitation and advertisement, redirect.
                (true, 130..=137 | 143) => out.kind = Kind::NeighbourDiscovery,
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// The header quoted inside an ICMP error: IP header plus the first 8 bytes of L4.
#[inline(always)]
fn parse_inner(ctx: &TcContext, off: usize, v6: bool, t: &mut Tuple) -> Result<(), ()> {
    t.sport = 0;
    t.dport = 0;
    let l4 = if v6 {
        t.proto = load(ctx, off + 6)?;
        t.saddr = load(ctx, off + 8)?;
        t.daddr = load(ctx, off + 24)?;
        off + 40
    } else {
        let b0: u8 = load(ctx, off)?;
        let ihl = ((b0 & 0x0f) as usize) * 4;
        if ihl < 20 {
            return Err(());
        }
        t.proto = load(ctx, off + 9)?;
        t.saddr = v4_mapped(load::<[u8; 4]>(ctx, off + 12)?);
        t.daddr = v4_mapped(load::<[u8; 4]>(ctx, off + 16)?);
        off + ihl
    };
    match t.proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            t.sport = load_be16(ctx, l4)?;
            t.dport = load_be16(ctx, l4 + 2)?;
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let id = load_be16(ctx, l4 + 4)?;
            t.sport = id;
            t.dport = id;
        }
        _ => {}
    }
    Ok(())
}
