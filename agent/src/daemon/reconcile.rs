//! Desired state from the snapshot and the local endpoints, compiled by the pure compiler
//! (`ward_policy::compile`) and applied to the kernel as a diff against the mirror.
//!
//! A pass has a pure half, [`plan`] (cluster view, compile, desired maps, the writes against
//! the mirror), then the kernel writes (`Maps::apply`), then [`settle_identities`] (identity
//! GC and the identity file). The benchmark (`ward-bench`) runs exactly these functions, with
//! the kernel writes replaced by `MirrorDelta::apply_to`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ward_common::{
    addr::v4_mapped,
    identity::{ID_UNKNOWN_POD, ID_WORLD},
    maps::{EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, EndpointInfo, IpcacheKey, IpcacheValue},
};
use ward_policy::cluster::{Cluster, PodKey, PolicyRef};
use ward_policy::identity::Identities;
use ward_policy::reference::Peer;
use ward_policy::selector::Labels;
use ward_policy::validate::{NAMESPACE_NAME_LABEL, PodInfo, Policy, Protocol};

use super::Agent;
use super::registry::{Registry, write_atomic};
use crate::api::proto::Response;
use crate::datapath::{MirrorContents, MirrorDelta};
use crate::datastore::Snapshot;

pub use ward_policy::compile::Compiled;

const IDENTITIES_FILE: &str = "identities.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is corrupt: {source}")]
    Corrupt { path: String, source: serde_json::Error },
}

/// Identity numbers persist so that a restarted agent computes exactly the map contents
/// already pinned in the kernel (an empty diff, no churn).
///
/// A corrupt file is set aside (`identities.json.corrupt`) rather than stopping the agent:
/// [`adopt_numbers`] then rebuilds what it can from the pinned maps, and reserves the rest.
pub fn load_identities(state_dir: &Path) -> Result<Identities, StateError> {
    let path = state_dir.join(IDENTITIES_FILE);
    match std::fs::read(&path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(ids) => Ok(ids),
            Err(source) => {
                let e = StateError::Corrupt { path: path.display().to_string(), source };
                tracing::error!(error = %e, "starting from the pinned maps' numbers instead");
                let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                Ok(Identities::default())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Identities::default()),
        Err(source) => Err(StateError::Read { path: path.display().to_string(), source }),
    }
}

/// What the numbering must respect at start-up: the pinned maps may use numbers the loaded
/// table does not hold (the table lost, corrupt, or written before the maps' last pass).
/// Numbers whose meaning the maps show are given back to their keys (a pod's label identity
/// from its address's ipcache entry, a policy prefix's CIDR identity from its entry), so the
/// first pass computes the same numbers and an empty diff; every other number the maps use is
/// reserved until that pass has applied (`Identities::reserve`). Without this a new number
/// could land on one the pinned entries use for another pod, and the old entries would apply
/// to it between the first writes and the last. Returns (seeded, reserved).
pub fn adopt_numbers(
    ids: &mut Identities,
    mirror: &MirrorContents,
    snap: Source<'_>,
    registry: &Registry,
) -> (usize, usize) {
    use ward_common::identity::{CIDR_ID_BIT, FIRST_LABEL_ID, is_cidr_identity};
    use ward_policy::identity::{CidrKey, LabelKey, Live};
    let is_label = |id: u32| (FIRST_LABEL_ID..CIDR_ID_BIT).contains(&id);
    let mut seeded = 0;
    // Label identities from pod addresses (the CNI's for local pods, the objects' for the
    // others): a number goes back to a key only when every address the maps give that number
    // belongs to a pod that has that key now. Otherwise (labels changed while the agent was
    // down, a pod gone) it is only reserved: giving it to one of several keys would let the
    // old entries apply to pods they were not compiled for.
    let cni_ips: BTreeMap<(&str, &str), &[IpAddr]> = registry
        .iter()
        .map(|ep| ((ep.reg.pod_namespace.as_str(), ep.reg.pod_name.as_str()), ep.reg.ips.as_slice()))
        .collect();
    let mut owner_key: BTreeMap<IpcacheKey, LabelKey> = BTreeMap::new();
    for (key, info) in snap.pods {
        let ips = cni_ips.get(&(key.namespace.as_str(), key.name.as_str())).copied().unwrap_or(&info.ips);
        for ip in ips {
            owner_key.insert(host_prefix(ip), LabelKey::of(key, info));
        }
    }
    // Per number: the one key of all its addresses' owners, or None when they disagree or an
    // address has no owner.
    let mut keys_of: BTreeMap<u32, Option<&LabelKey>> = BTreeMap::new();
    for (k, v) in &mirror.ipcache {
        if !is_label(v.identity) {
            continue;
        }
        let owner = owner_key.get(k);
        keys_of
            .entry(v.identity)
            .and_modify(|agreed| {
                if *agreed != owner {
                    *agreed = None;
                }
            })
            .or_insert(owner);
    }
    for (id, key) in keys_of {
        if let Some(key) = key
            && ids.seed_label(key, id)
        {
            seeded += 1;
        }
    }
    // CIDR identities of plain policy prefixes (pod entries may carry flavoured ones, which
    // are only reserved).
    for (k, v) in &mirror.ipcache {
        if v.identity == ID_WORLD && is_cidr_identity(v.cidr_identity) {
            let prefix = ipnet_of(k);
            if ids.seed_cidr(&CidrKey { prefix, ports: vec![] }, v.cidr_identity) {
                seeded += 1;
            }
        }
    }
    let mut used = Live::default();
    for ep in mirror.endpoints.values() {
        used.labels.insert(ep.identity);
    }
    for v in mirror.ipcache.values() {
        used.labels.insert(v.identity);
        used.cidrs.insert(v.cidr_identity);
    }
    for (k, v) in &mirror.policy {
        for id in [k.subject(), k.peer()] {
            if is_cidr_identity(id) {
                used.cidrs.insert(id);
            } else {
                used.labels.insert(id);
            }
        }
        used.rules.insert(v.rule_id);
        // An HTTP entry names its rule set: that number keeps its meaning too.
        if let Some(set) = ward_common::http::rules::policy_http_set(v.flags) {
            used.http_sets.insert(set);
        }
    }
    used.labels.retain(|id| is_label(*id));
    used.cidrs.retain(|id| is_cidr_identity(*id));
    (seeded, ids.reserve(&used))
}

