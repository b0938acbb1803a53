//! The lab's own plumbing without Ward: network namespaces joined by a plain veth pair,
//! serve-hostname servers and probes. Proves that a probe's verdict reflects the network,
//! so conformance failures can be blamed on the datapath, not the lab.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use ward_lab::probe::{self, Outcome, Probe};
use ward_lab::{NetNs, Protocol, Serve, Servers, require_root};

/// Two namespaces `client` (10.77.0.1, fd77:0:0:77::1) and `server` (.2 / ::2) on one veth.
struct Pair {
    client: NetNs,
    server: NetNs,
}

const CLIENT4: &str = "10.77.0.1";
const SERVER4: &str = "10.77.0.2";
const SERVER6: &str = "fd77:0:0:77::2";
/// On the link's subnet but owned by nobody: packets to it go nowhere.
const SILENT4: &str = "10.77.0.3";

fn pair() -> Pair {
    let client = NetNs::create_unique("client").expect("client netns");
    let server = NetNs::create_unique("server").expect("server netns");
    // Created inside the client namespace, so the names cannot clash with anything outside.
    client
        .ip(&["link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", server.name()])
        .expect("veth pair");
    for (ns, dev, v4, v6) in [(&client, "veth0", CLIENT4, "fd77:0:0:77::1"), (&server, "veth1", SERVER4, SERVER6)] {
        // No duplicate address detection: a tentative link-local address would hold back
        // neighbour discovery, and with it the first IPv6 probes, for about a second.
        ns.sysctl(&format!("net/ipv6/conf/{dev}/accept_dad"), "0").expect("accept_dad");
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]).expect("IPv4 address");
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]).expect("IPv6 address");
        ns.ip(&["link", "set", dev, "up"]).expect("link up");
    }
    Pair { client, server }
}

fn serve_all(p: &Pair, name: &str) -> Servers {
    let serves = [Serve::new(80, Protocol::Tcp, None), Serve::new(80, Protocol::Udp, None)];
    Servers::start(p.server.name(), p.server.path().to_owned(), name, &serves).expect("servers start")
}

fn probe_from(ns: &NetNs, to: &str, port: u16, protocol: Protocol) -> Probe {
    Probe {
        from_netns: ns.name().to_owned(),
        from_path: ns.path().to_owned(),
        to: SocketAddr::new(to.parse::<IpAddr>().expect("address"), port),
        protocol,
        timeout: probe::DEFAULT_TIMEOUT,
        http: None,
    }
}

#[test]
fn servers_answer_tcp_and_udp_probes_with_their_hostname_on_both_families() {
    if !require_root("servers_answer_tcp_and_udp_probes_with_their_hostname_on_both_families") {
        return;
    }
    let p = pair();
    let _servers = serve_all(&p, "srv");
    for to in [SERVER4, SERVER6] {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let got = probe_until_connected(&probe_from(&p.client, to, 80, proto), Duration::from_secs(10));
            assert_eq!(got, Outcome::Connected("srv".into()), "{proto} to {to}");
        }
    }
}

/// Probes until connected or `limit` passes. A fresh veth drops the first IPv6 packets for
/// about a second after it comes up (IPv4 works at once), so the first IPv6 probe may time
/// out through no fault of the servers.
fn probe_until_connected(p: &Probe, limit: Duration) -> Outcome {
    let deadline = Instant::now() + limit;
    loop {
        let got = probe::probe(p);
        if got.connected() || Instant::now() >= deadline {
            return got;
        }
    }
}

#[test]
fn a_port_nobody_serves_fails_fast() {
    if !require_root("a_port_nobody_serves_fails_fast") {
        return;
    }
    let p = pair();
    let _servers = serve_all(&p, "srv");
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let start = Instant::now();
        let got = probe::probe(&probe_from(&p.client, SERVER4, 81, proto));
        assert!(!got.connected(), "{proto}/81 is not served, yet {got}");
        // A refusal (RST or ICMP) comes back at once; a timeout would take the full second.
        assert!(start.elapsed() < Duration::from_millis(900), "{proto}/81: refusal took {:?}", start.elapsed());
    }
}

#[test]
fn a_silent_address_times_out_after_about_a_second() {
    if !require_root("a_silent_address_times_out_after_about_a_second") {
        return;
    }
    let p = pair();
    let start = Instant::now();
    let got = probe::probe(&probe_from(&p.client, SILENT4, 80, Protocol::Tcp));
    let took = start.elapsed();
    assert!(!got.connected(), "{got}");
    // Generous upper bound: a loaded machine schedules threads late.
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn probes_run_in_parallel_within_the_bound() {
    if !require_root("probes_run_in_parallel_within_the_bound") {
        return;
    }
    let p = pair();
    let _servers = serve_all(&p, "srv");
    // 40 one-second timeouts and 40 quick answers, 40 at a time: two waves at most.
    let mut probes: Vec<Probe> = (0..40).map(|_| probe_from(&p.client, SILENT4, 80, Protocol::Tcp)).collect();
    probes.extend((0..40).map(|_| probe_from(&p.client, SERVER4, 80, Protocol::Udp)));
    let start = Instant::now();
    let got = probe::probe_all(&probes, 40);
    let took = start.elapsed();
    assert_eq!(got.len(), 80);
    assert!(got[..40].iter().all(|o| !o.connected()), "silent address answered");
    assert!(got[40..].iter().all(|o| *o == Outcome::Connected("srv".into())), "{got:?}");
    // One at a time would take 40 s; two waves take about 2 s, more on a loaded machine.
    assert!(took < Duration::from_secs(10), "80 probes took {took:?}");
}

#[test]
fn stopped_servers_no_longer_answer() {
    if !require_root("stopped_servers_no_longer_answer") {
        return;
    }
    let p = pair();
    let servers = serve_all(&p, "srv");
    assert!(probe::probe(&probe_from(&p.client, SERVER4, 80, Protocol::Tcp)).connected());
    let start = Instant::now();
    servers.stop();
    assert!(start.elapsed() < Duration::from_secs(1), "stopping took {:?}", start.elapsed());
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let got = probe::probe(&probe_from(&p.client, SERVER4, 80, proto));
        assert!(!got.connected(), "{proto} still answered after stop: {got}");
    }
}

#[test]
fn namespaces_are_deleted_when_their_guard_drops_even_on_panic() {
    if !require_root("namespaces_are_deleted_when_their_guard_drops_even_on_panic") {
        return;
    }
    let mut path = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = NetNs::create_unique("doomed").expect("netns");
        path = Some(ns.path().to_owned());
        assert!(ns.path().exists());
        panic!("deliberate");
    }));
    assert!(result.is_err());
    let path = path.expect("the closure ran");
    assert!(!Path::new(&path).exists(), "{} survived the panic", path.display());
}
