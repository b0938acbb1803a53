//! The scene the flow tests (`ward observe`, `ward map`) watch: namespace `shop` with pods
//! `db`, `api` and `stranger` (each labelled `app=<name>`, serving TCP 5432 named `pg`), the
//! NetworkPolicy `shop/db-from-api` letting only `api` into `db` on `pg`, and one probe of
//! each kind: `api` -> `db` connects, `stranger` -> `db` is denied.

use crate::{Family, Labels, Node, NodeConfig, PodRef, PodSpec, Protocol, Serve};

fn pod(name: &str) -> PodSpec {
    PodSpec {
        namespace: "shop".into(),
        name: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into_iter().collect(),
        serves: vec![Serve::new(5432, Protocol::Tcp, Some("pg"))],
    }
}

/// Starts a node with `config`, builds the scene and makes the two connections; an error
/// says which step failed (a connection that went the wrong way included).
pub fn allowed_and_denied(config: NodeConfig) -> Result<Node, String> {
    let mut node = Node::start(config).map_err(|e| format!("lab node: {e}"))?;
    node.set_namespace("shop", &Labels::new()).map_err(|e| format!("namespace: {e}"))?;
    node.create_pods(&[pod("db"), pod("api"), pod("stranger")]).map_err(|e| format!("pods: {e}"))?;
    let policy: serde_yaml::Value = serde_yaml::from_str(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: db-from-api, namespace: shop}, \
         spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], \
         ports: [{port: pg}]}]}}",
    )
    .map_err(|e| format!("policy YAML: {e}"))?;
    node.apply(&[policy]).map_err(|e| format!("policy: {e}"))?;
    let (api, db, stranger) = (PodRef::new("shop", "api"), PodRef::new("shop", "db"), PodRef::new("shop", "stranger"));
    let ok = node.probe(&api, &db, 5432, Protocol::Tcp, Family::IPv4).map_err(|e| e.to_string())?;
    if !ok.connected() {
        return Err(format!("api should reach db: {ok}"));
    }
    let denied = node.probe(&stranger, &db, 5432, Protocol::Tcp, Family::IPv4).map_err(|e| e.to_string())?;
    if denied.connected() {
        return Err(format!("stranger should be denied: {denied}"));
    }
    Ok(node)
}