/// The prefix an ipcache key stands for (IPv4-mapped keys as IPv4).
fn ipnet_of(k: &IpcacheKey) -> ipnet::IpNet {
    let v6 = std::net::Ipv6Addr::from(k.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if k.prefixlen >= 96 => {
            ipnet::IpNet::V4(ipnet::Ipv4Net::new(v4, (k.prefixlen - 96) as u8).unwrap_or_default())
        }
        _ => ipnet::IpNet::V6(ipnet::Ipv6Net::new(v6, k.prefixlen as u8).unwrap_or_default()),
    }
}

/// Writes the identity file; false (logged) if that failed.
fn save_identities(state_dir: &Path, ids: &Identities) -> bool {
    let path = state_dir.join(IDENTITIES_FILE);
    match serde_json::to_vec(ids) {
        Ok(bytes) => match write_atomic(&path, &bytes) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "persisting identities");
                false
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "encoding identities");
            false
        }
    }
}

/// True if `name` is the interface with this ifindex in our network namespace.
pub fn interface_is(name: &str, ifindex: u32) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok_and(|i| i == ifindex)
}

/// True if an interface with this ifindex exists in our network namespace.
pub fn interface_exists(ifindex: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may write.
    !unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null()
}

pub fn pod_key(namespace: &str, name: &str) -> PodKey {
    PodKey { namespace: namespace.to_owned(), name: name.to_owned() }
}

/// What a pass reads from the datastore: a [`Snapshot`] in the agent, a `Cluster` in the
/// benchmark and tests.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub namespaces: &'a BTreeMap<String, Labels>,
    pub pods: &'a BTreeMap<PodKey, PodInfo>,
    pub policies: &'a BTreeMap<PolicyRef, Policy>,
}

impl<'a> From<&'a Snapshot> for Source<'a> {
    fn from(s: &'a Snapshot) -> Self {
        Source { namespaces: &s.namespaces, pods: &s.pods, policies: &s.policies }
    }
}

impl<'a> From<&'a Cluster> for Source<'a> {
    fn from(c: &'a Cluster) -> Self {
        Source { namespaces: &c.namespaces, pods: &c.pods, policies: &c.policies }
    }
}

