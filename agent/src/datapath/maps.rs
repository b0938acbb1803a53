//! Typed handles on the pinned maps, and the one way user space changes them: `apply`, which
//! moves the kernel from the contents it has to the contents the compiler wants, in an order
//! that never opens a gap (see `apply`).

use std::collections::BTreeMap;
use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
};
use ward_common::{
    Addr16, Direction, Reason,
    maps::{
        self as m, CFG_EVENTS_DROPPED, CT_COUNT_AGENT, CT_COUNT_KERNEL, ConfigValue, Counter, CtCountKey, CtKey,
        CtValue, EndpointInfo, FlowEvent, IpcacheKey, IpcacheValue, LAYOUT_VERSION, PolicyKey, PolicyKeyData,
        PolicyValue,
    },
};

use super::DatapathError;

/// The contents of the three maps user space owns. The agent keeps a mirror of what is in
/// the kernel and diffs the compiler's output against it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorContents {
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    pub ipcache: BTreeMap<IpcacheKey, IpcacheValue>,
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
}

/// The writes that move the kernel from one [`MirrorContents`] to another, in the order
/// [`Maps::apply`] makes them (see [`MirrorContents::delta_to`]). Pure, so the benchmark and
/// tests count exactly what the kernel would receive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorDelta {
    pub policy_upserts: Vec<(PolicyKey, PolicyValue)>,
    /// Most specific prefix first.
    pub ipcache_upserts: Vec<(IpcacheKey, IpcacheValue)>,
    pub endpoint_upserts: Vec<(u32, EndpointInfo)>,
    pub endpoint_deletes: Vec<u32>,
    /// Broadest prefix first.
    pub ipcache_deletes: Vec<IpcacheKey>,
    pub policy_deletes: Vec<PolicyKey>,
}

impl MirrorContents {
    /// The writes from `self` to `desired`. Order: allows are added before anything starts
    /// using them (policy, then ipcache, then endpoints), and removed only after (endpoints,
    /// ipcache, then policy), so no instant denies what both old and new policy allow.
    pub fn delta_to(&self, desired: &MirrorContents) -> MirrorDelta {
        fn upserts<'a, K: Ord + Copy + 'a, V: PartialEq + Copy + 'a>(
            current: &BTreeMap<K, V>,
            desired: impl Iterator<Item = (&'a K, &'a V)>,
        ) -> Vec<(K, V)> {
            desired.filter(|(k, v)| current.get(k) != Some(*v)).map(|(k, v)| (*k, *v)).collect()
        }
        fn deletes<K: Ord + Copy, V>(current: &BTreeMap<K, V>, desired: &BTreeMap<K, V>) -> Vec<K> {
            current.keys().filter(|k| !desired.contains_key(k)).copied().collect()
        }
        MirrorDelta {
            policy_upserts: upserts(&self.policy, desired.policy.iter()),
            // Most specific prefixes first: an `except` carve-out must be in place before the
            // broader block that allows around it, or the excepted addresses would match the
            // block for an instant. (Deletes go broadest first, for the same reason.)
            ipcache_upserts: upserts(&self.ipcache, desired.ipcache.iter().rev()),
            endpoint_upserts: upserts(&self.endpoints, desired.endpoints.iter()),
            endpoint_deletes: deletes(&self.endpoints, &desired.endpoints),
            // Ascending key order is ascending prefix length: broadest first.
            ipcache_deletes: deletes(&self.ipcache, &desired.ipcache),
            policy_deletes: deletes(&self.policy, &desired.policy),
        }
    }
}

impl MirrorDelta {
    /// Map writes (upserts and deletes) in all three maps.
    pub fn len(&self) -> usize {
        self.policy_upserts.len()
            + self.ipcache_upserts.len()
            + self.endpoint_upserts.len()
            + self.endpoint_deletes.len()
            + self.ipcache_deletes.len()
            + self.policy_deletes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What a fully successful [`Maps::apply`] does to its mirror.
    pub fn apply_to(&self, m: &mut MirrorContents) {
        m.policy.extend(self.policy_upserts.iter().copied());
        m.ipcache.extend(self.ipcache_upserts.iter().copied());
        m.endpoints.extend(self.endpoint_upserts.iter().copied());
        for k in &self.endpoint_deletes {
            m.endpoints.remove(k);
        }
        for k in &self.ipcache_deletes {
            m.ipcache.remove(k);
        }
        for k in &self.policy_deletes {
            m.policy.remove(k);
        }
    }
}

/// What one `apply` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub upserts: usize,
    pub deletes: usize,
}

