//! Deterministic synthetic clusters for the control-plane benchmarks and the lab's load tests:
//! namespaces of teams, deployments of pods spread over nodes, and a realistic mix of
//! NetworkPolicies, all as the Kubernetes objects the agent reads.
//!
//! Every object is kept as the JSON an API server would serve, so both outputs go through
//! the agent's real input path: [`Synthetic::cluster`] deserialises them into
//! `ward_policy::model` types and validates them with `Cluster::apply` (what the datastore
//! does), and [`Synthetic::manifest_files`] writes them as the multi-document YAML the
//! standalone directory datastore loads. The same `(pods, policies, seed)` always gives the
//! same objects in the same order.
//!
//! Shapes: about 100 pods per namespace (at least [`MIN_USER_NAMESPACES`] user namespaces),
//! plus `kube-system` (DNS) and `monitoring` (Prometheus); deployments of 1 to 8 replicas
//! whose pods share `app`, `tier`, `version`, `env` and `pod-template-hash` labels (so one
//! deployment is one label identity); named container ports by tier. Pods are spread round
//! robin over `synth-node-<k>` nodes, about 100 per node, and node `k` owns
//! `10.(k / 256).(k % 256).0/24` (k < 255 × 256, so 10.255.0.0/16 is never used).

use std::collections::BTreeSet;

use serde_json::{Value, json};
use ward_policy::cluster::{Cluster, PodKey};
use ward_policy::model::Object;
use ward_policy::validate::ObjectError;

/// Fewest user namespaces, so that even a small cluster has cross-namespace policies.
pub const MIN_USER_NAMESPACES: usize = 3;
/// Pods per node (and per namespace), as a typical node of 110 pods at most.
const PODS_PER_NODE: usize = 100;
/// Nodes numbered below this keep their /24 below 10.255.0.0/16 (left to the lab).
const MAX_NODES: usize = 255 * 256;
pub const SYSTEM_NAMESPACE: &str = "kube-system";
pub const MONITORING_NAMESPACE: &str = "monitoring";
const TIERS: [&str; 5] = ["web", "api", "db", "cache", "worker"];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TEAMS: usize = 8;

/// splitmix64: small, fast, and good enough to shuffle shapes; no crate needed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant at these sizes).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One deployment: the labels its pods share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub namespace: String,
    pub app: String,
    pub tier: &'static str,
    pub version: &'static str,
    pub replicas: usize,
}

/// One pod and the node it runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthPod {
    pub key: PodKey,
    /// Index of its node: see [`node_name`].
    pub node: usize,
    /// The Pod object as the API server serves it.
    pub object: Value,
}

/// A generated cluster: every object as API JSON, in a fixed order.
#[derive(Clone, Debug, PartialEq)]
pub struct Synthetic {
    pub seed: u64,
    pub nodes: usize,
    pub namespaces: Vec<(String, Value)>,
    pub deployments: Vec<Deployment>,
    pub pods: Vec<SynthPod>,
    /// (namespace, NetworkPolicy object).
    pub policies: Vec<(String, Value)>,
}

/// The name of synthetic node `k`: never the lab's own node, whose pods stay separate.
pub fn node_name(k: usize) -> String {
    format!("synth-node-{k}")
}

