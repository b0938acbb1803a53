//! The hardening issue's bypasses, tried as the attacker did: raw frames written onto a lab
//! pod's `eth0` (through the real veth, both of Ward's programs and the node's routing) and
//! watched for in another pod. Pod `a` is egress-isolated with one allowed flow (UDP 53 to
//! `b`, "DNS"); pod `c` is not isolated, so whatever leaves `a` reaches it. Each bypass has a
//! positive control through the same path, so a frame not arriving means Ward dropped it.
//! The per-class cases (every type, order and flag) are in `agent/tests/crafted_packets.rs`.
//! Needs root and the workspace's binaries (`cargo xtask build`).

use std::net::{IpAddr, Ipv6Addr, UdpSocket};
use std::time::Duration;

use serde_yaml::Value;
use ward_lab::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, rawframe, require_root};

const WAIT: Duration = Duration::from_millis(700);

fn pod(name: &str, serves: Vec<Serve>) -> PodSpec {
    PodSpec {
        namespace: "n".into(),
        name: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into_iter().collect(),
        serves,
    }
}

fn lab() -> Node {
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("n", &Labels::new()).unwrap_or_else(|e| panic!("namespace: {e}"));
    node.create_pods(&[
        pod("a", vec![]),
        pod("b", vec![Serve::new(53, Protocol::Udp, None)]),
        pod("c", vec![Serve::new(80, Protocol::Tcp, None), Serve::new(9, Protocol::Udp, None)]),
    ])
    .unwrap_or_else(|e| panic!("pods: {e}"));
    let policy: Value = serde_yaml::from_str(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: a-dns-only, namespace: n}, \
         spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress], \
                egress: [{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 53, protocol: UDP}]}]}}",
    )
    .expect("policy");
    node.apply(&[policy]).unwrap_or_else(|e| panic!("{e}"));
    node
}

fn v4(node: &Node, p: &str) -> [u8; 4] {
    match node.pod_ip(&PodRef::new("n", p), Family::IPv4).unwrap_or_else(|e| panic!("{e}")) {
        IpAddr::V4(a) => a.octets(),
        other => panic!("{other}"),
    }
}

fn v6(node: &Node, p: &str) -> Ipv6Addr {
    match node.pod_ip(&PodRef::new("n", p), Family::IPv6).unwrap_or_else(|e| panic!("{e}")) {
        IpAddr::V6(a) => a,
        other => panic!("{other}"),
    }
}