pub struct Maps {
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    ipcache: LpmTrie<MapData, Addr16, IpcacheValue>,
    policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
    config: Array<MapData, ConfigValue>,
    reason_cnt: PerCpuArray<MapData, Counter>,
    rule_cnt: PerCpuHashMap<MapData, u32, Counter>,
    ct: HashMap<MapData, CtKey, CtValue>,
    ct_count: HashMap<MapData, CtCountKey, i64>,
    /// `None` once the flow task took it ([`Maps::take_events`]).
    events: Option<EventSource>,
}

/// The flow ring buffer and its loss counters: what the flow task owns.
pub struct EventSource {
    pub ring: RingBuf<MapData>,
    pub lost: LostCounters,
}

/// `WARD_EVT_LOST`: flow events lost because the ring was full.
pub struct LostCounters(PerCpuArray<MapData, u64>);

impl LostCounters {
    /// Per reason, summed over CPUs (counted since the maps were created; zeros left out).
    pub fn per_reason(&self) -> Result<BTreeMap<Reason, u64>, DatapathError> {
        let mut out = BTreeMap::new();
        for r in Reason::ALL {
            let per_cpu = self.0.get(&(r as u32), 0).map_err(map_err(m::MAP_EVENTS_LOST))?;
            let n: u64 = per_cpu.iter().sum();
            if n > 0 {
                out.insert(r, n);
            }
        }
        Ok(out)
    }
}

/// What one conntrack expiry sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub scanned: usize,
    pub expired: usize,
}

pub(super) fn take<T>(ebpf: &mut Ebpf, map: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let raw = ebpf.take_map(map).ok_or(DatapathError::MissingMap { map })?;
    T::try_from(raw).map_err(|source| DatapathError::Map { map, source: Box::new(source) })
}

