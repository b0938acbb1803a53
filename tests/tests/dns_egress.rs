//! Privileged tests of DNS-based egress (`fqdn` peers, `dns` rules) with real parts only: a
//! lab node with the real agent and datapath, external hosts and a real DNS server (dnsmasq)
//! in lab namespaces, and real clients inside the pods (glibc through `getent`, dig, and an
//! in-process stub resolver that connects the instant its answer arrives).
//!
//! Every test first shows the name resolving and the host answering without policy, so a
//! denial is the policy's doing. Under `CI=true` a test that cannot run fails.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_yaml::Value;
use ward_lab::dnslab::{self, Attempt, DnsServer, ExternalHost, Record, ResolvConf};
use ward_lab::{Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, require_root};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A lab: node, namespace `apps` with `client` (app=client) and `other` (app=other), external
/// hosts serving TCP 443 and 80, and the DNS server with `records` (built from the hosts).
struct Lab {
    // Dropped first: pods' resolv.conf files, then the DNS server and hosts, then the node.
    _resolv: Vec<ResolvConf>,
    dns: DnsServer,
    hosts: Vec<ExternalHost>,
    node: Node,
}

fn pref(s: &str) -> PodRef {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

impl Lab {
    fn new(hosts: &[&str], records: impl Fn(&[ExternalHost]) -> Vec<Record>) -> Lab {
        Lab::with_config(NodeConfig::default(), hosts, records)
    }

    fn with_config(config: NodeConfig, hosts: &[&str], records: impl Fn(&[ExternalHost]) -> Vec<Record>) -> Lab {
        let mut node = Node::start(config).unwrap_or_else(|e| panic!("starting a lab node: {e}"));
        node.set_namespace("apps", &labels(&[("team", "apps")])).unwrap_or_else(|e| panic!("namespace: {e}"));
        let pods: Vec<PodSpec> = ["client", "other"]
            .iter()
            .map(|n| PodSpec {
                namespace: "apps".into(),
                name: (*n).into(),
                labels: labels(&[("app", n)]),
                serves: vec![Serve::new(80, Protocol::Tcp, None)],
            })
            .collect();
        node.create_pods(&pods).unwrap_or_else(|e| panic!("pods: {e}"));
        let serves = [Serve::new(443, Protocol::Tcp, None), Serve::new(80, Protocol::Tcp, None)];
        let hosts: Vec<ExternalHost> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ExternalHost::create(&node, h, (i + 1) as u8, &serves).unwrap_or_else(|e| panic!("host {h}: {e}"))
            })
            .collect();
        let dns = DnsServer::start(&node, &records(&hosts)).unwrap_or_else(|e| panic!("DNS server: {e}"));
        let mut resolv = Vec::new();
        for p in node.pods() {
            resolv.push(ResolvConf::write(p.netns().name(), dns.addr(false).ip()).unwrap_or_else(|e| panic!("{e}")));
        }
        Lab { _resolv: resolv, dns, hosts, node }
    }

    fn pod_ns(&self, pod: &str) -> (String, std::path::PathBuf) {
        let p = self.node.pod(&pref(pod)).unwrap_or_else(|e| panic!("{e}"));
        (p.netns().name().to_owned(), p.netns().path().to_owned())
    }

    /// Resolves with the pod's own resolver (glibc, /etc/resolv.conf).
    fn getent(&self, pod: &str, name: &str) -> Result<Vec<IpAddr>, String> {
        dnslab::getent(&self.pod_ns(pod).0, name, false, Duration::from_secs(5))
    }

    /// Connects from `pod` to `ip:port` (TCP, 1 s).
    fn connect(&self, pod: &str, ip: IpAddr, port: u16) -> Result<(), String> {
        let (name, path) = self.pod_ns(pod);
        dnslab::in_netns(&name, &path, || {
            TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(1))
                .map(drop)
                .map_err(|e| e.to_string())
        })?
    }

    /// Resolves with glibc in `pod`, then connects to the first address.
    fn resolve_connect(&self, pod: &str, name: &str, port: u16) -> Result<IpAddr, String> {
        let ips = self.getent(pod, name)?;
        let ip = *ips.first().ok_or(format!("{name}: no address"))?;
        self.connect(pod, ip, port).map(|()| ip).map_err(|e| format!("{ip}:{port}: {e}"))
    }

    fn apply(&mut self, policies: &[Value]) {
        if let Err(e) = self.node.apply(policies) {
            panic!("applying: {e}\nrejections: {:?}", self.node.rejections());
        }
    }

    fn dns_status(&self) -> serde_json::Value {
        self.node.status().map(|s| s.raw["dns"].clone()).unwrap_or_default()
    }

    fn explain(&self) -> String {
        let status = self.node.status().map(|s| s.raw).unwrap_or_default();
        format!("dns status: {}\nreason counters: {}", status["dns"], status["reason_counters"])
    }
}

