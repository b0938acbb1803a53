//! The HTTP side of the datapath, seen from user space: the `ward_http` program put into its
//! tail-call slot, the rule sets written into `WARD_HTTP_SETS`, and the per-reason counters
//! and flow records read back. Kept beside `maps.rs` rather than in it, so the HTTP maps
//! move as one piece.
//!
//! Set ids are allocated by the compiler (`Identities::http_set`) so that an id never names
//! two contents while a policy entry refers to it: new sets are written before the policy
//! entries that name them ([`HttpMaps::upsert_sets`], before `Maps::apply`), unused sets are
//! deleted after the entries are gone ([`HttpMaps::delete_sets`], after it).

use std::collections::{BTreeMap, VecDeque};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
};
use ward_common::http::conn::{
    HTTP_PROGRAM, HttpEvent, HttpReason, MAP_HTTP_CNT, MAP_HTTP_CONN, MAP_HTTP_EVENTS, MAP_HTTP_PROG, MAP_HTTP_SETS,
};
use ward_common::http::rules::HttpSet;
use ward_common::maps::Counter;

use super::DatapathError;
use super::maps::{map_err, take};

/// Flow records kept for `ward status` (the newest ones).
pub const RECENT_EVENTS: usize = 64;

pub struct HttpMaps {
    sets: HashMap<MapData, u32, HttpSet>,
    conns: HashMap<MapData, ward_common::http::conn::HttpConnKey, ward_common::http::conn::HttpConn>,
    counters: PerCpuArray<MapData, Counter>,
    events: RingBuf<MapData>,
    /// What `WARD_HTTP_SETS` holds.
    loaded: BTreeMap<u32, HttpSet>,
    recent: VecDeque<HttpEvent>,
}

impl HttpMaps {
    /// Loads `ward_http`, puts it in its tail-call slot (replacing the program a previous
    /// agent left there, atomically), and takes the HTTP maps.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        super::attach::fill_tail_call_slot(ebpf, HTTP_PROGRAM, MAP_HTTP_PROG)?;
        let sets: HashMap<MapData, u32, HttpSet> = take(ebpf, MAP_HTTP_SETS)?;
        let mut loaded = BTreeMap::new();
        for kv in sets.iter() {
            let (k, v) = kv.map_err(map_err(MAP_HTTP_SETS))?;
            loaded.insert(k, v);
        }
        Ok(HttpMaps {
            sets,
            conns: take(ebpf, MAP_HTTP_CONN)?,
            counters: take(ebpf, MAP_HTTP_CNT)?,
            events: take(ebpf, MAP_HTTP_EVENTS)?,
            loaded,
            recent: VecDeque::new(),
        })
    }

    /// What `WARD_HTTP_SETS` holds.
    pub fn loaded(&self) -> &BTreeMap<u32, HttpSet> {
        &self.loaded
    }

    /// Writes the sets of `desired` that are new or differ (before the policy entries that
    /// name them). Errors are logged and the first returned; the others are still tried.
    pub fn upsert_sets(&mut self, desired: &BTreeMap<u32, HttpSet>) -> Result<usize, DatapathError> {
        let mut first = None;
        let mut n = 0;
        for (id, set) in desired {
            if self.loaded.get(id) == Some(set) {
                continue;
            }
            match self.sets.insert(id, set, 0) {
                Ok(()) => {
                    self.loaded.insert(*id, *set);
                    n += 1;
                }
                Err(e) => {
                    let e = map_err(MAP_HTTP_SETS)(e);
                    tracing::error!(map = MAP_HTTP_SETS, set = id, error = %e, "writing an HTTP rule set");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(n), Err)
    }

    /// Deletes the sets `desired` no longer has (after the policy entries that named them).
    pub fn delete_sets(&mut self, desired: &BTreeMap<u32, HttpSet>) -> usize {
        let gone: Vec<u32> = self.loaded.keys().filter(|id| !desired.contains_key(id)).copied().collect();
        for id in &gone {
            match self.sets.remove(id) {
                Ok(()) => {
                    self.loaded.remove(id);
                }
                Err(e) => tracing::warn!(map = MAP_HTTP_SETS, set = id, error = %e, "deleting an HTTP rule set"),
            }
        }
        gone.len()
    }

    /// Requests (and dropped packets of policed connections) per reason, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<HttpReason, u64>, DatapathError> {
        let mut out = BTreeMap::new();
        for r in HttpReason::ALL {
            let per_cpu = self.counters.get(&(r as u32), 0).map_err(map_err(MAP_HTTP_CNT))?;
            out.insert(r, per_cpu.iter().map(|c| c.packets).sum());
        }
        Ok(out)
    }

    /// Tracked connections.
    pub fn connections(&self) -> usize {
        self.conns.keys().filter(|k| k.is_ok()).count()
    }

    /// Moves the flow records written since the last call into the recent list (bounded).
    pub fn drain_events(&mut self) {
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<HttpEvent>() {
                continue;
            }
            // SAFETY: the program writes whole `HttpEvent`s (repr(C), any bit pattern valid);
            // the length was checked and the read is unaligned-safe.
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HttpEvent>()) };
            if self.recent.len() == RECENT_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(e);
        }
    }

    /// The newest flow records, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &HttpEvent> {
        self.recent.iter()
    }
}
