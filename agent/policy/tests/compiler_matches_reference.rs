//! Property tests: on random small clusters and random valid policies, the compiled maps run
//! through the kernel's own lookup order (`decide_new_flow` on `CompiledTables`) decide
//! every connection exactly as the reference evaluator does.
//!
//! Objects are generated at the model level (as manifests would carry them) and go through
//! validation, so the API defaults (omitted policyTypes, protocol, empty lists) are part of
//! what is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use ward_common::Direction;
use ward_policy::cluster::{Cluster, PodKey};
use ward_policy::compile::{Compiled, compile, diff};
use ward_policy::identity::Identities;
use ward_policy::model::{
    self, IntOrString, IpBlock, LabelSelector, LabelSelectorRequirement, NetworkPolicyEgressRule,
    NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, Object, ObjectMeta,
};
use ward_policy::reference::{self, Peer};
use ward_policy::tables::CompiledTables;
use ward_policy::validate::Protocol;

const NAMESPACES: [&str; 3] = ["ns-x", "ns-y", "ns-z"];
const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];
const PROBE_PORTS: [u16; 7] = [53, 79, 80, 81, 84, 85, 8080];
const HOST_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 1);

fn externals() -> Vec<IpAddr> {
    vec![
        IpAddr::V4(Ipv4Addr::new(10, 0, 5, 5)),
        IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)),
        IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 5, 5)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    ]
}

fn meta(name: &str, namespace: Option<&str>, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta { name: name.into(), namespace: namespace.map(String::from), labels, annotations: BTreeMap::new() }
}

// --- strategies ---------------------------------------------------------------------------

fn label_map(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = BTreeMap<String, String>> + Clone {
    proptest::collection::btree_map(proptest::sample::select(keys), proptest::sample::select(values), 0..=keys.len())
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

const POD_KEYS: &[&str] = &["app", "tier"];
const POD_VALUES: &[&str] = &["a", "b"];
const NS_KEYS: &[&str] = &["env", "team"];
const NS_VALUES: &[&str] = &["prod", "dev"];

fn protocol_name() -> impl Strategy<Value = String> {
    proptest::sample::select(vec!["TCP", "UDP", "SCTP"]).prop_map(String::from)
}

/// A pod: namespace index, labels, named ports per container, and whether it has an
/// address and which family. Addresses are made unique from the pod's index.
#[derive(Clone, Debug)]
struct PodSpec {
    ns: usize,
    labels: BTreeMap<String, String>,
    /// Per container: names unique within it (the API server's rule), but containers often
    /// share a name, which must then stand for each of their ports.
    containers: Vec<Vec<(String, String, i64)>>,
    addr: Option<bool>, // Some(true) = IPv6
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    let container = proptest::collection::btree_map(
        proptest::sample::select(PORT_NAMES.to_vec()),
        (protocol_name(), proptest::sample::select(vec![53i64, 80, 81, 84, 8080])),
        0..=3,
    )
    .prop_map(|m| m.into_iter().map(|(n, (proto, port))| (n.to_string(), proto, port)).collect());
    let containers = proptest::collection::vec(container, 1..=3);
    let addr = prop_oneof![6 => Just(Some(false)), 3 => Just(Some(true)), 1 => Just(None)];
    (0..NAMESPACES.len(), label_map(POD_KEYS, POD_VALUES), containers, addr)
        .prop_map(|(ns, labels, containers, addr)| PodSpec { ns, labels, containers, addr })
}

fn pod_object(i: usize, p: &PodSpec) -> model::Pod {
    let ns = NAMESPACES[p.ns];
    let container = |(ci, ports): (usize, &Vec<(String, String, i64)>)| model::Container {
        name: format!("c{ci}"),
        ports: ports
            .iter()
            .map(|(name, proto, port)| model::ContainerPort {
                name: Some(name.clone()),
                container_port: *port,
                protocol: Some(proto.clone()),
            })
            .collect(),
    };
    let ip = match p.addr {
        Some(false) => Some(Ipv4Addr::new(10, 0, p.ns as u8 + 1, i as u8 + 1).to_string()),
        Some(true) => Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, p.ns as u16 + 1, i as u16 + 1).to_string()),
        None => None,
    };
    model::Pod {
        metadata: meta(&format!("p{i}"), Some(ns), p.labels.clone()),
        spec: model::PodSpec {
            containers: p.containers.iter().enumerate().map(container).collect(),
            host_network: false,
        },
        status: ip.map(|ip| model::PodStatus { phase: Some("Running".into()), pod_ip: Some(ip), pod_ips: vec![] }),
    }
}

