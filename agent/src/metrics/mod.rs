//! What the agent exports to Prometheus: a plain-data report the owner task fills on each
//! scrape (kernel counters summed over CPUs, every compiled rule with its hits, map fill,
//! the policy update latency histogram) and its rendering in the text exposition format
//! (`text`). The HTTP endpoint (`api::http`) only serves the rendered text.
//!
//! Label cardinality is bounded by construction: labels are reason codes, directions,
//! map names and policy rules (namespace/name, direction, index), never addresses, ports
//! or pods.

pub mod text;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use ward_common::{Direction, Reason};

use crate::api::proto::StatusReport;

/// Everything one scrape renders.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// The status report the older families (`ward_packets_total`, datastore gauges) read.
    pub status: StatusReport,
    /// The layout version of the maps (`ward_build_info`).
    pub layout_version: u32,
    /// Packets per (reason, direction), exact sums of the kernel's per-CPU counters.
    pub verdicts: Vec<VerdictCount>,
    /// Every rule of the compiled policy with the new flows it allowed, zero included.
    pub rules: Vec<RuleHits>,
    /// Each pinned map's entries and capacity.
    pub maps: Vec<MapFill>,
    /// Time from the owner task receiving a datastore change to the maps holding it.
    pub policy_update_latency: Histogram,
    #[serde(default)]
    pub flow_events: FlowEventCounts,
}

/// Flow records from the kernel's ring buffer: how many reached the history, and how many
/// were lost and where (the kernel's ring was full; the file exporter fell behind).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowEventCounts {
    pub delivered: u64,
    pub lost_kernel: u64,
    pub lost_export: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerdictCount {
    /// `Reason` code (`ward_common::reason`).
    pub reason: u8,
    /// `Direction` code.
    pub direction: u8,
    pub packets: u64,
}

impl VerdictCount {
    pub fn new(reason: Reason, direction: Direction, packets: u64) -> Self {
        VerdictCount { reason: reason as u8, direction: direction as u8, packets }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleHits {
    /// `namespace/name`.
    pub policy: String,
    pub direction: String,
    /// Index into the policy's `ingress` or `egress` list.
    pub index: usize,
    /// New flows the rule allowed (the kernel's `WARD_RULE_CNT`, summed over CPUs).
    pub flows: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapFill {
    pub map: String,
    pub entries: u64,
    /// `None` when the map's capacity could not be read.
    pub max_entries: Option<u64>,
}

/// Upper bounds of the latency buckets, in microseconds (1 ms to 10 s).
pub const LATENCY_BOUNDS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A fixed-bucket histogram of durations. Counts are per bucket (not cumulative; the text
/// rendering accumulates them), the last one for observations above every bound.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; LATENCY_BOUNDS_US.len() + 1], sum_us: 0 }
    }
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BOUNDS_US.len());
        if let Some(c) = self.counts.get_mut(bucket) {
            *c += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(1_000));
        h.observe(Duration::from_micros(1_001));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.counts[0], 1, "a value on a bound belongs to that bucket (le)");
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[LATENCY_BOUNDS_US.len()], 1, "above every bound");
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum_us, 1_000 + 1_001 + 60_000_000);
    }
}
