//! Map names, sizes, keys and values. See `docs/architecture.md` for the table of maps and
//! what happens when each one is full.

use core::mem::size_of;

use crate::addr::Addr16;
use crate::ports::PortBlock;
use crate::reason::{Direction, Reason};

/// Bumped whenever a map's layout changes; part of the pin path (`<bpffs>/ward/v{N}/`) and
/// stored in `WARD_CONFIG`, so an agent never adopts maps it cannot read.
///
/// v2: `WARD_CT` is a hash with no eviction (was an LRU that one pod's flood could empty of
/// other pods' flows), with per-state timeouts and a per-endpoint quota counted in
/// `WARD_CT_COUNT`; `WARD_FRAGS` tracks allowed first fragments; `ConfigValue` carries the
/// quota. The agent migrates a v1 node's tracked flows and links (`datapath::migrate`).
pub const LAYOUT_VERSION: u32 = 2;

pub const MAP_ENDPOINTS: &str = "WARD_ENDPOINTS";
pub const MAP_IPCACHE: &str = "WARD_IPCACHE";
pub const MAP_POLICY: &str = "WARD_POLICY";
pub const MAP_CT: &str = "WARD_CT";
pub const MAP_CONFIG: &str = "WARD_CONFIG";
pub const MAP_EVENTS: &str = "WARD_EVENTS";
/// Per-CPU packet/byte counters indexed by (direction, reason): see [`reason_slot`].
pub const MAP_REASON_DIR: &str = "WARD_REASON_DIR";
/// The per-reason counter of earlier agents (indexed by reason alone). Retired rather than
/// resized: a pinned map keeps its size, so a bigger array under the same name would have
/// met the old, smaller pin after an upgrade. The new name is created fresh beside the old
/// pins (no layout bump, no migration: counters restart at zero as on any restart) and the
/// loader unlinks this stale pin (a running old program keeps its own reference).
pub const MAP_REASON_CNT_RETIRED: &str = "WARD_REASON_CNT";
pub const MAP_RULE_CNT: &str = "WARD_RULE_CNT";
pub const MAP_CT_COUNT: &str = "WARD_CT_COUNT";
pub const MAP_FRAGS: &str = "WARD_FRAGS";
/// Per-CPU array indexed by reason code: flow events lost because `WARD_EVENTS` was full.
pub const MAP_EVENTS_LOST: &str = "WARD_EVT_LOST";

/// Every pinned map, for pinning and for the layout check in tests.
pub const ALL_MAPS: [&str; 11] = [
    MAP_ENDPOINTS,
    MAP_IPCACHE,
    MAP_POLICY,
    MAP_CT,
    MAP_CONFIG,
    MAP_EVENTS,
    MAP_REASON_DIR,
    MAP_RULE_CNT,
    MAP_CT_COUNT,
    MAP_FRAGS,
    MAP_EVENTS_LOST,
];

pub const ENDPOINTS_MAX: u32 = 16 * 1024;
pub const IPCACHE_MAX: u32 = 512 * 1024;
pub const POLICY_MAX: u32 = 1024 * 1024;
/// Tracked flows on the node. Preallocated (about 100 bytes each with the kernel's overhead).
pub const CT_MAX: u32 = 256 * 1024;
/// Default per-endpoint share of `WARD_CT` (`ConfigValue::ct_quota`): one pod's flood of new
/// flows fills its own share and is then refused (`ct_quota`), never touching other pods'.
pub const CT_QUOTA_DEFAULT: u32 = 32 * 1024;
/// Two counters per endpoint (kernel and agent side, see [`CtCountKey`]).
pub const CT_COUNT_MAX: u32 = 2 * ENDPOINTS_MAX;
/// First fragments whose later fragments may pass (an LRU: losing one only drops fragments).
pub const FRAGS_MAX: u32 = 16 * 1024;
pub const RULE_CNT_MAX: u32 = 64 * 1024;
/// Slots of `WARD_REASON_DIR`: one block of [`Reason::COUNT`] per direction.
pub const REASON_DIR_MAX: u32 = 2 * Reason::COUNT;