/// `pods` pods in deployments, `policies` NetworkPolicies; identical for identical arguments.
pub fn generate(pods: usize, policies: usize, seed: u64) -> Synthetic {
    let mut rng = Rng::new(seed ^ 0x5741_5244); // "WARD": seed 0 is a fine seed too
    let user_ns = (pods / PODS_PER_NODE).max(MIN_USER_NAMESPACES);
    let nodes = pods.div_ceil(PODS_PER_NODE).clamp(2, MAX_NODES);
    assert!(pods <= MAX_NODES * 250, "{pods} pods do not fit 10.0.0.0/8 minus 10.255.0.0/16 in this scheme");

    let mut namespaces = vec![
        (SYSTEM_NAMESPACE.to_owned(), namespace_object(SYSTEM_NAMESPACE, &[("team", "platform")])),
        (
            MONITORING_NAMESPACE.to_owned(),
            namespace_object(MONITORING_NAMESPACE, &[("team", "platform"), ("purpose", "monitoring")]),
        ),
    ];
    let mut user_names = Vec::with_capacity(user_ns);
    for i in 0..user_ns {
        let name = format!("team{}-svc{i}", i % TEAMS);
        let team = format!("team{}", i % TEAMS);
        let env = *rng.pick(&ENVS);
        namespaces.push((name.clone(), namespace_object(&name, &[("team", &team), ("env", env)])));
        user_names.push((name, env));
    }

    // Deployments: DNS and Prometheus first (a few pods, counted in `pods`), then each user
    // namespace gets an equal share of the rest.
    let mut deployments = Vec::new();
    let system = pods.min(2);
    let monitoring = pods.saturating_sub(system).min(2);
    if system > 0 {
        deployments.push(Deployment {
            namespace: SYSTEM_NAMESPACE.into(),
            app: "kube-dns".into(),
            tier: "dns",
            version: "v1",
            replicas: system,
        });
    }
    if monitoring > 0 {
        deployments.push(Deployment {
            namespace: MONITORING_NAMESPACE.into(),
            app: "prometheus".into(),
            tier: "monitoring",
            version: "v1",
            replicas: monitoring,
        });
    }
    let rest = pods - system - monitoring;
    for (i, (ns, _)) in user_names.iter().enumerate() {
        let mut share = rest * (i + 1) / user_ns - rest * i / user_ns;
        let mut j = 0;
        while share > 0 {
            let replicas = (1 + rng.below(8)).min(share);
            share -= replicas;
            deployments.push(Deployment {
                namespace: ns.clone(),
                app: format!("svc{j}"),
                tier: *rng.pick(&TIERS),
                version: *rng.pick(&["v1", "v2", "v3"]),
                replicas,
            });
            j += 1;
        }
    }

    let mut synth_pods = Vec::with_capacity(pods);
    for d in &deployments {
        let env = user_names.iter().find(|(n, _)| *n == d.namespace).map_or("prod", |(_, e)| e);
        let hash = format!("{:010x}", rng.next_u64() & 0xff_ffff_ffff);
        for r in 0..d.replicas {
            let i = synth_pods.len();
            // Round robin, as a spreading scheduler would; slot i / nodes stays below 250.
            let node = i % nodes;
            let slot = i / nodes + 2;
            let ip = format!("10.{}.{}.{slot}", node / 256, node % 256);
            let name = format!("{}-{hash}-{r}", d.app);
            let object = pod_object(d, env, &hash, &name, &ip, node);
            synth_pods.push(SynthPod { key: PodKey::new(&d.namespace, name), node, object });
        }
    }

    let with_pods: Vec<usize> =
        (0..user_names.len()).filter(|i| deployments.iter().any(|d| d.namespace == user_names[*i].0)).collect();
    let mut synth_policies = Vec::with_capacity(policies);
    for j in 0..policies {
        if with_pods.is_empty() {
            break;
        }
        let (ns, _) = &user_names[with_pods[j % with_pods.len()]];
        let apps: Vec<&Deployment> = deployments.iter().filter(|d| d.namespace == *ns).collect();
        // The first two rounds give every namespace what real clusters start with: default
        // deny, then DNS egress; the rest is a weighted mix.
        let round = j / with_pods.len();
        let kind = match round {
            0 => PolicyKind::DefaultDeny,
            1 => PolicyKind::AllowDns,
            _ => PolicyKind::ALL[rng.below(PolicyKind::ALL.len())],
        };
        let object = policy_object(kind, ns, &format!("{}-{j}", kind.name()), &apps, &user_names, &mut rng);
        synth_policies.push((ns.clone(), object));
    }
    // `with_pods` empty means no pods: then there is nothing to police and no policy.

    Synthetic { seed, nodes, namespaces, deployments, pods: synth_pods, policies: synth_policies }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PolicyKind {
    DefaultDeny,
    AllowDns,
    SameApp,
    FromTiers,
    FromMonitoring,
    FromWorld,
    EgressExternal,
    CrossNamespace,
    DbBothWays,
    EgressNamedPort,
}

impl PolicyKind {
    const ALL: [PolicyKind; 8] = [
        PolicyKind::SameApp,
        PolicyKind::FromTiers,
        PolicyKind::FromMonitoring,
        PolicyKind::FromWorld,
        PolicyKind::EgressExternal,
        PolicyKind::CrossNamespace,
        PolicyKind::DbBothWays,
        PolicyKind::EgressNamedPort,
    ];

    fn name(self) -> &'static str {
        match self {
            PolicyKind::DefaultDeny => "default-deny",
            PolicyKind::AllowDns => "allow-dns",
            PolicyKind::SameApp => "allow-same-app",
            PolicyKind::FromTiers => "allow-from-tiers",
            PolicyKind::FromMonitoring => "allow-monitoring",
            PolicyKind::FromWorld => "allow-from-world",
            PolicyKind::EgressExternal => "egress-external",
            PolicyKind::CrossNamespace => "allow-cross-ns",
            PolicyKind::DbBothWays => "db-both-ways",
            PolicyKind::EgressNamedPort => "egress-named-port",
        }
    }
}

