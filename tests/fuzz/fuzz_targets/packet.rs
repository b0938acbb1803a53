//! Fuzz target: any bytes through the real kernel programs (BPF_PROG_TEST_RUN) at a pod
//! isolated both ways, and never an allow that an independent reading of the frame would not
//! give. Needs root (the datapath is loaded into this kernel).
//!
//! The pod may receive TCP 80 from its peer and send UDP 53 to it; the node's own stack may
//! reach it. Conntrack accumulates over the run, so the oracle is the upper bound of what any
//! sequence of inputs can make pass: a frame, read by `etherparse` (not Ward's parser), passes
//! only if it is ARP within the source check, IPv6 neighbour discovery or MLD within RFC 4861 /
//! RFC 3810, or an IP packet between the pod and its peer (or the node) that belongs to one of
//! the allowed flows in one of its directions: the flow itself, its replies, ICMP errors about
//! it addressed back to the sender of the packet they quote, and later fragments.
//!
//! Input: the first byte picks the program (bit 0: `from_pod`, else `to_pod`), whether the
//! node forwarded the packet (bit 1) or sent it, and how the rest is read (bit 2): as the frame
//! itself, or as choices that build a frame near the allowed flows (addresses of the pod, its
//! peer, the node or others; protocols, ports, TTLs, IPv4 options and fragments, IPv6
//! extension chains, ICMP types quoting such packets). The kernel's branches are not
//! instrumented, so the built frames are what steers the search into them.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use libfuzzer_sys::fuzz_target;
use ward_agent::datapath::{Datapath, MirrorContents};
use ward_common::{
    Direction,
    addr::v4_mapped,
    identity::{ID_HOST, ID_WORLD},
    maps::{EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EndpointInfo, IpcacheKey, IpcacheValue, PolicyKey, PolicyValue},
    ports::PortBlock,
};

const POD: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 3);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 3);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0xffff, 0, 0, 0, 0, 0, 1);
const SUBJECT: u32 = 300;
const PEER_ID: u32 = 301;
const LO: u32 = 1;
const PASS: i32 = -1;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

struct Lab {
    dp: Datapath,
    pin_dir: std::path::PathBuf,
}

fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        assert!(nix::unistd::geteuid().is_root(), "the packet fuzz target loads eBPF programs: run it as root");
        // `ward-<pid>-…` so that `cargo xtask lab-clean` removes it if the run is killed.
        let node = format!("ward-{}-fuzz-packet", std::process::id());
        let mut dp = Datapath::open(std::path::Path::new("/sys/fs/bpf"), &node).expect("load the datapath");
        let mut m = MirrorContents::default();
        m.endpoints.insert(
            LO,
            EndpointInfo {
                ep_id: 7,
                identity: SUBJECT,
                flags: EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS,
                _pad: 0,
                addr_v4: v4_mapped(POD.octets()),
                addr_v6: POD6.octets(),
            },
        );
        let host = |a: IpAddr| IpcacheKey { prefixlen: 128, addr: ward_common::addr::addr16(a) };
        for (a, id) in [
            (IpAddr::V4(POD), SUBJECT),
            (IpAddr::V6(POD6), SUBJECT),
            (IpAddr::V4(PEER), PEER_ID),
            (IpAddr::V6(PEER6), PEER_ID),
            (IpAddr::V4(NODE), ID_HOST),
            (IpAddr::V6(NODE6), ID_HOST),
        ] {
            m.ipcache.insert(host(a), IpcacheValue { identity: id, cidr_identity: ID_WORLD });
        }
        let one = |port| PortBlock { base: port, prefix_len: 16 };
        m.policy.insert(
            PolicyKey::port_block(SUBJECT, PEER_ID, Direction::Ingress, TCP, one(80)),
            PolicyValue { rule_id: 1, flags: 0 },
        );
        m.policy.insert(
            PolicyKey::port_block(SUBJECT, PEER_ID, Direction::Egress, UDP, one(53)),
            PolicyValue { rule_id: 2, flags: 0 },
        );
        let mut mirror = MirrorContents::default();
        let delta = mirror.delta_to(&m);
        dp.maps.apply(&mut mirror, &delta).expect("load the maps");
        let pin_dir = dp.pin_dir().to_owned();
        extern "C" fn cleanup() {
            if let Some(lab) = LAB.get() {
                let _ = std::fs::remove_dir_all(&lab.pin_dir);
            }
        }
        // SAFETY: registering a plain function; libFuzzer exits through exit().
        unsafe { libc::atexit(cleanup) };
        Lab { dp, pin_dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let egress = sel & 1 != 0;
    let forwarded = sel & 2 != 0;
    let built;
    let frame = if sel & 4 != 0 {
        built = build::frame(&mut build::Choices(rest), egress);
        &built[..]
    } else {
        rest
    };
    let program = if egress { "from_pod" } else { "to_pod" };
    // The kernel refuses frames whose IP header is cut short; those have no verdict.
    let Ok(verdict) = lab().dp.run_program_from(program, frame, LO, if forwarded { 5 } else { 0 }) else { return };
    if verdict == PASS {
        let dir = if egress { Direction::Egress } else { Direction::Ingress };
        assert!(
            may_pass(dir, !forwarded, frame),
            "{program} passed a frame the policy allows in no way (node-sent: {}): {frame:02x?}",
            !forwarded
        );
    }
});

