//! The bounded in-memory history of one node's flows and the live stream behind it. The
//! flow task pushes; API connections query and subscribe. A query that reaches past what the
//! history still holds says how many flows fell out of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::filter::Filter;
use super::record::{Flow, FlowTime};
use crate::metrics::FlowEventCounts;

/// Flows kept unless told otherwise (`--flow-history`).
pub const DEFAULT_HISTORY: usize = 4096;
/// Live flows a subscriber may fall behind by before it is told it missed some.
pub const LIVE_QUEUE: usize = 1024;

/// What a caller asks of the history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// The most recent `last` matching flows (all matching, if `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<FlowTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<FlowTime>,
    #[serde(default)]
    pub filter: Filter,
}

impl Query {
    /// Whether a flow passes the filter and the time window.
    pub fn wants(&self, f: &Flow) -> bool {
        self.since.is_none_or(|s| f.time >= s) && self.until.is_none_or(|u| f.time <= u) && self.filter.matches(f)
    }
}

/// The answer from history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub flows: Vec<Arc<Flow>>,
    /// Flows that fell out of the history before the query and might have matched it.
    pub not_seen: u64,
    /// Flow events the kernel could not deliver (ring buffer full) since the flow task started.
    pub lost_events: u64,
}

#[derive(Debug)]
struct Ring {
    cap: usize,
    flows: VecDeque<Arc<Flow>>,
    /// Flows pushed out of `flows` so far.
    evicted: u64,
}

/// Where flows were lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostSource {
    /// The reader fell behind the agent's live stream.
    #[default]
    Reader,
    /// The kernel's ring buffer was full.
    Kernel,
}

impl LostSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            LostSource::Reader => "reader",
            LostSource::Kernel => "kernel",
        }
    }
}

/// A live follower: flows as they come, and the kernel's loss count as it grows.
pub struct Follow {
    pub flows: broadcast::Receiver<Arc<Flow>>,
    pub lost: watch::Receiver<u64>,
}

/// History and live stream, shared by the flow task and the API connections.
#[derive(Debug)]
pub struct Hub {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Flow>>,
    /// Kernel-lost flow events since the flow task started.
    lost: watch::Sender<u64>,
    /// Flow records pushed into the history (read from the kernel's ring).
    delivered: AtomicU64,
    /// Records the exporter skipped because it fell behind the live stream.
    export_lost: Arc<AtomicU64>,
}

impl Hub {
    pub fn new(cap: usize) -> Arc<Hub> {
        let (live, _) = broadcast::channel(LIVE_QUEUE);
        Arc::new(Hub {
            ring: Mutex::new(Ring { cap: cap.max(1), flows: VecDeque::new(), evicted: 0 }),
            live,
            lost: watch::channel(0).0,
            delivered: AtomicU64::new(0),
            export_lost: Arc::default(),
        })
    }

    /// What `/metrics` says of the flow records: delivered, and lost where (so that what
    /// the kernel emitted = delivered + lost in the kernel).
    pub fn counters(&self) -> FlowEventCounts {
        FlowEventCounts {
            delivered: self.delivered.load(Ordering::Relaxed),
            lost_kernel: self.lost_events(),
            lost_export: self.export_lost.load(Ordering::Relaxed),
        }
    }

    /// Where the exporter counts the records it skipped (a counter, not the hub: the
    /// exporter ends when the hub goes away).
    pub fn export_lost_counter(&self) -> Arc<AtomicU64> {
        self.export_lost.clone()
    }

    /// Records the kernel's count of lost events (since the flow task started).
    pub fn note_lost(&self, total: u64) {
        self.lost.send_if_modified(|old| {
            let grew = total > *old;
            if grew {
                *old = total;
            }
            grew
        });
    }

    pub fn lost_events(&self) -> u64 {
        *self.lost.borrow()
    }

    /// The loss count, for a follower that reports it as it grows.
    pub fn watch_lost(&self) -> watch::Receiver<u64> {
        self.lost.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // The lock only guards pushes and copies that cannot panic midway: a poisoned ring is
        // still consistent.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records flows and sends them to live subscribers (never waits on one).
    pub fn push(&self, flows: impl IntoIterator<Item = Flow>) {
        let mut ring = self.lock();
        for f in flows {
            let f = Arc::new(f);
            if ring.flows.len() == ring.cap {
                ring.flows.pop_front();
                ring.evicted += 1;
            }
            ring.flows.push_back(f.clone());
            self.delivered.fetch_add(1, Ordering::Relaxed);
            // No subscriber is not an error.
            let _ = self.live.send(f);
        }
    }

    /// Live flows from now on (the exporter).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Flow>> {
        self.live.subscribe()
    }

