//! `ward policy suggest`: a baseline of standard NetworkPolicies that allows exactly the
//! observed flows of one namespace. Pure: flow records in, `networking.k8s.io/v1` objects
//! (as `ward_policy::model` types, so Ward's own parser reads them back) and notes out.
//!
//! Each workload of the namespace (its pods grouped by a stable label set, [`workload`]) gets
//! one policy selecting it with `policyTypes: [Ingress, Egress]`: one ingress rule per observed
//! peer with the ports it was seen on, and egress rules likewise. Peers are named by labels
//! (`podSelector`, plus `namespaceSelector` on `kubernetes.io/metadata.name` for another
//! namespace), addresses that are no known pod by `ipBlock` /32 or /128. Nothing is invented:
//! egress default-deny also denies DNS, so DNS is allowed only where it was observed, and a
//! workload with egress but no observed DNS is named in a note.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;
use ward_policy::model::{
    IntOrString, IpBlock, LabelSelector, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, ObjectMeta,
};

use super::record::{Endpoint, Flow, FlowVerdict, L4};

/// Labels that, when present, name a workload on their own (the first one found wins), as the
/// Kubernetes recommended labels and common charts use them.
const WORKLOAD_KEYS: [&str; 4] = ["app.kubernetes.io/name", "app", "k8s-app", "name"];

/// Labels that differ between pods of one workload (controllers add them per revision or per
/// pod): never part of a selector.
const POD_SPECIFIC: [&str; 7] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
];

/// The namespace label the API server sets on every namespace (Kubernetes 1.21+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The stable label set a pod is selected by: the first of [`WORKLOAD_KEYS`] it has, else all
/// its labels but the [`POD_SPECIFIC`] ones. Empty when nothing is left (the pod cannot be
/// selected apart from its namespace).
pub fn workload(labels: &[String]) -> BTreeMap<String, String> {
    let parsed: BTreeMap<&str, &str> = labels.iter().map(|l| l.split_once('=').unwrap_or((l.as_str(), ""))).collect();
    for key in WORKLOAD_KEYS {
        if let Some(v) = parsed.get(key) {
            return BTreeMap::from([(key.to_owned(), (*v).to_owned())]);
        }
    }
    parsed.into_iter().filter(|(k, _)| !POD_SPECIFIC.contains(k)).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// A peer as a rule names it; ordered, so rules come out sorted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PeerKey {
    /// A workload: its namespace and selector labels.
    Pod(String, BTreeMap<String, String>),
    Address(IpAddr),
}

/// (protocol, port) as NetworkPolicy spells it.
type PortKey = (&'static str, u16);

/// One workload's observed peers, by direction.
#[derive(Default)]
struct Observed {
    pods: BTreeSet<String>,
    ingress: BTreeMap<PeerKey, BTreeSet<PortKey>>,
    egress: BTreeMap<PeerKey, BTreeSet<PortKey>>,
}

/// What `suggest` made: the policies, sorted by name, and what it could not express or
/// wants the reader to know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suggestion {
    pub policies: Vec<NetworkPolicy>,
    pub notes: Vec<String>,
}

/// Which flows count as observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// DROPPED flows count too (the connections someone tried), not only FORWARDED ones.
    pub include_dropped: bool,
}

impl Options {
    /// Whether a flow with `verdict` counts.
    pub fn counts(&self, verdict: FlowVerdict) -> bool {
        verdict == FlowVerdict::Forwarded || (self.include_dropped && verdict == FlowVerdict::Dropped)
    }
}

fn peer_of(e: &Endpoint, ip: IpAddr, notes: &mut BTreeSet<String>) -> Option<PeerKey> {
    if !e.is_pod() {
        return Some(PeerKey::Address(ip.to_canonical()));
    }
    let labels = workload(&e.labels);
    if labels.is_empty() {
        notes.insert(format!(
            "pod {}/{} has no labels to select it by; its flows are left out",
            e.namespace, e.pod_name
        ));
        return None;
    }
    Some(PeerKey::Pod(e.namespace.clone(), labels))
}

