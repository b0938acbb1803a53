//! Where cluster state comes from. Standalone mode reads a directory of manifests
//! (`directory`); the Kubernetes API watcher comes later behind the same `Snapshot`. Either
//! way the agent sees validated objects only: validation lives in `ward_policy::validate`.

pub mod directory;

use std::collections::BTreeMap;

use ward_policy::cluster::{PodKey, PolicyKind, PolicyRef};
use ward_policy::model::Object;
use ward_policy::validate::{self as v, ObjectError, PodInfo, Policy};

pub type Labels = BTreeMap<String, String>;

/// Identifies an object across reloads: kind, namespace ("" for cluster-scoped), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// A validated object.
#[derive(Clone, Debug)]
pub enum Valid {
    Namespace(Labels),
    Pod(PodInfo),
    Policy(Policy),
}

/// Everything the compiler needs from the datastore.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<PodKey, PodInfo>,
    pub policies: BTreeMap<PolicyRef, Policy>,
}

impl Snapshot {
    /// Removes the object `key` names, whatever its kind.
    fn remove(&mut self, key: &ObjKey) {
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

    fn insert(&mut self, key: &ObjKey, valid: &Valid) {
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

/// Validates one object.
pub fn validate(obj: &Object, file: &str) -> Result<(ObjKey, Valid), Box<Invalid>> {
    let invalid = |key: Option<ObjKey>, error| Box::new(Invalid { key, error });
    let key = |kind: &'static str, namespace: Option<&String>, name: &str| ObjKey {
        kind,
        namespace: namespace.cloned().unwrap_or_default(),
        name: name.to_owned(),
    };
    match obj {
        Object::Namespace(ns) => {
            let k = key(KIND_NAMESPACE, None, &ns.metadata.name);
            v::namespace(ns, file)
                .map(|(_, labels)| (k.clone(), Valid::Namespace(labels)))
                .map_err(|e| invalid(Some(k), e))
        }
        Object::Pod(p) => {
            let k = key(KIND_POD, p.metadata.namespace.as_ref(), &p.metadata.name);
            v::pod(p, file).map(|(_, info)| (k.clone(), Valid::Pod(info))).map_err(|e| invalid(Some(k), e))
        }
        Object::NetworkPolicy(np) => {
            let k = key(KIND_POLICY, np.metadata.namespace.as_ref(), &np.metadata.name);
            v::policy(np, file).map(|p| (k.clone(), Valid::Policy(p))).map_err(|e| invalid(Some(k), e))
        }
        Object::WardNetworkPolicy(wp) => {
            let k = key(KIND_WARD_POLICY, wp.metadata.namespace.as_ref(), &wp.metadata.name);
            v::ward_policy(wp, file).map(|p| (k.clone(), Valid::Policy(p))).map_err(|e| invalid(Some(k), e))
        }
        other => Err(invalid(
            None,
            ObjectError::new(file, &other.describe(), "kind", &format!("{} is not supported yet", other.kind())),
        )),
    }
}
