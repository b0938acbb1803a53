//! The NetworkPolicy compiler: cluster state in, the contents of the kernel's ipcache and
//! policy maps out, plus the isolation bits of each local subject identity.
//!
//! Data flow: `Cluster` (validated objects) → [`compile`] → [`Compiled`] → [`diff`] against
//! what is loaded → the agent writes the [`Delta`] into `WARD_IPCACHE` / `WARD_POLICY`.
//! The kernel then decides each new flow with `ward_common::lookup::decide_new_flow`; read
//! that function first, the layout below exists to make its three lookups exact:
//!
//! * Every address resolves in the ipcache to a label identity (pods; `ID_HOST` for the
//!   node; `ID_SERVICE` in a Service range; `ID_UNKNOWN_POD` elsewhere in a cluster pod
//!   range, a pod not known yet; `ID_WORLD` otherwise) and a CIDR identity (the longest
//!   policy prefix containing it, or `ID_WORLD`). Every policy prefix (each `cidr` and each `except`) is in the
//!   ipcache with its own CIDR identity; every pod and node address is there as a
//!   full-length prefix carrying both identities.
//! * Pod-selector peers become entries for each matching label identity; ipBlock peers
//!   become entries for each CIDR identity whose prefix lies in `cidr` and in no `except`
//!   (an address's longest policy prefix lies there exactly when the address does);
//!   "all peers" becomes one `ID_ANY` entry.
//! * Named ports resolve on the destination: on ingress, the subject, whose named ports are
//!   part of its identity; on egress, each destination identity. For egress ipBlock rules
//!   with named ports, the CIDR identity of a pod address is "flavoured" with the pod's
//!   named ports that such rules mention, so the port resolves per pod while the prefix
//!   still decides membership. Without such rules no identity is flavoured.
//! * A `WardNetworkPolicy` port with `http` rules gives the same keys, flagged
//!   `POLICY_HTTP` with the id of the rule set the kernel matches requests against
//!   ([`resolve_http`]: the union per key, mooted under a plain allow); its subject's
//!   endpoint gets `EP_HTTP_INGRESS`.
//!
//! * Audit mode: an audited policy (`Cluster::mode`) gives nothing to enforcement. For a
//!   subject and direction that no enforced policy isolates but an audited one would, the
//!   audited rules' keys are written flagged `POLICY_AUDIT` (HTTP ports as plain L4 keys) and
//!   the endpoint gets `EP_AUDIT_*`: the lookup then tells a flow they would deny (`Audit`)
//!   from one they would allow, and lets both pass. Where an enforced policy isolates, the
//!   audited ones could only add allows, so they write nothing there; their `fqdn` peers and
//!   `dns` rules are not audited (no DNS proxy for them).
//!
//! Pure and deterministic: the same cluster, local set and identity state give the same
//! maps. Identities are allocated in sorted key order.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use ward_common::Direction;
use ward_common::addr::{V4_MAPPED_PREFIX_BITS, v4_mapped};
use ward_common::http::rules::{EP_HTTP_INGRESS, HttpSet, SET_RULES_MAX, policy_http_flags, policy_http_set};
use ward_common::identity::{FIRST_LABEL_ID, ID_ANY, ID_HOST, ID_SERVICE, ID_UNKNOWN_POD, ID_WORLD};
use ward_common::maps::{
    EP_AUDIT_EGRESS, EP_AUDIT_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IpcacheKey, IpcacheValue,
    POLICY_ANY_PROTO_BITS, POLICY_AUDIT, PolicyKey, PolicyValue,
};
use ward_common::ports::{MAX_BLOCKS, PortBlock, range_to_blocks};

use crate::cluster::{Cluster, PodKey, PolicyRef};
use crate::fqdn_policy::{FqdnPolicy, FqdnPolicyBuilder};
pub use crate::identity::RuleInfo;
use crate::identity::{CidrKey, HttpSetKey, HttpSetRule, Identities, LabelKey, Live};
use crate::selector::Labels;
use crate::validate::{Mode, NamedPort, Peer, Policy, PortRef, PortSpec, Protocol, Rule};

/// What the agent loads for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// The label identity of every pod in the cluster (local or not).
    pub pod_identity: BTreeMap<PodKey, u32>,
    /// `EP_ISOLATED_*` bits of every local subject identity (0 when no policy selects it),
    /// and `EP_AUDIT_*` where only audited policies would isolate it.
    pub isolation: BTreeMap<u32, u32>,
    pub ipcache: BTreeMap<IpcacheKey, IpcacheValue>,
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// What each rule id stands for, for every rule of every policy.
    pub rules: BTreeMap<u32, RuleInfo>,
    /// What each CIDR identity used by this compile stands for.
    pub cidr_identity: BTreeMap<u32, CidrKey>,
    /// Addresses claimed by more than one owner, and how each was settled.
    pub address_conflicts: Vec<AddressConflict>,
    /// The DNS proxy's rules for each local subject identity with `fqdn` peers or `dns`
    /// rules (those subjects carry `EP_DNS_PROXY`).
    pub fqdn: BTreeMap<u32, FqdnPolicy>,
    /// The HTTP rule sets the policy entries flagged `POLICY_HTTP` name (`WARD_HTTP_SETS`).
    pub http_sets: BTreeMap<u32, HttpSet>,
    /// HTTP rules that do not act as written (`ward status` and `explain` show them).
    pub http_warnings: Vec<HttpWarning>,
}