/// The oracle (see the module docs).
fn may_pass(dir: Direction, node_sent: bool, frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == 0x0806 {
        return arp_ok(dir, &frame[14..]);
    }
    // The node's own traffic, whatever else the packet holds (the node is trusted): sent by
    // its stack into the pod, or the pod's packets to the node (replies of such flows).
    let raw_addr = |off: usize, len: usize| frame.get(off..off + len);
    let (raw_src, raw_dst) = match ethertype {
        0x0800 => (raw_addr(26, 4).map(|a| a.to_vec()), raw_addr(30, 4).map(|a| a.to_vec())),
        0x86dd => (raw_addr(22, 16).map(|a| a.to_vec()), raw_addr(38, 16).map(|a| a.to_vec())),
        _ => (None, None),
    };
    let is_node = |a: &Option<Vec<u8>>| {
        a.as_deref().is_some_and(|a| a == NODE.octets().as_slice() || a == NODE6.octets().as_slice())
    };
    if (dir == Direction::Ingress && node_sent && is_node(&raw_src)) || (dir == Direction::Egress && is_node(&raw_dst))
    {
        return true;
    }
    let Ok(p) = SlicedPacket::from_ethernet(frame) else { return false };
    let Some(net) = &p.net else { return false };
    let (src, dst, hop, proto, fragmented, later_fragment) = match net {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            let later = h.fragments_offset().value() != 0;
            (IpAddr::V4(h.source_addr()), IpAddr::V4(h.destination_addr()), h.ttl(), h.protocol().0, ip.is_payload_fragmented(), later)
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            let later = ip.is_payload_fragmented() && p.transport.is_none();
            let proto = ip.payload().ip_number.0;
            (IpAddr::V6(h.source_addr()), IpAddr::V6(h.destination_addr()), h.hop_limit(), proto, ip.is_payload_fragmented(), later)
        }
        _ => return false,
    };
    let (pod, peer, node) = match src {
        IpAddr::V4(_) => (IpAddr::V4(POD), IpAddr::V4(PEER), IpAddr::V4(NODE)),
        IpAddr::V6(_) => (IpAddr::V6(POD6), IpAddr::V6(PEER6), IpAddr::V6(NODE6)),
    };
    if let (IpAddr::V6(s), IpAddr::V6(d), Some(TransportSlice::Icmpv6(icmp))) = (src, dst, &p.transport)
        && nd_ok(dir, s, d, hop, icmp.type_u8(), icmp.slice())
    {
        return true;
    }
    // The remote end of the packet, and whether the pod is the right end of it: leaving the
    // pod, its source must be the pod's; entering it, its destination (only the node's own
    // stack, let through above, may reach the pod at other addresses).
    let (remote, pod_end) = match dir {
        Direction::Ingress => (src, dst == pod),
        Direction::Egress => (dst, src == pod),
    };
    // The node's own traffic (and the pod's answers to it): anything.
    if remote == node && (dir == Direction::Egress || node_sent) && pod_end {
        return true;
    }
    if fragmented || later_fragment {
        // A fragment (etherparse decodes no transport header in a fragmented payload): of a
        // datagram of a flow below, or of an ICMP error from any router on the way in.
        return pod_end && (remote == peer || remote == node || (dir == Direction::Ingress && matches!(proto, ICMP | ICMPV6)));
    }
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => pod_end && remote == peer && flow_ok(dir, TCP, t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => pod_end && remote == peer && flow_ok(dir, UDP, u.source_port(), u.destination_port()),
        Some(TransportSlice::Icmpv4(i)) => pod_end && error_ok(dir, src, dst, i.type_u8(), &[3, 11, 12], i.payload(), false),
        Some(TransportSlice::Icmpv6(i)) => pod_end && error_ok(dir, src, dst, i.type_u8(), &[1, 2, 3, 4], i.payload(), true),
        _ => false,
    }
}

