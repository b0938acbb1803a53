//! What the agent does for the CNI plugin beyond registering and deregistering pods: answer
//! STATUS (is the agent ready to protect new pods?), forget the registrations GC says are
//! stale, and write the node's conflist once it is ready (`crate::cni::install`).

use std::collections::BTreeSet;

use super::Agent;
use super::registry::LocalEndpoint;
use crate::api::proto::{AttachmentKey, Readiness, Response};
use crate::cni::install::ConflistSpec;

/// The conflist the agent publishes, and whether the current content is on disk.
#[derive(Debug)]
pub struct Conflist {
    pub spec: ConflistSpec,
    published: bool,
    last_error: Option<String>,
}

impl Conflist {
    pub fn new(spec: ConflistSpec) -> Self {
        Self { spec, published: false, last_error: None }
    }
}

impl Agent {
    /// Ready once the datastore has been read in full and a reconcile pass has applied it.
    pub(super) fn readiness(&self) -> Readiness {
        let synced = self.store.synced();
        let reason = match (&synced, &self.compiled) {
            (Err(why), _) => Some(format!("the datastore has not synced: {why}")),
            (Ok(()), None) => Some("no reconcile pass has completed yet".to_owned()),
            (Ok(()), Some(_)) => None,
        };
        Readiness { ready: reason.is_none(), datastore_synced: synced.is_ok(), reason }
    }

    /// CNI GC: forgets `network`'s endpoints that are not in `valid`.
    pub(super) fn collect(&mut self, network: &str, valid: &[AttachmentKey]) -> Response {
        let valid: BTreeSet<&AttachmentKey> = valid.iter().collect();
        let stale: Vec<LocalEndpoint> = self
            .registry
            .iter()
            .filter(|e| e.reg.network.is_empty() || e.reg.network == network)
            .filter(|e| {
                let key = AttachmentKey { container_id: e.reg.container_id.clone(), ifname: e.reg.ifname.clone() };
                !valid.contains(&key)
            })
            .cloned()
            .collect();
        for ep in &stale {
            tracing::info!(endpoint = ep.ep_id, container = %ep.reg.container_id, ifname = %ep.reg.ifname, "GC: forgetting a stale endpoint");
        }
        if !stale.is_empty() {
            self.forget(&stale);
        }
        Response::Collected {
            forgotten: stale
                .into_iter()
                .map(|e| AttachmentKey { container_id: e.reg.container_id, ifname: e.reg.ifname })
                .collect(),
        }
    }

    /// Writes the conflist when the agent is ready and the file lacks the current content.
    /// Never removes it (see `crate::cni::install`). Without pod CIDRs or an IPAM plugin
    /// given, the address ranges are this node's `spec.podCIDRs` (the API datastore), and
    /// the conflist waits for them.
    pub(super) fn publish_conflist(&mut self) {
        let ready = self.readiness().ready;
        let node_cidrs: Vec<String> = self
            .store
            .snapshot()
            .nodes
            .get(&self.cfg.node_name)
            .map(|n| n.pod_cidrs.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let Some(conflist) = self.conflist.as_mut() else { return };
        if !ready || conflist.published {
            return;
        }
        let mut spec = conflist.spec.clone();
        if !spec.ward.contains_key("podCIDRs") && !spec.ward.contains_key("ipam") {
            if node_cidrs.is_empty() {
                let message = format!("waiting for Node {} to have spec.podCIDRs", self.cfg.node_name);
                if conflist.last_error.as_deref() != Some(message.as_str()) {
                    tracing::info!(node = %self.cfg.node_name, "the CNI configuration waits for this Node's spec.podCIDRs");
                }
                conflist.last_error = Some(message);
                return;
            }
            spec.ward.insert("podCIDRs".into(), serde_json::Value::from(node_cidrs));
        }
        match spec.publish() {
            Ok(wrote) => {
                let path = conflist.spec.conf_dir.join(crate::cni::install::CONFLIST_NAME);
                tracing::info!(path = %path.display(), wrote, "CNI configuration in place");
                conflist.published = true;
                conflist.last_error = None;
            }
            Err(e) => {
                let message = e.to_string();
                // Retried on every tick; logged when the reason changes.
                if conflist.last_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(error = %message, "cannot write the CNI configuration");
                }
                conflist.last_error = Some(message);
            }
        }
    }
}
