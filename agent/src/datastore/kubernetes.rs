//! The cluster's datastore: kube-rs watchers on the Kubernetes API, one per kind (Pods and
//! Namespaces and Nodes of the whole cluster, NetworkPolicies, the `WardNetworkPolicy` CRD),
//! mapped to the store's [`Event`]s.
//!
//! kube-runtime's `watcher` speaks the protocol: the initial list (paged) then a watch from
//! its resourceVersion, watches resumed from the last version seen (bookmarks keep that
//! version fresh while nothing changes), a full relist when the server answers 410 Gone
//! (the version was compacted away, or a restarted API server's cache starts later), all with
//! kube's default backoff while the server cannot be reached. Its `Init`/`InitApply`/
//! `InitDone` are passed on as they are, so the store swaps a relist in whole.
//!
//! Objects are decoded with `ward_policy::model`'s lenient types (fields a newer server adds
//! are ignored; k8s-openapi's typed structs are not needed) and validated here: an object the
//! API server accepted that Ward cannot enforce is reported (kind, namespace/name, field) in
//! the checkpoint, and its last valid version stays in force. Whether the server answers is
//! checked every few seconds besides, so `ward status` can say since when it does not (a
//! healthy idle watch sends nothing).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt as _, StreamExt as _, stream::BoxStream};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::Deserialize;
use tokio::sync::mpsc;
use ward_policy::model::{self, Object};

use super::{
    Checkpoint, Event, Health, KIND_NAMESPACE, KIND_NODE, KIND_POD, KIND_POLICY, KIND_WARD_POLICY, NodeInfo, Notice,
    ObjKey, Rejection, Revision, Valid, validate,
};

/// Every kind this source lists.
pub const KINDS: [&str; 5] = [KIND_NAMESPACE, KIND_POD, KIND_POLICY, KIND_WARD_POLICY, KIND_NODE];
/// How rejections name where an object came from (the directory names its file).
pub const ORIGIN: &str = "kubernetes";
/// How often the source checks that the API server answers.
const HEALTH_PERIOD: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Most events handled before a checkpoint is sent (a relist of a big cluster is cut into
/// batches the owner task compiles one by one).
const BATCH: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("kubeconfig {path}: {source}")]
    KubeconfigUse { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("in-cluster configuration (KUBERNETES_SERVICE_HOST and the ServiceAccount token): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("building the API client: {0}")]
    Client(#[source] kube::Error),
}

/// How the agent reaches the API server.
#[derive(Clone, Debug, Default)]
pub struct KubeSettings {
    /// A kubeconfig file; `None`: in-cluster (the ServiceAccount the DaemonSet mounts).
    pub kubeconfig: Option<PathBuf>,
}

impl KubeSettings {
    pub fn describe(&self) -> String {
        match &self.kubeconfig {
            Some(p) => format!("kubeconfig {}", p.display()),
            None => "in-cluster".to_owned(),
        }
    }

    async fn client(&self) -> Result<kube::Client, KubeError> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?;
                kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|source| KubeError::KubeconfigUse { path: path.clone(), source })?
            }
            None => kube::Config::infer().await?,
        };
        kube::Client::try_from(config).map_err(KubeError::Client)
    }
}

