//! The validated state of the cluster as policy sees it: namespaces with their labels, pods,
//! policies, and the node's own addresses.
//!
//! The datastore (watch events) and the CLI (manifest files) build it through
//! [`Cluster::apply`]; `compile`, `reference` and `explain` only read it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::Object;
use crate::selector::Labels;
use crate::validate::{self, Mode, NAMESPACE_NAME_LABEL, ObjectError, PodInfo, Policy};

/// A pod by namespace and name. Displays as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

/// A policy by namespace, name and kind (not `ward_common::maps::PolicyKey`, the map key).
/// Displays as `namespace/name`, with ` (WardNetworkPolicy)` after it for that kind: a
/// NetworkPolicy and a WardNetworkPolicy may share a name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
    /// Absent in state written before WardNetworkPolicy existed: a NetworkPolicy.
    #[serde(default, skip_serializing_if = "PolicyKind::is_network_policy")]
    pub kind: PolicyKind,
}

/// Which API type a policy came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy.
    #[default]
    NetworkPolicy,
    /// `policy.ward.dev/v1alpha1` WardNetworkPolicy: NetworkPolicy plus `fqdn` and `http`.
    WardNetworkPolicy,
}

impl PolicyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::WardNetworkPolicy => "WardNetworkPolicy",
        }
    }

    fn is_network_policy(&self) -> bool {
        *self == PolicyKind::NetworkPolicy
    }
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PodKey { namespace: namespace.into(), name: name.into() }
    }
}

