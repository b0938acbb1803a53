//! The compared configurations and the rules each one loads: Ward's NetworkPolicy manifest,
//! the iptables-restore text an iptables-based CNI would generate, and the nftables set and
//! chains of the strong baseline. Pure text generation, tested exactly; `topology` loads it.
//!
//! Every configuration allows the same thing: the N peers (N-1 addresses outside every lab
//! range, then the client's own address last, so a linear rule list is walked to its end)
//! to the server's benchmark ports, TCP and UDP, and nothing else to the server.
//!
//! Netfilter state is split in two so that switching is cheap and the configurations without
//! netfilter really have none: the bulk (one iptables chain of peer rules per N, one nft set
//! per N) is loaded once and is never on a packet's path by itself (a regular chain or a set
//! with no base chain hooks nothing); the small part that hooks it in (the FORWARD jump and
//! per-pod chain with the conntrack rule; nft's base chain) is added for the configuration
//! and removed after it, taking the conntrack hooks with it.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

/// iperf3's port (TCP control and data, UDP data).
pub const PORT_IPERF: u16 = 5201;
/// The short-connection server's port.
pub const PORT_CONN: u16 = 7000;
/// sockperf's port.
pub const PORT_SOCKPERF: u16 = 11111;
/// The benchmark ports every configuration allows, by protocol.
pub const TCP_PORTS: [u16; 3] = [PORT_IPERF, PORT_CONN, PORT_SOCKPERF];
pub const UDP_PORTS: [u16; 1] = [PORT_IPERF];

/// Where the generated peers start: 10.128.0.1 upward, away from Ward's pod CIDRs
/// (10.<node>.0.0/16), the plain pods (10.250.0.0/24) and the lab's node addresses
/// (10.255.0.0/16) for every N up to [`MAX_PEERS`].
const FIRST_PEER: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);
pub const MAX_PEERS: usize = 1_000_000;

/// The nft table the baseline lives in.
pub const NFT_TABLE: &str = "ward_bench";
/// The per-pod iptables chain (jumped to from FORWARD for the server's address).
pub const IPT_POD_CHAIN: &str = "WARD-BENCH-POD";

/// One compared configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Config {
    /// (a) Hand-made veth pods, no program, no netfilter rules.
    Plain,
    /// (b) Ward's pods, no policy selecting them.
    WardOpen,
    /// (c) Ward, a policy selecting the server allows N ipBlock peers; same-node packets
    /// delivered by the datapath (`--local-delivery peer`, the default).
    Ward(usize),
    /// (c') The same with same-node packets delivered by the node's routing
    /// (`--local-delivery route`), side by side.
    WardRouted(usize),
    /// (d) iptables, N peer rules on the plain pods.
    Iptables(usize),
    /// (e) nftables, N peers in a set on the plain pods.
    Nft(usize),
}

impl Config {
    /// The configurations of one round, in the order they alternate.
    pub fn round(ns: &[usize]) -> Vec<Config> {
        let mut v = vec![Config::Plain, Config::WardOpen];
        v.extend(ns.iter().map(|&n| Config::Ward(n)));
        v.extend(ns.iter().map(|&n| Config::WardRouted(n)));
        v.extend(ns.iter().map(|&n| Config::Iptables(n)));
        v.extend(ns.iter().map(|&n| Config::Nft(n)));
        v
    }

    pub fn kind(self) -> &'static str {
        match self {
            Config::Plain => "no program",
            Config::WardOpen => "Ward, no policy",
            Config::Ward(_) => "Ward",
            Config::WardRouted(_) => "Ward, routed",
            Config::Iptables(_) => "iptables",
            Config::Nft(_) => "nftables",
        }
    }

    /// Peers allowed, where the configuration has a rule set.
    pub fn n(self) -> Option<usize> {
        match self {
            Config::Plain | Config::WardOpen => None,
            Config::Ward(n) | Config::WardRouted(n) | Config::Iptables(n) | Config::Nft(n) => Some(n),
        }
    }

    /// Whether traffic goes between Ward's pods (else between the plain pods).
    pub fn on_ward_pods(self) -> bool {
        matches!(self, Config::WardOpen | Config::Ward(_) | Config::WardRouted(_))
    }

    /// Whether a source that is not a listed peer must be denied.
    pub fn enforces(self) -> bool {
        self.n().is_some()
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.n() {
            Some(n) => write!(f, "{} N={}", self.kind(), count(n)),
            None => f.write_str(self.kind()),
        }
    }
}