/// The NetworkPolicies that allow exactly the observed flows of `namespace`.
pub fn suggest<'a>(flows: impl IntoIterator<Item = &'a Flow>, namespace: &str, opts: Options) -> Suggestion {
    let mut notes = BTreeSet::new();
    let mut workloads: BTreeMap<BTreeMap<String, String>, Observed> = BTreeMap::new();
    for f in flows {
        // A reply belongs to the connection its request opened; it is no connection of its own.
        if f.is_reply || !opts.counts(f.verdict) {
            continue;
        }
        let port: PortKey = match &f.l4 {
            L4::Tcp(t) => ("TCP", t.destination_port),
            L4::Udp(p) => ("UDP", p.destination_port),
            L4::Sctp(p) => ("SCTP", p.destination_port),
            other => {
                let (proto, _, _) = other.parts();
                // NetworkPolicy has no ICMP; a rule without ports would allow every protocol.
                notes.insert(format!("{proto} flows cannot be expressed in a NetworkPolicy and are left out"));
                continue;
            }
        };
        if port.1 == 0 {
            continue;
        }
        let (src, dst) = (&f.source, &f.destination);
        let (Some(src_peer), Some(dst_peer)) =
            (peer_of(src, f.ip.source, &mut notes), peer_of(dst, f.ip.destination, &mut notes))
        else {
            continue;
        };
        // The destination's ingress and the source's egress, for the ends in the namespace.
        for (subject, pod, peer, ingress) in
            [(&dst_peer, &dst.pod_name, &src_peer, true), (&src_peer, &src.pod_name, &dst_peer, false)]
        {
            if let PeerKey::Pod(ns, labels) = subject
                && ns == namespace
            {
                let w = workloads.entry(labels.clone()).or_default();
                w.pods.insert(pod.clone());
                let side = if ingress { &mut w.ingress } else { &mut w.egress };
                side.entry(peer.clone()).or_default().insert(port);
            }
        }
    }
    let mut names = BTreeSet::new();
    let mut policies = Vec::new();
    for (labels, obs) in &workloads {
        let name = unique_name(&policy_name(labels), &mut names);
        if !obs.egress.values().flatten().any(|(_, p)| *p == 53) {
            notes.insert(format!(
                "{namespace}/{name}: no DNS flow (port 53) was observed from {}; its egress allows no DNS",
                obs.pods.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let ingress = rules(&obs.ingress, namespace, |from, ports| NetworkPolicyIngressRule { from, ports });
        let egress = rules(&obs.egress, namespace, |to, ports| NetworkPolicyEgressRule { to, ports });
        policies.push(NetworkPolicy {
            metadata: ObjectMeta {
                name,
                namespace: Some(namespace.to_owned()),
                labels: BTreeMap::from([("app.kubernetes.io/managed-by".to_owned(), "ward-policy-suggest".to_owned())]),
                ..ObjectMeta::default()
            },
            spec: NetworkPolicySpec {
                pod_selector: LabelSelector { match_labels: labels.clone(), ..LabelSelector::default() },
                policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
                ingress: Some(ingress),
                egress: Some(egress),
                mode: None,
            },
        });
    }
    policies.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Suggestion { policies, notes: notes.into_iter().collect() }
}

/// One rule per observed peer, allowing its observed ports; `make` builds the direction's type.
fn rules<R>(
    observed: &BTreeMap<PeerKey, BTreeSet<PortKey>>,
    namespace: &str,
    make: impl Fn(Option<Vec<NetworkPolicyPeer>>, Option<Vec<NetworkPolicyPort>>) -> R,
) -> Vec<R> {
    observed.iter().map(|(peer, ports)| make(Some(vec![peer_spec(peer, namespace)]), Some(ports_spec(ports)))).collect()
}

fn peer_spec(peer: &PeerKey, namespace: &str) -> NetworkPolicyPeer {
    match peer {
        PeerKey::Pod(ns, labels) => NetworkPolicyPeer {
            pod_selector: Some(LabelSelector { match_labels: labels.clone(), ..LabelSelector::default() }),
            namespace_selector: (ns != namespace).then(|| LabelSelector {
                match_labels: BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), ns.clone())]),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        },
        PeerKey::Address(ip) => {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            NetworkPolicyPeer {
                ip_block: Some(IpBlock { cidr: format!("{ip}/{len}"), except: Vec::new() }),
                ..NetworkPolicyPeer::default()
            }
        }
    }
}

fn ports_spec(ports: &BTreeSet<PortKey>) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|(proto, port)| NetworkPolicyPort {
            protocol: Some((*proto).to_owned()),
            port: Some(IntOrString::Int(i64::from(*port))),
            ..NetworkPolicyPort::default()
        })
        .collect()
}

