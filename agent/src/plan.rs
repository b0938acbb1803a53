//! The pure half of a reconcile pass: from the datastore's snapshot and the local endpoints
//! to the cluster view the compiler reads, the compile, the map contents the kernel should
//! hold and the writes that get it there. Touches neither the kernel nor the disk; the owner
//! task (`daemon::reconcile`) applies the writes, and the benchmark (`ward-bench`) runs the
//! same functions with the kernel replaced by `MirrorDelta::apply_to`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ward_common::{
    addr::v4_mapped,
    identity::{ID_UNKNOWN_POD, ID_WORLD},
    maps::{EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EndpointInfo, IpcacheKey, IpcacheValue},
};
use ward_policy::cluster::{Cluster, PodKey, PolicyRef};
use ward_policy::identity::Identities;
use ward_policy::selector::Labels;
use ward_policy::validate::{NAMESPACE_NAME_LABEL, PodInfo, Policy};

use crate::daemon::registry::LocalEndpoint;
use crate::datapath::{MirrorContents, MirrorDelta};
use crate::datastore::{NodeInfo, Snapshot};

pub use ward_policy::compile::Compiled;

pub fn pod_key(namespace: &str, name: &str) -> PodKey {
    PodKey { namespace: namespace.to_owned(), name: name.to_owned() }
}

/// What a pass reads from the datastore: a [`Snapshot`] in the agent, a `Cluster` in the
/// benchmark and tests.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub namespaces: &'a BTreeMap<String, Labels>,
    /// Namespaces whose policies are all audited.
    pub audited_namespaces: &'a BTreeSet<String>,
    pub pods: &'a BTreeMap<PodKey, PodInfo>,
    pub policies: &'a BTreeMap<PolicyRef, Policy>,
}

impl<'a> From<&'a Snapshot> for Source<'a> {
    fn from(s: &'a Snapshot) -> Self {
        Source {
            namespaces: &s.namespaces,
            audited_namespaces: &s.audited_namespaces,
            pods: &s.pods,
            policies: &s.policies,
        }
    }
}

impl<'a> From<&'a Cluster> for Source<'a> {
    fn from(c: &'a Cluster) -> Self {
        Source {
            namespaces: &c.namespaces,
            audited_namespaces: &c.audited_namespaces,
            pods: &c.pods,
            policies: &c.policies,
        }
    }
}

/// Brings `view`, the cluster as the compiler sees it (kept between passes), up to date with
/// the datastore: local pods get the addresses their CNI ADD gave them, every namespace of a
/// pod exists, and every namespace carries `kubernetes.io/metadata.name`. Only what changed
/// is copied, so a pass after one relabel copies one pod rather than the whole snapshot.
pub fn update_view(view: &mut Cluster, snap: Source<'_>, local: &[LocalEndpoint], host_addrs: &[IpAddr]) {
    // A later registration of the same pod wins, as when the addresses were assigned in turn.
    let cni_ips: BTreeMap<(&str, &str), &[IpAddr]> = local
        .iter()
        .map(|ep| ((ep.reg.pod_namespace.as_str(), ep.reg.pod_name.as_str()), ep.reg.ips.as_slice()))
        .collect();
    let mut pod_namespaces: BTreeSet<&str> = BTreeSet::new();
    let mut same_keys = view.pods.len() == snap.pods.len();
    if same_keys {
        // The common case, no pod added or removed: one walk over both maps in key order,
        // without a lookup per pod.
        for ((key, cur), (skey, info)) in view.pods.iter_mut().zip(snap.pods) {
            if key != skey {
                same_keys = false;
                break;
            }
            sync_pod(cur, info, cni_ips.get(&(key.namespace.as_str(), key.name.as_str())).copied());
        }
    }
    if !same_keys {
        view.pods.retain(|k, _| snap.pods.contains_key(k));
        for (key, info) in snap.pods {
            let ips = cni_ips.get(&(key.namespace.as_str(), key.name.as_str())).copied();
            match view.pods.get_mut(key) {
                Some(cur) => sync_pod(cur, info, ips),
                None => {
                    let ips = ips.unwrap_or(&info.ips).to_vec();
                    view.pods
                        .insert(key.clone(), PodInfo { labels: info.labels.clone(), ports: info.ports.clone(), ips });
                }
            }
        }
    }
    for key in snap.pods.keys() {
        if pod_namespaces.last().copied() != Some(key.namespace.as_str()) {
            pod_namespaces.insert(&key.namespace);
        }
    }
    view.namespaces.retain(|name, _| snap.namespaces.contains_key(name) || pod_namespaces.contains(name.as_str()));
    let names = snap.namespaces.keys().map(String::as_str).chain(pod_namespaces.iter().copied());
    for name in names {
        // The API server sets this label on every namespace.
        let mut labels = snap.namespaces.get(name).cloned().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.to_owned());
        if view.namespaces.get(name) != Some(&labels) {
            view.namespaces.insert(name.to_owned(), labels);
        }
    }
    if view.audited_namespaces != *snap.audited_namespaces {
        view.audited_namespaces = snap.audited_namespaces.clone();
    }
    view.policies.retain(|k, _| snap.policies.contains_key(k));
    for (key, p) in snap.policies {
        if view.policies.get(key) != Some(p) {
            view.policies.insert(key.clone(), p.clone());
        }
    }
    if view.host_addrs != host_addrs {
        view.host_addrs = host_addrs.to_vec();
    }
}

