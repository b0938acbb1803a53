//! Differential test: random NetworkPolicies applied to a live lab node, every ordered pod
//! pair probed for real through the kernel, each outcome compared with what
//! `ward_policy::reference` (the small evaluator written to read like the spec) says. Catches
//! any disagreement between spec, compiler, map layout and eBPF programs on cases nobody
//! wrote by hand. Deterministic: a fixed seed, a bounded number of rounds.

use std::net::IpAddr;

use serde_yaml::Value;
use ward_lab::probe::{DEFAULT_PARALLELISM, probe_all};
use ward_lab::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve, require_root};
use ward_policy::cluster::{Cluster, PodKey};
use ward_policy::model::{Object, parse_documents};
use ward_policy::reference::{Peer, allowed};
use ward_policy::validate::{NamedPort, PodInfo, Protocol as PolicyProtocol};

const ROUNDS: usize = 16;
/// The seed CI uses; `WARD_DIFF_SEED=<n>` explores others.
const SEED: u64 = 0x005e_ed0f_3a2d;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

struct PodDef {
    ns: &'static str,
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    /// Which served port carries the name `http` (per pod, to exercise named ports).
    http_port: u16,
}

const NAMESPACES: [(&str, &str); 2] = [("d1", "red"), ("d2", "blue")];
const PODS: [PodDef; 5] = [
    PodDef { ns: "d1", name: "p0", labels: &[("app", "web"), ("tier", "front")], http_port: 80 },
    PodDef { ns: "d1", name: "p1", labels: &[("app", "db")], http_port: 81 },
    PodDef { ns: "d1", name: "p2", labels: &[("app", "web"), ("tier", "back")], http_port: 81 },
    PodDef { ns: "d2", name: "q0", labels: &[("app", "web")], http_port: 80 },
    PodDef { ns: "d2", name: "q1", labels: &[("app", "db"), ("tier", "front")], http_port: 80 },
];
/// What every probe round measures: (protocol, port, family).
const PROBES: [(Protocol, u16, Family); 4] = [
    (Protocol::Tcp, 80, Family::IPv4),
    (Protocol::Tcp, 81, Family::IPv4),
    (Protocol::Udp, 80, Family::IPv4),
    (Protocol::Tcp, 80, Family::IPv6),
];

fn serves(d: &PodDef) -> Vec<Serve> {
    let other = if d.http_port == 80 { 81 } else { 80 };
    vec![
        Serve::new(d.http_port, Protocol::Tcp, Some("http")),
        Serve::new(other, Protocol::Tcp, Some("other")),
        Serve::new(80, Protocol::Udp, Some("dns-ish")),
    ]
}

fn selector(rng: &mut Rng) -> String {
    rng.pick(&[
        "{}",
        "{matchLabels: {app: web}}",
        "{matchLabels: {app: db}}",
        "{matchExpressions: [{key: tier, operator: Exists}]}",
        "{matchExpressions: [{key: app, operator: NotIn, values: [db]}]}",
        "{matchExpressions: [{key: tier, operator: In, values: [front, back]}]}",
        "{matchExpressions: [{key: tier, operator: DoesNotExist}]}",
    ])
    .to_owned()
}

fn peer(rng: &mut Rng, ips: &[IpAddr]) -> String {
    let ip = ips[rng.below(ips.len())];
    match rng.below(6) {
        0 => format!("{{podSelector: {}}}", selector(rng)),
        1 => format!(
            "{{namespaceSelector: {}}}",
            rng.pick(&["{}", "{matchLabels: {team: red}}", "{matchLabels: {team: blue}}"])
        ),
        2 => format!(
            "{{namespaceSelector: {}, podSelector: {}}}",
            rng.pick(&["{matchLabels: {team: red}}", "{matchLabels: {team: blue}}"]),
            selector(rng)
        ),
        3 => format!("{{ipBlock: {{cidr: '{ip}/32'}}}}"),
        4 => format!("{{ipBlock: {{cidr: 10.0.0.0/8, except: ['{ip}/32']}}}}"),
        _ => "{ipBlock: {cidr: '::/0'}}".to_owned(),
    }
}