/// The allowed flows as seen in either of their directions: TCP to the pod's port 80 from the
/// peer, and UDP from the pod to the peer's port 53.
fn flow_ok(dir: Direction, proto: u8, sport: u16, dport: u16) -> bool {
    match (dir, proto) {
        (Direction::Ingress, TCP) => dport == 80,
        (Direction::Egress, TCP) => sport == 80,
        (Direction::Egress, UDP) => dport == 53,
        (Direction::Ingress, UDP) => sport == 53,
        _ => false,
    }
}

/// An ICMP error about a packet of an allowed flow, addressed back to that packet's sender.
fn error_ok(dir: Direction, _src: IpAddr, dst: IpAddr, ty: u8, errors: &[u8], quoted: &[u8], v6: bool) -> bool {
    if !errors.contains(&ty) {
        return false;
    }
    let Ok(inner) = (if v6 { etherparse::LaxSlicedPacket::from_ip(quoted) } else { etherparse::LaxSlicedPacket::from_ip(quoted) }) else {
        return false;
    };
    let Some(net) = &inner.net else { return false };
    let (isrc, idst) = match net {
        etherparse::LaxNetSlice::Ipv4(ip) => (IpAddr::V4(ip.header().source_addr()), IpAddr::V4(ip.header().destination_addr())),
        etherparse::LaxNetSlice::Ipv6(ip) => (IpAddr::V6(ip.header().source_addr()), IpAddr::V6(ip.header().destination_addr())),
        _ => return false,
    };
    if dst != isrc {
        return false;
    }
    // The quoted packet went the other way through this pod: into it for an error going out,
    // out of it for an error coming in.
    let quoted_dir = match dir {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    };
    let (pod, peer, node) = if v6 {
        (IpAddr::V6(POD6), IpAddr::V6(PEER6), IpAddr::V6(NODE6))
    } else {
        (IpAddr::V4(POD), IpAddr::V4(PEER), IpAddr::V4(NODE))
    };
    // The node's flows relate whatever their ports (and, the node being trusted, whatever
    // address its stack sent them to on the pod's link).
    if isrc == node || idst == node {
        return true;
    }
    // The quoted packet ran between the pod's own address and the peer (both directions are
    // checked against the pod's address: the source check out, NotForPod in).
    let ends_ok = match quoted_dir {
        Direction::Egress => isrc == pod && idst == peer,
        Direction::Ingress => isrc == peer && idst == pod,
    };
    // Quoted packets are cut short (8 bytes of L4 are all a stack must quote): the ports are
    // read from the payload's first four bytes, whatever else etherparse could decode.
    // Only a first fragment (or a whole packet) carries ports.
    let payload = match net {
        etherparse::LaxNetSlice::Ipv4(ip) if ip.header().fragments_offset().value() == 0 => ip.payload(),
        etherparse::LaxNetSlice::Ipv6(ip) => ip.payload(),
        _ => return false,
    };
    let p = payload.payload;
    let proto = payload.ip_number.0;
    ends_ok
        && matches!(proto, TCP | UDP)
        && p.len() >= 4
        && flow_ok(quoted_dir, proto, u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]))
}

/// ARP: anything inbound; outbound only for the pod's own IPv4 address (or 0.0.0.0).
fn arp_ok(dir: Direction, arp: &[u8]) -> bool {
    if dir == Direction::Ingress {
        return true;
    }
    arp.len() >= 18 && arp[..6] == [0, 1, 8, 0, 6, 4] && (arp[14..18] == POD.octets() || arp[14..18] == [0; 4])
}

