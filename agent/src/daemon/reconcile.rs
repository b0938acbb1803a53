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
use ward_policy::validate::{PodInfo, Policy, Protocol};

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
pub fn load_identities(state_dir: &Path) -> Result<Identities, StateError> {
    let path = state_dir.join(IDENTITIES_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|source| StateError::Corrupt { path: path.display().to_string(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Identities::default()),
        Err(source) => Err(StateError::Read { path: path.display().to_string(), source }),
    }
}

pub fn save_identities(state_dir: &Path, ids: &Identities) {
    let path = state_dir.join(IDENTITIES_FILE);
    match serde_json::to_vec(ids) {
        Ok(bytes) => {
            if let Err(e) = write_atomic(&path, &bytes) {
                tracing::error!(path = %path.display(), error = %e, "persisting identities");
            }
        }
        Err(e) => tracing::error!(error = %e, "encoding identities"),
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

/// The cluster as the compiler sees it: local pods get the addresses their CNI ADD gave them.
fn build_cluster(snap: Source<'_>, registry: &Registry, host_addrs: &[IpAddr]) -> Cluster {
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
        // The API server sets this label on every namespace.
        labels.insert("kubernetes.io/metadata.name".into(), name.clone());
    }
    Cluster { namespaces, pods, policies: snap.policies.clone(), host_addrs: host_addrs.to_vec() }
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
    pub cluster: Cluster,
    pub compiled: Compiled,
    pub desired: MirrorContents,
    /// From the mirror to `desired`.
    pub delta: MirrorDelta,
    pub timings: PlanTimings,
}

/// Compiles `snap` for the registered endpoints (allocating identities in `ids`) and diffs
/// the result against `mirror`, the maps as loaded. Touches neither the kernel nor the disk.
pub fn plan(
    snap: Source<'_>,
    registry: &Registry,
    host_addrs: &[IpAddr],
    ids: &mut Identities,
    mirror: &MirrorContents,
) -> Plan {
    let t0 = Instant::now();
    let cluster = build_cluster(snap, registry, host_addrs);
    let local: BTreeSet<PodKey> = registry
        .iter()
        .map(|e| pod_key(&e.reg.pod_namespace, &e.reg.pod_name))
        .filter(|k| cluster.pods.contains_key(k))
        .collect();
    let t1 = Instant::now();
    let compiled = ward_policy::compile::compile(&cluster, &local, ids);
    let t2 = Instant::now();
    let desired = desired_maps(&compiled, registry);
    let delta = mirror.delta_to(&desired);
    let t3 = Instant::now();
    Plan {
        cluster,
        compiled,
        desired,
        delta,
        timings: PlanTimings { cluster: t1 - t0, compile: t2 - t1, diff: t3 - t2 },
    }
}

/// After the maps were written: frees the identity numbers this compile no longer uses, but
/// only if the writes succeeded (otherwise a map may still refer to them), and persists the
/// identity table.
pub fn settle_identities(ids: &mut Identities, compiled: &Compiled, applied: bool, state_dir: &Path) {
    if applied {
        ids.gc(&compiled.live());
    }
    save_identities(state_dir, ids);
}

impl Agent {
    /// Compiles the current snapshot and applies the difference to the kernel.
    pub(super) fn reconcile(&mut self) {
        let span = tracing::info_span!("reconcile");
        let _g = span.enter();
        let started = Instant::now();
        let plan =
            plan(self.store.snapshot().into(), &self.registry, &self.cfg.host_addrs, &mut self.ids, &self.mirror);
        let applied = match self.dp.maps.apply(&mut self.mirror, &plan.delta) {
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
        // Only after a successful apply does no map refer to numbers this compile no longer uses.
        settle_identities(&mut self.ids, &plan.compiled, applied, &self.cfg.state_dir);
        self.applied_files = self.store.file_hashes();
        self.compiled = Some(plan.compiled);
        self.cluster = Some(plan.cluster);
    }

    pub(super) fn explain(&self, from: &str, to: &str, protocol: &str, port: u16) -> Response {
        let (Some(cluster), Some(compiled)) = (&self.cluster, &self.compiled) else {
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
        let ex = ward_policy::explain::explain(cluster, compiled, from, to, proto, port);
        Response::Explanation { allowed: ex.allowed(), text: ex.to_string() }
    }
}
