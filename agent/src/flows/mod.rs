//! Flow records from the kernel to the operator. The datapath writes a `FlowEvent` per drop
//! (and per new allowed flow, with `--flow-events all`) into `WARD_EVENTS`; the flow task
//! here owns that ring buffer, decodes each event (`FlowEvent::from_bytes`), names it from
//! the last compiled state the owner task published ([`record::View`], through a `watch`
//! channel: the task never waits on the owner), and hands it to the [`history::Hub`]: a
//! bounded history for queries and a broadcast for followers (`ward observe`).

pub mod export;
pub mod filter;
pub mod history;
pub mod map;
pub mod record;
pub mod suggest;

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};

use crate::datapath::{EventSource, LostCounters};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use ward_common::maps::FlowEvent;

use history::Hub;
use record::{FlowTime, UuidSource, View};

/// Most events decoded before the task yields (the ring may refill as fast as it drains).
const BATCH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("watching the flow ring buffer WARD_EVENTS: {0}")]
    Register(std::io::Error),
}

/// Nanoseconds to add to a kernel timestamp (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to get
/// Unix time.
pub(crate) fn monotonic_offset() -> i128 {
    let mono = match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()),
        Err(_) => 0,
    };
    FlowTime::now().0 - mono
}

/// How often the kernel's loss counters are read when no event wakes the task.
const LOST_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Lost events over all reasons.
fn lost_total(lost: &LostCounters) -> u64 {
    match lost.per_reason() {
        Ok(m) => m.values().sum(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the flow events' loss counters");
            0
        }
    }
}

/// Starts the flow task over the ring buffer taken from `Maps`.
pub fn spawn(source: EventSource, view: watch::Receiver<Arc<View>>, hub: Arc<Hub>) -> Result<(), FlowError> {
    let EventSource { ring, lost } = source;
    // SAFETY: the RingBuf owns its map's fd (`MapData`), which stays open and unchanged for as
    // long as the RingBuf lives, and the AsyncFd owns the RingBuf.
    let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| FlowError::Register(e.into()))?;
    tokio::spawn(run(fd, lost, view, hub));
    Ok(())
}

async fn run(mut fd: AsyncFd<RingBuf<MapData>>, lost: LostCounters, view: watch::Receiver<Arc<View>>, hub: Arc<Hub>) {
    let mut uuids = UuidSource::default();
    let mut short = 0u64;
    // Losses before this agent started are not this stream's: count from here.
    let baseline = lost_total(&lost);
    let mut poll = tokio::time::interval(LOST_POLL);
    loop {
        let ready = tokio::select! {
            r = fd.readable_mut() => Some(r),
            _ = poll.tick() => None,
        };
        hub.note_lost(lost_total(&lost).saturating_sub(baseline));
        let mut guard = match ready {
            None => continue,
            Some(Ok(g)) => g,
            Some(Err(e)) => {
                tracing::error!(map = ward_common::maps::MAP_EVENTS, error = %e, "flow ring buffer; no more flow records");
                return;
            }
        };
        let view = view.borrow().clone();
        let offset = monotonic_offset();
        let ring = guard.get_inner_mut();
        let mut flows = Vec::new();
        while flows.len() < BATCH {
            let Some(item) = ring.next() else { break };
            match FlowEvent::from_bytes(&item) {
                Some(ev) => {
                    let time = FlowTime(i128::from(ev.ts_ns) + offset);
                    flows.push(view.enrich(&ev, time, uuids.next_uuid()));
                }
                None => {
                    short += 1;
                    tracing::warn!(map = ward_common::maps::MAP_EVENTS, len = item.len(), short, "short flow event");
                }
            }
        }
        let full = flows.len() == BATCH;
        hub.push(flows);
        if full {
            // More may wait: keep the readiness and let other tasks run first.
            drop(guard);
            tokio::task::yield_now().await;
        } else {
            guard.clear_ready();
        }
    }
}