/// The `WARD_REASON_DIR` slot of a verdict: ingress block first, then egress.
pub const fn reason_slot(reason: Reason, dir: Direction) -> u32 {
    let block = match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    };
    block * Reason::COUNT + reason as u32
}
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 4 * 1024 * 1024;

/// `WARD_ENDPOINTS` key: the ifindex of the pod veth's host side.
pub type EndpointKey = u32;

/// `WARD_ENDPOINTS` value: who the pod behind an interface is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// Agent-assigned id, unique per endpoint instance (ifindexes get reused).
    pub ep_id: u32,
    /// The pod's label identity: the policy subject.
    pub identity: u32,
    /// `EP_ISOLATED_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// The pod's IPv4 address (IPv4-mapped), all zero if none; source check on egress.
    pub addr_v4: Addr16,
    /// The pod's IPv6 address, all zero if none.
    pub addr_v6: Addr16,
}

/// A policy selects the pod for ingress: default deny for traffic entering it.
pub const EP_ISOLATED_INGRESS: u32 = 1;
/// A policy selects the pod for egress: default deny for traffic leaving it.
pub const EP_ISOLATED_EGRESS: u32 = 2;
/// Audit mode: no enforced policy isolates the pod for ingress, but an audited one would.
/// Enforcement ignores the bit; the lookup uses it only to tell whether the audited
/// policies' entries (`POLICY_AUDIT`) would allow a new flow (`Reason::Audit` when not).
/// Spare bits of the existing value: programs that predate audit ignore them.
pub const EP_AUDIT_INGRESS: u32 = 1 << 16;
/// Audit mode for egress, as [`EP_AUDIT_INGRESS`].
pub const EP_AUDIT_EGRESS: u32 = 1 << 17;

impl EndpointInfo {
    pub const fn isolated(&self, dir: Direction) -> bool {
        let bit = match dir {
            Direction::Ingress => EP_ISOLATED_INGRESS,
            Direction::Egress => EP_ISOLATED_EGRESS,
        };
        self.flags & bit != 0
    }

    /// Audited policies would isolate the pod in `dir` (and no enforced one does).
    pub const fn audited(&self, dir: Direction) -> bool {
        let bit = match dir {
            Direction::Ingress => EP_AUDIT_INGRESS,
            Direction::Egress => EP_AUDIT_EGRESS,
        };
        self.flags & bit != 0
    }
}

/// `WARD_IPCACHE` key (LPM trie): an address prefix; IPv4 is IPv4-mapped with `prefixlen + 96`.
/// The derived order compares `prefixlen` first; the agent relies on it to write specific
/// prefixes before broad ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheKey {
    /// Bits of `addr` that count (host order, as the kernel's LPM trie expects).
    pub prefixlen: u32,
    pub addr: Addr16,
}

impl IpcacheKey {
    /// Whether every address of `other` lies inside this prefix.
    pub fn contains(&self, other: &IpcacheKey) -> bool {
        if self.prefixlen > other.prefixlen || self.prefixlen > 128 {
            return false;
        }
        let full = (self.prefixlen / 8) as usize;
        if self.addr[..full] != other.addr[..full] {
            return false;
        }
        let rest = self.prefixlen % 8;
        rest == 0 || {
            let mask = 0xffu8 << (8 - rest);
            self.addr[full] & mask == other.addr[full] & mask
        }
    }
}

/// `WARD_IPCACHE` value: the two identities of every address under the prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    /// Label identity (`ID_WORLD` for non-pod prefixes, `ID_HOST` for node addresses).
    pub identity: u32,
    /// Longest policy CIDR containing the prefix (`ID_WORLD` when none).
    pub cidr_identity: u32,
}

