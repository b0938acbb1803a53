//! The learned addresses: which names each endpoint resolved to which addresses, until when,
//! and the `WARD_FQDN` entries that follow from them under the current policy. The proxy
//! calls [`Learner::learn`] for an answer and releases the answer only after it returned Ok:
//! the entries are in the kernel map by then. Capped per name and per endpoint, oldest first;
//! expired addresses stay while a tracked flow uses them ([`Learner::gc`]).
//!
//! The learner is the only writer of `WARD_FQDN` ([`LearnedStore`] is the map, or a plain
//! `BTreeMap` in tests) and keeps a mirror of what it wrote, so a policy change becomes a
//! diff ([`Learner::recompute`]): upserts first, then deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ward_common::fqdn::{LearnedKey, LearnedValue};
use ward_policy::compile::addr16;
use ward_policy::fqdn_policy::FqdnPolicy;

use super::DnsView;

/// The kernel map, as the learner writes it.
pub trait LearnedStore {
    fn upsert(&mut self, key: &LearnedKey, value: &LearnedValue) -> Result<(), String>;
    fn remove(&mut self, key: &LearnedKey) -> Result<(), String>;
}

impl LearnedStore for BTreeMap<LearnedKey, LearnedValue> {
    fn upsert(&mut self, key: &LearnedKey, value: &LearnedValue) -> Result<(), String> {
        self.insert(*key, *value);
        Ok(())
    }
    fn remove(&mut self, key: &LearnedKey) -> Result<(), String> {
        BTreeMap::remove(self, key);
        Ok(())
    }
}

/// Lifetimes and caps (`ward-agent --dns-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Records with a shorter TTL are kept this long.
    pub min_ttl: Duration,
    /// Added to every lifetime: a client connecting at the very end of the TTL still gets in.
    pub grace: Duration,
    /// Addresses kept per (endpoint, name); an answer with more is trimmed to this many.
    pub per_name: usize,
    /// Addresses kept per endpoint, all names together.
    pub per_pod: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { min_ttl: Duration::from_secs(5), grace: Duration::from_secs(5), per_name: 128, per_pod: 4096 }
    }
}

/// One address of one name at one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    pub expires_ns: u64,
    /// When it was last answered (eviction goes oldest first).
    pub answered_ns: u64,
}

/// Counters for `ward status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnStats {
    pub evicted_per_name: u64,
    pub evicted_per_pod: u64,
    pub expired_removed: u64,
    pub kept_for_live_flows: u64,
    pub write_errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("writing learned addresses into {map}: {message}")]
pub struct WriteError {
    pub map: &'static str,
    pub message: String,
}

/// Endpoint id → name → address → lifetime: what persists across restarts.
pub type Names = BTreeMap<u32, BTreeMap<String, BTreeMap<IpAddr, Learned>>>;

#[derive(Debug, Default)]
pub struct Learner {
    pub limits: Limits,
    names: Names,
    /// What `WARD_FQDN` holds (the learner is its only writer).
    written: BTreeMap<LearnedKey, LearnedValue>,
    /// The keys of each (endpoint, address) in `written`.
    by_addr: BTreeMap<(u32, IpAddr), BTreeSet<LearnedKey>>,
    pub stats: LearnStats,
    /// Names changed since [`Learner::take_dirty`].
    dirty: bool,
}

/// How an answer was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnOutcome {
    /// The first this many addresses of the answer are learned (the per-name cap).
    pub kept: usize,
    /// Kernel entries written.
    pub entries: usize,
}

impl Learner {
    pub fn new(limits: Limits) -> Self {
        Learner { limits, ..Learner::default() }
    }