/// A WardNetworkPolicy `apps/name` selecting `app=client` for egress with `egress` (YAML).
fn ward_policy(name: &str, egress: &str) -> Value {
    let text = format!(
        "apiVersion: policy.ward.dev/v1alpha1\nkind: WardNetworkPolicy\nmetadata: {{name: {name}, namespace: apps}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress: {egress}\n"
    );
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("policy {name}: {e}\n{text}"))
}

/// Egress to `fqdn` peers on TCP 443, plus DNS to anyone.
fn fqdn_policy(peers: &str) -> Value {
    ward_policy(
        "egress",
        &format!(
            "[{{to: [{peers}], ports: [{{protocol: TCP, port: 443}}]}}, {{ports: [{{protocol: UDP, port: 53}}, {{protocol: TCP, port: 53}}]}}]"
        ),
    )
}

fn addrs(name: &str, hosts: &[&ExternalHost], ttl: u32) -> Record {
    Record::Addrs { name: name.into(), addrs: hosts.iter().map(|h| h.ip(false)).collect(), ttl }
}

#[test]
fn an_allowed_name_connects_and_a_disallowed_names_address_is_denied_even_by_ip() {
    if !require_root("an_allowed_name_connects_and_a_disallowed_names_address_is_denied_even_by_ip") {
        return;
    }
    let mut lab = Lab::new(&["bank", "ads"], |h| {
        vec![addrs("api.bank.example", &[&h[0]], 60), addrs("tracker.ads.example", &[&h[1]], 60)]
    });
    let ads = lab.hosts[1].ip(false);
    assert_eq!(lab.resolve_connect("apps/client", "tracker.ads.example", 443), Ok(ads), "no policy yet");
    lab.apply(&[fqdn_policy("{fqdn: {matchName: api.bank.example}}")]);
    let bank = lab.hosts[0].ip(false);
    assert_eq!(lab.resolve_connect("apps/client", "api.bank.example", 443), Ok(bank), "{}", lab.explain());
    assert!(lab.connect("apps/client", bank, 80).is_err(), "only port 443 is allowed");
    // The disallowed name resolves (DNS itself is allowed) but its address stays closed, by
    // name and by address.
    assert_eq!(lab.getent("apps/client", "tracker.ads.example"), Ok(vec![ads]));
    assert!(lab.connect("apps/client", ads, 443).is_err(), "{}", lab.explain());
    // Another pod, not selected, is unaffected.
    assert_eq!(lab.resolve_connect("apps/other", "tracker.ads.example", 443), Ok(ads));
    let dns = lab.dns_status();
    assert!(dns["learned_answers"].as_u64() >= Some(1), "{dns}");
    assert_eq!(dns["write_failures"].as_u64(), Some(0), "{dns}");
}

fn cname(name: &str, target: &str) -> Record {
    Record::Cname { name: name.into(), target: target.into(), ttl: 60 }
}

/// The stub resolver from inside `pod`, asking the lab's DNS server.
fn stub(
    lab: &Lab,
    pod: &str,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
    tcp: bool,
    edns: bool,
) -> dnslab::Reply {
    let (ns, path) = lab.pod_ns(pod);
    let server = lab.dns.addr(false);
    dnslab::in_netns(&ns, &path, || dnslab::query_with(server, name, qtype, tcp, edns, Duration::from_secs(2)))
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("{name} ({qtype:?}, tcp {tcp}) from {pod}: {e}\n{}", lab.explain()))
}

