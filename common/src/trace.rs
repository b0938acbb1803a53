//! `ward trace`: what the agent and the programs agree on about one traced probe.
//!
//! The agent arms a trace by writing a [`TraceConfig`] into the one-entry `WARD_TRACE` map,
//! crafts the probe ([`TraceConfig::probe`]) and sends it from inside the source pod's network
//! namespace, so it crosses the real datapath. Each program (`from_pod`, `to_pod`,
//! `ward_http`) that sees a packet while a trace is armed compares it with the config at the
//! fixed offsets below (the probe never carries IPv4 options or IPv6 extension headers) and,
//! for the probe only, writes one [`TraceStep`] into `WARD_TRACE_EVT`: what it decided and at
//! which stage of its pipeline. With no trace armed (`id` 0) a packet costs one array read
//! and one compare.
//!
//! The marker: the five-tuple, with a source port the agent picks outside Linux's ephemeral
//! range, plus the trace id in the IPv4 identification field or the IPv6 flow label (so the
//! source kernel's own reset, which has the same five-tuple, is not taken for the probe).

use core::mem::size_of;

use crate::Addr16;
#[cfg(feature = "user")]
use crate::maps::FlowEvent;
use crate::reason::Reason;

/// One-entry array of [`TraceConfig`]: the armed trace (id 0: none). Not pinned: a trace
/// lives within one agent.
pub const MAP_TRACE: &str = "WARD_TRACE";
/// Ring buffer of [`TraceStep`] records.
pub const MAP_TRACE_EVENTS: &str = "WARD_TRACE_EVT";
/// Per-CPU count of step records written (or lost to a full ring), since the programs loaded.
pub const MAP_TRACE_COUNT: &str = "WARD_TRACE_CNT";
/// A trace writes a handful of records; this holds a few traces' worth.
pub const TRACE_EVENTS_BYTES: u32 = 16 * 1024;

/// Source ports the agent gives probes: above Linux's default ephemeral range (32768-60999),
/// so a pod's own connections do not pick them by chance.
pub const PROBE_PORT_FIRST: u16 = 61000;
pub const PROBE_PORT_LAST: u16 = 65535;

/// Frame offsets the programs read the marker at (an Ethernet header of 14 bytes first).
pub const ETH_HLEN: u32 = 14;
pub const OFF_ETHERTYPE: u32 = 12;
/// IPv4: version and header length (0x45: no options), identification, protocol,
/// addresses, then the ports.
pub const OFF_V4_VIHL: u32 = ETH_HLEN;
pub const OFF_V4_ID: u32 = ETH_HLEN + 4;
pub const OFF_V4_PROTO: u32 = ETH_HLEN + 9;
pub const OFF_V4_SADDR: u32 = ETH_HLEN + 12;
pub const OFF_V4_PORTS: u32 = ETH_HLEN + 20;
/// IPv6: the first word (version, traffic class, flow label), next header, addresses, ports.
pub const OFF_V6_WORD0: u32 = ETH_HLEN;
pub const OFF_V6_NEXT: u32 = ETH_HLEN + 6;
pub const OFF_V6_SADDR: u32 = ETH_HLEN + 8;
pub const OFF_V6_PORTS: u32 = ETH_HLEN + 40;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
/// The 20 bits of an IPv6 header's first word that are the flow label.
pub const FLOW_LABEL_MASK: u32 = 0x000F_FFFF;

/// The armed trace: the probe's five-tuple and its id (1 to 65535, so it fits the IPv4
/// identification field). `id` 0 means no trace is armed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    pub id: u32,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    /// 1 for IPv6, 0 for IPv4.
    pub v6: u8,
    pub _pad: [u8; 6],
    /// IPv4 addresses IPv4-mapped.
    pub saddr: Addr16,
    pub daddr: Addr16,
}

/// Which program wrote a step.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TraceProgram {
    /// TCX ingress of the host veth: the packet leaves the source pod (egress policy).
    FromPod = 1,
    /// TCX egress of the host veth: the packet enters the destination pod (ingress policy).
    ToPod = 2,
    /// The HTTP program, tail-called by `to_pod` on ports with HTTP rules.
    Http = 3,
}

impl TryFrom<u8> for TraceProgram {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(TraceProgram::FromPod),
            2 => Ok(TraceProgram::ToPod),
            3 => Ok(TraceProgram::Http),
            other => Err(other),
        }
    }
}

impl TraceProgram {
    /// The program's name as loaded (`bpftool prog` shows it).
    pub const fn as_str(self) -> &'static str {
        match self {
            TraceProgram::FromPod => "from_pod",
            TraceProgram::ToPod => "to_pod",
            TraceProgram::Http => "ward_http",
        }
    }
}