/// `WARD_POLICY` key (LPM trie). The data part is, in order: subject identity, peer identity,
/// direction, protocol, port, all big-endian so prefix matching works bit by bit. A rule for
/// one protocol and a port block stores `prefixlen = 80 + block bits`; a rule that allows every
/// protocol (no `ports`) stores `prefixlen = 72`, covering protocol and port. Lookups use the
/// full 96 bits, so the longest stored prefix that covers the packet answers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub subject_be: [u8; 4],
    pub peer_be: [u8; 4],
    pub dir: u8,
    pub proto: u8,
    pub port_be: [u8; 2],
}

/// Bits of `PolicyKey` data.
pub const POLICY_KEY_BITS: u32 = 96;
/// Prefix length of an entry that allows every protocol and port.
pub const POLICY_ANY_PROTO_BITS: u32 = 72;
/// Prefix length of an entry for one protocol and every port.
pub const POLICY_PROTO_BITS: u32 = 80;

impl PolicyKey {
    /// The key a packet looks up: every field given, full length.
    pub const fn lookup(subject: u32, peer: u32, dir: Direction, proto: u8, port: u16) -> Self {
        PolicyKey {
            prefixlen: POLICY_KEY_BITS,
            subject_be: subject.to_be_bytes(),
            peer_be: peer.to_be_bytes(),
            dir: dir as u8,
            proto,
            port_be: port.to_be_bytes(),
        }
    }

    /// An entry allowing every protocol and port from/to `peer`.
    pub const fn any_proto(subject: u32, peer: u32, dir: Direction) -> Self {
        PolicyKey {
            prefixlen: POLICY_ANY_PROTO_BITS,
            subject_be: subject.to_be_bytes(),
            peer_be: peer.to_be_bytes(),
            dir: dir as u8,
            proto: 0,
            port_be: [0, 0],
        }
    }

    /// An entry allowing one protocol on one block of ports.
    pub const fn port_block(subject: u32, peer: u32, dir: Direction, proto: u8, block: PortBlock) -> Self {
        PolicyKey {
            prefixlen: POLICY_PROTO_BITS + block.prefix_len as u32,
            subject_be: subject.to_be_bytes(),
            peer_be: peer.to_be_bytes(),
            dir: dir as u8,
            proto,
            port_be: block.base.to_be_bytes(),
        }
    }

    pub const fn subject(&self) -> u32 {
        u32::from_be_bytes(self.subject_be)
    }
    pub const fn peer(&self) -> u32 {
        u32::from_be_bytes(self.peer_be)
    }
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port_be)
    }
}

impl PolicyKey {
    /// Reassembles a key read back from the map.
    pub const fn from_parts(prefixlen: u32, d: PolicyKeyData) -> Self {
        PolicyKey {
            prefixlen,
            subject_be: d.subject_be,
            peer_be: d.peer_be,
            dir: d.dir,
            proto: d.proto,
            port_be: d.port_be,
        }
    }

    /// The key without its prefix length: what the kernel's LPM trie compares.
    pub const fn data(&self) -> PolicyKeyData {
        PolicyKeyData {
            subject_be: self.subject_be,
            peer_be: self.peer_be,
            dir: self.dir,
            proto: self.proto,
            port_be: self.port_be,
        }
    }
}

/// The data part of [`PolicyKey`], as the map's `Key<PolicyKeyData>` (prefix length first,
/// then these 12 bytes) stores it; the two layouts are the same bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyKeyData {
    pub subject_be: [u8; 4],
    pub peer_be: [u8; 4],
    pub dir: u8,
    pub proto: u8,
    pub port_be: [u8; 2],
}

/// `WARD_POLICY` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// The rule that allows this entry (agent-assigned; `ward policy explain` names it).
    pub rule_id: u32,
    /// Reserved for L7 (HTTP rule set) bits; zero for plain L3/L4 allows. [`POLICY_AUDIT`]
    /// marks an entry of an audited policy.
    pub flags: u32,
}

