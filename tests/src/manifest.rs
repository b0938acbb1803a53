//! The Kubernetes YAML the lab writes into an agent's manifests directory, one object per
//! file so each change is one file whose hash the agent reports back, and the reading of
//! ordinary Kubernetes YAML (Namespaces and Pods) into lab specs for the demo.

use serde_json::json;
use serde_yaml::Value;

use crate::spec::{Labels, NAMESPACE_NAME_LABEL, NamespaceSpec, PodSpec, Protocol, Serve};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("object {index}: missing or non-string field `{field}`")]
    MissingField { index: usize, field: &'static str },
    #[error("object {index} ({kind} {name}): {message}")]
    Invalid { index: usize, kind: String, name: String, message: String },
    #[error("YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

// File names: Kubernetes names never contain `_`, so these cannot collide.
pub fn namespace_file(name: &str) -> String {
    format!("ns_{name}.yaml")
}

pub fn pod_file(namespace: &str, name: &str) -> String {
    format!("pod_{namespace}_{name}.yaml")
}

/// The file for any namespaced object other than a pod, e.g. a NetworkPolicy.
pub fn object_file(kind: &str, namespace: &str, name: &str) -> String {
    format!("{}_{namespace}_{name}.yaml", kind.to_ascii_lowercase())
}

/// A Namespace, with the `kubernetes.io/metadata.name` label the API server would add.
pub fn namespace_yaml(name: &str, labels: &Labels) -> String {
    let mut labels = labels.clone();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
    to_yaml(&json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }))
}

/// A Pod with one container per served port (upstream's layout: `cont-<port>-<proto>`),
/// scheduled on `node`.
pub fn pod_yaml(pod: &PodSpec, node: &str) -> String {
    to_yaml(&pod_object(pod, node))
}