fn ports(rng: &mut Rng) -> Option<String> {
    const PORTS: [&str; 7] = [
        "{port: 80}",
        "{port: 81, protocol: TCP}",
        "{port: 80, protocol: UDP}",
        "{port: http}",
        "{port: 79, endPort: 80}",
        "{protocol: UDP}",
        "{port: 81, protocol: SCTP}",
    ];
    match rng.below(3) {
        0 => None,
        _ => {
            let n = 1 + rng.below(2);
            let list: Vec<&str> = (0..n).map(|_| PORTS[rng.below(PORTS.len())]).collect();
            Some(format!("[{}]", list.join(", ")))
        }
    }
}

fn rules(rng: &mut Rng, ips: &[IpAddr], peers_key: &str) -> String {
    let n = rng.below(3);
    let mut out = Vec::new();
    for _ in 0..n {
        let mut fields = Vec::new();
        if rng.below(3) != 0 {
            let k = 1 + rng.below(2);
            let ps: Vec<String> = (0..k).map(|_| peer(rng, ips)).collect();
            fields.push(format!("{peers_key}: [{}]", ps.join(", ")));
        }
        if let Some(p) = ports(rng) {
            fields.push(format!("ports: {p}"));
        }
        out.push(format!("{{{}}}", fields.join(", ")));
    }
    format!("[{}]", out.join(", "))
}