fn namespace_object(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| ((*k).into(), json!(v))).collect();
    l.insert("kubernetes.io/metadata.name".into(), json!(name));
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": l}})
}

/// Named container ports by tier: `(name, port, protocol)`.
fn tier_ports(tier: &str) -> &'static [(&'static str, u16, &'static str)] {
    match tier {
        "dns" => &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
        "monitoring" => &[("web", 9090, "TCP")],
        "web" => &[("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
        "api" => &[("http", 8080, "TCP"), ("grpc", 9000, "TCP"), ("metrics", 9090, "TCP")],
        "db" => &[("db", 5432, "TCP"), ("metrics", 9187, "TCP")],
        "cache" => &[("redis", 6379, "TCP")],
        _ => &[("metrics", 9090, "TCP")],
    }
}

fn pod_object(d: &Deployment, env: &str, hash: &str, name: &str, ip: &str, node: usize) -> Value {
    let ports: Vec<Value> = tier_ports(d.tier)
        .iter()
        .map(|(n, p, proto)| json!({"name": n, "containerPort": p, "protocol": proto}))
        .collect();
    let mut labels = json!({
        "app": d.app, "tier": d.tier, "version": d.version, "env": env, "pod-template-hash": hash,
    });
    if d.tier == "dns" {
        labels["k8s-app"] = json!("kube-dns");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": d.namespace, "labels": labels},
        "spec": {"nodeName": node_name(node), "containers": [{"name": d.app, "image": "registry.example/app:1", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn policy_object(
    kind: PolicyKind,
    ns: &str,
    name: &str,
    apps: &[&Deployment],
    user_namespaces: &[(String, &str)],
    rng: &mut Rng,
) -> Value {
    let app = *rng.pick(apps);
    let by_app = json!({"matchLabels": {"app": app.app}});
    let spec = match kind {
        PolicyKind::DefaultDeny => {
            // Half deny ingress only, half both directions (with the DNS policy beside it).
            if rng.below(2) == 0 {
                json!({"podSelector": {}, "policyTypes": ["Ingress"]})
            } else {
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
            }
        }
        PolicyKind::AllowDns => json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": SYSTEM_NAMESPACE}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            }],
        }),
        PolicyKind::SameApp => json!({
            "podSelector": by_app,
            "ingress": [{"from": [{"podSelector": by_app}], "ports": [{"port": named_or(app, "http", 8080)}]}],
        }),
        PolicyKind::FromTiers => json!({
            "podSelector": by_app,
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["web", "api"]},
                    {"key": "version", "operator": "NotIn", "values": ["v1"]},
                ]}}],
                "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 9000, "endPort": 9010}],
            }],
        }),
        PolicyKind::FromMonitoring => json!({
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
            "ingress": [{
                "from": [{
                    "namespaceSelector": {"matchLabels": {"purpose": "monitoring"}},
                    "podSelector": {"matchLabels": {"app": "prometheus"}},
                }],
                "ports": [{"port": "metrics"}],
            }],
        }),
        PolicyKind::FromWorld => json!({
            "podSelector": by_app,
            "ingress": [{
                "from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.0.0/16"]}}],
                "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8443}],
            }],
        }),
        PolicyKind::EgressExternal => {
            // A partner range: one of a few hundred /24s, with one address carved out.
            let n = rng.below(256);
            let host = 1 + rng.below(254);
            json!({
                "podSelector": by_app,
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{"ipBlock": {
                        "cidr": format!("172.16.{n}.0/24"),
                        "except": [format!("172.16.{n}.{host}/32")],
                    }}],
                    "ports": [{"protocol": "TCP", "port": 30000, "endPort": 32767}, {"protocol": "TCP", "port": 443}],
                }],
            })
        }
        PolicyKind::CrossNamespace => {
            let (other, _) = rng.pick(user_namespaces);
            let team = other.split('-').next().unwrap_or("team0");
            json!({
                "podSelector": by_app,
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{
                        "namespaceSelector": {
                            "matchLabels": {"team": team},
                            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}],
                        },
                        "podSelector": {"matchExpressions": [
                            {"key": "tier", "operator": "NotIn", "values": ["db"]},
                            {"key": "version", "operator": "Exists"},
                        ]},
                    }],
                    "ports": [{"protocol": "TCP", "port": 8080}],
                }],
            })
        }
        PolicyKind::DbBothWays => json!({
            "podSelector": {"matchLabels": {"tier": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "api"}}}], "ports": [{"port": "db"}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"protocol": "TCP", "port": 5432}]}],
        }),
        PolicyKind::EgressNamedPort => {
            let target = *rng.pick(apps);
            json!({
                "podSelector": by_app,
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{"podSelector": {"matchLabels": {"app": target.app}}}],
                    "ports": [{"port": "grpc"}, {"port": "http"}],
                }],
            })
        }
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// A port by name when the app serves it, else by number (so both shapes occur).
fn named_or(app: &Deployment, name: &str, number: u16) -> Value {
    if tier_ports(app.tier).iter().any(|(n, _, _)| *n == name) { json!(name) } else { json!(number) }
}