/// Neighbour discovery and MLD, as RFC 4861 and RFC 3810 confine them to the link.
fn nd_ok(dir: Direction, src: Ipv6Addr, dst: Ipv6Addr, hop: u8, ty: u8, msg: &[u8]) -> bool {
    let mld = matches!(ty, 130 | 131 | 132 | 143);
    let nd = matches!(ty, 133..=137);
    if !(mld || nd) || hop != if mld { 1 } else { 255 } {
        return false;
    }
    let link_local = |a: Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
    let unspecified = |a: Ipv6Addr| a.is_unspecified();
    let nd_group = |a: Ipv6Addr| {
        let s = a.segments();
        s[0] == 0xff02 && s[1..5] == [0; 4] && ((s[5..7] == [0, 0] && (s[7] == 1 || s[7] == 2)) || (s[5] == 1 && s[6] >> 8 == 0xff))
    };
    let dst_ok = if mld { dst.is_multicast() } else { link_local(dst) || nd_group(dst) };
    match dir {
        Direction::Egress => {
            let target = (msg.len() >= 24).then(|| Ipv6Addr::from(<[u8; 16]>::try_from(&msg[8..24]).unwrap_or([0; 16])));
            matches!(ty, 131 | 132 | 133 | 135 | 136 | 143)
                && (link_local(src) || src == POD6 || (unspecified(src) && ty != 136))
                && dst_ok
                && (ty != 136 || target.is_some_and(|t| link_local(t) || t == POD6))
        }
        Direction::Ingress => {
            matches!(ty, 130 | 134 | 135 | 136 | 137)
                && (link_local(src) || (ty == 135 && unspecified(src)))
                && (dst_ok || (!mld && dst == POD6))
        }
    }
}

/// Frames built from the fuzzer's bytes (see the module docs): every field a choice, each
/// choice weighted towards the values the policy and the parser care about.
mod build {
    use super::*;