fn selector(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = LabelSelector> + Clone {
    let expr = (
        proptest::sample::select(keys),
        proptest::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
        proptest::sample::subsequence(values, 1..=values.len()),
    )
        .prop_map(|(key, op, vals)| LabelSelectorRequirement {
            key: key.to_string(),
            operator: op.to_string(),
            values: if matches!(op, "In" | "NotIn") { vals.iter().map(|v| v.to_string()).collect() } else { vec![] },
        });
    (
        label_map(keys, values).prop_map(|mut m| {
            // At most one matchLabels pair keeps selectors from matching nothing too often.
            while m.len() > 1 {
                m.pop_last();
            }
            m
        }),
        proptest::collection::vec(expr, 0..=1),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector { match_labels, match_expressions })
}

const NS_SELECTOR_KEYS: &[&str] = &["env", "team", "kubernetes.io/metadata.name"];
const NS_SELECTOR_VALUES: &[&str] = &["prod", "dev", "ns-x", "ns-y"];

const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.0.0.0/16",
    "10.0.1.0/24",
    "0.0.0.0/0",
    "10.0.1.3/30",
    "fd00::/8",
    "::/0",
    "fd00::1:0/112",
    "192.168.0.0/16",
];
const EXCEPTS: &[&str] = &[
    "10.0.1.0/24",
    "10.0.2.0/24",
    "10.0.1.1/32",
    "10.0.0.0/12",
    "10.0.5.5/32",
    "fd00::1:0/112",
    "fd00::1:1/128",
    "fd00::5:5/128",
    "192.168.1.0/24",
    "10.0.2.2/31",
];

fn strictly_inside(inner: &str, outer: &str) -> bool {
    match (inner.parse::<IpNet>(), outer.parse::<IpNet>()) {
        (Ok(i), Ok(o)) => {
            let (i, o) = (i.trunc(), o.trunc());
            i.prefix_len() > o.prefix_len()
                && o.contains(&i.network())
                && (i.network().is_ipv4() == o.network().is_ipv4())
        }
        _ => false,
    }
}

fn ip_block() -> impl Strategy<Value = IpBlock> {
    (proptest::sample::select(CIDRS), proptest::sample::subsequence(EXCEPTS, 0..=3)).prop_map(|(cidr, except)| {
        IpBlock {
            cidr: cidr.to_string(),
            except: except.into_iter().filter(|e| strictly_inside(e, cidr)).map(String::from).collect(),
        }
    })
}

fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    let pods = selector(POD_KEYS, POD_VALUES);
    let nss = selector(NS_SELECTOR_KEYS, NS_SELECTOR_VALUES);
    prop_oneof![
        pods.clone().prop_map(|s| NetworkPolicyPeer { pod_selector: Some(s), ..Default::default() }),
        nss.clone().prop_map(|s| NetworkPolicyPeer { namespace_selector: Some(s), ..Default::default() }),
        (pods, nss).prop_map(|(p, n)| NetworkPolicyPeer {
            pod_selector: Some(p),
            namespace_selector: Some(n),
            ..Default::default()
        }),
        ip_block().prop_map(|b| NetworkPolicyPeer { ip_block: Some(b), ..Default::default() }),
    ]
}

