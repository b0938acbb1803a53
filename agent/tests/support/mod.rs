//! What the kernel-logic and crafted-packet tests share: a datapath loaded under a unique
//! node name (removed on drop, also on panic), run with BPF_PROG_TEST_RUN on frames built
//! byte by byte by the builders below (checksums are not checked by the programs, so they are
//! left zero), and the reason each run counted.
//!
//! Root required; under CI (CI=true) a missing privilege fails the test instead of skipping.

#![allow(dead_code, reason = "each test binary uses a different part of the shared helpers")]

use std::net::{Ipv4Addr, Ipv6Addr};

use ward_agent::datapath::{Datapath, MirrorContents};
use ward_common::{
    Direction, Reason,
    addr::v4_mapped,
    identity::{ID_HOST, ID_WORLD},
    maps::{EndpointInfo, IpcacheKey, IpcacheValue, PolicyKey, PolicyValue},
    ports::{MAX_BLOCKS, PortBlock, range_to_blocks},
};

/// `TCX_NEXT`: the programs let an allowed packet go on to what runs after them.
pub const PASS: i32 = -1;
pub const DROP: i32 = 2;
pub const LO: u32 = 1;

pub const POD: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
pub const PEER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 3);
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const NODE: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
pub const POD6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
pub const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 3);
pub const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 1);
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0xffff, 0, 0, 0, 0, 0, 1);
pub const SUBJECT: u32 = 300;
pub const PEER_ID: u32 = 301;
pub const EP_ID: u32 = 7;

pub const ICMP: u8 = 1;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "kernel-logic tests need root and CI runs as root");
    eprintln!("skipping: not root");
    false
}

/// A datapath pinned under a unique node name, removed on drop (also on panic).
pub struct TestDatapath {
    pub dp: Datapath,
    pub mirror: MirrorContents,
}

impl TestDatapath {
    pub fn new(tag: &str) -> Self {
        Self::sized(tag, &[])
    }

    /// With some maps at other capacities (see `Datapath::open_sized`).
    pub fn sized(tag: &str, sizes: &[(&str, u32)]) -> Self {
        let node = format!("ward-test-{}-{tag}", std::process::id());
        let dp = Datapath::open_sized(std::path::Path::new("/sys/fs/bpf"), &node, sizes).expect("load datapath");
        TestDatapath { dp, mirror: MirrorContents::default() }
    }

    pub fn apply(&mut self, desired: &MirrorContents) {
        let delta = self.mirror.delta_to(desired);
        self.dp.maps.apply(&mut self.mirror, &delta).expect("apply maps");
    }

    pub fn run(&self, program: &'static str, pkt: &[u8]) -> i32 {
        self.dp.run_program(program, pkt, LO).expect("test run")
    }

    /// As if the node forwarded the packet from interface `ingress_ifindex`.
    pub fn run_forwarded(&self, program: &'static str, pkt: &[u8], ingress_ifindex: u32) -> i32 {
        self.dp.run_program_from(program, pkt, LO, ingress_ifindex).expect("test run")
    }

    /// Runs a packet and also returns the reason the programs counted for it.
    pub fn run_reason(&self, program: &'static str, pkt: &[u8]) -> (i32, Reason) {
        self.run_reason_on(program, pkt, LO, 0)
    }

    pub fn run_reason_on(
        &self,
        program: &'static str,
        pkt: &[u8],
        ifindex: u32,
        ingress_ifindex: u32,
    ) -> (i32, Reason) {
        let before = self.dp.maps.reason_counters().expect("counters");
        let verdict = self.dp.run_program_from(program, pkt, ifindex, ingress_ifindex).expect("test run");
        let after = self.dp.maps.reason_counters().expect("counters");
        let counted: Vec<(Reason, Direction)> =
            after.keys().filter(|k| after[*k].packets != before[*k].packets).copied().collect();
        assert_eq!(counted.len(), 1, "exactly one (reason, direction) counted per packet, got {counted:?}");
        assert_eq!(after[&counted[0]].bytes - before[&counted[0]].bytes, pkt.len() as u64, "bytes counted");
        // Each program sees one side of the pod boundary: its counts carry that direction.
        let expected = if program == "to_pod" { Direction::Ingress } else { Direction::Egress };
        assert_eq!(counted[0].1, expected, "{program} counted under the wrong direction");
        (verdict, counted[0].0)
    }

    pub fn pin(&self, map: &str) -> std::path::PathBuf {
        self.dp.pin_dir().join(map)
    }
}

