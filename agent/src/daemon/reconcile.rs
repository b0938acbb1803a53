//! The owner task's pass: plan (the pure half, `crate::plan`), then the kernel writes
//! (`Maps::apply`, a diff against the mirror), then identity GC and the identity file
//! (`state::settle_identities`), then what follows from a new compile (the DNS proxy's
//! view, the persisted snapshot). Also the start-up step that takes identity numbers over
//! from the pinned maps, and `explain`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use ward_common::{identity::ID_WORLD, maps::IpcacheKey};
use ward_policy::identity::Identities;
use ward_policy::reference::Peer;
use ward_policy::validate::Protocol;

use super::Agent;
use super::registry::Registry;
use super::state::settle_identities;
use crate::api::proto::Response;
use crate::datapath::MirrorContents;
use crate::plan::{Source, host_prefix, plan, pod_key, pod_ranges};

pub use ward_policy::compile::Compiled;

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

impl Agent {
    /// Compiles the current snapshot and applies the difference to the kernel.
    pub(super) fn reconcile(&mut self) {
        let span = tracing::info_span!("reconcile");
        let _g = span.enter();
        let started = Instant::now();
        let local = self.registry.to_vec();
        let ranges = pod_ranges(&self.store.snapshot().nodes, &self.cfg.pod_cidrs);
        if self.cluster.pod_cidrs != ranges {
            self.cluster.pod_cidrs = ranges;
        }
        let plan = plan(
            &mut self.cluster,
            self.store.snapshot().into(),
            &local,
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
        self.applied = self.store.checkpoint().revision.clone();
        self.compiled = Some(plan.compiled);
        self.publish_flow_view();
        self.persist_snapshot();
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
    use ward_common::maps::IpcacheValue;
    use ward_policy::cluster::Cluster;
    use ward_policy::selector::Labels;
    use ward_policy::validate::PodInfo;

    fn pod(app: &str, ip: &str) -> PodInfo {
        PodInfo {
            labels: Labels::from([("app".into(), app.into())]),
            ports: vec![],
            ips: vec![ip.parse().expect("test address")],
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
        let p = plan(&mut view, (&snap).into(), &registry.to_vec(), &[], &mut ids, &mirror);
        assert_eq!(p.compiled.pod_identity[&pod_key("x", "b")], b, "b keeps its number: an empty diff for it");
        assert!(!p.compiled.pod_identity.values().any(|id| *id == a), "a's pinned number is not reused");
        assert!(p.delta.ipcache_upserts.iter().all(|(_, v)| v.identity != a));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
