//! Where cluster state comes from, as one seam: every source emits [`Event`]s (the shape of
//! kube-rs's watcher: `Init`, `InitApply`…, `InitDone` for a full listing, `Apply`/`Delete`
//! for a change) and one [`Store`] applies them. Standalone mode's source reads a directory
//! of manifests (`directory`); the cluster's watches the Kubernetes API (`kubernetes`).
//! Either way the agent sees validated objects only: each source validates with
//! `ward_policy::validate` (through [`validate`]) and reports what it rejected in its
//! [`Checkpoint`], because what "the last valid version" means is the source's to say (per
//! file for a directory, per object for the API).

pub mod directory;
pub mod kubernetes;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use ward_policy::cluster::{PodKey, PolicyKind, PolicyRef};
use ward_policy::model::{DEFAULT_NAMESPACE, Object, ObjectMeta};
use ward_policy::validate::{self as v, Mode, ObjectError, PodInfo, Policy};

pub use store::Store;

pub type Labels = BTreeMap<String, String>;

/// Identifies an object across reloads: kind, namespace ("" for cluster-scoped), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// `Kind namespace/name`, or `Kind name` for cluster-scoped kinds, as errors name objects.
impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A validated object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Valid {
    /// Labels, and the mode of every policy of the namespace (`policy.ward.dev/mode`).
    Namespace(Labels, Mode),
    Pod(PodInfo),
    Policy(Policy),
    Node(NodeInfo),
}

/// What the agent reads from a Node: its pod CIDRs (this node's become the CNI's address
/// ranges) and its addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub pod_cidrs: Vec<ipnet::IpNet>,
    pub addresses: Vec<IpAddr>,
}

/// Everything the compiler needs from the datastore, and the nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub namespaces: BTreeMap<String, Labels>,
    /// Namespaces annotated `policy.ward.dev/mode: audit` (absent in state written before
    /// audit mode: none).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub audited_namespaces: BTreeSet<String>,
    #[serde(with = "as_pairs")]
    pub pods: BTreeMap<PodKey, PodInfo>,
    #[serde(with = "as_pairs")]
    pub policies: BTreeMap<PolicyRef, Policy>,
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeInfo>,
}

/// Maps with struct keys as lists of pairs (JSON keys are strings).
mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(m: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

impl Snapshot {
    /// Removes the object `key` names, whatever its kind.
    pub fn remove(&mut self, key: &ObjKey) {
        match key.kind {
            KIND_NAMESPACE => {
                self.namespaces.remove(&key.name);
                self.audited_namespaces.remove(&key.name);
            }
            KIND_POD => {
                self.pods.remove(&PodKey { namespace: key.namespace.clone(), name: key.name.clone() });
            }
            KIND_POLICY => {
                self.policies.remove(&PolicyRef::new(&key.namespace, &key.name));
            }
            KIND_WARD_POLICY => {
                self.policies.remove(&PolicyRef::of_kind(PolicyKind::WardNetworkPolicy, &key.namespace, &key.name));
            }
            KIND_NODE => {
                self.nodes.remove(&key.name);
            }
            _ => {}
        }
    }

    /// The keys of every object of `kind` it holds.
    pub fn keys_of(&self, kind: &str) -> Vec<ObjKey> {
        let key = |kind: &'static str, namespace: &str, name: &str| ObjKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match kind {
            KIND_NAMESPACE => self.namespaces.keys().map(|n| key(KIND_NAMESPACE, "", n)).collect(),
            KIND_POD => self.pods.keys().map(|p| key(KIND_POD, &p.namespace, &p.name)).collect(),
            KIND_POLICY | KIND_WARD_POLICY => {
                let want = if kind == KIND_POLICY { PolicyKind::NetworkPolicy } else { PolicyKind::WardNetworkPolicy };
                let kind = if kind == KIND_POLICY { KIND_POLICY } else { KIND_WARD_POLICY };
                self.policies.keys().filter(|r| r.kind == want).map(|r| key(kind, &r.namespace, &r.name)).collect()
            }
            KIND_NODE => self.nodes.keys().map(|n| key(KIND_NODE, "", n)).collect(),
            _ => Vec::new(),
        }
    }

    /// The version of the object `key` names, if held.
    pub fn get(&self, key: &ObjKey) -> Option<Valid> {
        match key.kind {
            KIND_NAMESPACE => self.namespaces.get(&key.name).cloned().map(|labels| {
                let mode = if self.audited_namespaces.contains(&key.name) { Mode::Audit } else { Mode::Enforce };
                Valid::Namespace(labels, mode)
            }),
            KIND_POD => self.pods.get(&PodKey::new(&key.namespace, &key.name)).cloned().map(Valid::Pod),
            KIND_POLICY => self.policies.get(&PolicyRef::new(&key.namespace, &key.name)).cloned().map(Valid::Policy),
            KIND_WARD_POLICY => self
                .policies
                .get(&PolicyRef::of_kind(PolicyKind::WardNetworkPolicy, &key.namespace, &key.name))
                .cloned()
                .map(Valid::Policy),
            KIND_NODE => self.nodes.get(&key.name).cloned().map(Valid::Node),
            _ => None,
        }
    }

    /// Puts (or replaces) the object `key` names.
    pub fn insert(&mut self, key: &ObjKey, valid: &Valid) {
        match valid {
            Valid::Namespace(labels, mode) => {
                self.namespaces.insert(key.name.clone(), labels.clone());
                match mode {
                    Mode::Audit => self.audited_namespaces.insert(key.name.clone()),
                    Mode::Enforce => self.audited_namespaces.remove(&key.name),
                };
            }
            Valid::Pod(p) => {
                self.pods.insert(PodKey { namespace: key.namespace.clone(), name: key.name.clone() }, p.clone());
            }
            Valid::Policy(p) => {
                self.policies.insert(p.policy_ref(), p.clone());
            }
            Valid::Node(n) => {
                self.nodes.insert(key.name.clone(), n.clone());
            }
        }
    }
}