/// The API resource behind each kind.
fn resource(kind: &'static str) -> ApiResource {
    let (group, version, plural) = match kind {
        KIND_NAMESPACE => ("", "v1", "namespaces"),
        KIND_POD => ("", "v1", "pods"),
        KIND_NODE => ("", "v1", "nodes"),
        KIND_POLICY => ("networking.k8s.io", "v1", "networkpolicies"),
        _ => ("policy.ward.dev", "v1alpha1", "wardnetworkpolicies"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

type KindEvent = (&'static str, Result<watcher::Event<DynamicObject>, watcher::Error>);

/// Runs the source until the receiver goes: watches every kind and sends what changed.
pub async fn run(settings: KubeSettings, tx: mpsc::Sender<Event>) {
    let mut source = Source::default();
    // Announced up front, so the store is not synced until every kind has been listed.
    if tx.send(Event::Init(KINDS.to_vec())).await.is_err() {
        return;
    }
    let client = loop {
        match settings.client().await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the Kubernetes client; retrying");
                source.unreachable(e.to_string());
                if tx.send(source.checkpoint()).await.is_err() {
                    return;
                }
                tokio::time::sleep(HEALTH_PERIOD).await;
            }
        }
    };
    let streams: Vec<BoxStream<'static, KindEvent>> = KINDS
        .iter()
        .map(|&kind| {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(kind));
            watcher(api, watcher::Config::default()).default_backoff().map(move |r| (kind, r)).boxed()
        })
        .collect();
    let mut events = futures::stream::select_all(streams);
    let mut health = tokio::time::interval(HEALTH_PERIOD);
    loop {
        let mut out = Vec::new();
        tokio::select! {
            item = events.next() => {
                let Some((kind, item)) = item else { return };
                source.handle(kind, item, &mut out);
                for _ in 0..BATCH {
                    match events.next().now_or_never() {
                        Some(Some((kind, item))) => source.handle(kind, item, &mut out),
                        _ => break,
                    }
                }
            }
            _ = health.tick() => {
                let answered = tokio::time::timeout(HEALTH_TIMEOUT, client.apiserver_version()).await;
                match answered {
                    Ok(Ok(_)) => source.reachable(),
                    Ok(Err(e)) => source.unreachable(e.to_string()),
                    Err(_) => source.unreachable(format!("no answer within {HEALTH_TIMEOUT:?}")),
                }
                if source.health == source.sent_health {
                    continue;
                }
            }
        }
        out.push(source.checkpoint());
        for event in out {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// The source's own state: rejections, resource versions, health.
#[derive(Debug, Default)]
struct Source {
    rejected: BTreeMap<ObjKey, Rejection>,
    notices: BTreeMap<ObjKey, Vec<Notice>>,
    resource_versions: BTreeMap<&'static str, u64>,
    health: Health,
    sent_health: Health,
}

impl Source {
    fn handle(
        &mut self,
        kind: &'static str,
        item: Result<watcher::Event<DynamicObject>, watcher::Error>,
        out: &mut Vec<Event>,
    ) {
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                self.watch_error(kind, &e, out);
                return;
            }
        };
        // Objects and the end of a listing come from the server, so they prove it answers (a
        // watch that resumed after a restart delivers no listing). `Init` does not: the
        // watcher emits it before its list request.
        if !matches!(event, watcher::Event::Init) {
            self.reachable();
        }
        match event {
            watcher::Event::Init => {
                *self.health.listings.entry(kind.to_owned()).or_default() += 1;
                self.rejected.retain(|k, _| k.kind != kind);
                self.notices.retain(|k, _| k.kind != kind);
                out.push(Event::Init(vec![kind]));
            }
            watcher::Event::InitApply(obj) => {
                self.seen(kind, &obj);
                match self.decode(kind, obj) {
                    Ok((key, valid)) => out.push(Event::InitApply(key, valid)),
                    Err(Some(key)) => out.push(Event::InitKeep(key)),
                    Err(None) => {}
                }
            }
            watcher::Event::InitDone => {
                out.push(Event::InitDone(vec![kind]));
            }
            watcher::Event::Apply(obj) => {
                self.seen(kind, &obj);
                if let Ok((key, valid)) = self.decode(kind, obj) {
                    out.push(Event::Apply(key, valid));
                }
            }
            watcher::Event::Delete(obj) => {
                self.seen(kind, &obj);
                if let Some(key) = key_of(kind, &obj) {
                    self.rejected.remove(&key);
                    self.notices.remove(&key);
                    out.push(Event::Delete(key));
                }
            }
        }
    }

    /// A failed list or watch. kube's backoff retries it; what it means for the store:
    /// nothing (the last known state stays). 410 Gone is the protocol, not an outage: the
    /// watcher relists next. A kind the server does not serve (the CRD not installed) has no
    /// objects: it counts as listed, empty, so the agent does not wait for it forever.
    fn watch_error(&mut self, kind: &'static str, e: &watcher::Error, out: &mut Vec<Event>) {
        let code = match e {
            watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
            watcher::Error::WatchError(s) => Some(s.code),
            _ => None,
        };
        match code {
            Some(410) => tracing::info!(kind, "watch too old (410 Gone): relisting"),
            Some(404) if kind == KIND_WARD_POLICY => {
                if !self.health.listings.contains_key(kind) {
                    tracing::warn!("the WardNetworkPolicy CRD is not installed: none are enforced until it is");
                    self.health.listings.insert(kind.to_owned(), 0);
                    out.push(Event::Init(vec![kind]));
                    out.push(Event::InitDone(vec![kind]));
                }
            }
            _ => {
                tracing::warn!(kind, error = %e, "watching the API");
                self.unreachable(format!("{kind}: {e}"));
            }
        }
    }

    fn seen(&mut self, kind: &'static str, obj: &DynamicObject) {
        if let Some(rv) = obj.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok()) {
            let cur = self.resource_versions.entry(kind).or_default();
            *cur = (*cur).max(rv);
        }
    }

    /// The validated object, or the key of an invalid one (its rejection recorded), or
    /// `None` for one that cannot even be named.
    fn decode(&mut self, kind: &'static str, mut obj: DynamicObject) -> Result<(ObjKey, Valid), Option<ObjKey>> {
        obj.metadata.managed_fields = None;
        let key = key_of(kind, &obj);
        let value = match serde_json::to_value(&obj) {
            Ok(v) => v,
            Err(e) => return Err(self.reject(key, "", &e.to_string())),
        };
        let decoded = match kind {
            KIND_NODE => return self.node(key, value),
            KIND_NAMESPACE => model::Namespace::deserialize(value).map(Object::Namespace),
            KIND_POD => model::Pod::deserialize(value).map(Object::Pod),
            KIND_POLICY => model::NetworkPolicy::deserialize(value).map(Object::NetworkPolicy),
            _ => model::WardNetworkPolicy::deserialize(value).map(Object::WardNetworkPolicy),
        };
        let object = match decoded {
            Ok(o) => o,
            Err(e) => return Err(self.reject(key, "", &e.to_string())),
        };
        match validate(&object, ORIGIN) {
            Ok((key, valid, defaulted)) => {
                self.rejected.remove(&key);
                // A wrong policy.ward.dev/mode: valid and enforced, said in the log and in
                // `ward status` until the object changes.
                let notices: Vec<Notice> = defaulted
                    .into_iter()
                    .map(|d| {
                        tracing::warn!(object = %key, field = %d.field, "{}", d.message);
                        Notice { file: ORIGIN.to_owned(), object: key.to_string(), field: d.field, message: d.message }
                    })
                    .collect();
                if notices.is_empty() {
                    self.notices.remove(&key);
                } else {
                    self.notices.insert(key.clone(), notices);
                }
                Ok((key, valid))
            }
            Err(invalid) => {
                let key = invalid.key.or(key);
                let e = invalid.error;
                tracing::warn!(object = %e.object, field = %e.field, "rejected: {}", e.message);
                Err(self.reject(key, &e.field, &e.message))
            }
        }
    }

    fn node(&mut self, key: Option<ObjKey>, value: serde_json::Value) -> Result<(ObjKey, Valid), Option<ObjKey>> {
        let node = match NodeObject::deserialize(value) {
            Ok(n) => n,
            Err(e) => return Err(self.reject(key, "", &e.to_string())),
        };
        let Some(key) = key else { return Err(None) };
        match node_info(&node) {
            Ok(info) => {
                self.rejected.remove(&key);
                Ok((key, Valid::Node(info)))
            }
            Err((field, message)) => Err(self.reject(Some(key), &field, &message)),
        }
    }

    fn reject(&mut self, key: Option<ObjKey>, field: &str, message: &str) -> Option<ObjKey> {
        let key = key?;
        let r =
            Rejection { file: ORIGIN.into(), object: key.to_string(), field: field.into(), message: message.into() };
        self.rejected.insert(key.clone(), r);
        Some(key)
    }

    fn reachable(&mut self) {
        self.health.unreachable_since = None;
        self.health.last_error = None;
    }

    fn unreachable(&mut self, error: String) {
        if self.health.unreachable_since.is_none() {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            self.health.unreachable_since = Some(now);
        }
        self.health.last_error = Some(error);
    }

    fn checkpoint(&mut self) -> Event {
        self.sent_health = self.health.clone();
        Event::Checkpoint(Box::new(Checkpoint {
            revision: Revision::Api {
                resource_versions: self
                    .resource_versions
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_string()))
                    .collect(),
            },
            rejected: self.rejected.values().cloned().collect(),
            duplicates: Vec::new(),
            notices: self.notices.values().flatten().cloned().collect(),
            health: self.health.clone(),
        }))
    }
}