    pub struct Choices<'a>(pub &'a [u8]);

    impl Choices<'_> {
        pub fn byte(&mut self) -> u8 {
            match self.0.split_first() {
                Some((b, rest)) => {
                    self.0 = rest;
                    *b
                }
                None => 0,
            }
        }
        fn u16(&mut self) -> u16 {
            u16::from_be_bytes([self.byte(), self.byte()])
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.byte() as usize % items.len()]
        }
        /// One of `items`, or (one time in `len + 1`) any byte.
        fn pick_or_byte(&mut self, items: &[u8]) -> u8 {
            let i = self.byte() as usize % (items.len() + 1);
            if i == items.len() { self.byte() } else { items[i] }
        }
        fn pick_or_u16(&mut self, items: &[u16]) -> u16 {
            let i = self.byte() as usize % (items.len() + 1);
            if i == items.len() { self.u16() } else { items[i] }
        }
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let n = self.byte() as usize % (max + 1);
            (0..n).map(|_| self.byte()).collect()
        }
    }

    fn addr4(c: &mut Choices) -> Ipv4Addr {
        match c.byte() % 6 {
            0 | 1 => POD,
            2 | 3 => PEER,
            4 => NODE,
            _ => Ipv4Addr::from(u32::from_be_bytes([c.byte(), c.byte(), c.byte(), c.byte()])),
        }
    }

    fn addr6(c: &mut Choices) -> Ipv6Addr {
        match c.byte() % 8 {
            0 | 1 => POD6,
            2 | 3 => PEER6,
            4 => NODE6,
            5 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, c.u16()),
            6 => c.pick(&[
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2),
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16),
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2),
                Ipv6Addr::UNSPECIFIED,
                POD.to_ipv6_mapped(),
                PEER.to_ipv6_mapped(),
            ]),
            _ => {
                let mut a = [0u8; 16];
                for b in &mut a {
                    *b = c.byte();
                }
                Ipv6Addr::from(a)
            }
        }
    }

    fn port(c: &mut Choices) -> u16 {
        match c.byte() % 4 {
            0 => 80,
            1 => 53,
            _ => c.u16(),
        }
    }

    /// An L4 header (and a short payload) of `proto`; ICMP quotes a packet built the same way.
    fn l4(c: &mut Choices, proto: u8, v6: bool, depth: u8) -> Vec<u8> {
        let mut out = Vec::new();
        match proto {
            TCP => {
                out.extend_from_slice(&port(c).to_be_bytes());
                out.extend_from_slice(&port(c).to_be_bytes());
                out.extend_from_slice(&[0; 8]);
                out.push(c.pick_or_byte(&[0x50, 0x60, 0x40]));
                out.push(c.byte());
                out.extend_from_slice(&[0; 6]);
            }
            UDP | 132 => {
                out.extend_from_slice(&port(c).to_be_bytes());
                out.extend_from_slice(&port(c).to_be_bytes());
                out.extend_from_slice(&[0, 8, 0, 0]);
            }
            ICMP | ICMPV6 => {
                let ty = if v6 {
                    c.pick_or_byte(&[1, 2, 3, 4, 128, 129, 130, 131, 133, 134, 135, 136, 137, 143])
                } else {
                    c.pick_or_byte(&[0, 3, 8, 11, 12, 4, 5, 13])
                };
                out.extend_from_slice(&[ty, c.byte(), 0, 0, c.byte(), c.byte(), c.byte(), c.byte()]);
                if depth == 0 && c.byte() % 2 == 0 {
                    out.extend_from_slice(&packet(c, v6, 1));
                } else {
                    out.extend_from_slice(&c.bytes(24));
                }
            }
            _ => {}
        }
        out.extend_from_slice(&c.bytes(16));
        out
    }

    /// An IP packet of either family.
    fn packet(c: &mut Choices, v6: bool, depth: u8) -> Vec<u8> {
        let proto = c.pick_or_byte(&[TCP, TCP, UDP, UDP, if v6 { ICMPV6 } else { ICMP }, 132]);
        if v6 {
            let (src, dst) = (addr6(c), addr6(c));
            let mut ext: Vec<(u8, Vec<u8>)> = Vec::new();
            for _ in 0..(c.byte() % 4) {
                let ty = c.pick(&[0u8, 43, 44, 60, 51]);
                let body = match ty {
                    44 => {
                        let frag = c.u16();
                        let mut b = vec![0];
                        b.extend_from_slice(&frag.to_be_bytes());
                        b.extend_from_slice(&[0, 0, 0, c.byte()]);
                        b
                    }
                    43 => vec![0, c.byte() % 5, c.byte() % 3, 0, 0, 0, 0],
                    51 => {
                        let mut b = vec![2, 0, 0];
                        b.extend_from_slice(&[0; 12]);
                        b
                    }
                    _ => vec![0, 1, 4, 0, 0, 0, 0],
                };
                ext.push((ty, body));
            }
            let payload = l4(c, proto, true, depth);
            let mut chain = Vec::new();
            for (i, (_, body)) in ext.iter().enumerate() {
                chain.push(ext.get(i + 1).map_or(proto, |(t, _)| *t));
                chain.extend_from_slice(body);
            }
            let first = ext.first().map_or(proto, |(t, _)| *t);
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&((chain.len() + payload.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[first, c.pick_or_byte(&[64, 255, 1, 254])]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            ip.extend_from_slice(&chain);
            ip.extend_from_slice(&payload);
            ip
        } else {
            let (src, dst) = (addr4(c), addr4(c));
            let options = if c.byte() % 4 == 0 { c.bytes(12) } else { vec![] };
            let mut opts = options;
            while opts.len() % 4 != 0 {
                opts.push(0);
            }
            let frag = c.pick_or_u16(&[0x4000, 0x0000, 0x2000]);
            let payload = l4(c, proto, false, depth);
            let ihl = (20 + opts.len()) / 4;
            let mut ip = vec![0x40 | ihl as u8, 0];
            ip.extend_from_slice(&((ihl * 4 + payload.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0x12, c.byte()]);
            ip.extend_from_slice(&frag.to_be_bytes());
            ip.extend_from_slice(&[c.pick_or_byte(&[64, 1, 255]), proto, 0, 0]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            ip.extend_from_slice(&opts);
            ip.extend_from_slice(&payload);
            ip
        }
    }

    pub fn frame(c: &mut Choices, egress: bool) -> Vec<u8> {
        let _ = egress;
        let mut f = vec![0u8; 12];
        match c.byte() % 8 {
            0 => {
                f.extend_from_slice(&[0x08, 0x06]);
                f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, c.pick(&[1, 2])]);
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&addr4(c).octets());
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&addr4(c).octets());
            }
            1..=4 => {
                f.extend_from_slice(&[0x08, 0x00]);
                f.extend_from_slice(&packet(c, false, 0));
            }
            _ => {
                f.extend_from_slice(&[0x86, 0xdd]);
                f.extend_from_slice(&packet(c, true, 0));
            }
        }
        // Sometimes cut short anywhere.
        if c.byte() % 8 == 0 {
            let keep = c.u16() as usize % (f.len() + 1);
            f.truncate(keep.max(15));
        }
        f
    }
}