/// What a source tells the store. A full listing of some kinds is `Init(kinds)`, then an
/// `InitApply` (or `InitKeep`) per object, then `InitDone(kinds)`: only then does the store
/// swap the listing in (objects of those kinds that it did not name are gone), so a relist
/// never shows the compiler a half-read cluster. `Apply` and `Delete` are single changes.
/// A `Checkpoint` closes a batch: everything sent before it is the source's state at its
/// revision.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Init(Vec<&'static str>),
    InitApply(ObjKey, Valid),
    /// Part of a listing: the object exists, but its current version is invalid; the store
    /// keeps the version it holds (the last valid one), if any.
    InitKeep(ObjKey),
    InitDone(Vec<&'static str>),
    Apply(ObjKey, Valid),
    Delete(ObjKey),
    Checkpoint(Box<Checkpoint>),
}

/// A source's state as of its latest batch: how far it has read, what it rejected, and
/// whether it can reach what it reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub revision: Revision,
    pub rejected: Vec<Rejection>,
    pub duplicates: Vec<Duplicate>,
    pub notices: Vec<Notice>,
    pub health: Health,
}

/// How far a source has read: the lab and other clients wait on it to know a change they
/// made is enforced. A directory's is the content hash of every file applied; the API's is
/// the highest `metadata.resourceVersion` applied per kind (etcd revisions, so they grow).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Revision {
    #[default]
    None,
    /// File name (relative to the directory) to the FNV-1a 64 hash of its bytes, 16
    /// lowercase hex digits ([`file_hash`]).
    Files { files: BTreeMap<String, String> },
    /// Kind to the highest resourceVersion seen in an applied event of that kind.
    Api { resource_versions: BTreeMap<String, String> },
}

/// Whether a source reaches its objects. While it does not, the store keeps everything it
/// had: enforcement stays as last known, and nothing is opened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Unix seconds since which the source has failed to reach its objects (`None`: it
    /// reaches them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why it has not read its objects in full yet, if it has not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_synced: Option<String>,
    /// Full listings per kind since the agent started (the first included): more than one
    /// means a watch could not resume (410 Gone after a compaction, a restarted server).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listings: BTreeMap<String, u64>,
}

/// An object that failed validation: its key when it could be named, so the last valid
/// version of it can stay in force.
#[derive(Debug)]
pub struct Invalid {
    pub key: Option<ObjKey>,
    pub error: ObjectError,
}

pub const KIND_NAMESPACE: &str = "Namespace";
pub const KIND_POD: &str = "Pod";
pub const KIND_POLICY: &str = "NetworkPolicy";
pub const KIND_WARD_POLICY: &str = "WardNetworkPolicy";
pub const KIND_NODE: &str = "Node";
/// The kinds a manifests directory declares.
pub const DIRECTORY_KINDS: [&str; 4] = [KIND_NAMESPACE, KIND_POD, KIND_POLICY, KIND_WARD_POLICY];