fn pod_object(pod: &PodSpec, node: &str) -> serde_json::Value {
    let mut containers: Vec<serde_json::Value> = pod
        .serves
        .iter()
        .map(|s| {
            let mut port = json!({"containerPort": s.port, "protocol": s.protocol.to_string()});
            if let Some(name) = &s.name {
                port["name"] = json!(name);
            }
            json!({
                "name": format!("cont-{}-{}", s.port, s.protocol.lower()),
                "image": "ward-lab/serve-hostname",
                "ports": [port],
            })
        })
        .collect();
    if containers.is_empty() {
        containers.push(json!({"name": "main", "image": "ward-lab/serve-hostname"}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
        "spec": {"nodeName": node, "containers": containers},
    })
}

/// [`pod_yaml`] with the pod's addresses in `status.podIP` and `status.podIPs`, as kubelet
/// reports them once the sandbox is up (none: no status).
pub fn pod_yaml_with_ips(pod: &PodSpec, node: &str, ips: &[std::net::IpAddr]) -> String {
    let mut obj = pod_object(pod, node);
    if ips.is_empty() {
        return to_yaml(&obj);
    }
    obj["status"] = json!({
        "podIP": ips[0].to_string(),
        "podIPs": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
    });
    to_yaml(&obj)
}

/// Identity of a namespaced API object given as YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectId {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// Reads `apiVersion`, `kind`, `metadata.namespace` and `metadata.name` of object `index`.
pub fn object_id(index: usize, obj: &Value) -> Result<ObjectId, ManifestError> {
    let field = |v: Option<&Value>, field| {
        v.and_then(Value::as_str).map(str::to_owned).ok_or(ManifestError::MissingField { index, field })
    };
    let meta = obj.get("metadata");
    Ok(ObjectId {
        api_version: field(obj.get("apiVersion"), "apiVersion")?,
        kind: field(obj.get("kind"), "kind")?,
        namespace: field(meta.and_then(|m| m.get("namespace")), "metadata.namespace")?,
        name: field(meta.and_then(|m| m.get("name")), "metadata.name")?,
    })
}

/// Serialises an object for a manifest file.
pub fn object_yaml(obj: &Value) -> String {
    // Serialising a `Value` that came from YAML cannot fail.
    serde_yaml::to_string(obj).unwrap_or_default()
}

fn to_yaml(v: &serde_json::Value) -> String {
    serde_yaml::to_string(v).unwrap_or_default()
}

/// Namespaces and Pods from ordinary (multi-document) Kubernetes YAML: each container port
/// becomes a served port. Other kinds are ignored, so one file can also carry policies.
pub fn parse_app(yaml: &str) -> Result<(Vec<NamespaceSpec>, Vec<PodSpec>), ManifestError> {
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    let mut index = 0;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = <Value as serde::Deserialize>::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let meta = v.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .ok_or(ManifestError::MissingField { index, field: "metadata.name" })?
            .to_owned();
        let labels: Labels = match meta.and_then(|m| m.get("labels")) {
            Some(l) => serde_yaml::from_value(l.clone())?,
            None => Labels::new(),
        };
        let invalid =
            |message: String| ManifestError::Invalid { index, kind: kind.clone(), name: name.clone(), message };
        match kind.as_str() {
            "Namespace" => {
                let mut labels = labels;
                labels.remove(NAMESPACE_NAME_LABEL);
                namespaces.push(NamespaceSpec { name, labels });
            }
            "Pod" => {
                let namespace = meta
                    .and_then(|m| m.get("namespace"))
                    .and_then(Value::as_str)
                    .ok_or(ManifestError::MissingField { index, field: "metadata.namespace" })?
                    .to_owned();
                let mut serves = Vec::new();
                let containers = v.get("spec").and_then(|s| s.get("containers")).and_then(Value::as_sequence);
                for c in containers.into_iter().flatten() {
                    let ports = c.get("ports").and_then(Value::as_sequence);
                    for p in ports.into_iter().flatten() {
                        let port = p
                            .get("containerPort")
                            .and_then(Value::as_u64)
                            .and_then(|n| u16::try_from(n).ok())
                            .ok_or_else(|| invalid("a container port without a valid containerPort".into()))?;
                        let protocol = match p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") {
                            "TCP" => Protocol::Tcp,
                            "UDP" => Protocol::Udp,
                            other => {
                                return Err(invalid(format!("the lab cannot serve protocol {other}")));
                            }
                        };
                        let name = p.get("name").and_then(Value::as_str);
                        serves.push(Serve::new(port, protocol, name));
                    }
                }
                pods.push(PodSpec { namespace, name, labels, serves });
            }
            _ => {}
        }
        index += 1;
    }
    Ok((namespaces, pods))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_yaml_names_containers_and_ports_like_upstream() {
        let pod = PodSpec {
            namespace: "x".into(),
            name: "a".into(),
            labels: [("pod".to_owned(), "a".to_owned())].into(),
            serves: vec![Serve::new(80, Protocol::Udp, Some("serve-80-udp"))],
        };
        let v: Value = serde_yaml::from_str(&pod_yaml(&pod, "n1")).unwrap();
        assert_eq!(v["metadata"]["labels"]["pod"], "a");
        assert_eq!(v["spec"]["nodeName"], "n1");
        let c = &v["spec"]["containers"][0];
        assert_eq!(c["name"], "cont-80-udp");
        assert_eq!(c["ports"][0]["name"], "serve-80-udp");
        assert_eq!(c["ports"][0]["protocol"], "UDP");
        assert_eq!(c["ports"][0]["containerPort"], 80);
    }

    #[test]
    fn namespace_yaml_adds_the_metadata_name_label() {
        let v: Value = serde_yaml::from_str(&namespace_yaml("y", &[("ns".into(), "y".into())].into())).unwrap();
        assert_eq!(v["metadata"]["labels"][NAMESPACE_NAME_LABEL], "y");
        assert_eq!(v["metadata"]["labels"]["ns"], "y");
    }

    #[test]
    fn parse_app_reads_namespaces_and_pods_and_skips_other_kinds() {
        let yaml = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  containers:
    - name: pg
      ports: [{containerPort: 5432, name: pg}, {containerPort: 53, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: shop}
spec: {podSelector: {}}
";
        let (ns, pods) = parse_app(yaml).unwrap();
        assert_eq!(ns, vec![NamespaceSpec { name: "shop".into(), labels: [("team".into(), "shop".into())].into() }]);
        assert_eq!(pods.len(), 1);
        assert_eq!(
            pods[0].serves,
            vec![Serve::new(5432, Protocol::Tcp, Some("pg")), Serve::new(53, Protocol::Udp, None)]
        );
    }

    #[test]
    fn object_id_names_the_missing_field() {
        let v: Value = serde_yaml::from_str("{apiVersion: v1, kind: X, metadata: {name: n}}").unwrap();
        let e = object_id(3, &v).unwrap_err();
        assert_eq!(e.to_string(), "object 3: missing or non-string field `metadata.namespace`");
    }
}