impl PolicyRef {
    /// A NetworkPolicy.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PolicyRef { namespace: namespace.into(), name: name.into(), kind: PolicyKind::NetworkPolicy }
    }

    pub fn of_kind(kind: PolicyKind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PolicyRef { namespace: namespace.into(), name: name.into(), kind }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if self.kind != PolicyKind::NetworkPolicy {
            write!(f, " ({})", self.kind.as_str())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Namespace labels, including `kubernetes.io/metadata.name` (see [`Cluster::namespace_labels`]).
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: BTreeMap<PodKey, PodInfo>,
    pub policies: BTreeMap<PolicyRef, Policy>,
    /// The node's own addresses: traffic from them to a pod is always allowed.
    pub host_addrs: Vec<IpAddr>,
    /// The cluster's Service ranges (`--service-cidr`): egress to them is decided on the
    /// backend kube-proxy translates them to (`ward_common::service`).
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// The cluster's pod ranges (every Node's `spec.podCIDRs`, this node's own ranges): an
    /// address in one that no known pod holds is a pod not known yet (`ID_UNKNOWN_POD`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Namespaces annotated `policy.ward.dev/mode: audit`: every policy in them is audited.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub audited_namespaces: BTreeSet<String>,
}

impl Cluster {
    pub fn new() -> Self {
        Cluster::default()
    }

    /// Builds a cluster from parsed objects; objects that fail validation are left out and
    /// their errors returned.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Object>, file: &str) -> (Cluster, Vec<ObjectError>) {
        let mut cluster = Cluster::new();
        let mut errors = Vec::new();
        for o in objects {
            if let Err(e) = cluster.apply(o, file) {
                errors.push(e);
            }
        }
        (cluster, errors)
    }

    /// Adds or replaces one object after validating it; on error the cluster is unchanged.
    pub fn apply(&mut self, object: &Object, file: &str) -> Result<(), ObjectError> {
        match object {
            Object::Namespace(ns) => {
                let (name, labels) = validate::namespace(ns, file)?;
                // A wrong value is enforce (its error is the datastore's to report).
                match validate::namespace_mode(ns, file).0 {
                    Mode::Audit => self.audited_namespaces.insert(name.clone()),
                    Mode::Enforce => self.audited_namespaces.remove(&name),
                };
                self.namespaces.insert(name, labels);
            }
            Object::Pod(p) => {
                let (key, info) = validate::pod(p, file)?;
                self.pods.insert(key, info);
            }
            Object::NetworkPolicy(np) => {
                let p = validate::policy(np, file)?;
                self.policies.insert(p.policy_ref(), p);
            }
            Object::WardNetworkPolicy(wp) => {
                let p = validate::ward_policy(wp, file)?;
                self.policies.insert(p.policy_ref(), p);
            }
        }
        Ok(())
    }

    /// Sets a namespace's labels, adding `kubernetes.io/metadata.name` as the API server does.
    pub fn set_namespace(&mut self, name: &str, mut labels: Labels) {
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        self.namespaces.insert(name.into(), labels);
    }

    /// The labels namespace selectors see: the namespace's own, and always
    /// `kubernetes.io/metadata.name: <name>`, also for a namespace with no Namespace object.
    pub fn namespace_labels(&self, namespace: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(namespace) {
            Some(l) if l.get(NAMESPACE_NAME_LABEL).map(String::as_str) == Some(namespace) => Cow::Borrowed(l),
            Some(l) => {
                let mut l = l.clone();
                l.insert(NAMESPACE_NAME_LABEL.into(), namespace.into());
                Cow::Owned(l)
            }
            None => Cow::Owned(validate::implicit_namespace_labels(namespace)),
        }
    }

    /// The enforced policies whose `podSelector` selects the pod (policies of its own
    /// namespace only): what decides its traffic. Audited ones are
    /// [`Cluster::audited_policies_selecting`].
    pub fn policies_selecting<'a>(&'a self, pod: &PodKey) -> Vec<(&'a PolicyRef, &'a Policy)> {
        self.selecting(pod, Mode::Enforce)
    }

    /// The audited policies whose `podSelector` selects the pod.
    pub fn audited_policies_selecting<'a>(&'a self, pod: &PodKey) -> Vec<(&'a PolicyRef, &'a Policy)> {
        self.selecting(pod, Mode::Audit)
    }

    fn selecting<'a>(&'a self, pod: &PodKey, mode: Mode) -> Vec<(&'a PolicyRef, &'a Policy)> {
        let Some(info) = self.pods.get(pod) else {
            return Vec::new();
        };
        self.policies
            .iter()
            .filter(|(r, p)| {
                r.namespace == pod.namespace && self.mode(p) == mode && p.pod_selector.matches(&info.labels)
            })
            .collect()
    }

    /// A policy's mode in force: audit when the policy says so or its namespace does.
    pub fn mode(&self, p: &Policy) -> Mode {
        if p.mode == Mode::Audit || self.audited_namespaces.contains(&p.namespace) {
            Mode::Audit
        } else {
            Mode::Enforce
        }
    }

    /// The cluster as if its audited policies were enforced: what switching every one of
    /// them to enforce would give (the reference for what audit reports).
    pub fn all_enforced(&self) -> Cluster {
        let mut c = self.clone();
        c.audited_namespaces.clear();
        for p in c.policies.values_mut() {
            p.mode = Mode::Enforce;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_documents;

    #[test]
    fn namespace_objects_get_the_metadata_name_label_and_missing_namespaces_imply_it() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n";
        let objects: Vec<Object> = parse_documents(text, "f").into_iter().flatten().collect();
        let (c, errors) = Cluster::from_objects(&objects, "f");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(c.namespaces["x"][NAMESPACE_NAME_LABEL], "x");
        assert_eq!(c.namespaces["x"]["ns"], "x");
        let implicit = c.namespace_labels("nowhere");
        assert_eq!(implicit.len(), 1);
        assert_eq!(implicit[NAMESPACE_NAME_LABEL], "nowhere");
    }

    #[test]
    fn a_namespace_cannot_claim_another_name_label() {
        let mut c = Cluster::new();
        c.namespaces.insert("x".into(), Labels::from([(NAMESPACE_NAME_LABEL.into(), "y".into())]));
        assert_eq!(c.namespace_labels("x")[NAMESPACE_NAME_LABEL], "x");
    }
}