fn eth(node: &Node, from: &str, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let ns = node.pod(&PodRef::new("n", from)).unwrap_or_else(|e| panic!("{e}")).netns();
    let (own, gw) = rawframe::macs(ns).unwrap_or_else(|e| panic!("{e}"));
    let mut f = gw.to_vec();
    f.extend_from_slice(&own);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(l4);
    ip
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arrives(node: &Node, at: &str, marker: &[u8], send: impl FnOnce()) -> bool {
    let ns = node.pod(&PodRef::new("n", at)).unwrap_or_else(|e| panic!("{e}")).netns();
    rawframe::arrives(ns, marker, WAIT, send).unwrap_or_else(|e| panic!("{e}")).0
}

fn inject(node: &Node, from: &str, frame: &[u8]) {
    let ns = node.pod(&PodRef::new("n", from)).unwrap_or_else(|e| panic!("{e}")).netns();
    rawframe::send(ns, frame).unwrap_or_else(|e| panic!("{e}"));
}

/// Issue 13, item 1: an ICMP error quoting the pod's allowed DNS flow, sent to anyone but
/// the DNS server, was passed as "related".
#[test]
fn an_egress_isolated_pod_cannot_send_icmp_errors_to_anyone_but_the_quoted_sender() {
    if !require_root("an_egress_isolated_pod_cannot_send_icmp_errors_to_anyone_but_the_quoted_sender") {
        return;
    }
    let node = lab();
    let (a, b, c) = (v4(&node, "a"), v4(&node, "b"), v4(&node, "c"));
    // A real DNS-like exchange: a's query to b:53, b's answer back (now tracked).
    let a_ns = node.pod(&PodRef::new("n", "a")).unwrap_or_else(|e| panic!("{e}")).netns();
    let sport = a_ns
        .run_in(|| {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
            s.connect((IpAddr::from(b), 53)).expect("connect");
            s.send(b"query").expect("send");
            let mut buf = [0u8; 512];
            s.recv(&mut buf).expect("b answers a's allowed query");
            s.local_addr().expect("addr").port()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let marker = b"WARD-ICMP-CHANNEL-7c1";
    let quoted = ipv4(b, a, 17, &udp(53, sport, marker));
    let error_to = |dst: [u8; 4]| {
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted);
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        eth(&node, "a", 0x0800, &ipv4(a, dst, 1, &icmp))
    };
    // Control: back to the quoted packet's sender, the error arrives.
    assert!(arrives(&node, "b", marker, || inject(&node, "a", &error_to(b))), "a related error reaches b");
    // To anyone else: dropped at a's egress.
    assert!(!arrives(&node, "c", marker, || inject(&node, "a", &error_to(c))), "an ICMP channel out of a");
}

/// Issue 13, item 2: neighbour solicitations and MLD were exempt from everything, whatever
/// their addresses or hop limit.
#[test]
fn neighbour_discovery_from_a_deny_all_pod_stays_on_its_link() {
    if !require_root("neighbour_discovery_from_a_deny_all_pod_stays_on_its_link") {
        return;
    }
    let node = lab();
    let c6 = v6(&node, "c");
    let marker = b"WARD-ND-TO-GLOBAL-91f";
    let nd = |dst: Ipv6Addr, src: Ipv6Addr, ty: u8| {
        let mut icmp = vec![ty, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&c6.octets());
        icmp.extend_from_slice(marker);
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[58, 255]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        ip.extend_from_slice(&icmp);
        eth(&node, "a", 0x86dd, &ip)
    };
    let link_local: Ipv6Addr = "fe80::1234".parse().expect("address");
    for ty in [135u8, 136, 133, 143] {
        assert!(
            !arrives(&node, "c", marker, || inject(&node, "a", &nd(c6, link_local, ty))),
            "ICMPv6 type {ty} from a deny-all pod reached another pod's global address"
        );
        assert!(
            !arrives(&node, "c", marker, || inject(&node, "a", &nd(c6, v6(&node, "a"), ty))),
            "ICMPv6 type {ty} with the pod's own source reached another pod's global address"
        );
    }
    // Control: the same path carries what a's policy allows (a UDP datagram to b:53).
    let allowed_marker = b"WARD-ALLOWED-CONTROL-2";
    let frame = eth(&node, "a", 0x0800, &ipv4(v4(&node, "a"), v4(&node, "b"), 17, &udp(40000, 53, allowed_marker)));
    assert!(arrives(&node, "b", allowed_marker, || inject(&node, "a", &frame)), "raw frames do go through");
}

/// Issue 13, item 6: every later fragment to an isolated pod was dropped, those of its allowed
/// flows too (a large DNS answer over EDNS0 never arrived whole). Now the later fragments of
/// an allowed first fragment arrive, and no others.
#[test]
fn the_fragments_of_an_allowed_answer_reach_an_isolated_pod_and_no_others_do() {
    if !require_root("the_fragments_of_an_allowed_answer_reach_an_isolated_pod_and_no_others_do") {
        return;
    }
    let mut node = lab();
    let both: Value = serde_yaml::from_str(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: a-dns-only, namespace: n}, \
         spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress, Egress], \
                egress: [{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 53, protocol: UDP}]}]}}",
    )
    .expect("policy");
    node.apply(&[both]).unwrap_or_else(|e| panic!("{e}"));
    let (a, b, c) = (v4(&node, "a"), v4(&node, "b"), v4(&node, "c"));
    // a's query out (tracked), then b's "large answer" in two fragments, written by hand.
    let query = eth(&node, "a", 0x0800, &ipv4(a, b, 17, &udp(40053, 53, b"query")));
    inject(&node, "a", &query);
    let fragment = |src: [u8; 4], id: u16, frag: u16, payload: &[u8]| {
        let mut ip = ipv4(src, a, 17, payload);
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip
    };
    let from = |p: &str, ip: &[u8]| eth(&node, p, 0x0800, ip);
    let head = fragment(b, 0x4242, 0x2000, &udp(53, 40053, &[0x61; 64]));
    let tail_marker = b"WARD-LATER-FRAGMENT-a4";
    let tail = fragment(b, 0x4242, 9, tail_marker);
    assert!(arrives(&node, "a", &[0x61; 64], || inject(&node, "b", &from("b", &head))), "the first fragment (a reply)");
    assert!(arrives(&node, "a", tail_marker, || inject(&node, "b", &from("b", &tail))), "its later fragment follows");
    // A later fragment of a datagram whose head was never allowed (another id, another sender).
    let stray_marker = b"WARD-STRAY-FRAGMENT-5b";
    let stray = fragment(b, 0x4343, 9, stray_marker);
    assert!(!arrives(&node, "a", stray_marker, || inject(&node, "b", &from("b", &stray))), "no head, no entry");
    let stray_c = fragment(c, 0x4242, 9, stray_marker);
    assert!(!arrives(&node, "a", stray_marker, || inject(&node, "c", &from("c", &stray_c))), "another sender");
}