/// `suggested-` and the selector's values, as a DNS-1123 name (lower-case alphanumerics and
/// `-`, at most 63 characters so it fits a label too).
fn policy_name(labels: &BTreeMap<String, String>) -> String {
    let mut s = String::from("suggested");
    for v in labels.values() {
        s.push('-');
        s.extend(v.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }));
    }
    let mut s: String = s.chars().take(56).collect();
    while s.ends_with('-') {
        s.pop();
    }
    s
}

/// `base`, or `base-2`, `base-3`... when two selectors sanitise to one name.
fn unique_name(base: &str, taken: &mut BTreeSet<String>) -> String {
    let mut name = base.to_owned();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// A NetworkPolicy with its `apiVersion` and `kind`, as a manifest spells it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a ObjectMeta,
    spec: &'a NetworkPolicySpec,
}

/// The suggestion as a multi-document YAML manifest, its notes as comments at the top.
pub fn to_yaml(s: &Suggestion) -> Result<String, serde_yaml::Error> {
    let mut out = String::from("# Suggested by `ward policy suggest` from observed flows: review before applying.\n");
    for n in &s.notes {
        out.push_str(&format!("# note: {n}\n"));
    }
    for p in &s.policies {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&Manifest {
            api_version: "networking.k8s.io/v1",
            kind: "NetworkPolicy",
            metadata: &p.metadata,
            spec: &p.spec,
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::filter::tests::flow;
    use crate::flows::record::{Ports, TrafficDirection};
    use FlowVerdict::*;
    use TrafficDirection::*;
    use std::collections::BTreeSet;
    use ward_policy::cluster::{Cluster, PodKey};
    use ward_policy::model::{Object, parse_documents};
    use ward_policy::reference::{Peer, allowed};
    use ward_policy::{Identities, Protocol};

    /// A flow whose ends carry `labels` (comma-separated `k=v`) in place of `app=<pod>`.
    fn labelled(from: (&str, &str), to: (&str, &str), port: u16) -> Flow {
        let mut f = flow(from.0, to.0, port, Forwarded, Ingress);
        let split = |s: &str| s.split(',').filter(|l| !l.is_empty()).map(str::to_owned).collect();
        f.source.labels = split(from.1);
        f.destination.labels = split(to.1);
        f
    }

    /// Pods a..d in `shop` (10.1.0.1-4, `app=<name>`), `mon/prom` (10.2.0.1), the
    /// suggested policies parsed back through Ward's parser into one cluster.
    fn cluster_with(yaml: &str) -> Cluster {
        let mut text = String::new();
        for (ns, name, ip) in [
            ("shop", "a", "10.1.0.1"),
            ("shop", "b", "10.1.0.2"),
            ("shop", "c", "10.1.0.3"),
            ("shop", "d", "10.1.0.4"),
            ("mon", "prom", "10.2.0.1"),
        ] {
            text.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nstatus: {{podIP: {ip}}}\n---\n"
            ));
        }
        for ns in ["shop", "mon"] {
            text.push_str(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{kubernetes.io/metadata.name: {ns}}}}}\n---\n"
            ));
        }
        text.push_str(yaml);
        let objects: Vec<Object> =
            parse_documents(&text, "t").into_iter().collect::<Result<_, _>>().expect("every document parses");
        let (cluster, errors) = Cluster::from_objects(&objects, "t");
        assert!(errors.is_empty(), "Ward's validation rejects the suggestion: {errors:?}\n{yaml}");
        cluster
    }

    fn pod(s: &str) -> Peer {
        match s.split_once('/') {
            Some((ns, name)) => Peer::Pod(PodKey::new(ns, name)),
            None => Peer::External(s.parse().expect("address")),
        }
    }

    #[test]
    fn workloads_are_grouped_by_stable_labels() {
        let l = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        let m = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>()
        };
        assert_eq!(workload(&l("app=web,pod-template-hash=5d9f,tier=fe")), m(&[("app", "web")]));
        assert_eq!(
            workload(&l("app=x,app.kubernetes.io/name=shop-web")),
            m(&[("app.kubernetes.io/name", "shop-web")]),
            "the recommended label wins"
        );
        assert_eq!(
            workload(&l("tier=fe,pod-template-hash=1,controller-revision-hash=2,role=cache")),
            m(&[("role", "cache"), ("tier", "fe")]),
            "no workload label: everything but the per-pod ones"
        );
        assert!(workload(&l("pod-template-hash=1")).is_empty());
        // Two replicas of one workload make one policy naming both pods' port.
        let flows = [
            labelled(("shop/a", "app=a"), ("shop/web-1", "app=web,pod-template-hash=1"), 80),
            labelled(("shop/a", "app=a"), ("shop/web-2", "app=web,pod-template-hash=2"), 8080),
        ];
        let s = suggest(&flows, "shop", Options::default());
        let names: Vec<&str> = s.policies.iter().map(|p| p.metadata.name.as_str()).collect();
        assert_eq!(names, ["suggested-a", "suggested-web"]);
        let web = &s.policies[1];
        assert_eq!(web.spec.pod_selector.match_labels, m(&[("app", "web")]));
        let ingress = web.spec.ingress.as_ref().expect("ingress");
        assert_eq!(ingress.len(), 1, "one peer, one rule");
        let ports: Vec<_> = ingress[0].ports.iter().flatten().map(|p| p.port.clone()).collect();
        assert_eq!(ports, [Some(IntOrString::Int(80)), Some(IntOrString::Int(8080))]);
        assert_eq!(web.spec.egress.as_deref(), Some(&[][..]), "no observed egress: egress denied");
    }

    #[test]
    fn the_suggestion_allows_exactly_the_observed_flows() {
        let mut dns = flow("shop/b", "mon/prom", 53, Forwarded, Egress);
        dns.l4 = L4::Udp(Ports { source_port: 40000, destination_port: 53 });
        dns.ip.destination = "10.2.0.1".parse().expect("ip");
        let mut from_world = flow("192.0.2.9", "shop/a", 443, Forwarded, Ingress);
        from_world.ip.destination = "10.1.0.1".parse().expect("ip");
        let mut b_to_d = flow("shop/b", "shop/d", 5432, Forwarded, Egress);
        b_to_d.ip.destination = "10.1.0.4".parse().expect("ip");
        let mut c_to_b = flow("shop/c", "shop/b", 80, Forwarded, Ingress);
        c_to_b.ip.source = "10.1.0.3".parse().expect("ip");
        let flows = vec![
            flow("shop/a", "shop/b", 80, Forwarded, Ingress),
            // The same connection seen at the other end: no second rule.
            flow("shop/a", "shop/b", 80, Forwarded, Egress),
            c_to_b,
            b_to_d,
            dns,
            from_world,
            flow("shop/d", "2001:db8::7", 443, Forwarded, Egress),
            // Not counted by default.
            flow("shop/d", "shop/a", 22, Dropped, Ingress),
        ];
        let s = suggest(&flows, "shop", Options::default());
        let yaml = to_yaml(&s).expect("yaml");
        let cluster = cluster_with(&yaml);
        assert_eq!(cluster.policies_selecting(&PodKey::new("shop", "a")).len(), 1);
        let ok = |from: &str, to: &str, proto, port| allowed(&cluster, pod(from), pod(to), proto, port);
        use Protocol::*;
        for (from, to, proto, port) in [
            ("shop/a", "shop/b", Tcp, 80),
            ("shop/c", "shop/b", Tcp, 80),
            ("shop/b", "shop/d", Tcp, 5432),
            ("shop/b", "mon/prom", Udp, 53),
            ("192.0.2.9", "shop/a", Tcp, 443),
            ("shop/d", "2001:db8::7", Tcp, 443),
        ] {
            assert!(ok(from, to, proto, port), "observed {from} -> {to} {proto:?}/{port} must stay allowed\n{yaml}");
        }
        for (from, to, proto, port) in [
            ("shop/a", "shop/d", Tcp, 5432),
            ("shop/b", "shop/a", Tcp, 80),
            ("shop/d", "shop/b", Tcp, 80),
            ("shop/a", "shop/b", Tcp, 81),
            ("shop/a", "shop/b", Udp, 80),
            ("shop/b", "mon/prom", Tcp, 53),
            ("mon/prom", "shop/b", Tcp, 80),
            ("192.0.2.10", "shop/a", Tcp, 443),
            ("shop/d", "2001:db8::8", Tcp, 443),
            ("shop/d", "shop/a", Tcp, 22),
        ] {
            assert!(!ok(from, to, proto, port), "unobserved {from} -> {to} {proto:?}/{port} must be denied\n{yaml}");
        }
        // It compiles, too.
        let local: BTreeSet<PodKey> = ["a", "b", "c", "d"].iter().map(|n| PodKey::new("shop", *n)).collect();
        let compiled = ward_policy::compile::compile(&cluster, &local, &mut Identities::new());
        assert!(!compiled.rules.is_empty());
        // Peers are named by labels, addresses only outside the cluster's pods.
        assert!(yaml.contains("cidr: 192.0.2.9/32") && yaml.contains("cidr: 2001:db8::7/128"), "{yaml}");
        assert!(!yaml.contains("10.1.0."), "pods by labels, never by address\n{yaml}");
        assert!(yaml.contains("kubernetes.io/metadata.name: mon"), "{yaml}");
        // DNS: b's was observed and kept; the others are told they have none.
        assert!(s.notes.iter().any(|n| n.contains("suggested-a") && n.contains("DNS")), "{:?}", s.notes);
        assert!(!s.notes.iter().any(|n| n.contains("suggested-b:")), "{:?}", s.notes);
    }

    #[test]
    fn dropped_flows_count_only_when_asked() {
        let flows = [flow("shop/d", "shop/a", 22, Dropped, Ingress)];
        assert!(suggest(&flows, "shop", Options::default()).policies.is_empty());
        let s = suggest(&flows, "shop", Options { include_dropped: true });
        let cluster = cluster_with(&to_yaml(&s).expect("yaml"));
        assert!(allowed(&cluster, pod("shop/d"), pod("shop/a"), Protocol::Tcp, 22));
        assert!(!allowed(&cluster, pod("shop/d"), pod("shop/a"), Protocol::Tcp, 23));
    }

    #[test]
    fn other_namespaces_icmp_and_unlabelled_pods_are_left_out() {
        let mut icmp = flow("shop/a", "shop/b", 0, Forwarded, Ingress);
        icmp.l4 = L4::Icmpv4(Default::default());
        let flows = [
            flow("mon/prom", "mon/x", 80, Forwarded, Ingress),
            icmp,
            labelled(("shop/a", ""), ("shop/b", "app=b"), 80),
        ];
        let s = suggest(&flows, "shop", Options::default());
        assert!(s.policies.is_empty(), "{:?}", s.policies);
        assert!(s.notes.iter().any(|n| n.contains("ICMPv4")), "{:?}", s.notes);
        assert!(s.notes.iter().any(|n| n.contains("shop/a has no labels")), "{:?}", s.notes);
    }

    #[test]
    fn output_is_deterministic() {
        let flows = vec![
            flow("shop/a", "shop/b", 80, Forwarded, Ingress),
            flow("shop/c", "shop/b", 443, Forwarded, Ingress),
            flow("shop/c", "shop/b", 80, Forwarded, Ingress),
            flow("shop/b", "10.9.0.1", 5432, Forwarded, Egress),
            flow("shop/b", "10.9.0.0", 5432, Forwarded, Egress),
        ];
        let mut reversed = flows.clone();
        reversed.reverse();
        let one = to_yaml(&suggest(&flows, "shop", Options::default())).expect("yaml");
        let two = to_yaml(&suggest(&reversed, "shop", Options::default())).expect("yaml");
        assert_eq!(one, two);
        let b = &one[one.find("name: suggested-b").expect("b's policy")..];
        let b = &b[..b.find("---").unwrap_or(b.len())];
        assert!(b.find("app: a").expect("a") < b.find("app: c").expect("c"), "peers sorted\n{one}");
        assert!(one.find("10.9.0.0/32").expect("0") < one.find("10.9.0.1/32").expect("1"), "{one}");
    }

    #[test]
    fn names_are_dns_labels_and_unique() {
        let mut taken = BTreeSet::new();
        let labels = BTreeMap::from([("app".to_owned(), "Web_API.v2".to_owned())]);
        assert_eq!(unique_name(&policy_name(&labels), &mut taken), "suggested-web-api-v2");
        let clash = BTreeMap::from([("app".to_owned(), "web-api-v2".to_owned())]);
        assert_eq!(unique_name(&policy_name(&clash), &mut taken), "suggested-web-api-v2-2");
        let long = BTreeMap::from([("app".to_owned(), "x".repeat(100))]);
        assert!(policy_name(&long).len() <= 56);
    }
}