fn port() -> impl Strategy<Value = NetworkPolicyPort> {
    let protocol = proptest::option::weighted(0.7, protocol_name());
    let numbered = (
        proptest::sample::select(vec![53i64, 80, 81, 84]),
        proptest::option::of(proptest::sample::select(vec![0i64, 1, 4, 31, 65535])),
    )
        .prop_map(|(p, span)| (Some(IntOrString::Int(p)), span.map(|s| (p + s).min(65535))));
    let named = proptest::sample::select(vec!["http", "dns", "metrics", "nope"])
        .prop_map(|n| (Some(IntOrString::String(n.to_string())), None));
    let spec = prop_oneof![1 => Just((None, None)), 3 => numbered, 2 => named];
    (protocol, spec).prop_map(|(protocol, (port, end_port))| NetworkPolicyPort {
        protocol,
        port,
        end_port,
        http: None,
        dns: None,
    })
}

/// `None`, `Some([])` or a short list: the API's "absent", "empty" and "given".
fn list<T: std::fmt::Debug + Clone>(item: impl Strategy<Value = T>) -> impl Strategy<Value = Option<Vec<T>>> {
    prop_oneof![2 => Just(None), 1 => Just(Some(vec![])), 3 => proptest::collection::vec(item, 1..=2).prop_map(Some)]
}

fn policy(index: usize) -> impl Strategy<Value = model::NetworkPolicy> {
    let types = prop_oneof![
        Just(None),
        Just(Some(vec!["Ingress".to_string()])),
        Just(Some(vec!["Egress".to_string()])),
        Just(Some(vec!["Ingress".to_string(), "Egress".to_string()])),
    ];
    let ingress = list((list(peer()), list(port())).prop_map(|(from, ports)| NetworkPolicyIngressRule { from, ports }));
    let egress = list((list(peer()), list(port())).prop_map(|(to, ports)| NetworkPolicyEgressRule { to, ports }));
    (0..NAMESPACES.len(), selector(POD_KEYS, POD_VALUES), types, ingress, egress).prop_map(
        move |(ns, pod_selector, policy_types, ingress, egress)| model::NetworkPolicy {
            metadata: meta(&format!("np{index}"), Some(NAMESPACES[ns]), BTreeMap::new()),
            spec: model::NetworkPolicySpec { pod_selector, policy_types, ingress, egress, mode: None },
        },
    )
}

fn policies() -> impl Strategy<Value = Vec<model::NetworkPolicy>> {
    (0usize..=4).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>())
}

/// The objects of a cluster, as a manifest would carry them.
fn cluster_objects() -> impl Strategy<Value = Vec<Object>> {
    let namespaces = proptest::collection::vec(proptest::option::weighted(0.8, label_map(NS_KEYS, NS_VALUES)), 3);
    let pods = proptest::collection::vec(pod_spec(), 1..=8);
    (namespaces, pods, policies()).prop_map(|(namespaces, pods, policies)| {
        let mut out = Vec::new();
        // A namespace without a Namespace object still has its implicit name label.
        for (i, labels) in namespaces.into_iter().enumerate() {
            if let Some(labels) = labels {
                out.push(Object::Namespace(model::Namespace { metadata: meta(NAMESPACES[i], None, labels) }));
            }
        }
        out.extend(pods.iter().enumerate().map(|(i, p)| Object::Pod(pod_object(i, p))));
        out.extend(policies.into_iter().map(Object::NetworkPolicy));
        out
    })
}