    /// Starts from a persisted name table and what the kernel map holds (`kernel`): the
    /// mirror becomes the kernel's contents, then [`Learner::recompute`] brings it in line.
    pub fn restore(limits: Limits, names: Names, kernel: BTreeMap<LearnedKey, LearnedValue>) -> Self {
        let mut l = Learner { limits, names, ..Learner::default() };
        for (k, v) in kernel {
            l.by_addr.entry((k.ep_id(), ip_of(&k))).or_default().insert(k);
            l.written.insert(k, v);
        }
        l
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn written(&self) -> &BTreeMap<LearnedKey, LearnedValue> {
        &self.written
    }

    /// Addresses held (all endpoints and names).
    pub fn address_count(&self) -> usize {
        self.names.values().flat_map(|n| n.values()).map(BTreeMap::len).sum()
    }

    /// True once if names changed since the last call (for persisting).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Learns the addresses an answer for `qname` gave endpoint `ep_id` (already known to be
    /// allowed by `policy`) and writes their entries. Ok means every entry is in the map.
    pub fn learn(
        &mut self,
        store: &mut impl LearnedStore,
        ep_id: u32,
        policy: &FqdnPolicy,
        qname: &str,
        addrs: &[(IpAddr, u32)],
        now_ns: u64,
    ) -> Result<LearnOutcome, WriteError> {
        let kept = addrs.len().min(self.limits.per_name);
        let mut touched: BTreeSet<IpAddr> = BTreeSet::new();
        let per_name = self.limits.per_name;
        let entry = self.names.entry(ep_id).or_default().entry(qname.to_owned()).or_default();
        for (ip, ttl) in &addrs[..kept] {
            let life = Duration::from_secs(u64::from(*ttl)).max(self.limits.min_ttl) + self.limits.grace;
            let expires_ns = now_ns.saturating_add(life.as_nanos() as u64);
            let ip = ip.to_canonical();
            let l = entry.entry(ip).or_insert(Learned { expires_ns, answered_ns: now_ns });
            l.expires_ns = l.expires_ns.max(expires_ns);
            l.answered_ns = now_ns;
            touched.insert(ip);
        }
        // Per name: the oldest answered addresses go first (never one of this answer's).
        while entry.len() > per_name {
            let Some(oldest) = entry.iter().filter(|(ip, _)| !touched.contains(*ip)).min_by_key(|(_, l)| l.answered_ns)
            else {
                break;
            };
            let ip = *oldest.0;
            entry.remove(&ip);
            touched.insert(ip);
            self.stats.evicted_per_name += 1;
        }
        self.evict_per_pod(ep_id, qname, &mut touched);
        self.dirty = true;
        let mut entries = 0;
        for ip in touched {
            entries += self.sync_addr(store, ep_id, ip, Some(policy))?;
        }
        Ok(LearnOutcome { kept, entries })
    }

    /// Per endpoint: the oldest (name, address) pairs go until the cap holds.
    fn evict_per_pod(&mut self, ep_id: u32, current: &str, touched: &mut BTreeSet<IpAddr>) {
        let Some(names) = self.names.get_mut(&ep_id) else { return };
        let mut count: usize = names.values().map(BTreeMap::len).sum();
        while count > self.limits.per_pod {
            let oldest = names
                .iter()
                .flat_map(|(n, addrs)| addrs.iter().map(move |(ip, l)| (n, ip, l)))
                .filter(|(n, ip, _)| !(n.as_str() == current && touched.contains(*ip)))
                .min_by_key(|(_, _, l)| l.answered_ns)
                .map(|(n, ip, _)| (n.clone(), *ip));
            let Some((name, ip)) = oldest else { break };
            if let Some(addrs) = names.get_mut(&name) {
                addrs.remove(&ip);
                if addrs.is_empty() {
                    names.remove(&name);
                }
            }
            touched.insert(ip);
            count -= 1;
            self.stats.evicted_per_pod += 1;
        }
    }

    /// Makes the kernel entries of (endpoint, address) what its names give under `policy`
    /// (`None`: the endpoint has no fqdn policy any more: nothing). Upserts first, then
    /// deletes. Returns the number of upserts.
    fn sync_addr(
        &mut self,
        store: &mut impl LearnedStore,
        ep_id: u32,
        ip: IpAddr,
        policy: Option<&FqdnPolicy>,
    ) -> Result<usize, WriteError> {
        let mut desired = BTreeMap::new();
        if let (Some(policy), Some(names)) = (policy, self.names.get(&ep_id)) {
            for (name, addrs) in names {
                if let Some(l) = addrs.get(&ip) {
                    policy.learned_entries(ep_id, addr16(ip), [name.as_str()], l.expires_ns, &mut desired);
                }
            }
        }
        let current = self.by_addr.remove(&(ep_id, ip)).unwrap_or_default();
        let mut first_err = None;
        let mut kept_keys = BTreeSet::new();
        let mut upserts = 0;
        for (k, v) in &desired {
            if self.written.get(k) == Some(v) {
                kept_keys.insert(*k);
                continue;
            }
            match store.upsert(k, v) {
                Ok(()) => {
                    self.written.insert(*k, *v);
                    kept_keys.insert(*k);
                    upserts += 1;
                }
                Err(message) => {
                    self.stats.write_errors += 1;
                    first_err.get_or_insert(WriteError { map: ward_common::fqdn::MAP_FQDN, message });
                }
            }
        }
        for k in current.difference(&desired.keys().copied().collect()) {
            match store.remove(k) {
                Ok(()) => {
                    self.written.remove(k);
                }
                Err(message) => {
                    // Still in the kernel: keep tracking it so a later pass removes it.
                    kept_keys.insert(*k);
                    first_err.get_or_insert(WriteError { map: ward_common::fqdn::MAP_FQDN, message });
                }
            }
        }
        if !kept_keys.is_empty() {
            self.by_addr.insert((ep_id, ip), kept_keys);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(upserts),
        }
    }

    /// Brings every entry in line with `view` (after a policy or endpoint change): names of
    /// endpoints gone are forgotten; an endpoint's entries follow its identity's current
    /// rules. Returns whether any entry was removed or narrowed (tracked flows must then be
    /// re-decided: the caller asks for a revision bump).
    pub fn recompute(&mut self, store: &mut impl LearnedStore, view: &DnsView) -> Result<bool, WriteError> {
        let live_eps: BTreeSet<u32> = view.endpoints.values().map(|e| e.ep_id).collect();
        self.names.retain(|ep, _| live_eps.contains(ep));
        let before: BTreeMap<LearnedKey, LearnedValue> = self.written.clone();
        let mut addrs: BTreeSet<(u32, IpAddr)> = self.by_addr.keys().copied().collect();
        for (ep, names) in &self.names {
            for a in names.values().flat_map(|a| a.keys()) {
                addrs.insert((*ep, *a));
            }
        }
        let mut first_err = None;
        for (ep, ip) in addrs {
            let policy = view.policy_of_endpoint(ep);
            if let Err(e) = self.sync_addr(store, ep, ip, policy) {
                first_err.get_or_insert(e);
            }
        }
        self.dirty = true;
        let narrowed = before.iter().any(|(k, v)| self.written.get(k).is_none_or(|now| now.rule_id != v.rule_id));
        match first_err {
            Some(e) => Err(e),
            None => Ok(narrowed),
        }
    }

    /// Removes addresses whose every name expired before `now_ns`, unless `live(ep, addr)`
    /// (a tracked flow from the endpoint to it). Returns how many (endpoint, address) pairs
    /// it removed.
    pub fn gc(
        &mut self,
        store: &mut impl LearnedStore,
        view: &DnsView,
        now_ns: u64,
        live: impl Fn(u32, IpAddr) -> bool,
    ) -> usize {
        let mut expired: BTreeSet<(u32, IpAddr)> = BTreeSet::new();
        for (ep, names) in &self.names {
            for addrs in names.values() {
                for (ip, l) in addrs {
                    if l.expires_ns <= now_ns {
                        expired.insert((*ep, *ip));
                    }
                }
            }
        }
        let mut removed = 0;
        for (ep, ip) in expired {
            if live(ep, ip) {
                self.stats.kept_for_live_flows += 1;
                continue;
            }
            if let Some(names) = self.names.get_mut(&ep) {
                for addrs in names.values_mut() {
                    if addrs.get(&ip).is_some_and(|l| l.expires_ns <= now_ns) {
                        addrs.remove(&ip);
                    }
                }
                names.retain(|_, a| !a.is_empty());
            }
            self.dirty = true;
            if self.sync_addr(store, ep, ip, view.policy_of_endpoint(ep)).is_ok() {
                removed += 1;
                self.stats.expired_removed += 1;
            }
        }
        removed
    }

    /// Whether any name of `ep` still holds `ip` (for tests and status).
    pub fn holds(&self, ep: u32, ip: IpAddr) -> bool {
        self.names.get(&ep).is_some_and(|n| n.values().any(|a| a.contains_key(&ip)))
    }
}

/// The address of a learned key.
pub fn ip_of(k: &LearnedKey) -> IpAddr {
    let a = k.data.addr;
    let v6 = std::net::Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::EndpointDns;
    use ward_policy::fqdn::FqdnSelector;
    use ward_policy::fqdn_policy::{FqdnRule, L4Block};

    fn policy() -> FqdnPolicy {
        FqdnPolicy {
            rules: vec![FqdnRule {
                selector: FqdnSelector::pattern("*.bank.example").expect("p"),
                rule_id: 4,
                ports: Some(vec![L4Block { proto: 6, base: 443, prefix_len: 16 }]),
            }],
            dns: vec![],
        }
    }

    fn view(p: FqdnPolicy) -> DnsView {
        let mut v = DnsView::default();
        v.endpoints.insert(
            "10.1.0.5".parse().expect("ip"),
            EndpointDns { ep_id: 1, identity: 300, pod: "apps/client".into() },
        );
        v.policies.insert(300, p);
        v
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn an_answer_is_in_the_map_when_learn_returns_with_ttl_grace_and_min_ttl() {
        let limits = Limits { min_ttl: Duration::from_secs(10), grace: Duration::from_secs(2), ..Limits::default() };
        let mut l = Learner::new(limits);
        let mut kernel = BTreeMap::new();
        let out = l.learn(&mut kernel, 1, &policy(), "api.bank.example", &[(ip("198.18.1.1"), 3)], SEC).expect("ok");
        assert_eq!(out, LearnOutcome { kept: 1, entries: 1 });
        let (k, v) = kernel.iter().next().expect("an entry");
        assert_eq!(ip_of(k), ip("198.18.1.1"));
        assert_eq!(v.expires_ns, SEC + 12 * SEC, "min TTL 10 s over TTL 3 s, plus 2 s grace");
        assert_eq!(v.rule_id, 4);
    }

    #[test]
    fn caps_evict_the_oldest_and_count_it() {
        let limits = Limits { per_name: 2, per_pod: 3, ..Limits::default() };
        let mut l = Learner::new(limits);
        let mut kernel = BTreeMap::new();
        let p = policy();
        l.learn(&mut kernel, 1, &p, "a.bank.example", &[(ip("198.18.0.1"), 60)], SEC).expect("ok");
        l.learn(&mut kernel, 1, &p, "a.bank.example", &[(ip("198.18.0.2"), 60)], 2 * SEC).expect("ok");
        l.learn(&mut kernel, 1, &p, "a.bank.example", &[(ip("198.18.0.3"), 60)], 3 * SEC).expect("ok");
        assert!(!l.holds(1, ip("198.18.0.1")), "oldest of the name evicted");
        assert_eq!(l.stats.evicted_per_name, 1);
        l.learn(&mut kernel, 1, &p, "b.bank.example", &[(ip("198.18.0.4"), 60), (ip("198.18.0.5"), 60)], 4 * SEC)
            .expect("ok");
        assert_eq!(l.address_count(), 3);
        assert!(!l.holds(1, ip("198.18.0.2")), "oldest of the pod evicted");
        assert_eq!(l.stats.evicted_per_pod, 1);
        assert_eq!(kernel.len(), 3, "the kernel holds exactly what is learned: {kernel:?}");
        let out = l
            .learn(
                &mut kernel,
                1,
                &p,
                "c.bank.example",
                &[(ip("1.1.1.1"), 1), (ip("1.1.1.2"), 1), (ip("1.1.1.3"), 1)],
                5 * SEC,
            )
            .expect("ok");
        assert_eq!(out.kept, 2, "an answer longer than the per-name cap is trimmed");
    }

    #[test]
    fn expired_addresses_go_unless_a_flow_uses_them() {
        let limits = Limits { min_ttl: Duration::ZERO, grace: Duration::ZERO, ..Limits::default() };
        let mut l = Learner::new(limits);
        let mut kernel = BTreeMap::new();
        let v = view(policy());
        l.learn(&mut kernel, 1, &policy(), "a.bank.example", &[(ip("198.18.0.1"), 1), (ip("198.18.0.2"), 1)], 0)
            .expect("ok");
        assert_eq!(l.gc(&mut kernel, &v, SEC / 2, |_, _| false), 0, "not expired yet");
        let live = ip("198.18.0.2");
        assert_eq!(l.gc(&mut kernel, &v, 2 * SEC, |_, a| a == live), 1);
        assert!(l.holds(1, live) && !l.holds(1, ip("198.18.0.1")));
        assert_eq!(kernel.len(), 1);
        assert_eq!(l.stats.kept_for_live_flows, 1);
    }

    #[test]
    fn a_policy_change_rewrites_entries_and_reports_narrowing() {
        let mut l = Learner::new(Limits::default());
        let mut kernel = BTreeMap::new();
        l.learn(&mut kernel, 1, &policy(), "a.bank.example", &[(ip("198.18.0.1"), 60)], 0).expect("ok");
        let mut wider = policy();
        wider.rules[0].ports = None;
        assert!(l.recompute(&mut kernel, &view(wider)).expect("ok"), "port 443 entry replaced");
        assert_eq!(kernel.keys().next().map(|k| k.prefixlen), Some(ward_common::fqdn::LEARNED_ANY_PROTO_BITS));
        assert!(l.recompute(&mut kernel, &view(FqdnPolicy::default())).expect("ok"));
        assert!(kernel.is_empty(), "no rule: nothing open");
        assert!(l.recompute(&mut kernel, &DnsView::default()).is_ok());
        assert!(l.names().is_empty(), "endpoint gone: names forgotten");
    }

    #[test]
    fn a_failed_write_is_an_error_and_stays_counted() {
        struct Full;
        impl LearnedStore for Full {
            fn upsert(&mut self, _: &LearnedKey, _: &LearnedValue) -> Result<(), String> {
                Err("map full".into())
            }
            fn remove(&mut self, _: &LearnedKey) -> Result<(), String> {
                Ok(())
            }
        }
        let mut l = Learner::new(Limits::default());
        let e = l.learn(&mut Full, 1, &policy(), "a.bank.example", &[(ip("198.18.0.1"), 60)], 0).expect_err("full");
        assert!(e.message.contains("map full"));
        assert_eq!(l.stats.write_errors, 1);
        assert!(l.written().is_empty());
    }
}