#[test]
fn patterns_follow_the_one_wildcard_grammar() {
    if !require_root("patterns_follow_the_one_wildcard_grammar") {
        return;
    }
    let mut lab = Lab::new(&["one", "two", "apex"], |h| {
        vec![
            addrs("x.shop.example", &[&h[0]], 60),
            addrs("y.z.shop.example", &[&h[1]], 60),
            addrs("shop.example", &[&h[2]], 60),
        ]
    });
    for (name, h) in [("x.shop.example", 0), ("y.z.shop.example", 1), ("shop.example", 2)] {
        assert_eq!(lab.resolve_connect("apps/client", name, 443), Ok(lab.hosts[h].ip(false)), "{name} without policy");
    }
    // `*.` is exactly one label: not the apex, not two labels.
    lab.apply(&[fqdn_policy("{fqdn: {matchPattern: '*.shop.example'}}")]);
    assert!(lab.resolve_connect("apps/client", "x.shop.example", 443).is_ok(), "{}", lab.explain());
    assert!(lab.resolve_connect("apps/client", "y.z.shop.example", 443).is_err(), "two labels");
    assert!(lab.resolve_connect("apps/client", "SHOP.example.", 443).is_err(), "the apex");
    // `**.` is one or more labels, still not the apex.
    lab.apply(&[fqdn_policy("{fqdn: {matchPattern: '**.shop.example'}}")]);
    assert!(lab.resolve_connect("apps/client", "Y.Z.shop.example", 443).is_ok(), "{}", lab.explain());
    assert!(lab.resolve_connect("apps/client", "shop.example", 443).is_err(), "the apex");
}

#[test]
fn a_cname_chain_opens_its_end_for_the_queried_name_only() {
    if !require_root("a_cname_chain_opens_its_end_for_the_queried_name_only") {
        return;
    }
    let mut lab = Lab::new(&["edge", "api"], |h| {
        vec![
            cname("www.bank.example", "edge.cdn.example"),
            addrs("edge.cdn.example", &[&h[0]], 60),
            cname("alias.other.example", "api.bank.example"),
            addrs("api.bank.example", &[&h[1]], 60),
        ]
    });
    assert_eq!(lab.resolve_connect("apps/client", "alias.other.example", 443), Ok(lab.hosts[1].ip(false)));
    lab.apply(&[fqdn_policy("{fqdn: {matchName: www.bank.example}}, {fqdn: {matchName: api.bank.example}}")]);
    // The allowed name's chain ends at the CDN's address: that opens.
    assert_eq!(
        lab.resolve_connect("apps/client", "www.bank.example", 443),
        Ok(lab.hosts[0].ip(false)),
        "{}",
        lab.explain()
    );
    // A name whose chain passes through an allowed one opens nothing of its own.
    assert_eq!(lab.getent("apps/client", "alias.other.example"), Ok(vec![lab.hosts[1].ip(false)]));
    assert!(lab.connect("apps/client", lab.hosts[1].ip(false), 443).is_err(), "{}", lab.explain());
    assert_eq!(lab.resolve_connect("apps/client", "api.bank.example", 443), Ok(lab.hosts[1].ip(false)));
}