/// HTTP rules that do not act as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpWarning {
    /// A plain (L4) allow of rule `by_rule` for the same peer and port makes the HTTP rules of
    /// `http_rules` moot at `key`: every request is allowed there.
    Moot { key: PolicyKey, http_rules: Vec<u32>, by_rule: u32 },
    /// More HTTP rules apply at `key` than one set holds: only `kept` are enforced (the
    /// other requests are denied).
    TooMany { key: PolicyKey, rules: usize, kept: usize },
}

/// An address more than one owner claims (see `compile`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressConflict {
    pub address: IpAddr,
    pub kept: Owner,
    /// The pods whose claim on the address was refused.
    pub refused: Vec<PodKey>,
}

/// Who keeps a contested address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// One of the node's own addresses.
    Node,
    /// Assigned to this local pod by this node's CNI plugin.
    LocalPod(PodKey),
    /// Claimed by several pods none of which this node placed: it resolves to no pod
    /// (fails closed).
    Nobody,
}

impl std::fmt::Display for AddressConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let refused: Vec<String> = self.refused.iter().map(|k| format!("Pod {k}")).collect();
        match &self.kept {
            Owner::Node => {
                write!(f, "{} is an address of this node; refused the claim of {}", self.address, refused.join(", "))
            }
            Owner::LocalPod(k) => write!(
                f,
                "{} was assigned by this node's CNI to Pod {k}; refused the claim of {}",
                self.address,
                refused.join(", ")
            ),
            Owner::Nobody => {
                write!(
                    f,
                    "{} is claimed by {}; it resolves to no pod until one claim remains",
                    self.address,
                    refused.join(" and ")
                )
            }
        }
    }
}

/// The claims on one address while compiling.
struct Claim<'a> {
    owner: &'a PodKey,
    local: bool,
    others: Vec<&'a PodKey>,
}

impl Compiled {
    /// The numbers these maps refer to, for `Identities::gc`.
    pub fn live(&self) -> Live {
        Live {
            labels: self.pod_identity.values().copied().filter(|id| *id >= FIRST_LABEL_ID).collect(),
            cidrs: self.cidr_identity.keys().copied().collect(),
            rules: self.rules.keys().copied().collect(),
            http_sets: self.http_sets.keys().copied().collect(),
        }
    }

    /// The endpoint flags of a pod's identity: its `EP_ISOLATED_*` bits, 0 when not local.
    pub fn isolation_of(&self, pod: &PodKey) -> u32 {
        self.pod_identity.get(pod).and_then(|id| self.isolation.get(id)).copied().unwrap_or(0)
    }
}

/// Map changes that turn one `Compiled` into another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub ipcache_upserts: Vec<(IpcacheKey, IpcacheValue)>,
    pub ipcache_deletes: Vec<IpcacheKey>,
    pub policy_upserts: Vec<(PolicyKey, PolicyValue)>,
    pub policy_deletes: Vec<PolicyKey>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.ipcache_upserts.is_empty()
            && self.ipcache_deletes.is_empty()
            && self.policy_upserts.is_empty()
            && self.policy_deletes.is_empty()
    }

    /// Applies the map changes to `c` (its ipcache and policy maps), as the agent does to
    /// the kernel's maps.
    pub fn apply_to(&self, c: &mut Compiled) {
        for k in &self.ipcache_deletes {
            c.ipcache.remove(k);
        }
        c.ipcache.extend(self.ipcache_upserts.iter().copied());
        for k in &self.policy_deletes {
            c.policy.remove(k);
        }
        c.policy.extend(self.policy_upserts.iter().copied());
    }
}

/// The smallest set of map writes from `old` to `new`: upserts for new or changed entries,
/// deletes for entries gone. A relabelled pod whose identity already exists changes only its
/// own ipcache entries; a policy edit changes only the entries of its rules.
pub fn diff(old: &Compiled, new: &Compiled) -> Delta {
    let (ipcache_upserts, ipcache_deletes) = diff_map(&old.ipcache, &new.ipcache);
    let (policy_upserts, policy_deletes) = diff_map(&old.policy, &new.policy);
    Delta { ipcache_upserts, ipcache_deletes, policy_upserts, policy_deletes }
}

fn diff_map<K: Ord + Copy, V: PartialEq + Copy>(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> (Vec<(K, V)>, Vec<K>) {
    let upserts = new.iter().filter(|(k, v)| old.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect();
    let deletes = old.keys().filter(|k| !new.contains_key(k)).copied().collect();
    (upserts, deletes)
}

pub use ward_common::addr::addr16;

/// The ipcache key of a prefix (host bits cleared; IPv4 mapped, prefix length + 96).
pub fn ipcache_key(net: IpNet) -> IpcacheKey {
    match net.trunc() {
        IpNet::V4(n) => IpcacheKey {
            prefixlen: u32::from(n.prefix_len()) + V4_MAPPED_PREFIX_BITS,
            addr: v4_mapped(n.network().octets()),
        },
        IpNet::V6(n) => IpcacheKey { prefixlen: u32::from(n.prefix_len()), addr: n.network().octets() },
    }
}

/// The full-length prefix of one address.
fn host_net(ip: IpAddr) -> IpNet {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::from(a)),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::from(a)),
    }
}