impl Synthetic {
    /// Every object, typed through the agent's model (serde, lenient as for the API).
    pub fn objects(&self) -> Vec<Object> {
        let mut out = Vec::with_capacity(self.namespaces.len() + self.pods.len() + self.policies.len());
        let all = self.namespaces.iter().map(|(_, v)| v);
        let all = all.chain(self.pods.iter().map(|p| &p.object)).chain(self.policies.iter().map(|(_, v)| v));
        out.extend(all.filter_map(to_object));
        out
    }

    /// The cluster and every object the validation rejected (none, by construction; the tests
    /// check it).
    pub fn cluster_checked(&self) -> (Cluster, Vec<ObjectError>) {
        let objects = self.objects();
        let (cluster, errors) = Cluster::from_objects(&objects, "synthetic");
        let lost = self.namespaces.len() + self.pods.len() + self.policies.len() - objects.len();
        debug_assert_eq!(lost, 0, "every generated object deserialises");
        (cluster, errors)
    }

    /// The cluster as the agent's datastore would hand it to the compiler.
    pub fn cluster(&self) -> Cluster {
        self.cluster_checked().0
    }

    /// The pods of synthetic node `k`: what that node's agent compiles policy for.
    pub fn pods_on_node(&self, k: usize) -> BTreeSet<PodKey> {
        self.pods.iter().filter(|p| p.node == k).map(|p| p.key.clone()).collect()
    }