/// `PolicyValue::flags`: the entry is an audited policy's. It never allows anything: the
/// lookup reads it only for an endpoint with `EP_AUDIT_*` in that direction (one no enforced
/// policy isolates), to tell whether the audited policies would allow the flow. The compiler
/// writes audit entries only for such (subject, direction) pairs, so an LPM answer never has
/// to choose between an audit entry and an enforced one (the key holds subject and direction).
pub const POLICY_AUDIT: u32 = 1 << 30;

/// `WARD_CT` key: one tracked flow, as first seen, per endpoint and direction. The endpoint
/// and direction are part of the key so that the sender's egress decision never stands in
/// for the receiver's ingress decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub ep_id: u32,
    pub saddr: Addr16,
    pub daddr: Addr16,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

impl CtKey {
    /// The key the other direction of the same flow would have.
    pub const fn reversed(&self) -> CtKey {
        CtKey {
            ep_id: self.ep_id,
            saddr: self.daddr,
            daddr: self.saddr,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto: self.proto,
            dir: self.dir,
            _pad: [0; 2],
        }
    }
}

/// `WARD_CT` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// `WARD_CONFIG.policy_rev` when the flow was last checked against policy. A flow whose
    /// revision is stale is re-checked on its next packet, and cut if no longer allowed.
    pub rev: u32,
    pub rule_id: u32,
    pub created_ns: u64,
    /// When a packet of the flow last passed (coarse clock, refreshed at most every
    /// [`CT_REFRESH_NS`]); with `state` it decides expiry ([`CtValue::expired`]).
    pub seen_ns: u64,
    /// `CT_*` state bits.
    pub state: u8,
    pub _pad: [u8; 7],
}

/// A packet of the reply direction has passed.
pub const CT_SEEN_REPLY: u8 = 1;
/// TCP FIN seen in the direction the flow was first seen in.
pub const CT_FIN_ORIG: u8 = 2;
/// TCP FIN seen in the reply direction.
pub const CT_FIN_REPLY: u8 = 4;
/// TCP RST seen (either direction).
pub const CT_RST: u8 = 8;

/// How stale `seen_ns` may get before a packet refreshes it (one map write per flow and
/// interval, not per packet).
pub const CT_REFRESH_NS: u64 = 1_000_000_000;
const SEC: u64 = 1_000_000_000;
/// TCP: no reply yet (a SYN and its retransmissions).
pub const CT_TCP_OPENING_NS: u64 = 60 * SEC;
/// TCP with replies, not closing.
pub const CT_TCP_ESTABLISHED_NS: u64 = 6 * 3600 * SEC;
/// TCP after a RST, or after FIN in both directions.
pub const CT_TCP_CLOSED_NS: u64 = 10 * SEC;
/// TCP after a FIN in one direction (the other may still send: half-close).
pub const CT_TCP_CLOSING_NS: u64 = 120 * SEC;
/// UDP, SCTP and other protocols, one way only.
pub const CT_OTHER_NS: u64 = 60 * SEC;
/// UDP, SCTP and other protocols with replies.
pub const CT_OTHER_REPLIED_NS: u64 = 180 * SEC;
/// ICMP echo.
pub const CT_ICMP_NS: u64 = 30 * SEC;

impl CtValue {
    /// How long the flow may stay idle in its state (protocol from the key).
    pub const fn timeout_ns(&self, proto: u8) -> u64 {
        match proto {
            6 => {
                if self.state & CT_RST != 0 || self.state & (CT_FIN_ORIG | CT_FIN_REPLY) == CT_FIN_ORIG | CT_FIN_REPLY {
                    CT_TCP_CLOSED_NS
                } else if self.state & (CT_FIN_ORIG | CT_FIN_REPLY) != 0 {
                    CT_TCP_CLOSING_NS
                } else if self.state & CT_SEEN_REPLY != 0 {
                    CT_TCP_ESTABLISHED_NS
                } else {
                    CT_TCP_OPENING_NS
                }
            }
            1 | 58 => CT_ICMP_NS,
            _ => {
                if self.state & CT_SEEN_REPLY != 0 {
                    CT_OTHER_REPLIED_NS
                } else {
                    CT_OTHER_NS
                }
            }
        }
    }