/// Annotates the policies `audited` picks (in order) and perhaps one namespace (a Namespace
/// object is added for it when there is none) with `policy.ward.dev/mode: audit`.
fn with_audit(mut objects: Vec<Object>, audited: &[bool], namespace: Option<usize>) -> Vec<Object> {
    let audit = |meta: &mut ObjectMeta| {
        meta.annotations.insert(ward_policy::validate::MODE_ANNOTATION.into(), "audit".into());
    };
    let mut policies = 0;
    let mut found = false;
    for o in &mut objects {
        match o {
            Object::NetworkPolicy(np) => {
                if audited.get(policies).copied().unwrap_or(false) {
                    audit(&mut np.metadata);
                }
                policies += 1;
            }
            Object::Namespace(ns) if namespace.is_some_and(|i| ns.metadata.name == NAMESPACES[i]) => {
                audit(&mut ns.metadata);
                found = true;
            }
            _ => {}
        }
    }
    if let (Some(i), false) = (namespace, found) {
        let mut ns = model::Namespace { metadata: meta(NAMESPACES[i], None, BTreeMap::new()) };
        audit(&mut ns.metadata);
        objects.insert(0, Object::Namespace(ns));
    }
    objects
}

fn build(objects: &[Object]) -> Cluster {
    let (mut c, errors) = Cluster::from_objects(objects, "generated");
    assert!(errors.is_empty(), "generated objects must be valid: {errors:?}");
    c.host_addrs = vec![IpAddr::V4(HOST_V4)];
    c
}

// --- the datapath, as the kernel runs it ----------------------------------------------------

fn side(compiled: &Compiled, dir: Direction, subject: &PodKey, peer: IpAddr, proto: Protocol, port: u16) -> bool {
    // A node address here stands for the node itself (the generated clusters' host peer).
    let d = CompiledTables(compiled).decide_for(subject, dir, peer, proto, port, true).expect("a local pod");
    d.reason.verdict() == ward_common::Verdict::Allow
}

fn first_addr(c: &Cluster, p: &Peer) -> Option<IpAddr> {
    reference::addresses(c, p).first().copied()
}

fn datapath_allows(
    c: &Cluster,
    compiled: &Compiled,
    from: &Peer,
    to: &Peer,
    proto: Protocol,
    port: u16,
) -> Option<bool> {
    let (from_addr, to_addr) = (first_addr(c, from)?, first_addr(c, to)?);
    let egress = match from {
        Peer::Pod(k) => side(compiled, Direction::Egress, k, to_addr, proto, port),
        _ => true,
    };
    let ingress = match to {
        Peer::Pod(k) => side(compiled, Direction::Ingress, k, from_addr, proto, port),
        _ => true,
    };
    Some(egress && ingress)
}

/// Every ordered pair the property covers: pod, node or external to pod; pod to external
/// and to the node. Ends without an address cannot send or receive and are skipped.
fn pairs(c: &Cluster) -> Vec<(Peer, Peer)> {
    let pods: Vec<Peer> = c.pods.iter().filter(|(_, i)| !i.ips.is_empty()).map(|(k, _)| Peer::Pod(k.clone())).collect();
    let ext: Vec<Peer> = externals().into_iter().map(Peer::External).collect();
    let mut out = Vec::new();
    for to in &pods {
        for from in pods.iter().chain(ext.iter()).chain([&Peer::Host]) {
            out.push((from.clone(), to.clone()));
        }
    }
    for from in &pods {
        for to in ext.iter().chain([&Peer::Host]) {
            out.push((from.clone(), to.clone()));
        }
    }
    out
}

fn all_local(c: &Cluster) -> BTreeSet<PodKey> {
    c.pods.keys().cloned().collect()
}