    /// Manifests for the standalone directory datastore: per namespace, one file with the
    /// Namespace and its Pods (`synth_<ns>.yaml`) and one with its NetworkPolicies
    /// (`synth_<ns>_netpol.yaml`, absent when it has none), so a test can change one
    /// namespace's policies by rewriting one file. Every pod runs on a `synth-node-<k>`,
    /// never on `node` (the lab's own node, whose pods the lab writes itself), so all of
    /// these pods are remote to the agent under test.
    pub fn manifest_files(&self, node: &str) -> Vec<(String, String)> {
        assert!(!node.starts_with("synth-node-"), "the lab node {node:?} must not share the synthetic nodes' names");
        let mut out = Vec::new();
        for (ns, ns_object) in &self.namespaces {
            let mut docs = vec![ns_object];
            docs.extend(self.pods.iter().filter(|p| p.key.namespace == *ns).map(|p| &p.object));
            out.push((format!("synth_{ns}.yaml"), yaml_documents(&docs)));
            let pols: Vec<&Value> = self.policies.iter().filter(|(n, _)| n == ns).map(|(_, v)| v).collect();
            if !pols.is_empty() {
                out.push((format!("synth_{ns}_netpol.yaml"), yaml_documents(&pols)));
            }
        }
        out
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

/// One generated (or edited) object, typed through the agent's model by its `kind`: how the
/// benchmarks feed a change to `Cluster::apply`, as the datastore would.
pub fn to_object(v: &Value) -> Option<Object> {
    match v.get("kind")?.as_str()? {
        "Namespace" => typed(v).map(Object::Namespace),
        "Pod" => typed(v).map(Object::Pod),
        "NetworkPolicy" => typed(v).map(Object::NetworkPolicy),
        _ => None,
    }
}

fn yaml_documents(docs: &[&Value]) -> String {
    let mut s = String::new();
    for d in docs {
        s.push_str("---\n");
        // A `Value` built from `json!` always serialises.
        s.push_str(&serde_yaml::to_string(d).unwrap_or_default());
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use ward_policy::validate::Peer;

    use super::*;

    #[test]
    fn same_seed_same_cluster_other_seed_other_cluster() {
        let a = generate(1_000, 100, 7);
        assert_eq!(a, generate(1_000, 100, 7));
        assert_eq!(a.manifest_files("lab"), generate(1_000, 100, 7).manifest_files("lab"));
        assert_ne!(a, generate(1_000, 100, 8));
    }

    #[test]
    fn counts_match_the_request() {
        for (pods, policies) in [(1_000, 100), (250, 1_000), (10, 5), (0, 10)] {
            let s = generate(pods, policies, 1);
            let c = s.cluster();
            assert_eq!(c.pods.len(), pods, "pods of ({pods}, {policies})");
            let want_policies = if pods > 4 { policies } else { 0 };
            assert_eq!(c.policies.len(), want_policies, "policies of ({pods}, {policies})");
            assert!(c.namespaces.len() >= MIN_USER_NAMESPACES + 2);
        }
    }

    #[test]
    fn every_object_validates_through_the_agents_parser() {
        let s = generate(2_000, 500, 3);
        let (_, errors) = s.cluster_checked();
        assert!(errors.is_empty(), "{errors:?}");
        // The YAML the directory datastore reads: parse_documents, then validation.
        let mut objects = Vec::new();
        for (file, text) in s.manifest_files("lab-node") {
            for doc in ward_policy::model::parse_documents(&text, &file) {
                objects.push(doc.unwrap_or_else(|e| panic!("{file}: {e}")));
            }
        }
        let (from_yaml, errors) = Cluster::from_objects(&objects, "yaml");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(from_yaml, s.cluster(), "YAML and typed paths agree");
    }

    #[test]
    fn manifests_put_pods_on_synthetic_nodes_only() {
        let s = generate(500, 50, 4);
        let files = s.manifest_files("lab-node");
        let all: String = files.iter().map(|(_, t)| t.as_str()).collect();
        assert!(!all.contains("nodeName: lab-node"));
        assert_eq!(all.matches("nodeName: synth-node-").count(), 500);
        let names: BTreeSet<&String> = files.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), files.len(), "file names are unique");
        assert!(files.iter().all(|(n, _)| n.starts_with("synth_") && n.ends_with(".yaml")));
        let on_nodes: usize = (0..s.nodes).map(|k| s.pods_on_node(k).len()).sum();
        assert_eq!(on_nodes, 500);
    }

    #[test]
    fn addresses_are_unique_inside_10_slash_8_and_outside_10_255() {
        let s = generate(30_000, 10, 5);
        let c = s.cluster();
        let mut seen = BTreeSet::new();
        for info in c.pods.values() {
            assert_eq!(info.ips.len(), 1);
            let IpAddr::V4(ip) = info.ips[0] else { panic!("IPv4 only") };
            let o = ip.octets();
            assert_eq!(o[0], 10, "{ip}");
            assert_ne!(o[1], 255, "{ip}");
            assert!(seen.insert(ip), "{ip} twice");
            assert_ne!(ip, Ipv4Addr::new(10, o[1], o[2], 0));
        }
    }

    /// Each policy's podSelector picks at least one pod of its namespace, and each of its
    /// pod peers some pod somewhere, except peers that are meant to match nothing here.
    #[test]
    fn every_policy_selects_pods_and_peers_exist() {
        let s = generate(3_000, 2_000, 6);
        let c = s.cluster();
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for (r, p) in &c.policies {
            *kinds.entry(r.name.rsplit_once('-').map_or("", |(k, _)| k).to_owned()).or_default() += 1;
            let selected =
                c.pods.iter().filter(|(k, i)| k.namespace == r.namespace && p.pod_selector.matches(&i.labels));
            // A db-both-ways policy in a namespace without a db tier is the one that may be
            // empty: policies written for every namespace regardless of what runs there.
            if selected.count() == 0 {
                assert!(r.name.starts_with("db-both-ways"), "{r} selects no pod");
            }
            for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
                for peer in rule.peers.iter().flatten() {
                    if let Peer::Pods { namespace_selector, pod_selector } = peer {
                        let any = c.pods.iter().any(|(k, i)| {
                            let ns_ok = match namespace_selector {
                                None => k.namespace == r.namespace,
                                Some(sel) => sel.matches(&c.namespace_labels(&k.namespace)),
                            };
                            ns_ok && pod_selector.as_ref().is_none_or(|sel| sel.matches(&i.labels))
                        });
                        let may_be_empty = r.name.starts_with("db-both-ways") || r.name.starts_with("allow-cross-ns");
                        assert!(any || may_be_empty, "{r}: peer {peer} matches no pod");
                    }
                }
            }
        }
        for k in PolicyKind::ALL.iter().chain(&[PolicyKind::DefaultDeny, PolicyKind::AllowDns]) {
            assert!(kinds.get(k.name()).copied().unwrap_or(0) > 0, "no {} policy in {kinds:?}", k.name());
        }
    }
}