/// The cluster's pod ranges that get `ID_UNKNOWN_POD`, broadest first. Left out: a range
/// inside a Service range (Service addresses stay decided on their backends), and an IPv6
/// range holding the IPv4-mapped space (it would answer for IPv4 addresses).
fn pod_ranges(cluster: &Cluster) -> Vec<IpNet> {
    let v4_mapped_root = IpAddr::V6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped());
    let mut ranges: Vec<IpNet> = cluster
        .pod_cidrs
        .iter()
        .map(IpNet::trunc)
        .filter(|r| !cluster.service_cidrs.iter().any(|svc| svc.contains(r)))
        .filter(|r| !(matches!(r, IpNet::V6(_)) && r.contains(&v4_mapped_root)))
        .collect();
    ranges.sort_by_key(|r| (r.prefix_len(), *r));
    ranges.dedup();
    ranges
}

/// What the compiler knows about one label identity (from any pod that has it).
struct LabelFacts<'a> {
    namespace: &'a str,
    labels: &'a Labels,
    namespace_labels: Cow<'a, Labels>,
    ports: &'a [NamedPort],
}

/// Compiles the cluster's policies for the pods in `local`. Every pod gets a label
/// identity and ipcache entries; only local pods are policy subjects.
pub fn compile(cluster: &Cluster, local: &BTreeSet<PodKey>, ids: &mut Identities) -> Compiled {
    let mut out = Compiled::default();

    // Label identities, with one representative pod's facts per identity.
    let mut facts: BTreeMap<u32, LabelFacts> = BTreeMap::new();
    // Replicas share namespace, labels and ports: each distinct borrowed triple is looked up
    // in the identity table once (building an owned `LabelKey` and comparing it there was
    // most of a compile). Ports in another order only miss this memo; the table still
    // gives them the same identity.
    let mut label_memo: HashMap<(&str, &Labels, &[NamedPort]), u32> = HashMap::new();
    for (key, info) in &cluster.pods {
        // Exhausting 16M label identities is not a real case; such a pod gets the identity no
        // selector matches, which fails closed.
        let id = *label_memo
            .entry((key.namespace.as_str(), &info.labels, info.ports.as_slice()))
            .or_insert_with(|| ids.label(&LabelKey::of(key, info)).unwrap_or(ID_UNKNOWN_POD));
        out.pod_identity.insert(key.clone(), id);
        if id != ID_UNKNOWN_POD {
            facts.entry(id).or_insert_with(|| LabelFacts {
                namespace: &key.namespace,
                labels: &info.labels,
                namespace_labels: cluster.namespace_labels(&key.namespace),
                ports: &info.ports,
            });
        }
    }

    // Rule ids, for every rule of every policy.
    let mut rule_ids: BTreeMap<(&PolicyRef, Direction, usize), u32> = BTreeMap::new();
    for (pref, p) in &cluster.policies {
        for (dir, rules) in [(Direction::Ingress, &p.ingress), (Direction::Egress, &p.egress)] {
            for index in 0..rules.as_ref().map_or(0, Vec::len) {
                let info = RuleInfo { policy: pref.clone(), direction: dir, index };
                if let Some(id) = ids.rule(&info) {
                    rule_ids.insert((pref, dir, index), id);
                    out.rules.insert(id, info);
                }
            }
        }
    }

    // Policy prefixes, and the port names egress ipBlock rules resolve on pod addresses.
    let mut prefixes: BTreeSet<IpNet> = BTreeSet::new();
    let mut flavour_names: BTreeSet<&str> = BTreeSet::new();
    for p in cluster.policies.values() {
        for (dir, rule) in rules_of(p) {
            let mut has_block = false;
            for peer in rule.peers.iter().flatten() {
                if let Peer::IpBlock { cidr, except } = peer {
                    has_block = true;
                    prefixes.insert(*cidr);
                    prefixes.extend(except.iter().copied());
                }
            }
            if has_block && dir == Direction::Egress {
                for spec in rule.ports.iter().flatten() {
                    if let PortRef::Named(name) = &spec.port {
                        flavour_names.insert(name);
                    }
                }
            }
        }
    }
    let prefix_index = PrefixIndex::new(&prefixes);
    let longest_prefix = |ip: IpAddr| prefix_index.longest(ip);
    let flavour = |ports: &[NamedPort]| -> Vec<NamedPort> {
        ports.iter().filter(|np| flavour_names.contains(np.name.as_str())).cloned().collect()
    };

    // CIDR identities, allocated in key order.
    let mut cidr_keys: BTreeSet<CidrKey> = prefixes.iter().map(|p| CidrKey { prefix: *p, ports: vec![] }).collect();
    for info in cluster.pods.values() {
        let ports = flavour(&info.ports);
        if ports.is_empty() {
            continue;
        }
        for ip in &info.ips {
            if let Some(prefix) = longest_prefix(*ip) {
                cidr_keys.insert(CidrKey { prefix, ports: ports.clone() });
            }
        }
    }
    let mut cidr_ids: BTreeMap<CidrKey, u32> = BTreeMap::new();
    for key in cidr_keys {
        // Without a number the prefix stays out of the maps: its addresses fall back to
        // the shorter prefixes or ID_WORLD, and no ipBlock entry names it (fails closed for
        // rules that would allow it, and an except prefix cannot be without its cidr).
        if let Some(id) = ids.cidr(&key) {
            out.cidr_identity.insert(id, key.clone());
            cidr_ids.insert(key, id);
        }
    }
    let cidr_of = |ip: IpAddr, ports: Vec<NamedPort>| -> u32 {
        longest_prefix(ip).and_then(|prefix| cidr_ids.get(&CidrKey { prefix, ports })).copied().unwrap_or(ID_WORLD)
    };

    // A prefix without a number stays out of the maps, and so does every prefix containing it
    // (its addresses would otherwise take the broader prefix's identity and allows: an
    // `except` without its number would turn into allow).
    let numberless: Vec<IpNet> =
        prefixes.iter().filter(|p| !cidr_ids.contains_key(&CidrKey { prefix: **p, ports: vec![] })).copied().collect();
    let withheld = |p: &IpNet| numberless.iter().any(|m| p.contains(m));

    // The ipcache: policy prefixes, then pod ranges, then node addresses, then pod
    // addresses over them.
    // Service addresses are decided on their backends, never on themselves: a policy prefix
    // inside a Service range keeps its label identity `ID_SERVICE`.
    // Likewise an address in a pod range that no known pod holds is a pod not known yet
    // (`ID_UNKNOWN_POD`), and so is a policy prefix inside a pod range; a Service range
    // wins where the two overlap.
    let in_service = |p: &IpNet| cluster.service_cidrs.iter().any(|svc| svc.contains(p));
    let pod_ranges = pod_ranges(cluster);
    let in_pod_range = |p: &IpNet| pod_ranges.iter().any(|r| r.contains(p));
    for prefix in &prefixes {
        if withheld(prefix) {
            continue;
        }
        if let Some(id) = cidr_ids.get(&CidrKey { prefix: *prefix, ports: vec![] }) {
            let identity = if in_service(prefix) {
                ID_SERVICE
            } else if in_pod_range(prefix) {
                ID_UNKNOWN_POD
            } else {
                ID_WORLD
            };
            out.ipcache.insert(ipcache_key(*prefix), IpcacheValue { identity, cidr_identity: *id });
        }
    }
    for svc in &cluster.service_cidrs {
        // The CIDR identity of the longest policy prefix holding the whole range (what an
        // ipBlock sees of a Service address a packet carries, a reply's, say).
        let cidr_identity = prefixes
            .iter()
            .filter(|p| !withheld(p) && p.contains(svc))
            .max_by_key(|p| p.prefix_len())
            .and_then(|p| cidr_ids.get(&CidrKey { prefix: *p, ports: vec![] }))
            .copied()
            .unwrap_or(ID_WORLD);
        out.ipcache.insert(ipcache_key(*svc), IpcacheValue { identity: ID_SERVICE, cidr_identity });
    }
    // An IPv6 prefix that contains ::ffff:0:0/96 (`::/0`, say) would otherwise also answer
    // for IPv4 addresses in the shared trie, where NetworkPolicy says it never matches
    // IPv4. This entry stops IPv4 lookups at the IPv4 root.
    let v4_root = IpNet::V4(Ipv4Net::default());
    let v4_mapped_root = IpAddr::V6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped());
    if prefixes.iter().any(|p| matches!(p, IpNet::V6(_)) && p.prefix_len() <= 96 && p.contains(&v4_mapped_root)) {
        let cidr_identity = cidr_ids.get(&CidrKey { prefix: v4_root, ports: vec![] }).copied().unwrap_or(ID_WORLD);
        out.ipcache.entry(ipcache_key(v4_root)).or_insert(IpcacheValue { identity: ID_WORLD, cidr_identity });
    }
    // The pod ranges, broadest first, after every entry shorter than them: each carries the
    // CIDR identity its addresses resolved to without it (the entry that covered the whole
    // range), so ipBlocks decide them exactly as before. Longer entries (policy prefixes
    // inside, pods, the node) keep answering for their own addresses.
    for range in &pod_ranges {
        let key = ipcache_key(*range);
        let cidr_identity = crate::tables::ipcache_covering(&out.ipcache, &key).map_or(ID_WORLD, |v| v.cidr_identity);
        out.ipcache.insert(key, IpcacheValue { identity: ID_UNKNOWN_POD, cidr_identity });
    }
    for ip in &cluster.host_addrs {
        let v = IpcacheValue { identity: ID_HOST, cidr_identity: cidr_of(*ip, vec![]) };
        out.ipcache.insert(ipcache_key(host_net(*ip)), v);
    }
    // Who an address belongs to, most authoritative first: the node's own addresses, then the
    // addresses this node's CNI assigned to its pods (`local`), then what other pods' objects
    // claim. A claim on a node or local address is refused; two claims on another address
    // leave it to no pod (no selector matches it; ipBlocks still see the address). Either
    // way both objects are named in `address_conflicts`.
    let host: BTreeSet<IpAddr> = cluster.host_addrs.iter().map(|a| a.to_canonical()).collect();
    let mut claims: BTreeMap<IpAddr, Claim> = BTreeMap::new();
    for (key, info) in &cluster.pods {
        let is_local = local.contains(key);
        for ip in &info.ips {
            let ip = ip.to_canonical();
            if host.contains(&ip) {
                out.address_conflicts.push(AddressConflict {
                    address: ip,
                    kept: Owner::Node,
                    refused: vec![key.clone()],
                });
                continue;
            }
            match claims.get_mut(&ip) {
                None => {
                    claims.insert(ip, Claim { owner: key, local: is_local, others: vec![] });
                }
                Some(c) if c.local && !is_local => c.others.push(key),
                Some(c) if is_local && !c.local => {
                    let displaced = std::mem::replace(&mut c.owner, key);
                    c.local = true;
                    c.others.push(displaced);
                }
                Some(c) => c.others.push(key),
            }
        }
    }
    for (ip, claim) in claims {
        let identity = if claim.others.is_empty() || claim.local {
            out.pod_identity.get(claim.owner).copied().unwrap_or(ID_UNKNOWN_POD)
        } else {
            ID_UNKNOWN_POD
        };
        if !claim.others.is_empty() {
            let kept = if claim.local { Owner::LocalPod(claim.owner.clone()) } else { Owner::Nobody };
            let mut refused: Vec<PodKey> = claim.others.iter().map(|k| (*k).clone()).collect();
            if !claim.local {
                refused.insert(0, claim.owner.clone());
            }
            out.address_conflicts.push(AddressConflict { address: ip, kept, refused });
        }
        let ports = if identity == ID_UNKNOWN_POD {
            vec![]
        } else {
            cluster.pods.get(claim.owner).map(|p| flavour(&p.ports)).unwrap_or_default()
        };
        let v = IpcacheValue { identity, cidr_identity: cidr_of(ip, ports) };
        out.ipcache.insert(ipcache_key(host_net(ip)), v);
    }

    // Policy entries and isolation, once per local subject identity.
    let mut facts_by_namespace: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (id, f) in &facts {
        facts_by_namespace.entry(f.namespace).or_default().push(*id);
    }
    let ctx = RuleCtx { facts: &facts, facts_by_namespace: &facts_by_namespace, cidr_ids: &cidr_ids };
    // A policy only selects pods of its own namespace.
    let mut policies_by_namespace: BTreeMap<&str, Vec<(&PolicyRef, &Policy)>> = BTreeMap::new();
    for (pref, p) in &cluster.policies {
        policies_by_namespace.entry(pref.namespace.as_str()).or_default().push((pref, p));
    }
    // A rule's peers do not depend on the subject: resolved once per rule, however many
    // local identities the policy selects.
    let mut peers_of_rule: BTreeMap<u32, BTreeMap<u32, &[NamedPort]>> = BTreeMap::new();
    let mut http = HttpEntries::new();
    let mut subjects: BTreeMap<u32, (&PodKey, &[NamedPort], &Labels)> = BTreeMap::new();
    for key in local {
        let (Some(info), Some(id)) = (cluster.pods.get(key), out.pod_identity.get(key)) else {
            continue;
        };
        if *id != ID_UNKNOWN_POD {
            subjects.entry(*id).or_insert((key, &info.ports, &info.labels));
        }
    }
    let mut fqdn = FqdnPolicyBuilder::default();
    let mut audit_entries: BTreeMap<PolicyKey, PolicyValue> = BTreeMap::new();
    for (subject, (key, ports, labels)) in subjects {
        let mut bits = 0;
        // Behind the DNS proxy: every egress rule then counts for its DNS rules (a plain
        // NetworkPolicy's port-53 allow too). Enforced policies only: the proxy enforces.
        let fqdn_subject = policies_by_namespace.get(key.namespace.as_str()).into_iter().flatten().any(|(_, p)| {
            cluster.mode(p) == Mode::Enforce && p.pod_selector.matches(labels) && crate::fqdn_policy::has_fqdn(p)
        });
        let mut audited: Vec<(&PolicyRef, &Policy)> = Vec::new();
        for (pref, p) in policies_by_namespace.get(key.namespace.as_str()).into_iter().flatten() {
            if !p.pod_selector.matches(labels) {
                continue;
            }
            if cluster.mode(p) == Mode::Audit {
                audited.push((pref, p));
                continue;
            }
            for (dir, bit, rules) in [
                (Direction::Ingress, EP_ISOLATED_INGRESS, &p.ingress),
                (Direction::Egress, EP_ISOLATED_EGRESS, &p.egress),
            ] {
                let Some(rules) = rules else { continue };
                bits |= bit;
                for (index, rule) in rules.iter().enumerate() {
                    if let Some(rule_id) = rule_ids.get(&(*pref, dir, index)) {
                        let peers = peers_of_rule.entry(*rule_id).or_insert_with(|| ctx.peers(p, &rule.peers));
                        ctx.emit(&mut out.policy, &mut http, subject, ports, peers, dir, rule, *rule_id);
                        if dir == Direction::Egress && fqdn_subject {
                            fqdn.add_rule(subject, rule, *rule_id, peers);
                        }
                    }
                }
            }
        }
        for (dir, isolated, audit_bit) in [
            (Direction::Ingress, EP_ISOLATED_INGRESS, EP_AUDIT_INGRESS),
            (Direction::Egress, EP_ISOLATED_EGRESS, EP_AUDIT_EGRESS),
        ] {
            // Enforced policies isolate the subject here: the full set only adds allows.
            if bits & isolated != 0 {
                continue;
            }
            for (pref, p) in &audited {
                let rules = match dir {
                    Direction::Ingress => &p.ingress,
                    Direction::Egress => &p.egress,
                };
                let Some(rules) = rules else { continue };
                bits |= audit_bit;
                for (index, rule) in rules.iter().enumerate() {
                    if let Some(rule_id) = rule_ids.get(&(*pref, dir, index)) {
                        let peers = peers_of_rule.entry(*rule_id).or_insert_with(|| ctx.peers(p, &rule.peers));
                        ctx.emit_audit(&mut audit_entries, subject, ports, peers, dir, rule, *rule_id);
                    }
                }
            }
        }
        out.isolation.insert(subject, bits);
    }
    resolve_http(&mut out, &http, ids);
    // After the HTTP entries: audit entries are for other (subject, direction) pairs and must
    // not count as plain allows there.
    out.policy.extend(audit_entries);
    out.fqdn = fqdn.finish();
    for subject in out.fqdn.keys() {
        if let Some(bits) = out.isolation.get_mut(subject) {
            *bits |= ward_common::fqdn::EP_DNS_PROXY;
        }
    }
    out
}

