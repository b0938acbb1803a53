//! Finding attachments whose pod went without a DEL (its network namespace deleted, which
//! takes the veth pair with it) and tearing them down: run by every ADD (before it allocates,
//! so freed addresses come back when they are needed) and by GC. The agent forgets such pods'
//! registrations by itself (its periodic sweep of endpoints whose interface vanished); this is
//! the plugin's half: addresses and records.
//!
//! Gone means: the host side of the veth no longer exists and the attachment is not still
//! being added. An ADD in progress has a record in stage `Adding` (or, for allocations made
//! before records existed, only an allocation): those count as gone only after
//! [`STALE_ADD`], far longer than any ADD takes.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::command::{Ctx, teardown};
use super::netconf::Ipam;
use super::records::{Stage, now_secs};
use crate::api::proto::AttachmentKey;
use crate::endpoint::veth::{self, Netlink};

/// After this long an unfinished ADD is over (it is bounded by the registration timeout and
/// a few netlink calls; ten minutes leaves room for a badly overloaded node).
pub const STALE_ADD: Duration = Duration::from_secs(600);
/// At most this many attachments are torn down per sweep, so one ADD never pays for a node's
/// whole backlog (the next calls take the rest).
const MAX_PER_SWEEP: usize = 32;

/// The attachments that look gone, given the node's interface names and the time.
pub(super) fn stale(ctx: &Ctx<'_>, links: &BTreeSet<String>, now: u64) -> Vec<(AttachmentKey, Option<String>)> {
    let gone = |key: &AttachmentKey| !links.contains(&veth::host_ifname(&key.container_id, &key.ifname));
    let old = |since: u64| now.saturating_sub(since) >= STALE_ADD.as_secs();
    let records = ctx.records.attachments();
    let mut out: Vec<(AttachmentKey, Option<String>)> = records
        .iter()
        .filter(|r| match r.stage {
            Stage::Deleting => true,
            Stage::Added => gone(&r.key()),
            Stage::Adding => gone(&r.key()) && old(r.since),
        })
        .map(|r| (r.key(), r.netns.clone()))
        .collect();
    if matches!(ctx.conf.ipam, Ipam::Ward { .. }) {
        let recorded: BTreeSet<AttachmentKey> = records.iter().map(|r| r.key()).collect();
        match ctx.store().owners() {
            Ok(owners) => out.extend(
                owners
                    .into_iter()
                    .map(|a| {
                        let since = a.since.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                        (AttachmentKey { container_id: a.container_id, ifname: a.ifname }, since)
                    })
                    .filter(|(key, since)| !recorded.contains(key) && gone(key) && old(*since))
                    .map(|(key, _)| (key, None)),
            ),
            Err(e) => tracing::warn!("sweep: listing allocations: {e}"),
        }
    }
    out
}

/// Tears down what [`stale`] finds, at most [`MAX_PER_SWEEP`]; failures are logged (a sweep
/// never fails the command that runs it).
pub(super) fn sweep(ctx: &Ctx<'_>, netlink: &Netlink) {
    let links = match netlink.link_names() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("sweep skipped: {e}");
            return;
        }
    };
    for (key, netns) in stale(ctx, &links, now_secs()).into_iter().take(MAX_PER_SWEEP) {
        tracing::info!(container = %key.container_id, ifname = %key.ifname, "sweep: the pod went without a DEL; releasing its attachment");
        teardown(ctx, &key, netns.as_deref());
    }
}