#[test]
fn an_expired_address_denies_new_connections_while_the_established_one_lives() {
    if !require_root("an_expired_address_denies_new_connections_while_the_established_one_lives") {
        return;
    }
    let config = NodeConfig {
        agent_args: ["--dns-min-ttl", "0", "--dns-grace", "0"].iter().map(|s| s.to_string()).collect(),
        ..NodeConfig::default()
    };
    let mut lab = Lab::with_config(config, &["bank"], |h| vec![addrs("api.bank.example", &[&h[0]], 2)]);
    lab.apply(&[ward_policy(
        "egress",
        "[{to: [{fqdn: {matchName: api.bank.example}}], ports: [{protocol: TCP, port: 8443}]}, {ports: [{protocol: UDP, port: 53}]}]",
    )]);
    let bank = lab.hosts[0].ip(false);
    let resolved_at = Instant::now();
    assert_eq!(lab.getent("apps/client", "api.bank.example"), Ok(vec![bank]));
    let client = lab.node.pod(&pref("apps/client")).unwrap_or_else(|e| panic!("{e}"));
    let mut echo = ward_lab::echo::Echo::open(lab.hosts[0].netns(), client.netns(), SocketAddr::new(bank, 8443));
    echo.exchange().unwrap_or_else(|e| panic!("the connection opened while the address was live: {e}"));
    // Past TTL 2 s (no minimum, no grace), new connections are refused...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A second connection to the echo server's port: a new flow.
        let fresh = lab.connect("apps/client", bank, 8443);
        if fresh.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "new connections still allowed 10 s after resolving (TTL 2 s)");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(resolved_at.elapsed() >= Duration::from_secs(2), "denied before the TTL ran out");
    // ... under their own reason, while the established connection keeps working.
    let status = lab.node.status().unwrap_or_else(|e| panic!("{e}")).raw;
    assert!(status["reason_counters"]["fqdn_expired"].as_u64() > Some(0), "{status}");
    for _ in 0..3 {
        echo.exchange()
            .unwrap_or_else(|e| panic!("the established connection was cut at expiry: {e}\n{}", lab.explain()));
        std::thread::sleep(Duration::from_millis(700));
    }
    // Resolving again opens it again.
    assert_eq!(lab.resolve_connect("apps/client", "api.bank.example", 8443), Ok(bank));
}

#[test]
fn dns_over_tcp_truncation_edns0_many_records_aaaa_and_nxdomain_work_through_the_proxy() {
    if !require_root("dns_over_tcp_truncation_edns0_many_records_aaaa_and_nxdomain_work_through_the_proxy") {
        return;
    }
    use hickory_proto::rr::RecordType;
    let mut lab = Lab::new(&["bank", "six"], |h| {
        // 40 addresses: more than a 512-byte UDP answer holds.
        let mut many: Vec<IpAddr> = vec![h[0].ip(false)];
        many.extend((100..139).map(|i| IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i))));
        vec![
            Record::Addrs { name: "many.bank.example".into(), addrs: many, ttl: 60 },
            Record::Addrs { name: "v6.bank.example".into(), addrs: vec![h[1].ip(true)], ttl: 60 },
        ]
    });
    assert!(lab.connect("apps/client", lab.hosts[1].ip(true), 443).is_ok(), "IPv6 to the host without policy");
    lab.apply(&[fqdn_policy("{fqdn: {matchPattern: '*.bank.example'}}")]);
    let plain = stub(&lab, "apps/client", "many.bank.example", RecordType::A, false, false);
    assert!(plain.truncated, "a 40-record answer over UDP without EDNS0 is truncated: {plain:?}");
    let tcp = stub(&lab, "apps/client", "many.bank.example", RecordType::A, true, false);
    assert_eq!(tcp.addrs.len(), 40, "{tcp:?}");
    assert!(!tcp.truncated);
    let edns = stub(&lab, "apps/client", "many.bank.example", RecordType::A, false, true);
    assert_eq!(edns.addrs.len(), 40, "EDNS0 (4096 bytes) carries them all: {edns:?}");
    assert!(lab.connect("apps/client", lab.hosts[0].ip(false), 443).is_ok(), "{}", lab.explain());
    // glibc retries a truncated answer over TCP by itself.
    let glibc = lab.getent("apps/client", "many.bank.example").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(glibc.len(), 40, "{glibc:?}");
    // AAAA: the host's IPv6 address opens.
    let six = stub(&lab, "apps/client", "v6.bank.example", RecordType::AAAA, false, false);
    assert_eq!(six.addrs, vec![lab.hosts[1].ip(true)]);
    assert!(lab.connect("apps/client", lab.hosts[1].ip(true), 443).is_ok(), "{}", lab.explain());
    assert!(lab.connect("apps/client", lab.hosts[1].ip(false), 443).is_err(), "the IPv4 address was never answered");
    let nx = stub(&lab, "apps/client", "missing.bank.example", RecordType::A, false, false);
    assert_eq!(nx.rcode, "Non-Existent Domain", "{nx:?}");
    let dns = lab.dns_status();
    assert!(dns["queries_tcp"].as_u64() >= Some(2), "{dns}");
    assert!(dns["learned_addresses"].as_u64() >= Some(41), "{dns}");
}