/// `10`, `1k`, `10k`, `100k`: how the report and names spell N.
pub fn count(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) { format!("{}k", n / 1000) } else { n.to_string() }
}

/// The N allowed peers: N-1 generated addresses, then `client` last.
pub fn peers(n: usize, client: Ipv4Addr) -> Vec<Ipv4Addr> {
    assert!((1..=MAX_PEERS).contains(&n), "N = {n} peers is outside 1..={MAX_PEERS}");
    let first = u32::from(FIRST_PEER);
    let mut v: Vec<Ipv4Addr> = (0..n as u32 - 1).map(|i| Ipv4Addr::from(first + i)).collect();
    v.push(client);
    v
}

fn join_ports(ports: &[u16], sep: &str) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(sep)
}

/// Ward: a NetworkPolicy in `namespace` selecting pods labelled `label=value` for ingress,
/// allowing each peer as an ipBlock /32 on the benchmark ports. One flow-style line per
/// peer keeps 100k peers a few MB of YAML.
pub fn ward_policy_yaml(name: &str, namespace: &str, label: (&str, &str), peers: &[Ipv4Addr]) -> String {
    let mut s = String::with_capacity(64 + peers.len() * 40);
    let _ = writeln!(s, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy");
    let _ = writeln!(s, "metadata: {{name: {name}, namespace: {namespace}}}");
    let _ = writeln!(s, "spec:\n  podSelector: {{matchLabels: {{{}: \"{}\"}}}}", label.0, label.1);
    let _ = writeln!(s, "  policyTypes: [Ingress]\n  ingress:\n  - from:");
    for p in peers {
        let _ = writeln!(s, "    - ipBlock: {{cidr: {p}/32}}");
    }
    let _ = writeln!(s, "    ports:");
    for (proto, ports) in [("TCP", &TCP_PORTS[..]), ("UDP", &UDP_PORTS[..])] {
        for p in ports {
            let _ = writeln!(s, "    - {{protocol: {proto}, port: {p}}}");
        }
    }
    s
}

/// iptables: the chain of peer rules for N (`WARD-BENCH-PEERS-<N>`).
pub fn ipt_peers_chain(n: usize) -> String {
    format!("WARD-BENCH-PEERS-{n}")
}

/// iptables-restore input (for `--noflush`) creating the peer chain: per peer one TCP rule
/// (multiport over the TCP ports) and one UDP rule, in peer order (the client last).
pub fn ipt_peers_restore(n: usize, peers: &[Ipv4Addr]) -> String {
    let chain = ipt_peers_chain(n);
    let (tcp, udp) = (join_ports(&TCP_PORTS, ","), join_ports(&UDP_PORTS, ","));
    let mut s = String::with_capacity(64 + peers.len() * 160);
    let _ = writeln!(s, "*filter\n:{chain} - [0:0]");
    for p in peers {
        let _ = writeln!(s, "-A {chain} -s {p}/32 -p tcp -m multiport --dports {tcp} -j ACCEPT");
        let _ = writeln!(s, "-A {chain} -s {p}/32 -p udp -m multiport --dports {udp} -j ACCEPT");
    }
    let _ = writeln!(s, "COMMIT");
    s
}

/// iptables-restore input (`--noflush`) hooking the server in: FORWARD jumps to the per-pod
/// chain for the server's address; the pod chain accepts established flows, walks the peer
/// chain of N, and drops the rest.
pub fn ipt_switch_on(server: Ipv4Addr, n: usize) -> String {
    let (pod, peers) = (IPT_POD_CHAIN, ipt_peers_chain(n));
    format!(
        "*filter\n:{pod} - [0:0]\n\
         -A {pod} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         -A {pod} -j {peers}\n\
         -A {pod} -j DROP\n\
         -A FORWARD -d {server}/32 -j {pod}\n\
         COMMIT\n"
    )
}

/// iptables-restore input (`--noflush`) undoing [`ipt_switch_on`]. The caller then deletes the
/// empty FORWARD base chain (iptables-nft keeps it hooked otherwise).
pub fn ipt_switch_off(server: Ipv4Addr) -> String {
    let pod = IPT_POD_CHAIN;
    format!("*filter\n-D FORWARD -d {server}/32 -j {pod}\n-F {pod}\n-X {pod}\nCOMMIT\n")
}

/// The nft set of N peers (`peers_<N>`), a plain hash set of addresses.
pub fn nft_set(n: usize) -> String {
    format!("peers_{n}")
}

/// `nft -f` input creating the table (if absent) and the set of N peers.
pub fn nft_peers(n: usize, peers: &[Ipv4Addr]) -> String {
    let mut s = String::with_capacity(128 + peers.len() * 14);
    let _ = write!(s, "table ip {NFT_TABLE} {{\n  set {} {{\n    type ipv4_addr\n    elements = {{ ", nft_set(n));
    for (i, p) in peers.iter().enumerate() {
        if i > 0 {
            s.push_str(if i % 8 == 0 { ",\n      " } else { ", " });
        }
        let _ = write!(s, "{p}");
    }
    s.push_str(" }\n  }\n}\n");
    s
}

/// `nft -f` input hooking the server in: a forward base chain jumping to a per-pod chain for
/// the server's address; the pod chain accepts established flows, then peers in the set of N
/// on the benchmark ports, and drops the rest.
pub fn nft_switch_on(server: Ipv4Addr, n: usize) -> String {
    let set = nft_set(n);
    let tcp = join_ports(&TCP_PORTS, ", ");
    let udp = join_ports(&UDP_PORTS, ", ");
    format!(
        "table ip {NFT_TABLE} {{\n\
         \x20 chain pod {{\n\
         \x20   ct state established,related accept\n\
         \x20   ip saddr @{set} tcp dport {{ {tcp} }} accept\n\
         \x20   ip saddr @{set} udp dport {{ {udp} }} accept\n\
         \x20   drop\n\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         \x20   ip daddr {server} jump pod\n\
         \x20 }}\n\
         }}\n"
    )
}

/// `nft -f` input undoing [`nft_switch_on`] (the sets stay).
pub fn nft_switch_off() -> String {
    format!("delete chain ip {NFT_TABLE} forward\ndelete chain ip {NFT_TABLE} pod\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 3);

    #[test]
    fn peers_are_distinct_outside_lab_ranges_with_the_client_last() {
        let p = peers(3, CLIENT);
        assert_eq!(p, vec![Ipv4Addr::new(10, 128, 0, 1), Ipv4Addr::new(10, 128, 0, 2), CLIENT]);
        let big = peers(100_000, CLIENT);
        assert_eq!(big.len(), 100_000);
        assert_eq!(big.last(), Some(&CLIENT));
        let set: std::collections::BTreeSet<_> = big.iter().collect();
        assert_eq!(set.len(), big.len(), "distinct");
        for a in &big[..big.len() - 1] {
            let o = a.octets();
            assert!(o[0] == 10 && (128..250).contains(&o[1]), "{a} must stay out of 10.250/16 and 10.255/16");
        }
    }

    #[test]
    fn rounds_alternate_every_configuration() {
        assert_eq!(
            Config::round(&[10, 1000]),
            vec![
                Config::Plain,
                Config::WardOpen,
                Config::Ward(10),
                Config::Ward(1000),
                Config::WardRouted(10),
                Config::WardRouted(1000),
                Config::Iptables(10),
                Config::Iptables(1000),
                Config::Nft(10),
                Config::Nft(1000)
            ]
        );
        assert_eq!(Config::Nft(10_000).to_string(), "nftables N=10k");
        assert_eq!(Config::Plain.to_string(), "no program");
    }

    #[test]
    fn iptables_rules_for_three_peers() {
        assert_eq!(
            ipt_peers_restore(3, &peers(3, CLIENT)),
            "*filter\n\
             :WARD-BENCH-PEERS-3 - [0:0]\n\
             -A WARD-BENCH-PEERS-3 -s 10.128.0.1/32 -p tcp -m multiport --dports 5201,7000,11111 -j ACCEPT\n\
             -A WARD-BENCH-PEERS-3 -s 10.128.0.1/32 -p udp -m multiport --dports 5201 -j ACCEPT\n\
             -A WARD-BENCH-PEERS-3 -s 10.128.0.2/32 -p tcp -m multiport --dports 5201,7000,11111 -j ACCEPT\n\
             -A WARD-BENCH-PEERS-3 -s 10.128.0.2/32 -p udp -m multiport --dports 5201 -j ACCEPT\n\
             -A WARD-BENCH-PEERS-3 -s 10.250.0.2/32 -p tcp -m multiport --dports 5201,7000,11111 -j ACCEPT\n\
             -A WARD-BENCH-PEERS-3 -s 10.250.0.2/32 -p udp -m multiport --dports 5201 -j ACCEPT\n\
             COMMIT\n"
        );
        assert_eq!(
            ipt_switch_on(SERVER, 3),
            "*filter\n\
             :WARD-BENCH-POD - [0:0]\n\
             -A WARD-BENCH-POD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A WARD-BENCH-POD -j WARD-BENCH-PEERS-3\n\
             -A WARD-BENCH-POD -j DROP\n\
             -A FORWARD -d 10.250.0.3/32 -j WARD-BENCH-POD\n\
             COMMIT\n"
        );
        assert_eq!(
            ipt_switch_off(SERVER),
            "*filter\n-D FORWARD -d 10.250.0.3/32 -j WARD-BENCH-POD\n-F WARD-BENCH-POD\n-X WARD-BENCH-POD\nCOMMIT\n"
        );
    }

    #[test]
    fn nft_set_and_chains_for_three_peers() {
        assert_eq!(
            nft_peers(3, &peers(3, CLIENT)),
            "table ip ward_bench {\n  set peers_3 {\n    type ipv4_addr\n    \
             elements = { 10.128.0.1, 10.128.0.2, 10.250.0.2 }\n  }\n}\n"
        );
        // Eight elements per line keeps a 100k set readable by nft's parser and by people.
        assert!(nft_peers(9, &peers(9, CLIENT)).contains("10.128.0.8,\n      10.250.0.2 }"));
        assert_eq!(
            nft_switch_on(SERVER, 3),
            "table ip ward_bench {\n  chain pod {\n    ct state established,related accept\n    \
             ip saddr @peers_3 tcp dport { 5201, 7000, 11111 } accept\n    \
             ip saddr @peers_3 udp dport { 5201 } accept\n    drop\n  }\n  chain forward {\n    \
             type filter hook forward priority filter; policy accept;\n    ip daddr 10.250.0.3 jump pod\n  }\n}\n"
        );
        assert_eq!(nft_switch_off(), "delete chain ip ward_bench forward\ndelete chain ip ward_bench pod\n");
    }

    #[test]
    fn ward_policy_for_three_peers() {
        let y = ward_policy_yaml("allow-3", "bench", ("bench-server", "n3"), &peers(3, CLIENT));
        assert_eq!(
            y,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: allow-3, namespace: bench}\n\
             spec:\n  podSelector: {matchLabels: {bench-server: \"n3\"}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n\
             \x20   - ipBlock: {cidr: 10.128.0.1/32}\n\
             \x20   - ipBlock: {cidr: 10.128.0.2/32}\n\
             \x20   - ipBlock: {cidr: 10.250.0.2/32}\n\
             \x20   ports:\n\
             \x20   - {protocol: TCP, port: 5201}\n\
             \x20   - {protocol: TCP, port: 7000}\n\
             \x20   - {protocol: TCP, port: 11111}\n\
             \x20   - {protocol: UDP, port: 5201}\n"
        );
        // It is the Kubernetes object we mean: parsed back, the fields are where the API puts them.
        let v: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(v["spec"]["ingress"][0]["from"][2]["ipBlock"]["cidr"], "10.250.0.2/32");
        assert_eq!(v["spec"]["ingress"][0]["ports"][3]["protocol"], "UDP");
        assert_eq!(v["spec"]["podSelector"]["matchLabels"]["bench-server"], "n3");
    }
}