impl Drop for TestDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.dp.pin_dir());
    }
}

pub fn host_key(ip: Ipv4Addr) -> IpcacheKey {
    IpcacheKey { prefixlen: 128, addr: v4_mapped(ip.octets()) }
}

pub fn host_key6(ip: Ipv6Addr) -> IpcacheKey {
    IpcacheKey { prefixlen: 128, addr: ip.octets() }
}

pub fn endpoint(ep_id: u32, identity: u32, flags: u32, v4: Ipv4Addr, v6: Ipv6Addr) -> EndpointInfo {
    EndpointInfo { ep_id, identity, flags, _pad: 0, addr_v4: v4_mapped(v4.octets()), addr_v6: v6.octets() }
}

/// The pod on loopback (POD, POD6), a peer pod (PEER, PEER6) and the node (NODE, NODE6).
pub fn base(flags: u32) -> MirrorContents {
    let mut m = MirrorContents::default();
    m.endpoints.insert(LO, endpoint(EP_ID, SUBJECT, flags, POD, POD6));
    m.ipcache.insert(host_key(POD), IpcacheValue { identity: SUBJECT, cidr_identity: ID_WORLD });
    m.ipcache.insert(host_key(PEER), IpcacheValue { identity: PEER_ID, cidr_identity: ID_WORLD });
    m.ipcache.insert(host_key(NODE), IpcacheValue { identity: ID_HOST, cidr_identity: ID_WORLD });
    m.ipcache.insert(host_key6(POD6), IpcacheValue { identity: SUBJECT, cidr_identity: ID_WORLD });
    m.ipcache.insert(host_key6(PEER6), IpcacheValue { identity: PEER_ID, cidr_identity: ID_WORLD });
    m.ipcache.insert(host_key6(NODE6), IpcacheValue { identity: ID_HOST, cidr_identity: ID_WORLD });
    m
}

pub fn allow(m: &mut MirrorContents, dir: Direction, peer: u32, proto: u8, first: u16, last: u16, rule_id: u32) {
    let mut blocks = [PortBlock { base: 0, prefix_len: 0 }; MAX_BLOCKS];
    let n = range_to_blocks(first, last, &mut blocks);
    for b in &blocks[..n] {
        m.policy.insert(PolicyKey::port_block(SUBJECT, peer, dir, proto, *b), PolicyValue { rule_id, flags: 0 });
    }
}

/// A port-less rule: every protocol, ICMP included.
pub fn allow_any(m: &mut MirrorContents, dir: Direction, peer: u32, rule_id: u32) {
    m.policy.insert(PolicyKey::any_proto(SUBJECT, peer, dir), PolicyValue { rule_id, flags: 0 });
}

// --- frames -----------------------------------------------------------------------------------

/// Ethernet header (addresses zero) with `ethertype`, then `payload`.
pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv4 header's settable parts.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags (DF 0x4000, MF 0x2000) and offset in 8-byte units.
    pub frag: u16,
    /// Option bytes (padded to a multiple of 4 by the builder).
    pub options: Vec<u8>,
}

impl V4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        V4 { src, dst, proto, ttl: 64, id: 0x1234, frag: 0x4000, options: vec![] }
    }

    /// The frame: Ethernet, this header, `l4`.
    pub fn frame(&self, l4: &[u8]) -> Vec<u8> {
        eth(0x0800, &self.packet(l4))
    }

    /// The IP packet alone (what an ICMP error quotes).
    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while opts.len() % 4 != 0 {
            opts.push(0);
        }
        let ihl = (20 + opts.len()) / 4;
        let total = (ihl * 4 + l4.len()) as u16;
        let mut ip = vec![0x40 | ihl as u8, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&self.id.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&opts);
        ip.extend_from_slice(l4);
        ip
    }
}

/// An IPv6 header's settable parts, with a chain of extension headers.
#[derive(Clone, Debug)]
pub struct V6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// Extension headers in order: (type, body after the next-header byte).
    pub ext: Vec<(u8, Vec<u8>)>,
    /// The upper-layer protocol after the chain.
    pub proto: u8,
}