fn random_policy(rng: &mut Rng, name: &str, ips: &[IpAddr]) -> String {
    let ns = NAMESPACES[rng.below(2)].0;
    let types =
        rng.pick(&["", "policyTypes: [Ingress], ", "policyTypes: [Egress], ", "policyTypes: [Ingress, Egress], "]);
    let ingress = rules(rng, ips, "from");
    let egress = rules(rng, ips, "to");
    let mut spec = format!("{{podSelector: {}, {types}", selector(rng));
    if rng.below(4) != 0 {
        spec.push_str(&format!("ingress: {ingress}, "));
    }
    if rng.below(4) != 0 {
        spec.push_str(&format!("egress: {egress}, "));
    }
    spec.push('}');
    format!(
        "{{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: {name}, namespace: {ns}}}, spec: {spec}}}"
    )
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn random_policies_enforced_in_the_kernel_match_the_reference_evaluator() {
    if !require_root("random_policies_enforced_in_the_kernel_match_the_reference_evaluator") {
        return;
    }
    let mut node = Node::start(NodeConfig::default()).unwrap_or_else(|e| panic!("lab node: {e}"));
    for (ns, team) in NAMESPACES {
        node.set_namespace(ns, &labels(&[("team", team)])).unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    }
    let specs: Vec<PodSpec> = PODS
        .iter()
        .map(|d| PodSpec { namespace: d.ns.into(), name: d.name.into(), labels: labels(d.labels), serves: serves(d) })
        .collect();
    node.create_pods(&specs).unwrap_or_else(|e| panic!("pods: {e}"));

    // The same cluster, as the reference evaluator sees it. The reference matches an ipBlock
    // against any address of a pod; a connection uses one address, so each family gets a
    // cluster that knows only the pods' addresses of that family.
    let mut base = Cluster::new();
    for (ns, team) in NAMESPACES {
        base.set_namespace(ns, labels(&[("team", team)]));
    }
    let mut v4_ips = Vec::new();
    for d in &PODS {
        let pod = node.pod(&PodRef::new(d.ns, d.name)).unwrap_or_else(|e| panic!("{e}"));
        let mut ports: Vec<NamedPort> = serves(d)
            .iter()
            .map(|s| NamedPort {
                name: s.name.clone().unwrap_or_default(),
                protocol: match s.protocol {
                    Protocol::Tcp => PolicyProtocol::Tcp,
                    Protocol::Udp => PolicyProtocol::Udp,
                },
                port: s.port,
            })
            .collect();
        ports.sort();
        v4_ips.extend(pod.ips().iter().filter(|i| i.is_ipv4()));
        base.pods
            .insert(PodKey::new(d.ns, d.name), PodInfo { labels: labels(d.labels), ports, ips: pod.ips().to_vec() });
    }

    let seed = std::env::var("WARD_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED);
    let mut rng = Rng(seed | 1);
    let mut checked = 0;
    let mut allowed_seen = 0;
    for round in 0..ROUNDS {
        let n = 1 + rng.below(3);
        let texts: Vec<String> = (0..n).map(|i| random_policy(&mut rng, &format!("r{round}-p{i}"), &v4_ips)).collect();
        let mut clusters = [base.clone(), base.clone()];
        for (cluster, v4) in clusters.iter_mut().zip([true, false]) {
            for info in cluster.pods.values_mut() {
                info.ips.retain(|ip| ip.is_ipv4() == v4);
            }
        }
        let mut objects: Vec<Value> = Vec::new();
        for t in &texts {
            for doc in parse_documents(t, "differential.yaml") {
                let obj = doc.unwrap_or_else(|e| panic!("generated policy does not parse: {e}\n{t}"));
                for cluster in &mut clusters {
                    cluster
                        .apply(&obj, "differential.yaml")
                        .unwrap_or_else(|e| panic!("generated policy invalid: {e}\n{t}"));
                }
                assert!(matches!(obj, Object::NetworkPolicy(_)));
            }
            objects.push(serde_yaml::from_str(t).expect("YAML"));
        }
        node.remove_objects_of_kind("NetworkPolicy").unwrap_or_else(|e| panic!("{e}"));
        node.apply(&objects).unwrap_or_else(|e| panic!("apply round {round}: {e}\n{}", texts.join("\n")));

        let mut cells = Vec::new();
        let mut probes = Vec::new();
        for from in &PODS {
            for to in &PODS {
                if from.name == to.name {
                    continue;
                }
                for (proto, port, family) in PROBES {
                    let (f, t) = (PodRef::new(from.ns, from.name), PodRef::new(to.ns, to.name));
                    probes.push(node.probe_spec(&f, &t, port, proto, family).unwrap_or_else(|e| panic!("{e}")));
                    let p = match proto {
                        Protocol::Tcp => PolicyProtocol::Tcp,
                        Protocol::Udp => PolicyProtocol::Udp,
                    };
                    let cluster = match family {
                        Family::IPv4 => &clusters[0],
                        Family::IPv6 => &clusters[1],
                    };
                    let want = allowed(
                        cluster,
                        Peer::Pod(PodKey::new(from.ns, from.name)),
                        Peer::Pod(PodKey::new(to.ns, to.name)),
                        p,
                        port,
                    );
                    cells.push((
                        format!("{}/{} -> {}/{} {proto}/{port} {family}", from.ns, from.name, to.ns, to.name),
                        want,
                    ));
                }
            }
        }
        let outcomes = probe_all(&probes, DEFAULT_PARALLELISM);
        let wrong: Vec<String> = cells
            .iter()
            .zip(&outcomes)
            .filter(|((_, want), got)| got.connected() != *want)
            .map(|((cell, want), got)| {
                format!("{cell}: reference says {}, kernel: {got}", if *want { "allow" } else { "deny" })
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "seed {seed}, round {round}: {} of {} cells disagree:\n{}\npolicies:\n{}",
            wrong.len(),
            cells.len(),
            wrong.join("\n"),
            texts.join("\n")
        );
        checked += cells.len();
        allowed_seen += cells.iter().filter(|(_, w)| *w).count();
    }
    // The generator must exercise both verdicts, or the comparison proves little.
    assert!(allowed_seen > 0 && allowed_seen < checked, "{allowed_seen} of {checked} cells allowed");
    eprintln!("differential: {checked} cells over {ROUNDS} rounds agree ({allowed_seen} allowed)");
}