/// Cluster pod ranges for the identity-race property: equal to, inside and holding policy
/// prefixes and pods, and holding some of the external addresses (pods not known yet).
const POD_RANGES: &[&str] = &[
    "10.0.1.0/24",
    "10.0.2.0/25",
    "10.0.5.0/24",
    "10.0.0.0/12",
    "10.0.1.2/31",
    "192.168.1.0/24",
    "fd00::5:0/112",
    "fd00::/16",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// The identity race: with cluster pod ranges, every side of every connection is decided
    /// exactly as without them (same verdict, rule and CIDR identity); only a default deny of
    /// a peer in a range that no known pod holds is renamed `IdentityUnknown`.
    #[test]
    fn pod_ranges_change_no_decision_only_the_name_of_a_deny(
        objects in cluster_objects(),
        ranges in proptest::sample::subsequence(POD_RANGES, 1..=4),
    ) {
        use ward_common::Reason;
        use ward_common::identity::ID_UNKNOWN_POD;
        let c = build(&objects);
        let mut ranged = c.clone();
        ranged.pod_cidrs = ranges.iter().map(|r| r.parse().expect("range")).collect();
        let plain = compile(&c, &all_local(&c), &mut Identities::new());
        let with = compile(&ranged, &all_local(&ranged), &mut Identities::new());
        for (from, to) in pairs(&c) {
            let (Some(from_addr), Some(to_addr)) = (first_addr(&c, &from), first_addr(&c, &to)) else { continue };
            for proto in Protocol::ALL {
                for port in PROBE_PORTS {
                    for (dir, subject, peer) in [(Direction::Egress, &from, to_addr), (Direction::Ingress, &to, from_addr)] {
                        let Peer::Pod(k) = subject else { continue };
                        let decide = |m: &Compiled| CompiledTables(m).decide_for(k, dir, peer, proto, port, true).expect("local");
                        let (a, b) = (decide(&plain), decide(&with));
                        let what = format!("{dir:?} {from} -> {to} {proto} {port} ranges {ranges:?}: {a:?} / {b:?}");
                        prop_assert_eq!(a.peer.cidr_identity, b.peer.cidr_identity, "{}", what);
                        prop_assert_eq!((a.rule_id, a.http), (b.rule_id, b.http), "{}", what);
                        let renamed = a.reason == Reason::PolicyDenied && b.peer.identity == ID_UNKNOWN_POD;
                        let want = if renamed { Reason::IdentityUnknown } else { a.reason };
                        prop_assert_eq!(b.reason, want, "{}", what);
                        if b.peer.identity == ID_UNKNOWN_POD {
                            let before = [ward_common::identity::ID_WORLD, ID_UNKNOWN_POD];
                            prop_assert!(before.contains(&a.peer.identity), "{}", what);
                        } else {
                            prop_assert_eq!(a.peer.identity, b.peer.identity, "{}", what);
                        }
                    }
                }
            }
        }
        for (from, to) in pairs(&ranged) {
            let e = ward_policy::explain(&ranged, &with, from.clone(), to.clone(), Protocol::Tcp, 80);
            prop_assert!(!e.egress.reference_disagrees && !e.ingress.reference_disagrees, "{}", e);
        }
    }

    /// The central property: the compiled maps decide every connection as the spec does.
    #[test]
    fn compiled_maps_decide_like_the_reference(objects in cluster_objects()) {
        let c = build(&objects);
        let compiled = compile(&c, &all_local(&c), &mut Identities::new());
        for (from, to) in pairs(&c) {
            for proto in Protocol::ALL {
                for port in PROBE_PORTS {
                    let Some(datapath) = datapath_allows(&c, &compiled, &from, &to, proto, port) else { continue };
                    let spec = reference::allowed(&c, from.clone(), to.clone(), proto, port);
                    prop_assert_eq!(datapath, spec, "{} -> {} {} {}", from, to, proto, port);
                    if from == Peer::Host {
                        prop_assert!(datapath, "the node must always reach {}", to);
                    }
                }
            }
        }
    }

    /// Audit mode: with some policies (and perhaps a whole namespace) audited, every
    /// connection is decided exactly as with those policies removed, and a side says `Audit`
    /// exactly where enforcement allows it and the same cluster with every audited policy
    /// enforced denies it.
    #[test]
    fn audited_policies_change_no_decision_and_audit_marks_what_they_would_deny(
        objects in cluster_objects(),
        audited in proptest::collection::vec(any::<bool>(), 6),
        audited_namespace in proptest::option::of(0..NAMESPACES.len()),
    ) {
        let objects = with_audit(objects, &audited, audited_namespace);
        let c = build(&objects);
        let compiled = compile(&c, &all_local(&c), &mut Identities::new());
        let mut without = c.clone();
        without.policies.retain(|_, p| c.mode(p) == ward_policy::validate::Mode::Enforce);
        let compiled_without = compile(&without, &all_local(&without), &mut Identities::new());
        let all = c.all_enforced();
        for (from, to) in pairs(&c) {
            for proto in Protocol::ALL {
                for port in PROBE_PORTS {
                    let Some(with) = datapath_allows(&c, &compiled, &from, &to, proto, port) else { continue };
                    let plain = datapath_allows(&without, &compiled_without, &from, &to, proto, port);
                    prop_assert_eq!(Some(with), plain, "{} -> {} {} {}", from, to, proto, port);
                    prop_assert_eq!(with, reference::allowed(&without, from.clone(), to.clone(), proto, port));
                    let (Some(from_addr), Some(to_addr)) = (first_addr(&c, &from), first_addr(&c, &to)) else { continue };
                    for (dir, subject, peer) in [(Direction::Egress, &from, to_addr), (Direction::Ingress, &to, from_addr)] {
                        let Peer::Pod(k) = subject else { continue };
                        let d = CompiledTables(&compiled).decide_for(k, dir, peer, proto, port, true).expect("local");
                        let enforced = reference::side(&c, dir, &from, &to, proto, port).allowed;
                        let full = reference::side(&all, dir, &from, &to, proto, port).allowed;
                        prop_assert_eq!(
                            d.reason == ward_common::Reason::Audit,
                            enforced && !full,
                            "{:?} {} -> {} {} {}: {:?}", dir, from, to, proto, port, d.reason
                        );
                    }
                }
            }
        }
    }

    /// `explain` agrees with the reference and with the datapath on every pair.
    #[test]
    fn explain_agrees_with_the_reference(objects in cluster_objects()) {
        let c = build(&objects);
        let compiled = compile(&c, &all_local(&c), &mut Identities::new());
        for (from, to) in pairs(&c) {
            for (proto, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53)] {
                let e = ward_policy::explain(&c, &compiled, from.clone(), to.clone(), proto, port);
                prop_assert_eq!(e.allowed(), reference::allowed(&c, from.clone(), to.clone(), proto, port), "{}", e);
                prop_assert!(!e.egress.reference_disagrees && !e.ingress.reference_disagrees, "{}", e);
            }
        }
    }

    /// Moving between two clusters: the delta turns the old maps into the new ones, identity
    /// numbers of what stays are kept, and compiling is deterministic.
    #[test]
    fn diff_turns_old_maps_into_new_ones(old in cluster_objects(), new_policies in policies()) {
        let old_cluster = build(&old);
        let mut new_objects: Vec<Object> =
            old.iter().filter(|o| !matches!(o, Object::NetworkPolicy(_))).cloned().collect();
        new_objects.extend(new_policies.into_iter().map(Object::NetworkPolicy));
        let new_cluster = build(&new_objects);

        let mut ids = Identities::new();
        let before = compile(&old_cluster, &all_local(&old_cluster), &mut ids);
        let after = compile(&new_cluster, &all_local(&new_cluster), &mut ids);
        prop_assert_eq!(&before.pod_identity, &after.pod_identity, "pods did not change, nor their identities");
        let delta = diff(&before, &after);
        let mut applied = before.clone();
        delta.apply_to(&mut applied);
        prop_assert_eq!(&applied.ipcache, &after.ipcache);
        prop_assert_eq!(&applied.policy, &after.policy);
        prop_assert_eq!(&compile(&new_cluster, &all_local(&new_cluster), &mut ids), &after);

        // The persisted allocator gives a restarted agent the same maps.
        ids.gc(&after.live());
        let saved = serde_json::to_string(&ids).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut restored: Identities = serde_json::from_str(&saved).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&compile(&new_cluster, &all_local(&new_cluster), &mut restored), &after);
    }
}