/// The cluster pod ranges: every Node's `spec.podCIDRs` and this node's own (`--pod-cidr`),
/// sorted, once each.
pub fn pod_ranges(nodes: &BTreeMap<String, NodeInfo>, own: &[ipnet::IpNet]) -> Vec<ipnet::IpNet> {
    let all: BTreeSet<ipnet::IpNet> =
        nodes.values().flat_map(|n| n.pod_cidrs.iter()).chain(own).map(ipnet::IpNet::trunc).collect();
    all.into_iter().collect()
}

fn addr_slots(ips: &[IpAddr]) -> ([u8; 16], [u8; 16]) {
    let mut v4 = [0u8; 16];
    let mut v6 = [0u8; 16];
    for ip in ips {
        match ip {
            IpAddr::V4(a) => v4 = v4_mapped(a.octets()),
            IpAddr::V6(a) => v6 = a.octets(),
        }
    }
    (v4, v6)
}

pub fn host_prefix(ip: &IpAddr) -> IpcacheKey {
    match ip {
        IpAddr::V4(a) => IpcacheKey { prefixlen: 128, addr: v4_mapped(a.octets()) },
        IpAddr::V6(a) => IpcacheKey { prefixlen: 128, addr: a.octets() },
    }
}

/// Makes `cur` the snapshot's `info`, with the CNI's addresses if the pod is local.
fn sync_pod(cur: &mut PodInfo, info: &PodInfo, cni_ips: Option<&[IpAddr]>) {
    let ips = cni_ips.unwrap_or(&info.ips);
    if cur.labels != info.labels {
        cur.labels.clone_from(&info.labels);
    }
    if cur.ports != info.ports {
        cur.ports.clone_from(&info.ports);
    }
    if cur.ips != ips {
        cur.ips = ips.to_vec();
    }
}

/// The three user-owned maps as they should be.
pub fn desired_maps(compiled: &Compiled, local: &[LocalEndpoint]) -> MirrorContents {
    let mut desired = MirrorContents {
        endpoints: BTreeMap::new(),
        ipcache: compiled.ipcache.clone(),
        policy: compiled.policy.clone(),
    };
    for ep in local {
        let (addr_v4, addr_v6) = addr_slots(&ep.reg.ips);
        let (identity, flags) = match compiled.pod_identity.get(&pod_key(&ep.reg.pod_namespace, &ep.reg.pod_name)) {
            Some(id) => (*id, compiled.isolation.get(id).copied().unwrap_or(0)),
            // A pod the datastore does not know (yet): nothing in or out until it does.
            None => {
                for ip in &ep.reg.ips {
                    desired
                        .ipcache
                        .entry(host_prefix(ip))
                        .or_insert(IpcacheValue { identity: ID_UNKNOWN_POD, cidr_identity: ID_WORLD });
                }
                (ID_UNKNOWN_POD, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS)
            }
        };
        desired
            .endpoints
            .insert(ep.reg.host_ifindex, EndpointInfo { ep_id: ep.ep_id, identity, flags, _pad: 0, addr_v4, addr_v6 });
    }
    desired
}