#[test]
fn dns_rules_refuse_other_names_as_a_flow_record_and_malformed_queries_are_dropped_and_counted() {
    if !require_root("dns_rules_refuse_other_names_as_a_flow_record_and_malformed_queries_are_dropped_and_counted") {
        return;
    }
    use hickory_proto::rr::RecordType;
    let mut lab = Lab::new(&["bank", "ads"], |h| {
        vec![addrs("api.bank.example", &[&h[0]], 60), addrs("tracker.ads.example", &[&h[1]], 60)]
    });
    lab.apply(&[ward_policy(
        "egress",
        "[{to: [{fqdn: {matchPattern: '*.bank.example'}}], ports: [{protocol: TCP, port: 443}]}, \
         {ports: [{protocol: UDP, port: 53, dns: [{matchPattern: '*.bank.example'}]}]}]",
    )]);
    let refused = stub(&lab, "apps/client", "tracker.ads.example", RecordType::A, false, false);
    assert_eq!(refused.rcode, "Query Refused", "{refused:?}");
    assert!(refused.addrs.is_empty());
    assert_eq!(lab.resolve_connect("apps/client", "api.bank.example", 443), Ok(lab.hosts[0].ip(false)));
    let flows =
        ward_lab::agent::call(&lab.node.socket(), &serde_json::json!({"op": "dns_flows"}), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{e}"));
    let list = flows["flows"].as_array().cloned().unwrap_or_default();
    let refusal = list.iter().find(|f| f["qname"] == "tracker.ads.example").unwrap_or_else(|| panic!("{flows}"));
    assert_eq!(refusal["verdict"], "refused_by_policy", "{refusal}");
    assert_eq!(refusal["pod"], "apps/client");
    let allowed = list.iter().find(|f| f["qname"] == "api.bank.example").unwrap_or_else(|| panic!("{flows}"));
    assert_eq!((allowed["verdict"].as_str(), allowed["learned"].as_bool()), (Some("allowed"), Some(true)), "{allowed}");
    assert_eq!(allowed["answers"][0], lab.hosts[0].ip(false).to_string());
    // Garbage to the resolver: no answer, counted, nothing opened.
    let (ns, path) = lab.pod_ns("apps/client");
    let server = lab.dns.addr(false);
    let got = dnslab::in_netns(&ns, &path, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.connect(server).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(700))).map_err(|e| e.to_string())?;
        s.send(b"\x12\x34 definitely not DNS").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        Ok::<_, String>(s.recv(&mut buf).ok())
    })
    .and_then(|r| r)
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, None, "a malformed query gets no answer");
    assert!(lab.dns_status()["malformed_queries"].as_u64() >= Some(1), "{}", lab.explain());
}