    /// Whether the flow has been idle longer than its state allows at `now_ns` (same clock as
    /// `seen_ns`). An expired entry relates nothing and lets nothing through.
    pub const fn expired(&self, proto: u8, now_ns: u64) -> bool {
        now_ns > self.seen_ns && now_ns - self.seen_ns > self.timeout_ns(proto)
    }
}

/// `WARD_CT_COUNT` key: one endpoint's tracked-flow count, in two halves so that each has one
/// kind of writer: [`CT_COUNT_KERNEL`] is changed only by the programs (atomic adds: +1 per
/// flow they insert, -1 per flow they remove), [`CT_COUNT_AGENT`] only by the agent (flows its
/// expiry sweep removed). In use = kernel - agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtCountKey {
    pub ep_id: u32,
    pub writer: u32,
}

pub const CT_COUNT_KERNEL: u32 = 0;
pub const CT_COUNT_AGENT: u32 = 1;

/// `WARD_FRAGS` key: the first fragment of an IP datagram that was allowed at an endpoint in a
/// direction. Later fragments (no L4 header) pass when they carry the same key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub ep_id: u32,
    /// IPv4 identification (16 bits) or IPv6 fragment header identification (32 bits).
    pub id: u32,
    pub saddr: Addr16,
    pub daddr: Addr16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// `WARD_FRAGS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragValue {
    /// When the first fragment passed (coarse clock).
    pub created_ns: u64,
}

/// How long later fragments of an allowed first fragment may follow (Linux's `ipfrag_time`).
pub const FRAG_TIMEOUT_NS: u64 = 30 * SEC;

/// `WARD_CONFIG` (array, one entry) value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConfigValue {
    pub layout_version: u32,
    /// Bumped by the agent after every batch of map changes.
    pub policy_rev: u32,
    /// `CFG_*` bits.
    pub flags: u32,
    /// Most tracked flows one endpoint may hold (0: [`CT_QUOTA_DEFAULT`]).
    pub ct_quota: u32,
}

/// Emit a flow event for every newly allowed flow.
pub const CFG_EVENTS_ALLOWED: u32 = 1;
/// Emit a flow event for every dropped packet.
pub const CFG_EVENTS_DROPPED: u32 = 2;
/// Deliver same-node pod-to-pod packets by the datapath (`bpf_redirect_peer` from the
/// sender's host veth into the receiver's namespace, after both decisions) instead of the
/// node's routing (`--local-delivery peer`).
pub const CFG_LOCAL_PEER: u32 = 4;

/// The program that decides a same-node packet's ingress at its receiver and delivers it
/// (reached from `from_pod` by a tail call through [`MAP_DELIVER_PROG`], slot 0).
pub const DELIVER_PROGRAM: &str = "to_peer";
/// The program array holding [`DELIVER_PROGRAM`]; pinned, so links left running while no
/// agent runs keep delivering.
pub const MAP_DELIVER_PROG: &str = "WARD_DELIVER";

/// `WARD_REASON_DIR` (per-CPU array indexed by [`reason_slot`]) and `WARD_RULE_CNT` (per-CPU hash
/// keyed by rule id) value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// A flow record written into `WARD_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    pub ts_ns: u64,
    pub saddr: Addr16,
    pub daddr: Addr16,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    pub dir: u8,
    pub verdict: u8,
    pub reason: u8,
    pub ifindex: u32,
    pub ep_id: u32,
    pub subject_identity: u32,
    pub peer_identity: u32,
    pub peer_cidr_identity: u32,
    pub rule_id: u32,
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type and code; 0 for other protocols (and in records of agents before
    /// these fields, which wrote zeroes here).
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub _pad: [u8; 5],
}

