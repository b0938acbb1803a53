//! Where cluster state comes from. Standalone mode reads a directory of manifests
//! (`directory`); the Kubernetes API watcher comes later behind the same `Snapshot`. Either
//! way the agent sees validated objects only: validation lives in `ward_policy::validate`.

pub mod directory;

use std::collections::BTreeMap;

use ward_policy::cluster::{PodKey, PolicyKind, PolicyRef};
use ward_policy::model::{DEFAULT_NAMESPACE, Object, ObjectMeta};
use ward_policy::validate::{self as v, ObjectError, PodInfo, Policy};

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
    Namespace(Labels),
    Pod(PodInfo),
    Policy(Policy),
}

/// Everything the compiler needs from the datastore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<PodKey, PodInfo>,
    pub policies: BTreeMap<PolicyRef, Policy>,
}

impl Snapshot {
    /// Removes the object `key` names, whatever its kind.
    pub fn remove(&mut self, key: &ObjKey) {
        match key.kind {
            KIND_NAMESPACE => {
                self.namespaces.remove(&key.name);
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
            _ => {}
        }
    }

    /// Puts (or replaces) the object `key` names.
    pub fn insert(&mut self, key: &ObjKey, valid: &Valid) {
        match valid {
            Valid::Namespace(labels) => {
                self.namespaces.insert(key.name.clone(), labels.clone());
            }
            Valid::Pod(p) => {
                self.pods.insert(PodKey { namespace: key.namespace.clone(), name: key.name.clone() }, p.clone());
            }
            Valid::Policy(p) => {
                self.policies.insert(p.policy_ref(), p.clone());
            }
        }
    }
}

/// An object that failed validation: its key when it could be named, so the last valid
/// version of it can stay in force.
#[derive(Debug)]
pub struct Invalid {
    pub key: Option<ObjKey>,
    pub error: ObjectError,
}

const KIND_NAMESPACE: &str = "Namespace";
const KIND_POD: &str = "Pod";
const KIND_POLICY: &str = "NetworkPolicy";
const KIND_WARD_POLICY: &str = "WardNetworkPolicy";

/// What validation filled in that the object's manifest left out, for `ward status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaulted {
    pub field: &'static str,
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
                field: "metadata.namespace",
                message: format!("not set: namespace defaulted to {DEFAULT_NAMESPACE} (as kubectl does)"),
            });
        }
        (key, defaulted)
    };
    match obj {
        Object::Namespace(ns) => {
            let k = ObjKey { kind: KIND_NAMESPACE, namespace: String::new(), name: ns.metadata.name.clone() };
            v::namespace(ns, file)
                .map(|(_, labels)| (k.clone(), Valid::Namespace(labels), Vec::new()))
                .map_err(|e| invalid(Some(k), e))
        }
        Object::Pod(p) => {
            let (k, defaulted) = namespaced(KIND_POD, &p.metadata);
            v::pod(p, file).map(|(_, info)| (k.clone(), Valid::Pod(info), defaulted)).map_err(|e| invalid(Some(k), e))
        }
        Object::NetworkPolicy(np) => {
            let (k, defaulted) = namespaced(KIND_POLICY, &np.metadata);
            v::policy(np, file).map(|p| (k.clone(), Valid::Policy(p), defaulted)).map_err(|e| invalid(Some(k), e))
        }
        Object::WardNetworkPolicy(wp) => {
            let (k, defaulted) = namespaced(KIND_WARD_POLICY, &wp.metadata);
            v::ward_policy(wp, file).map(|p| (k.clone(), Valid::Policy(p), defaulted)).map_err(|e| invalid(Some(k), e))
        }
        other => Err(invalid(
            None,
            ObjectError::new(file, &other.describe(), "kind", &format!("{} is not supported yet", other.kind())),
        )),
    }
}
