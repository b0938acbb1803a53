//! The owner task's side of flow records: it starts the flow task over the ring buffer it
//! takes out of `Maps`, and after each pass publishes what flows are named from (a
//! [`View`] of the compile, the cluster and the local endpoints). The flow task reads the
//! last one published; nothing here waits on it.

use std::sync::Arc;

use tokio::sync::watch;

use super::Agent;
use crate::flows::history::Hub;
use crate::flows::record::{LocalPod, View};
use crate::plan::pod_key;

/// The sending half of the published view.
pub struct ViewTx(watch::Sender<Arc<View>>);

impl Default for ViewTx {
    fn default() -> Self {
        ViewTx(watch::channel(Arc::new(View::default())).0)
    }
}

impl ViewTx {
    /// A receiver of the views published from now on (the trace task names its steps by it).
    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.0.subscribe()
    }
}

impl Agent {
    /// Starts the flow task (once): the hub the API serves `ward observe` from. Without the
    /// ring buffer (taken already) the hub stays empty and says so in the log.
    pub(super) fn start_flows(&mut self) -> Arc<Hub> {
        let hub = Hub::new(self.cfg.flow_history);
        match self.dp.maps.take_events() {
            Some(ring) => {
                if let Err(e) = crate::flows::spawn(ring, self.flow_view.0.subscribe(), hub.clone()) {
                    tracing::error!(error = %e, "flow records unavailable");
                }
            }
            None => tracing::error!(map = ward_common::maps::MAP_EVENTS, "flow ring buffer already taken"),
        }
        if let Some(export) = &self.cfg.flow_export
            && let Err(e) = crate::flows::export::spawn(export.clone(), &hub)
        {
            // Observing still works; the file is what is missing, and the log says why.
            tracing::error!(error = %e, "flow export not started");
        }
        self.flow_hub = Some(hub.clone());
        hub
    }

    /// Publishes the view of the pass that just ran.
    pub(super) fn publish_flow_view(&self) {
        let Some(compiled) = &self.compiled else { return };
        let local = self.registry.iter().map(|e| LocalPod {
            ep_id: e.ep_id,
            key: pod_key(&e.reg.pod_namespace, &e.reg.pod_name),
            ips: &e.reg.ips,
        });
        let view =
            View::build(&self.cfg.node_name, &self.cluster, &compiled.rules, local).with_misses(&compiled.policy);
        self.flow_view.0.send_if_modified(|old| {
            if **old == view {
                return false;
            }
            *old = Arc::new(view);
            true
        });
    }
}