/// User space's reading of a [`FlowEvent`]: the one decode of the kernel's record (the
/// agent's flow task and its tests use nothing else).
#[cfg(feature = "user")]
impl FlowEvent {
    /// Reads a record from the bytes of one ring buffer item; `None` when they are too few.
    pub fn from_bytes(bytes: &[u8]) -> Option<FlowEvent> {
        if bytes.len() < size_of::<FlowEvent>() {
            return None;
        }
        // SAFETY: FlowEvent is repr(C) of integers and byte arrays (every bit pattern is
        // valid), the length was checked, and `read_unaligned` needs no alignment.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
    }

    /// The packet's source address (IPv4-mapped addresses as IPv4).
    pub fn src(&self) -> core::net::IpAddr {
        core::net::Ipv6Addr::from(self.saddr).to_canonical()
    }

    /// The packet's destination address (IPv4-mapped addresses as IPv4).
    pub fn dst(&self) -> core::net::IpAddr {
        core::net::Ipv6Addr::from(self.daddr).to_canonical()
    }

    /// Source port, host order (0 when the protocol has none).
    pub fn sport(&self) -> u16 {
        u16::from_be_bytes(self.sport_be)
    }

    /// Destination port, host order (0 when the protocol has none).
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes(self.dport_be)
    }

    pub fn dir(&self) -> Result<Direction, u8> {
        Direction::try_from(self.dir)
    }

    pub fn verdict(&self) -> Result<crate::reason::Verdict, u8> {
        crate::reason::Verdict::try_from(self.verdict)
    }

    pub fn reason(&self) -> Result<crate::reason::Reason, u8> {
        crate::reason::Reason::try_from(self.reason)
    }
}