#[test]
fn a_thousand_resolve_then_connect_at_once_loops_never_lose_the_first_syn() {
    if !require_root("a_thousand_resolve_then_connect_at_once_loops_never_lose_the_first_syn") {
        return;
    }
    const LOOPS: u16 = 1000;
    // 1,000 names, each its own address never learned before: every loop is a real race
    // between the answer and the first SYN.
    let k = NodeConfig::default().index;
    let base = [100u8, 72 + (k & 0x1f) * 4, 0, 0];
    let ip_of = |i: u16| IpAddr::V4(std::net::Ipv4Addr::new(base[0], base[1], (i / 250) as u8, (i % 250) as u8 + 1));
    let mut lab = Lab::new(&["race"], |_| {
        (0..LOOPS)
            .map(|i| Record::Addrs { name: format!("n{i}.race.example"), addrs: vec![ip_of(i)], ttl: 60 })
            .collect()
    });
    lab.hosts[0].add_range(&lab.node, &format!("{}.{}.0.0/22", base[0], base[1])).unwrap_or_else(|e| panic!("{e}"));
    assert!(lab.connect("apps/client", ip_of(7), 443).is_ok(), "the race host answers on its range");
    lab.apply(&[fqdn_policy("{fqdn: {matchPattern: '*.race.example'}}")]);
    let (ns, path) = lab.pod_ns("apps/client");
    let server = lab.dns.addr(false);
    let started = Instant::now();
    let failures: Vec<String> = dnslab::in_netns(&ns, &path, || {
        (0..LOOPS)
            .filter_map(|i| {
                let name = format!("n{i}.race.example");
                match dnslab::resolve_and_connect(server, &name, 443, 3, Duration::from_secs(1), Duration::from_secs(1))
                {
                    Attempt::Connected(ip) if ip == ip_of(i) => None,
                    other => Some(format!("{name}: {other:?}")),
                }
            })
            .collect()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        failures.is_empty(),
        "{} of {LOOPS} first connections failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        lab.explain()
    );
    eprintln!("{LOOPS} resolve-then-connect loops in {:?}", started.elapsed());
}

#[test]
fn a_sigkill_restart_during_a_resolve_loop_fails_no_resolution() {
    if !require_root("a_sigkill_restart_during_a_resolve_loop_fails_no_resolution") {
        return;
    }
    let mut lab = Lab::new(&["bank"], |h| vec![addrs("api.bank.example", &[&h[0]], 60)]);
    lab.apply(&[fqdn_policy("{fqdn: {matchName: api.bank.example}}")]);
    let bank = lab.hosts[0].ip(false);
    assert_eq!(lab.resolve_connect("apps/client", "api.bank.example", 443), Ok(bank), "{}", lab.explain());
    let (ns, _) = lab.pod_ns("apps/client");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, failed) = std::thread::scope(|s| {
        let resolver = s.spawn(|| {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                match dnslab::getent(&ns, "api.bank.example", false, Duration::from_secs(10)) {
                    Ok(ips) if ips == vec![bank] => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        });
        std::thread::sleep(Duration::from_millis(1500));
        lab.node.kill_agent().unwrap_or_else(|e| panic!("killing the agent: {e}"));
        // No agent: learned addresses stay in force from the pinned map.
        let by_ip = lab.connect("apps/client", bank, 443);
        std::thread::sleep(Duration::from_millis(500));
        lab.node.start_agent().unwrap_or_else(|e| panic!("restarting the agent: {e}"));
        std::thread::sleep(Duration::from_millis(3000));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(by_ip, Ok(()), "a learned address with no agent running");
        resolver.join().unwrap_or_else(|_| panic!("resolver thread"))
    });
    assert!(failed.is_empty(), "{} failed resolutions across the restart ({ok} succeeded): {failed:?}", failed.len());
    assert!(ok >= 10, "only {ok} resolutions in the loop");
    assert_eq!(lab.resolve_connect("apps/client", "api.bank.example", 443), Ok(bank), "after the restart");
}

#[test]
fn a_proxy_that_is_down_fails_closed() {
    if !require_root("a_proxy_that_is_down_fails_closed") {
        return;
    }
    let mut lab = Lab::new(&["bank", "ads"], |h| {
        vec![addrs("api.bank.example", &[&h[0]], 60), addrs("tracker.ads.example", &[&h[1]], 60)]
    });
    lab.apply(&[fqdn_policy("{fqdn: {matchName: api.bank.example}}")]);
    lab.node.kill_agent().unwrap_or_else(|e| panic!("{e}"));
    assert!(dnslab::stop_dns_keeper(&lab.node.state_dir()), "the keeper held the sockets");
    // No socket: the client's DNS fails, nothing opens, the unproxied pod is unaffected.
    assert!(lab.getent("apps/client", "api.bank.example").is_err(), "DNS answered with no proxy");
    assert!(lab.connect("apps/client", lab.hosts[0].ip(false), 443).is_err(), "never resolved: closed");
    assert!(lab.connect("apps/client", lab.hosts[1].ip(false), 443).is_err());
    assert_eq!(lab.getent("apps/other", "tracker.ads.example"), Ok(vec![lab.hosts[1].ip(false)]));
    lab.node.start_agent().unwrap_or_else(|e| panic!("{e}"));
    let status = lab.node.status().unwrap_or_else(|e| panic!("{e}")).raw;
    assert!(status["reason_counters"]["dns_proxy_down"].as_u64() > Some(0), "{status}");
    assert_eq!(lab.resolve_connect("apps/client", "api.bank.example", 443), Ok(lab.hosts[0].ip(false)));
}

/// A resolver that is a pod of the same node: the client's queries to it still go through
/// the DNS proxy (same-node delivery leaves steered DNS to the node), so its `dns` rules hold.
#[test]
fn dns_rules_hold_for_a_resolver_pod_on_the_same_node() {
    if !require_root("dns_rules_hold_for_a_resolver_pod_on_the_same_node") {
        return;
    }
    use hickory_proto::rr::RecordType;
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("starting a lab node: {e}"));
    node.set_namespace("apps", &labels(&[("team", "apps")])).unwrap_or_else(|e| panic!("namespace: {e}"));
    let pod = |name: &str| PodSpec {
        namespace: "apps".into(),
        name: name.into(),
        labels: labels(&[("app", name)]),
        serves: vec![],
    };
    node.create_pods(&[pod("client"), pod("resolver")]).unwrap_or_else(|e| panic!("pods: {e}"));
    let resolver = node.pod(&pref("apps/resolver")).unwrap_or_else(|e| panic!("{e}"));
    let resolver_ip = resolver.ip(ward_lab::Family::IPv4).expect("an IPv4 address");
    let conf = node.dir().join("resolver-pod.dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "no-resolv\nno-hosts\nbind-interfaces\nlisten-address={resolver_ip}\n\
             host-record=api.bank.example,10.200.0.1,60\nhost-record=tracker.ads.example,10.200.0.2,60\n"
        ),
    )
    .expect("dnsmasq config");
    let mut dnsmasq = std::process::Command::new("ip")
        .args(["netns", "exec", resolver.netns().name(), "dnsmasq", "--keep-in-foreground", "--user=root"])
        .arg(format!("--conf-file={}", conf.display()))
        .arg("--pid-file=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dnsmasq (cargo xtask setup installs it)");
    let policy = serde_yaml::from_str::<Value>(
        "apiVersion: policy.ward.dev/v1alpha1\nkind: WardNetworkPolicy\nmetadata: {name: egress, namespace: apps}\n\
         spec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  \
         - {to: [{podSelector: {matchLabels: {app: resolver}}}], \
            ports: [{protocol: UDP, port: 53, dns: [{matchPattern: '*.bank.example'}]}]}\n",
    )
    .expect("policy YAML");
    node.apply(&[policy]).unwrap_or_else(|e| panic!("applying the policy: {e}"));
    let (ns, path) = {
        let c = node.pod(&pref("apps/client")).unwrap_or_else(|e| panic!("{e}"));
        (c.netns().name().to_owned(), c.netns().path().to_owned())
    };
    let server = SocketAddr::new(resolver_ip, 53);
    let ask = |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = dnslab::in_netns(&ns, &path, || {
                dnslab::query(server, name, RecordType::A, false, Duration::from_secs(1))
            });
            match r {
                Ok(Ok(reply)) => return reply,
                other if Instant::now() > deadline => panic!("no answer for {name}: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    };
    let allowed = ask("api.bank.example");
    let refused = ask("tracker.ads.example");
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    assert_eq!(allowed.addrs, vec!["10.200.0.1".parse::<IpAddr>().expect("ip")], "{allowed:?}");
    assert_eq!(refused.rcode, "Query Refused", "the proxy answered, not the resolver pod: {refused:?}");
    assert!(refused.addrs.is_empty(), "{refused:?}");
}
