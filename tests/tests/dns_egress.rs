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
    resolv: Vec<ResolvConf>,
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
        Lab { resolv, dns, hosts, node }
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
