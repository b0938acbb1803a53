//! The owner task's side of `/metrics`: one [`Report`] per scrape from the kernel's
//! counters (summed over CPUs), the compiled rules, the maps' fill and capacity, and the
//! update latency the event loop records.

use std::collections::BTreeMap;

use aya::maps::MapInfo;
use ward_common::maps::LAYOUT_VERSION;

use crate::metrics::{MapFill, Report, RuleHits, VerdictCount};

use super::Agent;

impl Agent {
    pub(super) fn metrics(&self) -> Report {
        let status = self.status();
        let verdicts = match self.dp.maps.reason_counters() {
            Ok(m) => m.into_iter().map(|((r, d), c)| VerdictCount::new(r, d, c.packets)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the reason counters for /metrics");
                Vec::new()
            }
        };
        let hits: BTreeMap<u32, u64> = match self.dp.maps.rule_counters() {
            Ok(m) => m.into_iter().map(|(id, c)| (id, c.packets)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the rule counters for /metrics");
                BTreeMap::new()
            }
        };
        // Every rule the compiled policy has, hit or not: "never hit" is then a query.
        // Counters of rule ids no longer compiled (a removed policy) are left out.
        let rules = self
            .compiled
            .as_ref()
            .map(|c| {
                c.rules
                    .iter()
                    .map(|(id, info)| RuleHits {
                        policy: info.policy.to_string(),
                        direction: info.direction.as_str().to_owned(),
                        index: info.index,
                        flows: hits.get(id).copied().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let maps = status
            .map_entries
            .iter()
            .map(|(map, entries)| {
                // The pinned map's own capacity (tests create maps smaller than the defaults).
                let max_entries =
                    MapInfo::from_pin(self.dp.pin_dir().join(map)).ok().map(|i| u64::from(i.max_entries()));
                MapFill { map: map.clone(), entries: *entries as u64, max_entries }
            })
            .collect();
        Report {
            status,
            layout_version: LAYOUT_VERSION,
            verdicts,
            rules,
            maps,
            policy_update_latency: self.update_latency.clone(),
            flow_events: self.flow_hub.as_ref().map(|h| h.counters()).unwrap_or_default(),
        }
    }
}