fn key_of(kind: &'static str, obj: &DynamicObject) -> Option<ObjKey> {
    let name = obj.metadata.name.clone()?;
    let namespace = match kind {
        KIND_NAMESPACE | KIND_NODE => String::new(),
        _ => obj.metadata.namespace.clone().unwrap_or_default(),
    };
    Some(ObjKey { kind, namespace, name })
}

/// `v1/Node`, only what the agent reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeObject {
    #[serde(default)]
    spec: NodeSpec,
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Debug, Default, Deserialize)]
struct NodeSpec {
    #[serde(default, rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct NodeStatus {
    #[serde(default)]
    addresses: Option<Vec<NodeAddress>>,
}

#[derive(Debug, Default, Deserialize)]
struct NodeAddress {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    address: String,
}

/// A Node's pod CIDRs (`spec.podCIDRs`, or the older `spec.podCIDR`) and IP addresses
/// (hostnames are left out); a CIDR that does not parse is an error naming the field.
fn node_info(node: &NodeObject) -> Result<NodeInfo, (String, String)> {
    let mut info = NodeInfo::default();
    let cidrs: Vec<(String, &String)> = match (&node.spec.pod_cidrs, &node.spec.pod_cidr) {
        (Some(list), _) if !list.is_empty() => {
            list.iter().enumerate().map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c)).collect()
        }
        (_, Some(one)) if !one.is_empty() => vec![("spec.podCIDR".to_owned(), one)],
        _ => Vec::new(),
    };
    for (field, c) in cidrs {
        let net: ipnet::IpNet = c.parse().map_err(|_| (field, format!("{c:?} is not a CIDR")))?;
        info.pod_cidrs.push(net);
    }
    for a in node.status.addresses.iter().flatten() {
        if matches!(a.kind.as_str(), "InternalIP" | "ExternalIP")
            && let Ok(ip) = a.address.parse::<std::net::IpAddr>()
            && !info.addresses.contains(&ip)
        {
            info.addresses.push(ip);
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch event as the 1.20 API server sends it (recorded with kubectl get --watch
    /// -o json; managedFields shortened).
    fn dynamic(json: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json).expect("a DynamicObject")
    }

    fn pod_json(name: &str, ip: &str, rv: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv, "uid": "u1",
                "labels": {"app": "web"},
                "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        })
    }

    #[test]
    fn watch_events_become_store_events_with_the_highest_resource_version_per_kind() {
        let mut s = Source::default();
        let mut out = Vec::new();
        s.handle(KIND_POD, Ok(watcher::Event::Init), &mut out);
        s.handle(KIND_POD, Ok(watcher::Event::InitApply(dynamic(pod_json("a", "10.244.1.5", "120")))), &mut out);
        s.handle(KIND_POD, Ok(watcher::Event::InitDone), &mut out);
        s.handle(KIND_POD, Ok(watcher::Event::Apply(dynamic(pod_json("b", "10.244.1.6", "131")))), &mut out);
        s.handle(KIND_POD, Ok(watcher::Event::Delete(dynamic(pod_json("a", "10.244.1.5", "135")))), &mut out);
        let key = |name: &str| ObjKey { kind: KIND_POD, namespace: "shop".into(), name: name.into() };
        assert_eq!(out.len(), 5, "{out:?}");
        assert_eq!(out[0], Event::Init(vec![KIND_POD]));
        match &out[1] {
            Event::InitApply(k, Valid::Pod(p)) => {
                assert_eq!(k, &key("a"));
                assert_eq!(p.ips, vec!["10.244.1.5".parse::<std::net::IpAddr>().unwrap()]);
                assert_eq!(p.ports[0].name, "http");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out[2], Event::InitDone(vec![KIND_POD]));
        assert!(matches!(&out[3], Event::Apply(k, Valid::Pod(_)) if k == &key("b")));
        assert_eq!(out[4], Event::Delete(key("a")));
        match s.checkpoint() {
            Event::Checkpoint(c) => {
                assert_eq!(
                    c.revision,
                    Revision::Api { resource_versions: BTreeMap::from([("Pod".to_owned(), "135".to_owned())]) }
                );
                assert_eq!(c.health.listings["Pod"], 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_object_ward_cannot_enforce_is_reported_and_its_last_valid_version_kept() {
        let mut s = Source::default();
        let mut out = Vec::new();
        let bad = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "shop", "resourceVersion": "7"},
            "spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Sometimes"}]}}
        });
        s.handle(KIND_POLICY, Ok(watcher::Event::Init), &mut out);
        s.handle(KIND_POLICY, Ok(watcher::Event::InitApply(dynamic(bad.clone()))), &mut out);
        s.handle(KIND_POLICY, Ok(watcher::Event::Apply(dynamic(bad))), &mut out);
        let key = ObjKey { kind: KIND_POLICY, namespace: "shop".into(), name: "p".into() };
        assert_eq!(out[1], Event::InitKeep(key.clone()), "in a listing: keep what the store holds");
        assert_eq!(out.len(), 2, "a change to an invalid version sends nothing: the last valid one stays");
        let r = &s.rejected[&key];
        assert_eq!(r.object, "NetworkPolicy shop/p");
        assert!(r.field.contains("matchExpressions[0].operator"), "{r:?}");
        // Deleted: the rejection goes with it.
        let gone = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "shop", "resourceVersion": "9"}});
        s.handle(KIND_POLICY, Ok(watcher::Event::Delete(dynamic(gone))), &mut out);
        assert!(s.rejected.is_empty());
    }

    /// Audit mode through the API: annotations reach the store; a wrong value is a notice in
    /// the checkpoint naming object and field, and the policy is sent (enforced).
    #[test]
    fn modes_reach_the_store_and_a_wrong_one_is_a_notice_and_enforced() {
        let mut s = Source::default();
        let mut out = Vec::new();
        let policy = |mode: &str| {
            dynamic(serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "p", "namespace": "shop", "resourceVersion": "7",
                    "annotations": {"policy.ward.dev/mode": mode}},
                "spec": {"podSelector": {}}
            }))
        };
        let namespace = dynamic(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "resourceVersion": "3", "annotations": {"policy.ward.dev/mode": "audit"}}
        }));
        s.handle(KIND_NAMESPACE, Ok(watcher::Event::Apply(namespace)), &mut out);
        s.handle(KIND_POLICY, Ok(watcher::Event::Apply(policy("audit"))), &mut out);
        s.handle(KIND_POLICY, Ok(watcher::Event::Apply(policy("dry-run"))), &mut out);
        assert!(matches!(&out[0], Event::Apply(_, Valid::Namespace(_, ward_policy::validate::Mode::Audit))), "{out:?}");
        let mode_of = |e: &Event| match e {
            Event::Apply(_, Valid::Policy(p)) => p.mode,
            other => panic!("{other:?}"),
        };
        assert_eq!(mode_of(&out[1]), ward_policy::validate::Mode::Audit);
        assert_eq!(mode_of(&out[2]), ward_policy::validate::Mode::Enforce, "a wrong value enforces");
        let notices = match s.checkpoint() {
            Event::Checkpoint(c) => c.notices,
            other => panic!("{other:?}"),
        };
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert_eq!(notices[0].object, "NetworkPolicy shop/p");
        assert_eq!(notices[0].field, "metadata.annotations[policy.ward.dev/mode]");
        // Corrected: the notice goes.
        s.handle(KIND_POLICY, Ok(watcher::Event::Apply(policy("enforce"))), &mut out);
        match s.checkpoint() {
            Event::Checkpoint(c) => assert!(c.notices.is_empty(), "{:?}", c.notices),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nodes_give_their_pod_cidrs_and_ip_addresses() {
        let n = NodeObject::deserialize(serde_json::json!({
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.250.0.11"}, {"type": "Hostname", "address": "n1"}]}
        }))
        .unwrap();
        let info = node_info(&n).unwrap();
        assert_eq!(info.pod_cidrs.len(), 2);
        assert_eq!(info.addresses, vec!["10.250.0.11".parse::<std::net::IpAddr>().unwrap()]);
        let old = NodeObject::deserialize(serde_json::json!({"spec": {"podCIDR": "10.244.2.0/24"}})).unwrap();
        assert_eq!(node_info(&old).unwrap().pod_cidrs[0].to_string(), "10.244.2.0/24");
        let bad = NodeObject::deserialize(serde_json::json!({"spec": {"podCIDRs": ["nope"]}})).unwrap();
        assert_eq!(node_info(&bad).unwrap_err().0, "spec.podCIDRs[0]");
    }

    #[test]
    fn health_records_since_when_the_server_is_unreachable_until_it_answers() {
        let mut s = Source::default();
        s.unreachable("connection refused".into());
        let since = s.health.unreachable_since.expect("since");
        s.unreachable("still refused".into());
        assert_eq!(s.health.unreachable_since, Some(since), "the first failure of the streak");
        assert_eq!(s.health.last_error.as_deref(), Some("still refused"));
        s.reachable();
        assert_eq!(s.health.unreachable_since, None);
    }

    #[test]
    fn a_delivered_object_ends_an_outage_and_a_watcher_init_does_not() {
        let mut s = Source::default();
        let mut out = Vec::new();
        s.unreachable("connection refused".into());
        s.handle(KIND_POD, Ok(watcher::Event::Init), &mut out);
        assert!(s.health.unreachable_since.is_some(), "Init is the watcher's own, before any request");
        s.handle(KIND_POD, Ok(watcher::Event::Apply(dynamic(pod_json("a", "10.244.1.5", "121")))), &mut out);
        assert_eq!(s.health.unreachable_since, None, "a resumed watch delivered an object");
        assert_eq!(s.health.last_error, None);
    }
}