/// The policy prefixes grouped by length, so that an address's longest containing prefix is
/// one hash lookup per distinct length rather than a scan of every prefix: every pod address
/// is looked up, and a scan made the compile O(pods × prefixes).
struct PrefixIndex {
    /// Distinct lengths of the IPv4 and the IPv6 prefixes, longest first.
    v4_lens: Vec<u8>,
    v6_lens: Vec<u8>,
    nets: HashSet<IpNet>,
}

impl PrefixIndex {
    fn new(prefixes: &BTreeSet<IpNet>) -> Self {
        let lens = |v6: bool| -> Vec<u8> {
            let set: BTreeSet<u8> =
                prefixes.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6).map(|n| n.prefix_len()).collect();
            set.into_iter().rev().collect()
        };
        PrefixIndex { v4_lens: lens(false), v6_lens: lens(true), nets: prefixes.iter().copied().collect() }
    }

    /// The longest policy prefix containing `ip`. Prefixes are canonical (host bits clear,
    /// IPv4-mapped written as IPv4), so the address truncated to a length finds the prefix
    /// of that length that contains it, if there is one; a prefix of one family never
    /// contains an address of the other.
    fn longest(&self, ip: IpAddr) -> Option<IpNet> {
        let ip = ip.to_canonical();
        let lens = if ip.is_ipv4() { &self.v4_lens } else { &self.v6_lens };
        lens.iter().filter_map(|len| IpNet::new(ip, *len).ok()).map(|n| n.trunc()).find(|n| self.nets.contains(n))
    }
}