/// `from_pod`/`to_pod`: the probe was allowed as a new flow and is now tracked.
pub const STEP_NEW_FLOW: u8 = 1;
/// `ward_http`: only HTTP rules admit the connection, so its requests will be judged.
pub const STEP_HTTP_POLICED: u8 = 2;

/// One program's record of the traced probe. For `from_pod`/`to_pod` the fields are those of
/// the flow event it would write (reason, identities, rule); for `ward_http`, `verdict` and
/// `flags` say what it did with the connection and `rule_id` is the admitting rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceStep {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub trace_id: u32,
    pub program: u8,
    pub dir: u8,
    pub verdict: u8,
    /// A [`Reason`] code (`from_pod`/`to_pod`); 0 from `ward_http`.
    pub reason: u8,
    pub ifindex: u32,
    pub ep_id: u32,
    pub subject_identity: u32,
    pub peer_identity: u32,
    pub peer_cidr_identity: u32,
    pub rule_id: u32,
    pub saddr: Addr16,
    pub daddr: Addr16,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    pub flags: u8,
    pub tcp_flags: u8,
    pub _pad: [u8; 1],
}

const _: () = assert!(size_of::<TraceConfig>() == 48);
const _: () = assert!(size_of::<TraceStep>() == 80);

/// Where in the `from_pod`/`to_pod` pipeline (`ebpf/src/datapath.rs`, in this order) a
/// packet's verdict was reached; every earlier stage let it through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The interface's endpoint (or the per-CPU working memory) was looked up.
    Endpoint,
    /// The frame was parsed (IP or ARP, a decidable L4 header).
    Parse,
    /// ARP and neighbour discovery within what the protocols need.
    Exemption,
    /// Leaving a pod: the source address is the pod's.
    SourceCheck,
    /// Entering a pod: the destination address is the pod's.
    DestinationCheck,
    /// A later fragment follows its first fragment.
    Fragment,
    /// An ICMP error about a tracked flow.
    RelatedIcmp,
    /// A tracked flow (established, a reply, or re-decided after a policy change).
    Conntrack,
    /// The policy lookup (`ward_common::lookup`): host, isolation, rules, learned names.
    PolicyLookup,
    /// The allowed new flow is entered into conntrack, within the endpoint's quota.
    ConntrackInsert,
    /// DNS of a pod behind the DNS proxy is steered to it.
    DnsSteering,
    /// Egress to a Service address: deferred to the translated backend, a pod reaching itself
    /// through its Service, or a deferred packet without its pending entry
    /// (`crate::service`).
    Service,
}

impl Stage {
    pub const fn of(reason: Reason) -> Stage {
        match reason {
            Reason::UnknownEndpoint | Reason::MapError => Stage::Endpoint,
            Reason::UnsupportedProtocol | Reason::Malformed => Stage::Parse,
            Reason::NotPoliced => Stage::Exemption,
            Reason::SpoofedSource => Stage::SourceCheck,
            Reason::NotForPod => Stage::DestinationCheck,
            Reason::Fragment | Reason::TrackedFragment => Stage::Fragment,
            Reason::Related => Stage::RelatedIcmp,
            Reason::Established | Reason::Reply | Reason::PolicyRevoked => Stage::Conntrack,
            Reason::FromHost
            | Reason::NotIsolated
            | Reason::Audit
            | Reason::PolicyAllow
            | Reason::PolicyDenied
            | Reason::IdentityUnknown
            | Reason::FqdnExpired => Stage::PolicyLookup,
            Reason::CtQuota => Stage::ConntrackInsert,
            Reason::DnsProxyDown => Stage::DnsSteering,
            Reason::ServicePending | Reason::Loopback | Reason::ServiceUnresolved => Stage::Service,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Endpoint => "endpoint",
            Stage::Parse => "parse",
            Stage::Exemption => "exemption",
            Stage::SourceCheck => "source_check",
            Stage::DestinationCheck => "destination_check",
            Stage::Fragment => "fragment",
            Stage::RelatedIcmp => "related_icmp",
            Stage::Conntrack => "conntrack",
            Stage::PolicyLookup => "policy_lookup",
            Stage::ConntrackInsert => "conntrack_insert",
            Stage::DnsSteering => "dns_steering",
            Stage::Service => "service",
        }
    }
}

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// What a UDP probe carries (a server sees where it came from).
pub const UDP_PAYLOAD: &[u8] = b"ward trace probe\n";
/// The largest probe: an IPv6 header and a UDP header with the payload.
pub const PROBE_MAX: usize = 40 + 8 + UDP_PAYLOAD.len();
const TCP_SYN: u8 = 0x02;