pub(super) fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source: Box::new(source) }
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Maps {
            endpoints: take(ebpf, m::MAP_ENDPOINTS)?,
            ipcache: take(ebpf, m::MAP_IPCACHE)?,
            policy: take(ebpf, m::MAP_POLICY)?,
            config: take(ebpf, m::MAP_CONFIG)?,
            reason_cnt: take(ebpf, m::MAP_REASON_DIR)?,
            rule_cnt: take(ebpf, m::MAP_RULE_CNT)?,
            ct: take(ebpf, m::MAP_CT)?,
            ct_count: take(ebpf, m::MAP_CT_COUNT)?,
            events: Some(EventSource {
                ring: take(ebpf, m::MAP_EVENTS)?,
                lost: LostCounters(take(ebpf, m::MAP_EVENTS_LOST)?),
            }),
        })
    }

    fn config(&self) -> Result<ConfigValue, DatapathError> {
        self.config.get(&0, 0).map_err(map_err(m::MAP_CONFIG))
    }

    fn set_config(&mut self, c: ConfigValue) -> Result<(), DatapathError> {
        self.config.set(0, c, 0).map_err(map_err(m::MAP_CONFIG))
    }

    /// A fresh config gets this layout's version; pinned maps of another layout are refused.
    pub(super) fn check_layout(&mut self, pin_dir: &Path) -> Result<(), DatapathError> {
        let c = self.config()?;
        match c.layout_version {
            0 => self.set_config(ConfigValue {
                layout_version: LAYOUT_VERSION,
                policy_rev: 1,
                flags: CFG_EVENTS_DROPPED,
                ct_quota: m::CT_QUOTA_DEFAULT,
            }),
            v if v == LAYOUT_VERSION => Ok(()),
            found => Err(DatapathError::Layout { pin_dir: pin_dir.to_owned(), found, expected: LAYOUT_VERSION }),
        }
    }

    pub fn revision(&self) -> Result<u32, DatapathError> {
        Ok(self.config()?.policy_rev)
    }

    /// Sets the `CFG_EVENTS_*` bits.
    /// Sets the programs' `CFG_*` switches (flow events, same-node delivery).
    pub fn set_flags(&mut self, flags: u32) -> Result<(), DatapathError> {
        let c = self.config()?;
        self.set_config(ConfigValue { flags, ..c })
    }

    /// Sets how many tracked flows one endpoint may hold.
    pub fn set_ct_quota(&mut self, ct_quota: u32) -> Result<(), DatapathError> {
        let c = self.config()?;
        self.set_config(ConfigValue { ct_quota, ..c })
    }

    /// Tells the programs that policy changed: every tracked flow is re-decided on its next
    /// packet (and cut if no longer allowed).
    pub fn bump_revision(&mut self) -> Result<u32, DatapathError> {
        let c = self.config()?;
        let rev = match c.policy_rev.wrapping_add(1) {
            0 => 1,
            r => r,
        };
        self.set_config(ConfigValue { policy_rev: rev, ..c })?;
        Ok(rev)
    }

    /// Reads what the kernel holds (at start-up: adopting pinned state).
    pub fn read_all(&self) -> Result<MirrorContents, DatapathError> {
        let mut out = MirrorContents::default();
        for kv in self.endpoints.iter() {
            let (k, v) = kv.map_err(map_err(m::MAP_ENDPOINTS))?;
            out.endpoints.insert(k, v);
        }
        for kv in self.ipcache.iter() {
            let (k, v) = kv.map_err(map_err(m::MAP_IPCACHE))?;
            out.ipcache.insert(IpcacheKey { prefixlen: k.prefix_len(), addr: k.data() }, v);
        }
        for kv in self.policy.iter() {
            let (k, v) = kv.map_err(map_err(m::MAP_POLICY))?;
            out.policy.insert(PolicyKey::from_parts(k.prefix_len(), k.data()), v);
        }
        Ok(out)
    }

    /// Makes the writes of `delta` (see [`MirrorContents::delta_to`] for their order),
    /// updating `current` as it goes so that it stays the truth even when an operation fails.
    /// Errors do not stop the pass (a failed insert only leaves traffic denied); the first one
    /// is returned after the revision bump.
    pub fn apply(&mut self, current: &mut MirrorContents, delta: &MirrorDelta) -> Result<ApplyStats, DatapathError> {
        let mut stats = ApplyStats::default();
        let mut first_err = None;
        let mut note = |r: Result<(), DatapathError>, stats: &mut ApplyStats, upsert: bool| match r {
            Ok(()) => {
                if upsert {
                    stats.upserts += 1
                } else {
                    stats.deletes += 1
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "map update failed");
                first_err.get_or_insert(e);
                false
            }
        };

        for (k, v) in &delta.policy_upserts {
            let r = self.policy.insert(&Key::new(k.prefixlen, k.data()), v, 0).map_err(map_err(m::MAP_POLICY));
            if note(r, &mut stats, true) {
                current.policy.insert(*k, *v);
            }
        }
        // A prefix is only in force while every more specific prefix inside it is: were an
        // `except` (or any longer prefix) missing, its addresses would take the broader
        // prefix's identity and its allows. So a prefix whose insert failed withholds every
        // prefix containing it, already loaded or not: under map pressure fewer allows, never
        // more. (Upserts go most specific first, so the failures are known in time.)
        let mut failed: Vec<IpcacheKey> = Vec::new();
        for (k, v) in &delta.ipcache_upserts {
            if failed.iter().any(|f| k.contains(f)) {
                let r = self.withhold(current, k);
                note(r, &mut stats, false);
                continue;
            }
            let r = self.ipcache.insert(&Key::new(k.prefixlen, k.addr), v, 0).map_err(map_err(m::MAP_IPCACHE));
            if note(r, &mut stats, true) {
                current.ipcache.insert(*k, *v);
            } else {
                failed.push(*k);
            }
        }
        let covering: Vec<IpcacheKey> =
            current.ipcache.keys().filter(|k| failed.iter().any(|f| k.contains(f) && *k != f)).copied().collect();
        for k in covering {
            let r = self.withhold(current, &k);
            note(r, &mut stats, false);
        }
        for (k, v) in &delta.endpoint_upserts {
            let r = self.endpoints.insert(k, v, 0).map_err(map_err(m::MAP_ENDPOINTS));
            if note(r, &mut stats, true) {
                current.endpoints.insert(*k, *v);
            }
        }
        for k in &delta.endpoint_deletes {
            let r = self.endpoints.remove(k).map_err(map_err(m::MAP_ENDPOINTS));
            if note(r, &mut stats, false) {
                current.endpoints.remove(k);
            }
        }
        for k in &delta.ipcache_deletes {
            let r = self.ipcache.remove(&Key::new(k.prefixlen, k.addr)).map_err(map_err(m::MAP_IPCACHE));
            if note(r, &mut stats, false) {
                current.ipcache.remove(k);
            }
        }
        for k in &delta.policy_deletes {
            let r = self.policy.remove(&Key::new(k.prefixlen, k.data())).map_err(map_err(m::MAP_POLICY));
            if note(r, &mut stats, false) {
                current.policy.remove(k);
            }
        }
        // Whatever changed (a failed pass may still have removed or withheld entries), tracked
        // flows must be decided again against what the maps now hold.
        if !delta.is_empty() {
            self.bump_revision()?;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// Takes a prefix out of force because a more specific prefix inside it could not be
    /// loaded (see `apply`); reported as an error so `ward status` shows it.
    fn withhold(&mut self, current: &mut MirrorContents, k: &IpcacheKey) -> Result<(), DatapathError> {
        if current.ipcache.contains_key(k) {
            self.ipcache.remove(&Key::new(k.prefixlen, k.addr)).map_err(map_err(m::MAP_IPCACHE))?;
            current.ipcache.remove(k);
        }
        Err(DatapathError::Withheld { prefixlen: k.prefixlen, addr: k.addr })
    }

    /// Packets and bytes per reason and direction, summed over CPUs (exact: every CPU's
    /// slot is read, nothing is sampled).
    pub fn reason_counters(&self) -> Result<BTreeMap<(Reason, Direction), Counter>, DatapathError> {
        let mut out = BTreeMap::new();
        for r in Reason::ALL {
            for d in [Direction::Ingress, Direction::Egress] {
                let slot = m::reason_slot(r, d);
                let per_cpu = self.reason_cnt.get(&slot, 0).map_err(map_err(m::MAP_REASON_DIR))?;
                let mut sum = Counter::default();
                for c in per_cpu.iter() {
                    sum.packets += c.packets;
                    sum.bytes += c.bytes;
                }
                out.insert((r, d), sum);
            }
        }
        Ok(out)
    }

    /// Packets and bytes per allowing rule id, summed over CPUs.
    pub fn rule_counters(&self) -> Result<BTreeMap<u32, Counter>, DatapathError> {
        let mut out = BTreeMap::new();
        for kv in self.rule_cnt.iter() {
            let (k, per_cpu) = kv.map_err(map_err(m::MAP_RULE_CNT))?;
            let mut sum = Counter::default();
            for c in per_cpu.iter() {
                sum.packets += c.packets;
                sum.bytes += c.bytes;
            }
            out.insert(k, sum);
        }
        Ok(out)
    }

    /// Hands the flow ring buffer to its one reader (the flow task); `None` if taken already.
    pub fn take_events(&mut self) -> Option<EventSource> {
        self.events.take()
    }

    /// Flow events lost per reason (empty once the flow task took the ring buffer).
    pub fn events_lost(&self) -> Result<BTreeMap<Reason, u64>, DatapathError> {
        self.events.as_ref().map_or(Ok(BTreeMap::new()), |e| e.lost.per_reason())
    }

    /// The next flow event the programs wrote, if any (non-blocking; `None` too once the
    /// ring buffer was taken).
    pub fn next_event(&mut self) -> Option<FlowEvent> {
        let item = self.events.as_mut()?.ring.next()?;
        FlowEvent::from_bytes(&item)
    }

    /// Tracked flows per endpoint id, from the counters (no walk over the table).
    pub fn ct_in_use(&self) -> BTreeMap<u32, u64> {
        let mut kernel: BTreeMap<u32, i64> = BTreeMap::new();
        let mut agent: BTreeMap<u32, i64> = BTreeMap::new();
        for (k, v) in self.ct_count.iter().filter_map(Result::ok) {
            match k.writer {
                CT_COUNT_KERNEL => kernel.insert(k.ep_id, v),
                _ => agent.insert(k.ep_id, v),
            };
        }
        kernel
            .into_iter()
            .map(|(ep, n)| (ep, u64::try_from(n - agent.get(&ep).copied().unwrap_or(0)).unwrap_or(0)))
            .collect()
    }

    /// Number of tracked flows (for status).
    pub fn ct_entries(&self) -> usize {
        self.ct_in_use().values().map(|n| *n as usize).sum()
    }

    /// Removes the tracked flows that have been idle longer than their state allows
    /// (`CtValue::expired`, on the programs' clock), and records per endpoint how many it
    /// removed so the quota counts stay exact (see `ward_common::maps::CtCountKey`).
    pub fn sweep_ct(&mut self, now_ns: u64) -> SweepStats {
        let mut stats = SweepStats::default();
        let mut expired: Vec<CtKey> = Vec::new();
        for (k, v) in self.ct.iter().filter_map(Result::ok) {
            stats.scanned += 1;
            if v.expired(k.proto, now_ns) {
                expired.push(k);
            }
        }
        let mut removed: BTreeMap<u32, i64> = BTreeMap::new();
        for k in &expired {
            // A packet may have refreshed it since the read, or a program removed it first:
            // re-read, and count only what this call removed.
            if self.ct.get(k, 0).is_ok_and(|v| v.expired(k.proto, now_ns)) && self.ct.remove(k).is_ok() {
                *removed.entry(k.ep_id).or_default() += 1;
                stats.expired += 1;
            }
        }
        for (ep_id, n) in removed {
            self.add_agent_count(ep_id, n);
        }
        stats
    }

    /// Inserts flows carried over from an older layout (before any program uses these maps)
    /// and counts them towards their endpoints. Returns how many were inserted.
    pub fn adopt_flows(&mut self, flows: impl Iterator<Item = (CtKey, CtValue)>) -> usize {
        const BPF_NOEXIST: u64 = 1;
        let mut per_ep: BTreeMap<u32, i64> = BTreeMap::new();
        for (k, v) in flows {
            if self.ct.insert(k, v, BPF_NOEXIST).is_ok() {
                *per_ep.entry(k.ep_id).or_default() += 1;
            }
        }
        let mut total = 0;
        for (ep_id, n) in per_ep {
            let key = CtCountKey { ep_id, writer: CT_COUNT_KERNEL };
            // No program runs on these maps yet: this write races with nothing.
            let cur = self.ct_count.get(&key, 0).unwrap_or(0);
            if self.ct_count.insert(key, cur + n, 0).is_ok() {
                total += n as usize;
            }
        }
        total
    }

    fn add_agent_count(&mut self, ep_id: u32, n: i64) {
        let key = CtCountKey { ep_id, writer: CT_COUNT_AGENT };
        // The agent is this slot's only writer: read-modify-write cannot lose an update.
        let cur = self.ct_count.get(&key, 0).unwrap_or(0);
        if let Err(e) = self.ct_count.insert(key, cur + n, 0) {
            tracing::warn!(endpoint = ep_id, error = %e, "recording swept conntrack entries");
        }
    }

    /// Forgets the tracked flows of these endpoints (on deregistration), in one sweep, and
    /// their counters (their ids are never reused).
    pub fn flush_ct(&mut self, ep_ids: &std::collections::BTreeSet<u32>) {
        let keys: Vec<CtKey> = self.ct.keys().filter_map(|k| k.ok()).filter(|k| ep_ids.contains(&k.ep_id)).collect();
        for k in keys {
            let _ = self.ct.remove(&k);
        }
        for ep_id in ep_ids {
            for writer in [CT_COUNT_KERNEL, CT_COUNT_AGENT] {
                let _ = self.ct_count.remove(&CtCountKey { ep_id: *ep_id, writer });
            }
        }
    }
}