const _: () = assert!(size_of::<EndpointInfo>() == 48);
const _: () = assert!(size_of::<IpcacheKey>() == 20);
const _: () = assert!(size_of::<IpcacheValue>() == 8);
const _: () = assert!(size_of::<PolicyKey>() == 16);
const _: () = assert!(size_of::<PolicyValue>() == 8);
const _: () = assert!(size_of::<PolicyKeyData>() == 12);
const _: () = assert!(size_of::<CtKey>() == 44);
const _: () = assert!(size_of::<CtValue>() == 32);
const _: () = assert!(size_of::<CtCountKey>() == 8);
const _: () = assert!(size_of::<FragKey>() == 44);
const _: () = assert!(size_of::<FragValue>() == 8);
const _: () = assert!(size_of::<ConfigValue>() == 16);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<FlowEvent>() == 80);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), made of integers and byte arrays with explicit
    // padding, so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for IpcacheKey {}
    unsafe impl aya::Pod for IpcacheValue {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyKeyData {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for ConfigValue {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for FlowEvent {}
    unsafe impl aya::Pod for CtCountKey {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "user")]
    #[test]
    fn a_flow_event_decodes_from_its_bytes_with_host_order_ports_and_typed_codes() {
        use crate::reason::{Reason, Verdict};
        let ev = FlowEvent {
            ts_ns: 42,
            saddr: crate::addr::v4_mapped([10, 1, 0, 2]),
            daddr: [0xfd, 0x77, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3],
            sport_be: 40000u16.to_be_bytes(),
            dport_be: 5432u16.to_be_bytes(),
            proto: 6,
            dir: Direction::Ingress as u8,
            verdict: Verdict::Drop as u8,
            reason: Reason::PolicyDenied as u8,
            ifindex: 7,
            ep_id: 3,
            subject_identity: 300,
            peer_identity: 301,
            peer_cidr_identity: 2,
            rule_id: 0,
            tcp_flags: 0x02,
            icmp_type: 0,
            icmp_code: 0,
            _pad: [0; 5],
        };
        // SAFETY: reading a repr(C) value without padding as its bytes.
        let bytes: [u8; 80] = unsafe { core::mem::transmute(ev) };
        let got = FlowEvent::from_bytes(&bytes).expect("80 bytes decode");
        assert_eq!(got, ev);
        assert_eq!(got.src(), core::net::IpAddr::from([10, 1, 0, 2]));
        assert_eq!(got.dst(), core::net::IpAddr::from([0xfd77, 0, 0, 1, 0, 0, 0, 3]));
        assert_eq!((got.sport(), got.dport()), (40000, 5432));
        assert_eq!(got.dir(), Ok(Direction::Ingress));
        assert_eq!(got.verdict(), Ok(Verdict::Drop));
        assert_eq!(got.reason(), Ok(Reason::PolicyDenied));
        assert!(FlowEvent::from_bytes(&bytes[..79]).is_none(), "a short item is refused");
        let mut bad = bytes;
        bad[core::mem::offset_of!(FlowEvent, dir)] = 9;
        bad[core::mem::offset_of!(FlowEvent, reason)] = 200;
        let bad = FlowEvent::from_bytes(&bad).expect("decodes");
        assert_eq!((bad.dir(), bad.reason()), (Err(9), Err(200)));
    }

    #[test]
    fn reason_slots_are_distinct_per_direction_and_inside_the_array() {
        let mut seen = [false; REASON_DIR_MAX as usize];
        for r in Reason::ALL {
            for d in [Direction::Ingress, Direction::Egress] {
                let slot = reason_slot(r, d);
                assert!(slot < REASON_DIR_MAX, "{r:?} {d:?}");
                assert!(!seen[slot as usize], "{r:?} {d:?} shares slot {slot}");
                seen[slot as usize] = true;
            }
        }
    }

    #[test]
    fn policy_key_fields_are_big_endian_and_prefixes_cover_their_fields() {
        let k = PolicyKey::lookup(0x0102_0304, 7, Direction::Egress, 6, 8080);
        assert_eq!(k.subject_be, [1, 2, 3, 4]);
        assert_eq!(k.port(), 8080);
        assert_eq!(k.peer(), 7);
        let any = PolicyKey::any_proto(1, 2, Direction::Ingress);
        assert_eq!(any.prefixlen, 72);
        let one = PolicyKey::port_block(1, 2, Direction::Ingress, 17, PortBlock { base: 53, prefix_len: 16 });
        assert_eq!(one.prefixlen, 96);
    }

    #[test]
    fn ipcache_prefixes_contain_exactly_their_addresses() {
        let p = |len: u32, a: [u8; 4]| IpcacheKey { prefixlen: 96 + len, addr: crate::addr::v4_mapped(a) };
        assert!(p(8, [10, 0, 0, 0]).contains(&p(16, [10, 1, 0, 0])));
        assert!(p(8, [10, 0, 0, 0]).contains(&p(8, [10, 0, 0, 0])));
        assert!(!p(16, [10, 1, 0, 0]).contains(&p(8, [10, 0, 0, 0])), "narrower does not contain broader");
        assert!(!p(8, [10, 0, 0, 0]).contains(&p(16, [11, 1, 0, 0])));
        assert!(p(12, [10, 16, 0, 0]).contains(&p(32, [10, 31, 255, 255])));
        assert!(!p(12, [10, 16, 0, 0]).contains(&p(32, [10, 32, 0, 0])));
        let root = IpcacheKey { prefixlen: 0, addr: [0; 16] };
        assert!(root.contains(&p(32, [1, 2, 3, 4])));
    }

    #[test]
    fn reversed_ct_key_swaps_ends_and_is_an_involution() {
        let k = CtKey {
            ep_id: 9,
            saddr: [1; 16],
            daddr: [2; 16],
            sport_be: [0, 1],
            dport_be: [0, 2],
            proto: 6,
            dir: 2,
            _pad: [0; 2],
        };
        let r = k.reversed();
        assert_eq!(r.saddr, [2; 16]);
        assert_eq!(r.dport_be, [0, 1]);
        assert_eq!(r.reversed(), k);
    }
}