    pub fn query(&self, q: &Query) -> Answer {
        let mut answer = Self::answer(&self.lock(), q);
        answer.lost_events = self.lost_events();
        answer
    }

    /// The history's answer and a live subscription starting right after it (taken under
    /// one lock: no flow is both in the answer and in the stream, none is in neither).
    pub fn query_and_follow(&self, q: &Query) -> (Answer, Follow) {
        let ring = self.lock();
        let mut answer = Self::answer(&ring, q);
        let lost = self.lost.subscribe();
        answer.lost_events = *lost.borrow();
        (answer, Follow { flows: self.live.subscribe(), lost })
    }

    fn answer(ring: &Ring, q: &Query) -> Answer {
        let mut flows: Vec<Arc<Flow>> = ring.flows.iter().filter(|f| q.wants(f)).cloned().collect();
        let short = q.last.is_none_or(|n| flows.len() < n);
        if let Some(n) = q.last {
            flows.drain(..flows.len().saturating_sub(n));
        }
        // The evicted flows were all older than the oldest kept one: they count when the
        // query reaches back before it and did not get all it asked for.
        let reaches_back = match (q.since, ring.flows.front()) {
            (Some(since), Some(oldest)) => since < oldest.time,
            _ => true,
        };
        let not_seen = if short && reaches_back { ring.evicted } else { 0 };
        Answer { flows, not_seen, lost_events: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::filter::Cond;
    use crate::flows::filter::tests::flow;
    use crate::flows::record::{FlowVerdict, TrafficDirection};

    fn at(t: i128, port: u16, verdict: FlowVerdict) -> Flow {
        let mut f = flow("a/x", "a/y", port, verdict, TrafficDirection::Ingress);
        f.time = FlowTime(t);
        f
    }

    fn ports(a: &Answer) -> Vec<u16> {
        a.flows.iter().map(|f| f.l4.parts().2).collect()
    }

    #[test]
    fn the_history_keeps_the_newest_and_says_what_fell_out() {
        let hub = Hub::new(3);
        hub.push((1..=5).map(|i| at(i, i as u16, FlowVerdict::Forwarded)));
        let all = hub.query(&Query::default());
        assert_eq!((ports(&all), all.not_seen), (vec![3, 4, 5], 2), "two pushed out, and said so");
        let last2 = hub.query(&Query { last: Some(2), ..Query::default() });
        assert_eq!((ports(&last2), last2.not_seen), (vec![4, 5], 0), "two asked, two there: nothing missed");
        let last9 = hub.query(&Query { last: Some(9), ..Query::default() });
        assert_eq!((ports(&last9), last9.not_seen), (vec![3, 4, 5], 2));
        let recent = hub.query(&Query { since: Some(FlowTime(4)), ..Query::default() });
        assert_eq!((ports(&recent), recent.not_seen), (vec![4, 5], 0), "a window inside the history misses nothing");
        let old = hub.query(&Query { since: Some(FlowTime(1)), until: Some(FlowTime(3)), ..Query::default() });
        assert_eq!((ports(&old), old.not_seen), (vec![3], 2), "a window reaching back past it");
    }

    #[test]
    fn counters_say_what_was_delivered_and_lost_where() {
        let hub = Hub::new(2);
        hub.push((1..=5).map(|i| at(i, i as u16, FlowVerdict::Forwarded)));
        hub.note_lost(3);
        hub.export_lost_counter().fetch_add(4, Ordering::Relaxed);
        let c = hub.counters();
        // Evicted from the history is still delivered: it was read from the kernel.
        assert_eq!((c.delivered, c.lost_kernel, c.lost_export), (5, 3, 4));
    }

    #[test]
    fn queries_filter_and_a_lagging_follower_is_told_how_many_it_missed() {
        let hub = Hub::new(16);
        hub.push([at(1, 1, FlowVerdict::Forwarded), at(2, 2, FlowVerdict::Dropped)]);
        let mut q = Query::default();
        q.filter.push(Cond::from_flag("verdict", "DROPPED").expect("filter"), false);
        let (answer, follow) = hub.query_and_follow(&q);
        let mut live = follow.flows;
        assert_eq!(ports(&answer), vec![2]);
        // More than the live queue while the follower sleeps: the task never waits for it.
        hub.push((0..LIVE_QUEUE as i128 + 10).map(|i| at(10 + i, 3, FlowVerdict::Dropped)));
        match live.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 10),
            other => panic!("expected a lag of 10, got {other:?}"),
        }
        assert!(live.try_recv().is_ok(), "the follower goes on with what is still queued");
    }
}