impl V6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, proto: u8) -> Self {
        V6 { src, dst, hop_limit: 64, ext: vec![], proto }
    }

    pub fn frame(&self, l4: &[u8]) -> Vec<u8> {
        eth(0x86dd, &self.packet(l4))
    }

    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, (_, body)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto, |(t, _)| *t);
            chain.push(next);
            chain.extend_from_slice(body);
        }
        let first = self.ext.first().map_or(self.proto, |(t, _)| *t);
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[first, self.hop_limit]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&chain);
        ip.extend_from_slice(l4);
        ip
    }
}

/// Hop-by-Hop / Destination Options header body (8 bytes in all, PadN).
pub fn opts_ext() -> Vec<u8> {
    vec![0, 1, 4, 0, 0, 0, 0]
}

/// Routing header body (type 4, 8 bytes in all, one segment) with `segments_left`.
pub fn routing_ext(segments_left: u8) -> Vec<u8> {
    vec![0, 4, segments_left, 0, 0, 0, 0]
}

/// Fragment header body: offset in 8-byte units, more-fragments flag, identification.
pub fn frag_ext(offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    b.extend_from_slice(&id.to_be_bytes());
    b
}

/// Authentication header body (RFC 4302: 12 bytes fixed part + 4 bytes ICV: length 2).
pub fn ah_ext() -> Vec<u8> {
    let mut b = vec![2, 0, 0];
    b.extend_from_slice(&[0; 12]);
    b
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 0x50;
    h[13] = flags;
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

pub fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h
}

/// ICMP or ICMPv6: type, code, checksum (zero), the 4-byte rest of header, then `body`.
pub fn icmp_msg(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0];
    h.extend_from_slice(&rest);
    h.extend_from_slice(body);
    h
}

pub fn echo_rest(id: u16, seq: u16) -> [u8; 4] {
    let i = id.to_be_bytes();
    let s = seq.to_be_bytes();
    [i[0], i[1], s[0], s[1]]
}

/// An IPv4 TCP/UDP/SCTP frame with default header fields.
pub fn packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    V4::new(src, dst, proto).frame(&l4(proto, sport, dport, tcp_flags))
}

/// An IPv6 TCP/UDP/SCTP frame with default header fields.
pub fn packet6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    V6::new(src, dst, proto).frame(&l4(proto, sport, dport, tcp_flags))
}

pub fn l4(proto: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    match proto {
        TCP => tcp(sport, dport, tcp_flags),
        SCTP => sctp(sport, dport),
        _ => udp(sport, dport, &[]),
    }
}

/// An ICMP (v4) error of `ty`/`code` from `src` to `dst` quoting `quoted` (an IP packet).
pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, quoted: &[u8]) -> Vec<u8> {
    V4::new(src, dst, ICMP).frame(&icmp_msg(ty, 0, [0; 4], quoted))
}

pub fn icmp6_error(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, quoted: &[u8]) -> Vec<u8> {
    V6::new(src, dst, ICMPV6).frame(&icmp_msg(ty, 0, [0; 4], quoted))
}

/// The pinned conntrack table of a test datapath, opened from user space as a second handle
/// (to age entries the way time would).
pub fn ct_table(
    t: &TestDatapath,
) -> aya::maps::HashMap<aya::maps::MapData, ward_common::maps::CtKey, ward_common::maps::CtValue> {
    let data = aya::maps::MapData::from_pin(t.pin(ward_common::maps::MAP_CT)).expect("open pinned WARD_CT");
    aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("WARD_CT is a hash")
}

/// A network namespace of the test's own with `pairs` veth pairs, so that programs can be run
/// as if on several interfaces (BPF_PROG_TEST_RUN resolves `ifindex` in the caller's network
/// namespace). Deleted on drop.
pub struct IfaceNs {
    pub name: String,
    /// One side of each pair.
    pub ifindexes: Vec<u32>,
}

impl IfaceNs {
    pub fn new(tag: &str, pairs: usize) -> Self {
        let name = format!("ward-{}-{tag}", std::process::id());
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().expect("run ip");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let mut ns = IfaceNs { name, ifindexes: Vec::new() };
        for i in 0..pairs {
            let (a, b) = (format!("ta{i}"), format!("tb{i}"));
            ip(&["-n", &ns.name, "link", "add", &a, "type", "veth", "peer", "name", &b]);
            let shown = ip(&["-n", &ns.name, "-o", "link", "show", &a]);
            let index = shown.split(':').next().and_then(|n| n.trim().parse().ok()).expect("ifindex");
            ns.ifindexes.push(index);
        }
        ns
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter netns");
                f()
            })
            .join()
            .expect("test thread")
        })
    }
}

impl Drop for IfaceNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
