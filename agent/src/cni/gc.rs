//! GC (spec 1.1.0): every attachment of this network that is not in the runtime's list of
//! valid ones is released: its records, its veth if one is left, its addresses (into
//! quarantine, or back to the delegated plugin through that plugin's DEL) and the agent's
//! registration (a `Request::Gc` makes the agent forget every endpoint of the network outside
//! the list). Then GC goes to a delegated IPAM plugin that speaks 1.1.0 (older ones have no
//! GC: the DELs above already released what Ward knew of). Like DEL it keeps going past
//! errors, and reports them at the end.

use std::collections::BTreeSet;
use std::time::Duration;

use super::command::{CommandError, Ctx, teardown};
use super::netconf::{Ipam, ValidAttachment};
use crate::api::client;
use crate::api::proto::{AttachmentKey, Request, Response};

/// How long the agent may take to forget a node's worth of stale endpoints.
const AGENT_GC_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn gc(ctx: &Ctx<'_>, valid: &[ValidAttachment]) -> Result<(), CommandError> {
    let valid: BTreeSet<AttachmentKey> = valid
        .iter()
        .map(|v| AttachmentKey { container_id: v.container_id.clone(), ifname: v.ifname.clone() })
        .collect();
    let mut problems = Vec::new();
    let mut transient = false;

    // Stale: recorded attachments and (Ward's IPAM) allocations outside the list.
    let mut stale: Vec<(AttachmentKey, Option<String>)> = ctx
        .records
        .attachments()
        .into_iter()
        .filter(|r| !valid.contains(&r.key()))
        .map(|r| (r.key(), r.netns))
        .collect();
    if matches!(ctx.conf.ipam, Ipam::Ward { .. }) {
        match ctx.store().owners() {
            Ok(owners) => {
                let known: BTreeSet<AttachmentKey> = stale.iter().map(|(k, _)| k.clone()).collect();
                stale.extend(
                    owners
                        .into_iter()
                        .map(|a| AttachmentKey { container_id: a.container_id, ifname: a.ifname })
                        .filter(|k| !valid.contains(k) && !known.contains(k))
                        .map(|k| (k, None)),
                );
            }
            Err(e) => problems.push(format!("listing allocations: {e}")),
        }
    }
    for (key, netns) in &stale {
        tracing::info!(container = %key.container_id, ifname = %key.ifname, "GC: releasing a stale attachment");
        if !teardown(ctx, key, netns.as_deref()) {
            problems.push(format!("attachment {}/{} could not be released in full", key.container_id, key.ifname));
        }
    }

    let request = Request::Gc { network: ctx.conf.name.clone(), valid: valid.iter().cloned().collect() };
    match client::call(&ctx.conf.agent_socket, &request, AGENT_GC_TIMEOUT) {
        Ok(Response::Collected { forgotten }) => {
            tracing::debug!(forgotten = forgotten.len(), "the agent forgot stale endpoints")
        }
        Ok(other) => problems.push(format!("the ward agent answered GC with {other:?}")),
        Err(e) => {
            // Its own sweep forgets endpoints whose interface is gone; the rest waits for the
            // next GC.
            transient = true;
            problems.push(e.to_string());
        }
    }

    if let Ipam::Delegated { .. } = ctx.conf.ipam {
        match ctx.delegate() {
            Ok(Some(delegate)) if delegate.versions().iter().any(|v| v == ctx.conf.cni_version.as_str()) => {
                if let Err(e) = delegate.run("GC", &ctx.plain_env(), ctx.stdin) {
                    problems.push(e.to_string());
                }
            }
            Ok(Some(delegate)) => {
                tracing::debug!(plugin = %delegate.plugin, "the ipam plugin predates GC; its stale attachments were released by DEL")
            }
            Ok(None) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(CommandError::GcIncomplete { problems, transient }) }
}