fn rules_of(p: &Policy) -> impl Iterator<Item = (Direction, &Rule)> {
    let ingress = p.ingress.iter().flatten().map(|r| (Direction::Ingress, r));
    let egress = p.egress.iter().flatten().map(|r| (Direction::Egress, r));
    ingress.chain(egress)
}

struct RuleCtx<'a, 'b> {
    facts: &'b BTreeMap<u32, LabelFacts<'a>>,
    /// The label identities of each namespace: a peer without a namespace selector only
    /// looks at its policy's namespace.
    facts_by_namespace: &'b BTreeMap<&'a str, Vec<u32>>,
    cidr_ids: &'b BTreeMap<CidrKey, u32>,
}

impl RuleCtx<'_, '_> {
    /// The peer identities a rule's peers stand for, each with the named ports it has as a
    /// destination (empty for `ID_ANY` and plain prefixes).
    fn peers<'s>(&'s self, policy: &Policy, peers: &Option<Vec<Peer>>) -> BTreeMap<u32, &'s [NamedPort]> {
        let mut out: BTreeMap<u32, &[NamedPort]> = BTreeMap::new();
        let Some(peers) = peers else {
            out.insert(ID_ANY, &[]);
            return out;
        };
        for peer in peers {
            match peer {
                Peer::Pods { namespace_selector: None, pod_selector } => {
                    let same_namespace = self.facts_by_namespace.get(policy.namespace.as_str()).into_iter().flatten();
                    for (id, f) in same_namespace.filter_map(|id| Some((*id, self.facts.get(id)?))) {
                        if pod_selector.as_ref().is_none_or(|s| s.matches(f.labels)) {
                            out.insert(id, f.ports);
                        }
                    }
                }
                Peer::Pods { namespace_selector: Some(ns_selector), pod_selector } => {
                    // The identities of one namespace share its labels: one namespace match
                    // per namespace, not per identity.
                    for ids in self.facts_by_namespace.values() {
                        let of_namespace = ids.iter().filter_map(|id| Some((*id, self.facts.get(id)?)));
                        let mut of_namespace = of_namespace.peekable();
                        if !of_namespace.peek().is_some_and(|(_, f)| ns_selector.matches(&f.namespace_labels)) {
                            continue;
                        }
                        for (id, f) in of_namespace {
                            if pod_selector.as_ref().is_none_or(|s| s.matches(f.labels)) {
                                out.insert(id, f.ports);
                            }
                        }
                    }
                }
                Peer::IpBlock { cidr, except } => {
                    for (key, id) in cidrs_within(self.cidr_ids, cidr) {
                        if !except.iter().any(|e| e.contains(&key.prefix)) {
                            out.insert(*id, &key.ports);
                        }
                    }
                }
                // The addresses of an fqdn peer are learned at run time by the DNS proxy, which
                // writes them per endpoint into WARD_FQDN (`fqdn_policy`): no policy entry.
                Peer::Fqdn(_) => {}
            }
        }
        out
    }

    /// Writes the entries of one rule for one subject identity: plain allows into `map`, the
    /// entries of ports with HTTP rules into `http` (resolved by [`resolve_http`]).
    #[expect(clippy::too_many_arguments, reason = "one call site; a struct would only rename them")]
    fn emit(
        &self,
        map: &mut BTreeMap<PolicyKey, PolicyValue>,
        http: &mut HttpEntries,
        subject: u32,
        subject_ports: &[NamedPort],
        peers: &BTreeMap<u32, &[NamedPort]>,
        dir: Direction,
        rule: &Rule,
        rule_id: u32,
    ) {
        let Some(specs) = &rule.ports else {
            for peer in peers.keys() {
                put_plain(map, PolicyKey::any_proto(subject, *peer, dir), rule_id);
            }
            return;
        };
        for (port_index, spec) in specs.iter().enumerate() {
            let mut keys = Vec::new();
            self.port_keys(&mut keys, subject, subject_ports, peers, dir, spec);
            match &spec.http {
                None => {
                    for key in keys {
                        put_plain(map, key, rule_id);
                    }
                }
                Some(rules) => {
                    // A port with HTTP rules admits matching requests, not the connection:
                    // its entries carry the rules, gathered per key across policies.
                    let port_index = u8::try_from(port_index).unwrap_or(u8::MAX);
                    for key in keys {
                        let set = http.entry(key).or_default();
                        for (i, r) in rules.iter().enumerate() {
                            set.insert(HttpSetRule {
                                rule_id,
                                port_index,
                                http_index: u8::try_from(i).unwrap_or(u8::MAX),
                                rule: r.clone(),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Writes the entries of one audited rule for one subject identity, flagged
    /// `POLICY_AUDIT`; a port with HTTP rules counts as its L4 keys (audit is judged at L4).
    #[expect(clippy::too_many_arguments, reason = "the arguments of `emit` but its HTTP map")]
    fn emit_audit(
        &self,
        map: &mut BTreeMap<PolicyKey, PolicyValue>,
        subject: u32,
        subject_ports: &[NamedPort],
        peers: &BTreeMap<u32, &[NamedPort]>,
        dir: Direction,
        rule: &Rule,
        rule_id: u32,
    ) {
        let mut put = |key: PolicyKey| {
            let v = map.entry(key).or_insert(PolicyValue { rule_id, flags: POLICY_AUDIT });
            v.rule_id = v.rule_id.min(rule_id);
        };
        let Some(specs) = &rule.ports else {
            for peer in peers.keys() {
                put(PolicyKey::any_proto(subject, *peer, dir));
            }
            return;
        };
        for spec in specs {
            let mut keys = Vec::new();
            self.port_keys(&mut keys, subject, subject_ports, peers, dir, spec);
            keys.into_iter().for_each(&mut put);
        }
    }

    /// The policy keys one port entry of a rule stands for.
    fn port_keys(
        &self,
        keys: &mut Vec<PolicyKey>,
        subject: u32,
        subject_ports: &[NamedPort],
        peers: &BTreeMap<u32, &[NamedPort]>,
        dir: Direction,
        spec: &PortSpec,
    ) {
        let proto = spec.protocol.number();
        match &spec.port {
            PortRef::Any | PortRef::Number(_) => {
                for block in blocks(spec) {
                    for peer in peers.keys() {
                        keys.push(PolicyKey::port_block(subject, *peer, dir, proto, block));
                    }
                }
            }
            PortRef::Named(name) => {
                let single = |port: u16| PortBlock { base: port, prefix_len: 16 };
                // A name can stand for several ports of one pod (its containers may share it):
                // one entry for each.
                match dir {
                    Direction::Ingress => {
                        for port in resolve(subject_ports, name, spec.protocol) {
                            for peer in peers.keys() {
                                keys.push(PolicyKey::port_block(subject, *peer, dir, proto, single(port)));
                            }
                        }
                    }
                    Direction::Egress => {
                        for (peer, dst_ports) in peers {
                            if *peer == ID_ANY {
                                // Only pods have named ports: every pod identity that
                                // resolves the name, by its label identity.
                                for (id, f) in self.facts {
                                    for port in resolve(f.ports, name, spec.protocol) {
                                        keys.push(PolicyKey::port_block(subject, *id, dir, proto, single(port)));
                                    }
                                }
                            } else {
                                for port in resolve(dst_ports, name, spec.protocol) {
                                    keys.push(PolicyKey::port_block(subject, *peer, dir, proto, single(port)));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A plain allow; where two rules give the same entry, the lower rule id names it.
fn put_plain(map: &mut BTreeMap<PolicyKey, PolicyValue>, key: PolicyKey, rule_id: u32) {
    let v = map.entry(key).or_insert(PolicyValue { rule_id, flags: 0 });
    v.rule_id = v.rule_id.min(rule_id);
}

/// HTTP rules gathered per policy key, before [`resolve_http`].
type HttpEntries = BTreeMap<PolicyKey, BTreeSet<HttpSetRule>>;

/// A plain entry for the same subject, peer and direction whose prefix covers `key` (the
/// same key, or a shorter prefix of it), if any.
fn plain_cover(map: &BTreeMap<PolicyKey, PolicyValue>, key: &PolicyKey) -> Option<PolicyValue> {
    (POLICY_ANY_PROTO_BITS..=key.prefixlen)
        .rev()
        .filter_map(|len| map.get(&masked(key, len)))
        .find(|v| policy_http_set(v.flags).is_none())
        .copied()
}

/// Turns the gathered HTTP rules into policy entries and rule sets. Union semantics: a plain
/// allow for the same peer and port (the same or a broader entry) moots the HTTP rules there,
/// so no HTTP entry is written under it (the lookup finds the plain allow); an HTTP entry
/// under a broader HTTP entry of the same peer also gets the broader one's rules, because
/// the longest prefix alone answers in the kernel. Mooted rules, and rules for any peer that a
/// plain any-peer allow moots, are reported in `out.http_warnings`.
fn resolve_http(out: &mut Compiled, http: &HttpEntries, ids: &mut Identities) {
    for (key, rules) in http {
        if let Some(plain) = plain_cover(&out.policy, key) {
            out.http_warnings.push(HttpWarning::Moot {
                key: *key,
                http_rules: rule_ids_of(rules),
                by_rule: plain.rule_id,
            });
            continue;
        }
        let mut all: BTreeSet<HttpSetRule> = rules.clone();
        for len in POLICY_ANY_PROTO_BITS..key.prefixlen {
            if let Some(broader) = http.get(&masked(key, len)) {
                all.extend(broader.iter().cloned());
            }
        }
        if key.peer() != ID_ANY {
            let any = PolicyKey { peer_be: ID_ANY.to_be_bytes(), ..*key };
            if let Some(plain) = plain_cover(&out.policy, &any) {
                out.http_warnings.push(HttpWarning::Moot {
                    key: *key,
                    http_rules: rule_ids_of(rules),
                    by_rule: plain.rule_id,
                });
            }
        }
        let mut set = HttpSet::EMPTY;
        let mut kept = BTreeSet::new();
        for r in &all {
            if set.len as usize >= SET_RULES_MAX {
                break;
            }
            // Validation bounds methods and paths to what an entry holds.
            if let Some(e) = r.rule.entry(r.rule_id, r.port_index, r.http_index) {
                set.rules[set.len as usize] = e;
                set.len += 1;
                kept.insert(r.clone());
            }
        }
        if kept.len() < all.len() {
            out.http_warnings.push(HttpWarning::TooMany { key: *key, rules: all.len(), kept: kept.len() });
        }
        // Without a set id the entry stays out: the port admits nothing (fails closed).
        let Some(id) = ids.http_set(&HttpSetKey { rules: kept.into_iter().collect() }) else { continue };
        let rule_id = all.iter().map(|r| r.rule_id).min().unwrap_or(0);
        out.policy.insert(*key, PolicyValue { rule_id, flags: policy_http_flags(id) });
        out.http_sets.insert(id, set);
        if let Some(bits) = out.isolation.get_mut(&key.subject()) {
            *bits |= EP_HTTP_INGRESS;
        }
    }
}

fn rule_ids_of(rules: &BTreeSet<HttpSetRule>) -> Vec<u32> {
    let ids: BTreeSet<u32> = rules.iter().map(|r| r.rule_id).collect();
    ids.into_iter().collect()
}

/// `key` cut to its first `len` bits.
fn masked(key: &PolicyKey, len: u32) -> PolicyKey {
    crate::tables::masked_policy_key(key, len)
}

/// The CIDR identities whose prefix lies inside `cidr`. Keys order by prefix address first
/// (then length, then ports), and every prefix inside `cidr` has its address in `cidr`'s
/// range: a range scan, not a pass over every CIDR identity per ipBlock peer (which made
/// 100k ipBlock peers quadratic).
fn cidrs_within<'m>(
    cidr_ids: &'m BTreeMap<CidrKey, u32>,
    cidr: &IpNet,
) -> impl Iterator<Item = (&'m CidrKey, &'m u32)> + 'm {
    let cidr = *cidr;
    let first = match cidr {
        IpNet::V4(n) => IpNet::V4(Ipv4Net::new(n.network(), 0).unwrap_or_default()),
        IpNet::V6(n) => IpNet::V6(Ipv6Net::new(n.network(), 0).unwrap_or_default()),
    };
    let last = cidr.broadcast();
    cidr_ids
        .range(CidrKey { prefix: first, ports: vec![] }..)
        .take_while(move |(k, _)| match (k.prefix, last) {
            (IpNet::V4(p), IpAddr::V4(l)) => p.addr() <= l,
            (IpNet::V6(p), IpAddr::V6(l)) => p.addr() <= l,
            _ => false,
        })
        .filter(move |(k, _)| cidr.contains(&k.prefix))
}

/// The port blocks of a numeric or any-port spec.
fn blocks(spec: &PortSpec) -> Vec<PortBlock> {
    match (&spec.port, spec.end_port) {
        (PortRef::Number(first), Some(last)) => {
            let mut out = [PortBlock { base: 0, prefix_len: 0 }; MAX_BLOCKS];
            let n = range_to_blocks(*first, last, &mut out);
            out[..n].to_vec()
        }
        (PortRef::Number(port), None) => vec![PortBlock { base: *port, prefix_len: 16 }],
        (PortRef::Any, _) => vec![PortBlock { base: 0, prefix_len: 0 }],
        (PortRef::Named(_), _) => vec![],
    }
}

/// A named port resolves to every container port of the pod with that name and the rule's
/// protocol: none, one, or several when containers share the name.
pub fn resolve<'p>(ports: &'p [NamedPort], name: &'p str, protocol: Protocol) -> impl Iterator<Item = u16> + 'p {
    ports.iter().filter(move |np| np.name == name && np.protocol == protocol).map(|np| np.port)
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "compile_audit_tests.rs"]
mod audit_tests;