/// How long each stage of [`plan`] took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PlanTimings {
    /// Building the compiler's view of the cluster from the datastore and the endpoints.
    pub cluster: Duration,
    pub compile: Duration,
    /// Desired maps and the writes against the mirror.
    pub diff: Duration,
}

/// The pure half of a pass: what the kernel maps should hold and the writes that get them there.
pub struct Plan {
    pub compiled: Compiled,
    pub desired: MirrorContents,
    /// From the mirror to `desired`.
    pub delta: MirrorDelta,
    pub timings: PlanTimings,
}

/// Updates `view` from `snap` (see [`update_view`]), compiles it for the local
/// endpoints (allocating identities in `ids`) and diffs the result against `mirror`, the maps
/// as loaded. Touches neither the kernel nor the disk.
pub fn plan(
    view: &mut Cluster,
    snap: Source<'_>,
    local: &[LocalEndpoint],
    host_addrs: &[IpAddr],
    ids: &mut Identities,
    mirror: &MirrorContents,
) -> Plan {
    let t0 = Instant::now();
    update_view(view, snap, local, host_addrs);
    let local_pods: BTreeSet<PodKey> = local
        .iter()
        .map(|e| pod_key(&e.reg.pod_namespace, &e.reg.pod_name))
        .filter(|k| view.pods.contains_key(k))
        .collect();
    let t1 = Instant::now();
    let compiled = ward_policy::compile::compile(view, &local_pods, ids);
    let t2 = Instant::now();
    let desired = desired_maps(&compiled, local);
    let delta = mirror.delta_to(&desired);
    let t3 = Instant::now();
    Plan { compiled, desired, delta, timings: PlanTimings { cluster: t1 - t0, compile: t2 - t1, diff: t3 - t2 } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::EndpointRegistration;
    use crate::daemon::registry::Registry;
    use ward_policy::selector::Selector;

    /// What `update_view` must produce, written as a fresh copy of everything.
    fn fresh_view(snap: Source<'_>, registry: &[LocalEndpoint], host_addrs: &[IpAddr]) -> Cluster {
        let mut pods = snap.pods.clone();
        for ep in registry.iter() {
            if let Some(p) = pods.get_mut(&pod_key(&ep.reg.pod_namespace, &ep.reg.pod_name)) {
                p.ips = ep.reg.ips.clone();
            }
        }
        let mut namespaces = snap.namespaces.clone();
        for pod in pods.keys() {
            namespaces.entry(pod.namespace.clone()).or_default();
        }
        for (name, labels) in namespaces.iter_mut() {
            labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
        }
        Cluster {
            namespaces,
            pods,
            policies: snap.policies.clone(),
            host_addrs: host_addrs.to_vec(),
            service_cidrs: vec![],
            pod_cidrs: vec![],
            audited_namespaces: snap.audited_namespaces.clone(),
        }
    }

    fn pod(app: &str, ip: &str) -> PodInfo {
        PodInfo {
            labels: Labels::from([("app".into(), app.into())]),
            ports: vec![],
            ips: vec![ip.parse().expect("test address")],
        }
    }

    fn policy(ns: &str, name: &str, app: &str) -> Policy {
        Policy {
            kind: Default::default(),
            namespace: ns.into(),
            name: name.into(),
            pod_selector: Selector { match_labels: Labels::from([("app".into(), app.into())]), requirements: vec![] },
            ingress: Some(vec![]),
            egress: None,
            mode: Default::default(),
        }
    }

    #[test]
    fn the_kept_view_equals_a_fresh_copy_through_every_kind_of_change() {
        let dir = std::env::temp_dir().join(format!("ward-view-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut registry = Registry::load(&dir).expect("registry");
        registry
            .add(&EndpointRegistration {
                network: String::new(),
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: String::new(),
                pod_namespace: "a".into(),
                pod_name: "p1".into(),
                host_ifname: "wd1".into(),
                host_ifindex: 7,
                ips: vec!["10.9.0.1".parse().expect("ip")],
            })
            .expect("register");
        let host = ["192.168.0.1".parse().expect("ip")];
        let mut snap = Cluster::default();
        snap.namespaces.insert("a".into(), Labels::from([("team".into(), "x".into())]));
        snap.namespaces.insert("empty".into(), Labels::new());
        snap.pods.insert(pod_key("a", "p1"), pod("web", "10.0.0.1"));
        snap.pods.insert(pod_key("a", "p2"), pod("web", "10.0.0.2"));
        snap.pods.insert(pod_key("b", "p3"), pod("db", "10.0.0.3"));
        snap.policies.insert(PolicyRef::new("a", "deny"), policy("a", "deny", "web"));
        let mut view = Cluster::default();
        let check = |view: &mut Cluster, snap: &Cluster, host: &[IpAddr], what: &str| {
            let local = registry.to_vec();
            update_view(view, snap.into(), &local, host);
            assert_eq!(*view, fresh_view(snap.into(), &local, host), "after {what}");
        };
        check(&mut view, &snap, &host, "the first pass");
        assert_eq!(view.pods[&pod_key("a", "p1")].ips, vec!["10.9.0.1".parse::<IpAddr>().expect("ip")]);
        snap.pods.insert(pod_key("a", "p2"), pod("api", "10.0.0.2"));
        check(&mut view, &snap, &host, "a relabel");
        snap.pods.insert(pod_key("c", "p4"), pod("db", "10.0.0.4"));
        check(&mut view, &snap, &host, "a pod in a namespace with no Namespace object");
        snap.pods.remove(&pod_key("b", "p3"));
        snap.namespaces.remove("empty");
        snap.namespaces.get_mut("a").expect("a").insert("team".into(), "y".into());
        check(&mut view, &snap, &host, "removals and a namespace relabel");
        snap.policies.insert(PolicyRef::new("a", "deny"), policy("a", "deny", "api"));
        snap.policies.insert(PolicyRef::new("c", "other"), policy("c", "other", "db"));
        check(&mut view, &snap, &[], "policy edits and other host addresses");
        snap.policies.remove(&PolicyRef::new("a", "deny"));
        snap.pods.insert(pod_key("a", "p1"), pod("api", "10.0.0.1"));
        check(&mut view, &snap, &[], "a policy deleted and the local pod relabelled");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pod_ranges_join_every_node_and_this_one_once_each() {
        let net = |s: &str| s.parse::<ipnet::IpNet>().expect("test prefix");
        let node = |cidrs: &[&str]| NodeInfo { pod_cidrs: cidrs.iter().map(|c| net(c)).collect(), addresses: vec![] };
        let nodes = BTreeMap::from([
            ("n1".to_owned(), node(&["10.244.1.0/24", "fd00:244:1::/64"])),
            ("n2".to_owned(), node(&["10.244.2.0/24"])),
        ]);
        let got = pod_ranges(&nodes, &[net("10.244.1.7/24"), net("10.244.9.0/24")]);
        let want: Vec<ipnet::IpNet> =
            ["10.244.1.0/24", "10.244.2.0/24", "10.244.9.0/24", "fd00:244:1::/64"].iter().map(|c| net(c)).collect();
        assert_eq!(got, want, "host bits cleared, this node's own range not repeated");
        assert!(pod_ranges(&BTreeMap::new(), &[]).is_empty());
    }
}