/// What validation filled in that the object's manifest left out, for `ward status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaulted {
    pub field: String,
    pub message: String,
}

/// Validates one object. Also returns what was defaulted (a namespaced object without
/// `metadata.namespace` lands in `default`, as kubectl puts it there).
pub fn validate(obj: &Object, file: &str) -> Result<(ObjKey, Valid, Vec<Defaulted>), Box<Invalid>> {
    let invalid = |key: Option<ObjKey>, error| Box::new(Invalid { key, error });
    let namespaced = |kind: &'static str, meta: &ObjectMeta| {
        let key = ObjKey { kind, namespace: meta.namespace_or_default().to_owned(), name: meta.name.clone() };
        let mut defaulted = Vec::new();
        if meta.namespace_defaulted() {
            defaulted.push(Defaulted {
                field: "metadata.namespace".into(),
                message: format!("not set: namespace defaulted to {DEFAULT_NAMESPACE} (as kubectl does)"),
            });
        }
        (key, defaulted)
    };
    match obj {
        Object::Namespace(ns) => {
            let k = ObjKey { kind: KIND_NAMESPACE, namespace: String::new(), name: ns.metadata.name.clone() };
            let (mode, error) = v::namespace_mode(ns, file);
            v::namespace(ns, file)
                .map(|(_, labels)| (k.clone(), Valid::Namespace(labels, mode), mode_error(error)))
                .map_err(|e| invalid(Some(k), e))
        }
        Object::Pod(p) => {
            let (k, defaulted) = namespaced(KIND_POD, &p.metadata);
            v::pod(p, file).map(|(_, info)| (k.clone(), Valid::Pod(info), defaulted)).map_err(|e| invalid(Some(k), e))
        }
        Object::NetworkPolicy(np) => {
            let (k, mut defaulted) = namespaced(KIND_POLICY, &np.metadata);
            defaulted.extend(mode_error(v::policy_mode(PolicyKind::NetworkPolicy, &np.metadata, &np.spec, file).1));
            v::policy(np, file).map(|p| (k.clone(), Valid::Policy(p), defaulted)).map_err(|e| invalid(Some(k), e))
        }
        Object::WardNetworkPolicy(wp) => {
            let (k, mut defaulted) = namespaced(KIND_WARD_POLICY, &wp.metadata);
            defaulted.extend(mode_error(v::policy_mode(PolicyKind::WardNetworkPolicy, &wp.metadata, &wp.spec, file).1));
            v::ward_policy(wp, file).map(|p| (k.clone(), Valid::Policy(p), defaulted)).map_err(|e| invalid(Some(k), e))
        }
        other => Err(invalid(
            None,
            ObjectError::new(file, &other.describe(), "kind", &format!("{} is not supported yet", other.kind())),
        )),
    }
}

/// A wrong `policy.ward.dev/mode` (or `spec.mode`): the object is valid and enforced, the
/// error is reported beside it, as a notice (a rejection would keep its last valid version in
/// force, which may be an audited one).
fn mode_error(error: Option<ObjectError>) -> Vec<Defaulted> {
    error.into_iter().map(|e| Defaulted { field: e.field, message: e.message }).collect()
}

/// An object a source rejected (the local API reports them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rejection {
    pub file: String,
    /// `Kind namespace/name`, or the document index when the object could not be named.
    pub object: String,
    pub field: String,
    pub message: String,
}

/// An object that more than one document declares.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Duplicate {
    /// `Kind namespace/name`.
    pub object: String,
    /// Each declaring file in precedence order (file names in byte order, as `kubectl apply
    /// -f <dir>` applies them), once per document that declares the object.
    pub files: Vec<String>,
    /// The file whose version is in force: the last of `files` with a valid version (`None`
    /// when no file has one).
    pub in_force: Option<String>,
}

/// Something the agent filled in or decided for an object that its manifest did not say.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notice {
    pub file: String,
    /// `Kind namespace/name`.
    pub object: String,
    pub field: String,
    pub message: String,
}

/// The [`Revision::Files`] form of a file's content hash: FNV-1a 64 as 16 lowercase hex digits.
pub fn file_hash(bytes: &[u8]) -> String {
    format!("{:016x}", ward_common::hash::fnv1a64(bytes))
}