impl TraceConfig {
    pub const fn sport(&self) -> u16 {
        u16::from_be_bytes(self.sport_be)
    }

    pub const fn dport(&self) -> u16 {
        u16::from_be_bytes(self.dport_be)
    }

    /// The probe as an IP packet (what a raw socket with the IP header included sends): a TCP
    /// SYN (sequence number = id) or a UDP datagram, with the id in the IPv4 identification
    /// or the IPv6 flow label and every checksum filled in. `None` for other protocols, an
    /// id outside 1..=65535, or a buffer shorter than [`PROBE_MAX`].
    pub fn probe(&self, out: &mut [u8]) -> Option<usize> {
        if self.id == 0 || self.id > 0xFFFF || out.len() < PROBE_MAX {
            return None;
        }
        let l4_len = match self.proto {
            PROTO_TCP => 20,
            PROTO_UDP => 8 + UDP_PAYLOAD.len(),
            _ => return None,
        };
        let ip_len = if self.v6 != 0 { 40 } else { 20 };
        let total = ip_len + l4_len;
        let (ip, l4) = out[..total].split_at_mut(ip_len);
        ip.fill(0);
        l4.fill(0);
        if self.v6 != 0 {
            let word0 = (6u32 << 28) | (self.id & FLOW_LABEL_MASK);
            ip[0..4].copy_from_slice(&word0.to_be_bytes());
            ip[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            ip[6] = self.proto;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&self.saddr);
            ip[24..40].copy_from_slice(&self.daddr);
        } else {
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&(self.id as u16).to_be_bytes());
            // Don't fragment: the probe is one packet.
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = self.proto;
            ip[12..16].copy_from_slice(&self.saddr[12..]);
            ip[16..20].copy_from_slice(&self.daddr[12..]);
            let sum = checksum(0, ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        l4[0..2].copy_from_slice(&self.sport_be);
        l4[2..4].copy_from_slice(&self.dport_be);
        let csum_at = if self.proto == PROTO_TCP {
            l4[4..8].copy_from_slice(&self.id.to_be_bytes());
            l4[12] = 5 << 4;
            l4[13] = TCP_SYN;
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
            16
        } else {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4[8..].copy_from_slice(UDP_PAYLOAD);
            6
        };
        let sum = checksum(self.pseudo_header_sum(l4_len as u32), l4);
        // UDP sends a computed 0 as all ones (0 means "no checksum" in IPv4 and is invalid in IPv6).
        let sum = if self.proto == PROTO_UDP && sum == 0 { 0xFFFF } else { sum };
        l4[csum_at..csum_at + 2].copy_from_slice(&sum.to_be_bytes());
        Some(total)
    }

    /// The partial sum of the L4 checksum's pseudo-header.
    fn pseudo_header_sum(&self, l4_len: u32) -> u32 {
        let mut sum = 0u32;
        let addrs: (&[u8], &[u8]) =
            if self.v6 != 0 { (&self.saddr, &self.daddr) } else { (&self.saddr[12..], &self.daddr[12..]) };
        for a in [addrs.0, addrs.1] {
            for w in a.chunks(2) {
                sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
            }
        }
        sum + u32::from(self.proto) + (l4_len >> 16) + (l4_len & 0xFFFF)
    }

    /// Whether an Ethernet frame is this trace's probe, read at the offsets the programs read
    /// (the user-space statement of `ebpf/src/trace.rs`'s check, for tests).
    pub fn matches_frame(&self, frame: &[u8]) -> bool {
        let at = |off: u32, n: usize| frame.get(off as usize..off as usize + n);
        let be16 = |off| at(off, 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        if self.id == 0 {
            return false;
        }
        let (ethertype, ports_off) = if self.v6 != 0 {
            let ok = at(OFF_V6_WORD0, 4).is_some_and(|w| {
                let w = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
                w >> 28 == 6 && w & FLOW_LABEL_MASK == self.id
            }) && at(OFF_V6_NEXT, 1) == Some(&[self.proto][..])
                && at(OFF_V6_SADDR, 16) == Some(&self.saddr[..])
                && at(OFF_V6_SADDR + 16, 16) == Some(&self.daddr[..]);
            if !ok {
                return false;
            }
            (ETHERTYPE_IPV6, OFF_V6_PORTS)
        } else {
            let ok = at(OFF_V4_VIHL, 1) == Some(&[0x45][..])
                && be16(OFF_V4_ID) == Some(self.id as u16)
                && at(OFF_V4_PROTO, 1) == Some(&[self.proto][..])
                && at(OFF_V4_SADDR, 4) == Some(&self.saddr[12..])
                && at(OFF_V4_SADDR + 4, 4) == Some(&self.daddr[12..]);
            if !ok {
                return false;
            }
            (ETHERTYPE_IPV4, OFF_V4_PORTS)
        };
        be16(OFF_ETHERTYPE) == Some(ethertype)
            && at(ports_off, 2) == Some(&self.sport_be[..])
            && at(ports_off + 2, 2) == Some(&self.dport_be[..])
    }
}

/// The Internet checksum (RFC 1071) of `data`, starting from a partial sum.
pub fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// User space's reading of a [`TraceStep`], the one decode of the kernel's record.
#[cfg(feature = "user")]
impl TraceStep {
    /// Reads a record from the bytes of one ring buffer item; `None` when they are too few.
    pub fn from_bytes(bytes: &[u8]) -> Option<TraceStep> {
        if bytes.len() < size_of::<TraceStep>() {
            return None;
        }
        // SAFETY: TraceStep is repr(C) of integers and byte arrays (every bit pattern is
        // valid), the length was checked, and `read_unaligned` needs no alignment.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<TraceStep>()) })
    }

    pub fn program(&self) -> Result<TraceProgram, u8> {
        TraceProgram::try_from(self.program)
    }

    pub fn reason(&self) -> Result<Reason, u8> {
        Reason::try_from(self.reason)
    }

    pub fn verdict(&self) -> Result<crate::reason::Verdict, u8> {
        crate::reason::Verdict::try_from(self.verdict)
    }

    /// The step as the flow event its program would write, so user space names it exactly as
    /// it names flow records (pods, identities, the allowing rule, the isolating policies).
    pub fn flow_event(&self) -> FlowEvent {
        FlowEvent {
            ts_ns: self.ts_ns,
            saddr: self.saddr,
            daddr: self.daddr,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            dir: self.dir,
            verdict: self.verdict,
            reason: self.reason,
            ifindex: self.ifindex,
            ep_id: self.ep_id,
            subject_identity: self.subject_identity,
            peer_identity: self.peer_identity,
            peer_cidr_identity: self.peer_cidr_identity,
            rule_id: self.rule_id,
            tcp_flags: self.tcp_flags,
            icmp_type: 0,
            icmp_code: 0,
            _pad: [0; 5],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), integers and byte arrays with explicit padding: every bit pattern is
    // valid and no byte is uninitialised.
    unsafe impl aya::Pod for TraceConfig {}
    unsafe impl aya::Pod for TraceStep {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::v4_mapped;
    use crate::reason::{Direction, Verdict};

    fn v4(proto: u8) -> TraceConfig {
        TraceConfig {
            id: 0x1234,
            sport_be: 61001u16.to_be_bytes(),
            dport_be: 5432u16.to_be_bytes(),
            proto,
            v6: 0,
            _pad: [0; 6],
            saddr: v4_mapped([10, 1, 0, 2]),
            daddr: v4_mapped([10, 1, 0, 3]),
        }
    }

    fn v6(proto: u8) -> TraceConfig {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[1] = 0x77;
        a[15] = 2;
        let mut b = a;
        b[15] = 3;
        TraceConfig { v6: 1, saddr: a, daddr: b, ..v4(proto) }
    }

    fn frame(cfg: &TraceConfig) -> ([u8; 14 + PROBE_MAX], usize) {
        let mut f = [0u8; 14 + PROBE_MAX];
        let et = if cfg.v6 != 0 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 };
        f[12..14].copy_from_slice(&et.to_be_bytes());
        let n = cfg.probe(&mut f[14..]).expect("a probe");
        (f, 14 + n)
    }

    #[test]
    fn a_probe_carries_its_marker_where_the_programs_read_it_and_nothing_else_matches() {
        for cfg in [v4(6), v4(17), v6(6), v6(17)] {
            let (f, n) = frame(&cfg);
            assert!(cfg.matches_frame(&f[..n]), "{cfg:?}");
            // Another trace id (the source kernel's own reset of the same five-tuple, say).
            let other = TraceConfig { id: cfg.id + 1, ..cfg };
            assert!(!other.matches_frame(&f[..n]), "{cfg:?}");
            // Another port, another protocol, disarmed.
            assert!(!TraceConfig { sport_be: 61002u16.to_be_bytes(), ..cfg }.matches_frame(&f[..n]));
            assert!(!TraceConfig { proto: if cfg.proto == 6 { 17 } else { 6 }, ..cfg }.matches_frame(&f[..n]));
            assert!(!TraceConfig { id: 0, ..cfg }.matches_frame(&f[..n]));
            // A truncated frame is no probe.
            assert!(!cfg.matches_frame(&f[..n.min(36)]));
        }
    }

    #[test]
    fn probe_checksums_verify_as_a_receiver_checks_them() {
        for cfg in [v4(6), v4(17), v6(6), v6(17)] {
            let mut buf = [0u8; PROBE_MAX];
            let n = cfg.probe(&mut buf).expect("a probe");
            let ip_len = if cfg.v6 != 0 { 40 } else { 20 };
            if cfg.v6 == 0 {
                assert_eq!(checksum(0, &buf[..20]), 0, "IPv4 header checksum");
                assert_eq!(u16::from_be_bytes([buf[4], buf[5]]), 0x1234, "IPv4 identification");
            } else {
                let w = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                assert_eq!(w & FLOW_LABEL_MASK, 0x1234, "flow label");
            }
            let l4 = &buf[ip_len..n];
            assert_eq!(checksum(cfg.pseudo_header_sum(l4.len() as u32), l4), 0, "L4 checksum of {cfg:?}");
            if cfg.proto == 6 {
                assert_eq!(u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]), 0x1234, "sequence number");
                assert_eq!(l4[13], TCP_SYN);
            } else {
                assert_eq!(&l4[8..], UDP_PAYLOAD);
            }
        }
        // Only TCP and UDP probes, ids that fit the marker, and a buffer that holds one.
        let mut buf = [0u8; PROBE_MAX];
        assert_eq!(v4(132).probe(&mut buf), None);
        assert_eq!(TraceConfig { id: 0x1_0000, ..v4(6) }.probe(&mut buf), None);
        assert_eq!(TraceConfig { id: 0, ..v4(6) }.probe(&mut buf), None);
        assert_eq!(v4(6).probe(&mut buf[..10]), None);
    }

    #[test]
    fn every_reason_has_a_stage_and_the_pipeline_order_holds() {
        for r in Reason::ALL {
            let _ = Stage::of(r).as_str();
        }
        assert!(Stage::of(Reason::SpoofedSource) < Stage::of(Reason::Established));
        assert!(Stage::of(Reason::Reply) < Stage::of(Reason::PolicyDenied));
        assert_eq!(Stage::of(Reason::PolicyAllow), Stage::PolicyLookup);
    }

    #[cfg(feature = "user")]
    #[test]
    fn a_step_decodes_from_its_bytes_into_the_flow_event_of_its_program() {
        let step = TraceStep {
            ts_ns: 9,
            trace_id: 77,
            program: TraceProgram::ToPod as u8,
            dir: Direction::Ingress as u8,
            verdict: Verdict::Drop as u8,
            reason: Reason::PolicyDenied as u8,
            ifindex: 12,
            ep_id: 3,
            subject_identity: 300,
            peer_identity: 301,
            peer_cidr_identity: 2,
            rule_id: 0,
            saddr: v4_mapped([10, 1, 0, 2]),
            daddr: v4_mapped([10, 1, 0, 3]),
            sport_be: 61001u16.to_be_bytes(),
            dport_be: 5432u16.to_be_bytes(),
            proto: 6,
            flags: 0,
            tcp_flags: TCP_SYN,
            _pad: [0],
        };
        // SAFETY: a repr(C) value without padding bytes (asserted by the size), read as bytes.
        let bytes =
            unsafe { core::slice::from_raw_parts((&step as *const TraceStep).cast::<u8>(), size_of::<TraceStep>()) };
        let back = TraceStep::from_bytes(bytes).expect("decodes");
        assert_eq!(back, step);
        assert_eq!(back.program(), Ok(TraceProgram::ToPod));
        assert_eq!((back.reason(), back.verdict()), (Ok(Reason::PolicyDenied), Ok(Verdict::Drop)));
        assert_eq!(TraceStep::from_bytes(&bytes[..79]), None, "a short record");
        let ev = back.flow_event();
        let ip = |s: [u8; 4]| core::net::IpAddr::from(s);
        assert_eq!((ev.src(), ev.dst()), (ip([10, 1, 0, 2]), ip([10, 1, 0, 3])));
        assert_eq!((ev.sport(), ev.dport(), ev.dir()), (61001, 5432, Ok(Direction::Ingress)));
        assert_eq!((ev.reason(), ev.ep_id, ev.peer_identity, ev.tcp_flags), (Ok(Reason::PolicyDenied), 3, 301, 2));
        let mut odd = step;
        odd.program = 9;
        assert_eq!(odd.program(), Err(9));
    }
}