/// Brings `view`, the cluster as the compiler sees it (kept between passes), up to date with
/// the datastore: local pods get the addresses their CNI ADD gave them, every namespace of a
/// pod exists, and every namespace carries `kubernetes.io/metadata.name`. Only what changed
/// is copied, so a pass after one relabel copies one pod rather than the whole snapshot.
pub fn update_view(view: &mut Cluster, snap: Source<'_>, registry: &Registry, host_addrs: &[IpAddr]) {
    // A later registration of the same pod wins, as when the addresses were assigned in turn.
    let cni_ips: BTreeMap<(&str, &str), &[IpAddr]> = registry
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

fn host_prefix(ip: &IpAddr) -> IpcacheKey {
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
pub fn desired_maps(compiled: &Compiled, registry: &Registry) -> MirrorContents {
    let mut desired = MirrorContents {
        endpoints: BTreeMap::new(),
        ipcache: compiled.ipcache.clone(),
        policy: compiled.policy.clone(),
    };
    for ep in registry.iter() {
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

/// Updates `view` from `snap` (see [`update_view`]), compiles it for the registered
/// endpoints (allocating identities in `ids`) and diffs the result against `mirror`, the maps
/// as loaded. Touches neither the kernel nor the disk.
pub fn plan(
    view: &mut Cluster,
    snap: Source<'_>,
    registry: &Registry,
    host_addrs: &[IpAddr],
    ids: &mut Identities,
    mirror: &MirrorContents,
) -> Plan {
    let t0 = Instant::now();
    update_view(view, snap, registry, host_addrs);
    let local: BTreeSet<PodKey> = registry
        .iter()
        .map(|e| pod_key(&e.reg.pod_namespace, &e.reg.pod_name))
        .filter(|k| view.pods.contains_key(k))
        .collect();
    let t1 = Instant::now();
    let compiled = ward_policy::compile::compile(view, &local, ids);
    let t2 = Instant::now();
    let desired = desired_maps(&compiled, registry);
    let delta = mirror.delta_to(&desired);
    let t3 = Instant::now();
    Plan { compiled, desired, delta, timings: PlanTimings { cluster: t1 - t0, compile: t2 - t1, diff: t3 - t2 } }
}

/// After the maps were written: frees the identity numbers this compile no longer uses, but
/// only if the writes succeeded (otherwise a map may still refer to them), and persists the
/// identity table if it changed since it was last persisted (`saved` holds that revision).
pub fn settle_identities(
    ids: &mut Identities,
    compiled: &Compiled,
    applied: bool,
    state_dir: &Path,
    saved: &mut Option<u64>,
) {
    if applied {
        ids.gc(&compiled.live());
    }
    if *saved != Some(ids.revision()) && save_identities(state_dir, ids) {
        *saved = Some(ids.revision());
    }
}

impl Agent {
    /// Compiles the current snapshot and applies the difference to the kernel.
    pub(super) fn reconcile(&mut self) {
        let span = tracing::info_span!("reconcile");
        let _g = span.enter();
        let started = Instant::now();
        let plan = plan(
            &mut self.cluster,
            self.store.snapshot().into(),
            &self.registry,
            &self.cfg.host_addrs,
            &mut self.ids,
            &self.mirror,
        );
        // HTTP rule sets go in before the policy entries that name them, and out after.
        let sets = self.dp.http.upsert_sets(&plan.compiled.http_sets);
        let applied = match self.dp.maps.apply(&mut self.mirror, &plan.delta).and_then(|s| sets.map(|_| s)) {
            Ok(stats) => {
                self.last_error = None;
                if stats.upserts + stats.deletes > 0 {
                    tracing::info!(
                        upserts = stats.upserts,
                        deletes = stats.deletes,
                        micros = started.elapsed().as_micros() as u64,
                        "maps updated"
                    );
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "applying maps");
                self.last_error = Some(e.to_string());
                false
            }
        };
        if applied {
            self.dp.http.delete_sets(&plan.compiled.http_sets);
        }
        // Only after a successful apply does no map refer to numbers this compile no longer uses.
        settle_identities(&mut self.ids, &plan.compiled, applied, &self.cfg.state_dir, &mut self.ids_saved);
        self.publish_dns_view(&plan.compiled);
        self.applied_files = self.store.file_hashes();
        self.compiled = Some(plan.compiled);
    }

    /// Hands the DNS proxy its view of this compile (and persists it for the next start).
    fn publish_dns_view(&mut self, compiled: &Compiled) {
        let Some(dns) = &self.dns else { return };
        let eps =
            self.registry.iter().map(|e| (e.ep_id, pod_key(&e.reg.pod_namespace, &e.reg.pod_name), e.reg.ips.clone()));
        let view = crate::dns::view_of(compiled, eps);
        if **dns.view_tx.borrow() != view {
            view.save(&self.cfg.state_dir);
            dns.view_tx.send_replace(std::sync::Arc::new(view));
        }
    }

    pub(super) fn explain(
        &self,
        from: &str,
        to: &str,
        protocol: &str,
        port: u16,
        http: Option<(&str, &str)>,
    ) -> Response {
        let (cluster, Some(compiled)) = (&self.cluster, &self.compiled) else {
            return Response::Error { message: "nothing compiled yet".into() };
        };
        let proto = match protocol.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => return Response::Error { message: format!("protocol: unknown {other:?} (TCP, UDP or SCTP)") },
        };
        let peer = |s: &str, field: &str| -> Result<Peer, String> {
            if let Ok(ip) = s.parse::<IpAddr>() {
                return Ok(Peer::External(ip));
            }
            match s.split_once('/') {
                Some((ns, name)) if cluster.pods.contains_key(&pod_key(ns, name)) => Ok(Peer::Pod(pod_key(ns, name))),
                Some(_) => Err(format!("{field}: no pod {s:?} in the datastore")),
                None => Err(format!("{field}: expected namespace/pod or an IP address, got {s:?}")),
            }
        };
        let (from, to) = match (peer(from, "from"), peer(to, "to")) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return Response::Error { message: e },
        };
        let ex = match proto {
            // TCP: what HTTP rules at the destination say too (with the request, if given).
            Protocol::Tcp => ward_policy::explain::explain_request(cluster, compiled, from, to, port, http),
            _ if http.is_some() => {
                return Response::Error { message: "http: an HTTP request needs protocol TCP".into() };
            }
            _ => ward_policy::explain::explain(cluster, compiled, from, to, proto, port),
        };
        Response::Explanation { allowed: ex.allowed(), text: ex.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::EndpointRegistration;
    use ward_policy::selector::Selector;

    /// What `update_view` must produce, written as a fresh copy of everything.
    fn fresh_view(snap: Source<'_>, registry: &Registry, host_addrs: &[IpAddr]) -> Cluster {
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
        Cluster { namespaces, pods, policies: snap.policies.clone(), host_addrs: host_addrs.to_vec() }
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
        }
    }

    /// Suspected bypass of issue 13: a restart that finds the pinned maps but not the identity
    /// table. Pod a had 256 and b 257 in the maps; a was deleted while the agent was down. A
    /// fresh table would give b 256, a's number, and a's pinned entries would then apply to b
    /// until the pass completes. Taken over from the maps, b keeps 257 and 256 is never reused
    /// while the maps mean a by it.
    #[test]
    fn a_restart_without_the_identity_table_never_reuses_a_pinned_number_for_another_pod() {
        use ward_common::identity::FIRST_LABEL_ID;
        use ward_common::maps::{PolicyKey, PolicyValue};
        let dir = std::env::temp_dir().join(format!("ward-adopt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let registry = Registry::load(&dir).expect("registry");
        let (a, b) = (FIRST_LABEL_ID, FIRST_LABEL_ID + 1);
        let mut mirror = MirrorContents::default();
        mirror.ipcache.insert(
            host_prefix(&"10.0.0.1".parse().expect("ip")),
            IpcacheValue { identity: a, cidr_identity: ID_WORLD },
        );
        mirror.ipcache.insert(
            host_prefix(&"10.0.0.2".parse().expect("ip")),
            IpcacheValue { identity: b, cidr_identity: ID_WORLD },
        );
        // Pinned: a may reach the database pods (identity 900 as subject).
        mirror.policy.insert(
            PolicyKey::any_proto(900, a, ward_common::Direction::Ingress),
            PolicyValue { rule_id: 1, flags: 0 },
        );
        let mut snap = Cluster::default();
        snap.pods.insert(pod_key("x", "b"), pod("web", "10.0.0.2"));
        snap.pods.insert(pod_key("x", "c"), pod("new", "10.0.0.3"));
        let mut ids = Identities::new();
        let (seeded, reserved) = adopt_numbers(&mut ids, &mirror, (&snap).into(), &registry);
        assert_eq!((seeded, reserved), (1, 3), "b's number taken over; a's, the subject's and the rule id reserved");
        let mut view = Cluster::default();
        let p = plan(&mut view, (&snap).into(), &registry, &[], &mut ids, &mirror);
        assert_eq!(p.compiled.pod_identity[&pod_key("x", "b")], b, "b keeps its number: an empty diff for it");
        assert!(!p.compiled.pod_identity.values().any(|id| *id == a), "a's pinned number is not reused");
        assert!(p.delta.ipcache_upserts.iter().all(|(_, v)| v.identity != a));
        let _ = std::fs::remove_dir_all(&dir);
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
            update_view(view, snap.into(), &registry, host);
            assert_eq!(*view, fresh_view(snap.into(), &registry, host), "after {what}");
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
}
