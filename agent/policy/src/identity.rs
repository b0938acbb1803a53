//! Security identities and rule ids: stable numbers for what the compiler puts in the maps.
//!
//! A *label identity* stands for every pod with the same namespace, labels and named ports;
//! including the named ports makes named-port resolution exact per identity. A *CIDR
//! identity* stands for a policy prefix (optionally "flavoured" with the named ports of the
//! pods whose addresses fall in it, see `compile`). Rule ids name (policy, direction, rule
//! index) in the policy map values, flow events and counters. HTTP set ids name a set of HTTP
//! rules (`WARD_HTTP_SETS`): the kernel must never see one id mean two contents while a
//! policy entry still refers to it, so they are allocated, persisted and freed like the rest.
//!
//! The agent owns one [`Identities`], passes it to every `compile`, persists it (serde) so a
//! restarted agent gets the same numbers back for the same keys, and calls
//! [`Identities::gc`] once the maps no longer reference the old numbers. A number is never
//! handed to a second key while the first still holds it, and allocation moves forward, so a
//! freed number is not reused until the space wraps.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use ward_common::Direction;
use ward_common::identity::{CIDR_ID_BIT, FIRST_LABEL_ID, MAX_ID};

use crate::cluster::{PodKey, PolicyRef};
use crate::http::HttpRule;
use crate::selector::Labels;
use crate::validate::{NamedPort, PodInfo};

/// What a label identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LabelKey {
    pub namespace: String,
    pub labels: Labels,
    /// Sorted `(name, protocol, port)`, without repeats; a name may appear more than once
    /// (containers can share one).
    pub named_ports: Vec<NamedPort>,
}

impl LabelKey {
    pub fn of(pod: &PodKey, info: &PodInfo) -> Self {
        // Sorted and without repeats, whatever order the containers listed them in, so that
        // the same pod always gets the same identity.
        let mut named_ports = info.ports.clone();
        named_ports.sort();
        named_ports.dedup();
        LabelKey { namespace: pod.namespace.clone(), labels: info.labels.clone(), named_ports }
    }
}

/// What a CIDR identity stands for: a policy prefix, and for pod addresses inside it the
/// named ports that egress ipBlock rules refer to (empty for the prefix itself).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CidrKey {
    pub prefix: IpNet,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NamedPort>,
}

/// A rule of a policy: what a rule id stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleInfo {
    pub policy: PolicyRef,
    #[serde(with = "direction_serde")]
    pub direction: Direction,
    /// Index into the policy's `ingress` or `egress` list.
    pub index: usize,
}

/// One rule of an HTTP set: which policy rule, port and `http` entry it comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HttpSetRule {
    pub rule_id: u32,
    pub port_index: u8,
    pub http_index: u8,
    pub rule: HttpRule,
}

/// What an HTTP set id stands for: its rules, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HttpSetKey {
    pub rules: Vec<HttpSetRule>,
}

/// The numbers still in use, for [`Identities::gc`]; see `Compiled::live`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub labels: BTreeSet<u32>,
    pub cidrs: BTreeSet<u32>,
    pub rules: BTreeSet<u32>,
    pub http_sets: BTreeSet<u32>,
}

impl Live {
    /// Adds another set, e.g. the maps still loaded while a new compile is applied.
    pub fn extend(&mut self, other: &Live) {
        self.labels.extend(other.labels.iter().copied());
        self.cidrs.extend(other.cidrs.iter().copied());
        self.rules.extend(other.rules.iter().copied());
        self.http_sets.extend(other.http_sets.iter().copied());
    }
}

/// Last label identity: label identities stay below the CIDR bit.
const LAST_LABEL_ID: u32 = CIDR_ID_BIT - 1;
const FIRST_CIDR_ID: u32 = CIDR_ID_BIT;
const LAST_CIDR_ID: u32 = MAX_ID;
const FIRST_RULE_ID: u32 = 1;
const LAST_RULE_ID: u32 = u32::MAX;
const FIRST_HTTP_SET_ID: u32 = 1;
const LAST_HTTP_SET_ID: u32 = ward_common::http::rules::SET_ID_MAX;

/// One numbering space: key to number and back, plus where the next search starts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Space<K: Ord> {
    by_key: BTreeMap<K, u32>,
    by_id: BTreeMap<u32, K>,
    /// Numbers loaded maps use whose keys this table does not know (see
    /// [`Identities::reserve`]): never handed out until the next `gc`.
    reserved: BTreeSet<u32>,
    next: u32,
    first: u32,
    last: u32,
}

impl<K: Ord + Clone> Space<K> {
    fn new(first: u32, last: u32) -> Self {
        Space { by_key: BTreeMap::new(), by_id: BTreeMap::new(), reserved: BTreeSet::new(), next: first, first, last }
    }

    /// The number of `key`, and whether it was allocated just now.
    fn get_or_alloc(&mut self, key: &K) -> (Option<u32>, bool) {
        if let Some(id) = self.by_key.get(key) {
            return (Some(*id), false);
        }
        let start = self.next.clamp(self.first, self.last);
        let mut id = start;
        loop {
            let following = if id == self.last { self.first } else { id + 1 };
            if !self.by_id.contains_key(&id) && !self.reserved.contains(&id) {
                self.next = following;
                self.by_key.insert(key.clone(), id);
                self.by_id.insert(id, key.clone());
                return (Some(id), true);
            }
            id = following;
            if id == start {
                return (None, false);
            }
        }
    }

    /// Gives `id` to `key` if both are free; false otherwise.
    fn seed(&mut self, key: &K, id: u32) -> bool {
        if id < self.first || id > self.last || self.by_id.contains_key(&id) || self.by_key.contains_key(key) {
            return false;
        }
        self.reserved.remove(&id);
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key.clone());
        true
    }

    fn reserve(&mut self, ids: impl IntoIterator<Item = u32>) -> usize {
        let before = self.reserved.len();
        for id in ids {
            if id >= self.first && id <= self.last && !self.by_id.contains_key(&id) {
                self.reserved.insert(id);
            }
        }
        self.reserved.len() - before
    }

    fn gc(&mut self, live: &BTreeSet<u32>) -> usize {
        // After a successful apply the maps refer to live numbers only: the reservations
        // have served.
        self.reserved.clear();
        let dead: Vec<u32> = self.by_id.keys().filter(|id| !live.contains(id)).copied().collect();
        for id in &dead {
            if let Some(k) = self.by_id.remove(id) {
                self.by_key.remove(&k);
            }
        }
        dead.len()
    }

    fn restore(&mut self, entries: Vec<(u32, K)>, next: u32, what: &str) -> Result<(), String> {
        for (id, key) in entries {
            if id < self.first || id > self.last {
                return Err(format!("{what} id {id} is outside {}..={}", self.first, self.last));
            }
            if self.by_id.insert(id, key.clone()).is_some() {
                return Err(format!("{what} id {id} appears twice"));
            }
            if self.by_key.insert(key, id).is_some() {
                return Err(format!("two {what} ids have the same key (one is {id})"));
            }
        }
        self.next = next.clamp(self.first, self.last);
        Ok(())
    }
}

/// The allocator for label identities, CIDR identities and rule ids. Serialises to a JSON
/// state the agent keeps across restarts.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "State")]
pub struct Identities {
    labels: Space<LabelKey>,
    cidrs: Space<CidrKey>,
    rules: Space<RuleInfo>,
    http_sets: Space<HttpSetKey>,
    /// Bumped by every allocation and every `gc` that frees a number, so the agent persists
    /// the table only when it changed. Neither persisted nor compared.
    revision: u64,
}

/// Equal when they hand out the same numbers (the `revision` counter is left out).
impl PartialEq for Identities {
    fn eq(&self, other: &Self) -> bool {
        self.labels == other.labels
            && self.cidrs == other.cidrs
            && self.rules == other.rules
            && self.http_sets == other.http_sets
    }
}

impl Eq for Identities {}

impl Default for Identities {
    fn default() -> Self {
        Identities {
            labels: Space::new(FIRST_LABEL_ID, LAST_LABEL_ID),
            cidrs: Space::new(FIRST_CIDR_ID, LAST_CIDR_ID),
            rules: Space::new(FIRST_RULE_ID, LAST_RULE_ID),
            http_sets: Space::new(FIRST_HTTP_SET_ID, LAST_HTTP_SET_ID),
            revision: 0,
        }
    }
}

impl Identities {
    pub fn new() -> Self {
        Identities::default()
    }

    /// A table with room for only `n` CIDR identities: how tests exhaust the space.
    #[cfg(test)]
    pub(crate) fn with_cidr_room(n: u32) -> Self {
        Identities { cidrs: Space::new(FIRST_CIDR_ID, FIRST_CIDR_ID + n - 1), ..Identities::default() }
    }

    /// The label identity of `key`, allocated if new; `None` only when all 16M are live.
    pub fn label(&mut self, key: &LabelKey) -> Option<u32> {
        let (id, new) = self.labels.get_or_alloc(key);
        self.revision += u64::from(new);
        id
    }

    /// The CIDR identity of `key` (it has `CIDR_ID_BIT` set), allocated if new.
    pub fn cidr(&mut self, key: &CidrKey) -> Option<u32> {
        let (id, new) = self.cidrs.get_or_alloc(key);
        self.revision += u64::from(new);
        id
    }

    /// The rule id of `rule` (from 1), allocated if new.
    pub fn rule(&mut self, rule: &RuleInfo) -> Option<u32> {
        let (id, new) = self.rules.get_or_alloc(rule);
        self.revision += u64::from(new);
        id
    }

    /// The id of an HTTP rule set (from 1, at most `SET_ID_MAX`), allocated if new.
    pub fn http_set(&mut self, key: &HttpSetKey) -> Option<u32> {
        let (id, new) = self.http_sets.get_or_alloc(key);
        self.revision += u64::from(new);
        id
    }

    pub fn http_set_key(&self, id: u32) -> Option<&HttpSetKey> {
        self.http_sets.by_id.get(&id)
    }

    /// Changes whenever a number is allocated or freed: equal revisions of one table mean
    /// equal contents.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn label_key(&self, id: u32) -> Option<&LabelKey> {
        self.labels.by_id.get(&id)
    }

    pub fn cidr_key(&self, id: u32) -> Option<&CidrKey> {
        self.cidrs.by_id.get(&id)
    }

    pub fn rule_info(&self, id: u32) -> Option<&RuleInfo> {
        self.rules.by_id.get(&id)
    }

    /// Gives a label identity number found in loaded maps back to the key it stands for
    /// (rebuilding a lost or stale table from the pinned maps); false if either is taken.
    pub fn seed_label(&mut self, key: &LabelKey, id: u32) -> bool {
        let done = self.labels.seed(key, id);
        self.revision += u64::from(done);
        done
    }

    /// As [`seed_label`](Self::seed_label), for a CIDR identity.
    pub fn seed_cidr(&mut self, key: &CidrKey, id: u32) -> bool {
        let done = self.cidrs.seed(key, id);
        self.revision += u64::from(done);
        done
    }

    /// Marks numbers that loaded maps use but this table does not hold (a table lost, or
    /// older than the maps), so they are never given to another key while the maps still
    /// mean something by them: a new compile's entries can then never apply to the pods the
    /// old entries were for. Released by the next [`gc`](Self::gc). Returns how many.
    pub fn reserve(&mut self, live: &Live) -> usize {
        self.labels.reserve(live.labels.iter().copied())
            + self.cidrs.reserve(live.cidrs.iter().copied())
            + self.rules.reserve(live.rules.iter().copied())
            + self.http_sets.reserve(live.http_sets.iter().copied())
    }

    /// Frees every number not in `live`; returns how many were freed. Call it only once no
    /// loaded map refers to the freed numbers any more.
    pub fn gc(&mut self, live: &Live) -> usize {
        let freed = self.labels.gc(&live.labels)
            + self.cidrs.gc(&live.cidrs)
            + self.rules.gc(&live.rules)
            + self.http_sets.gc(&live.http_sets);
        self.revision += u64::from(freed > 0);
        freed
    }

    /// Numbers currently held: (label identities, CIDR identities, rule ids).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.labels.by_id.len(), self.cidrs.by_id.len(), self.rules.by_id.len())
    }
}

/// Written through [`StateRef`] (no copy of the table), read as [`State`].
impl Serialize for Identities {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn entries<K: Ord>(s: &Space<K>) -> Vec<EntryRef<'_, K>> {
            s.by_id.iter().map(|(id, key)| EntryRef { id: *id, key }).collect()
        }
        StateRef {
            version: STATE_VERSION,
            labels: entries(&self.labels),
            cidrs: entries(&self.cidrs),
            rules: entries(&self.rules),
            http_sets: entries(&self.http_sets),
            next_label: self.labels.next,
            next_cidr: self.cidrs.next,
            next_rule: self.rules.next,
            next_http_set: self.http_sets.next,
        }
        .serialize(s)
    }
}

/// [`State`] borrowed from the table: the same fields in the same order.
#[derive(Serialize)]
struct StateRef<'a> {
    version: u32,
    labels: Vec<EntryRef<'a, LabelKey>>,
    cidrs: Vec<EntryRef<'a, CidrKey>>,
    rules: Vec<EntryRef<'a, RuleInfo>>,
    http_sets: Vec<EntryRef<'a, HttpSetKey>>,
    next_label: u32,
    next_cidr: u32,
    next_rule: u32,
    next_http_set: u32,
}

#[derive(Serialize)]
struct EntryRef<'a, K> {
    id: u32,
    #[serde(flatten)]
    key: &'a K,
}

/// The persisted form: lists instead of maps (JSON maps need string keys), checked on load.
#[derive(Deserialize)]
struct State {
    version: u32,
    labels: Vec<Entry<LabelKey>>,
    cidrs: Vec<Entry<CidrKey>>,
    rules: Vec<Entry<RuleInfo>>,
    /// Absent in files written before HTTP rules existed.
    #[serde(default)]
    http_sets: Vec<Entry<HttpSetKey>>,
    next_label: u32,
    next_cidr: u32,
    next_rule: u32,
    #[serde(default)]
    next_http_set: u32,
}

#[derive(Deserialize)]
struct Entry<K> {
    id: u32,
    #[serde(flatten)]
    key: K,
}

const STATE_VERSION: u32 = 1;

impl TryFrom<State> for Identities {
    type Error = String;
    fn try_from(s: State) -> Result<Identities, String> {
        if s.version != STATE_VERSION {
            return Err(format!("identity state version {} (this agent reads {STATE_VERSION})", s.version));
        }
        let mut ids = Identities::default();
        fn pairs<K>(v: Vec<Entry<K>>) -> Vec<(u32, K)> {
            v.into_iter().map(|e| (e.id, e.key)).collect()
        }
        ids.labels.restore(pairs(s.labels), s.next_label, "label identity")?;
        ids.cidrs.restore(pairs(s.cidrs), s.next_cidr, "CIDR identity")?;
        ids.rules.restore(pairs(s.rules), s.next_rule, "rule")?;
        ids.http_sets.restore(pairs(s.http_sets), s.next_http_set, "HTTP set")?;
        Ok(ids)
    }
}

/// `Direction` lives in the `no_std` common crate without serde; persist it by name.
mod direction_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use ward_common::Direction;

    pub fn serialize<S: Serializer>(d: &Direction, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Direction, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "ingress" => Ok(Direction::Ingress),
            "egress" => Ok(Direction::Egress),
            other => Err(serde::de::Error::custom(format!("unknown direction {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Protocol;
    use ward_common::identity::is_cidr_identity;

    fn lk(ns: &str, app: &str) -> LabelKey {
        LabelKey {
            namespace: ns.into(),
            labels: Labels::from([("app".into(), app.into())]),
            named_ports: vec![NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 80 }],
        }
    }

    fn ck(s: &str) -> CidrKey {
        CidrKey { prefix: s.parse().expect("test prefix"), ports: vec![] }
    }

    #[test]
    fn reserved_numbers_are_never_handed_out_until_gc_and_seeds_take_their_number() {
        let mut ids = Identities::new();
        let live = Live {
            labels: BTreeSet::from([FIRST_LABEL_ID, FIRST_LABEL_ID + 1, FIRST_LABEL_ID + 3]),
            cidrs: BTreeSet::from([CIDR_ID_BIT]),
            rules: BTreeSet::from([1, 2]),
            http_sets: BTreeSet::new(),
        };
        assert!(ids.seed_label(&lk("x", "b"), FIRST_LABEL_ID + 1));
        assert!(!ids.seed_label(&lk("x", "c"), FIRST_LABEL_ID + 1), "a number holds one key");
        assert!(!ids.seed_label(&lk("x", "b"), FIRST_LABEL_ID + 3), "a key holds one number");
        assert_eq!(ids.reserve(&live), 5, "every number the maps use but the table lacks");
        // New keys get none of the reserved numbers (nor the seeded one).
        assert_eq!(ids.label(&lk("x", "new")), Some(FIRST_LABEL_ID + 2));
        assert_eq!(ids.label(&lk("x", "new2")), Some(FIRST_LABEL_ID + 4));
        assert_eq!(ids.label(&lk("x", "b")), Some(FIRST_LABEL_ID + 1), "the seeded key keeps its number");
        assert_eq!(ids.cidr(&ck("10.0.0.0/8")), Some(CIDR_ID_BIT + 1));
        assert_eq!(
            ids.rule(&RuleInfo { policy: PolicyRef::new("x", "p"), direction: Direction::Ingress, index: 0 }),
            Some(3)
        );
        // After a successful apply the maps hold live numbers only: the reservations go.
        let now_live = Live {
            labels: BTreeSet::from([FIRST_LABEL_ID + 1, FIRST_LABEL_ID + 2, FIRST_LABEL_ID + 4]),
            ..Live::default()
        };
        ids.gc(&now_live);
        ids.gc(&now_live);
        assert_eq!(ids.label(&lk("x", "later")), Some(FIRST_LABEL_ID + 5), "allocation moves forward");
    }

    #[test]
    fn numbers_are_stable_start_at_their_bases_and_spaces_do_not_meet() {
        let mut ids = Identities::new();
        let a = ids.label(&lk("x", "a"));
        assert_eq!(a, Some(FIRST_LABEL_ID));
        assert_eq!(ids.label(&lk("x", "b")), Some(FIRST_LABEL_ID + 1));
        assert_eq!(ids.label(&lk("x", "a")), a);
        let c = ids.cidr(&ck("10.0.0.0/8")).expect("space");
        assert!(is_cidr_identity(c));
        let r = ids.rule(&RuleInfo { policy: PolicyRef::new("x", "p"), direction: Direction::Ingress, index: 0 });
        assert_eq!(r, Some(1));
        assert_eq!(ids.label_key(FIRST_LABEL_ID), Some(&lk("x", "a")));
    }

    #[test]
    fn gc_frees_dead_numbers_and_they_are_not_reused_soon() {
        let mut ids = Identities::new();
        let a = ids.label(&lk("x", "a")).expect("space");
        let b = ids.label(&lk("x", "b")).expect("space");
        let live = Live { labels: BTreeSet::from([b]), ..Live::default() };
        assert_eq!(ids.gc(&live), 1);
        assert_eq!(ids.label_key(a), None);
        let c = ids.label(&lk("x", "c")).expect("space");
        assert!(c != a && c != b, "allocation moves forward");
        // The freed key gets a fresh number; the live one keeps its own.
        assert_eq!(ids.label(&lk("x", "b")), Some(b));
        assert_ne!(ids.label(&lk("x", "a")), Some(b));
    }

    #[test]
    fn state_round_trips_through_json_and_keeps_allocating_forward() {
        let mut ids = Identities::new();
        let a = ids.label(&lk("x", "a")).expect("space");
        let c = ids.cidr(&ck("10.0.0.0/8")).expect("space");
        let r = ids.rule(&RuleInfo { policy: PolicyRef::new("x", "p"), direction: Direction::Egress, index: 3 });
        let json = serde_json::to_string(&ids).expect("serialises");
        let mut back: Identities = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, ids);
        assert_eq!(back.label(&lk("x", "a")), Some(a));
        assert_eq!(back.cidr(&ck("10.0.0.0/8")), Some(c));
        assert_eq!(
            back.rule(&RuleInfo { policy: PolicyRef::new("x", "p"), direction: Direction::Egress, index: 3 }),
            r
        );
        assert_eq!(back.label(&lk("y", "a")), Some(a + 1));
    }

    #[test]
    fn the_revision_moves_exactly_when_a_number_is_allocated_or_freed() {
        let mut ids = Identities::new();
        let r0 = ids.revision();
        let a = ids.label(&lk("x", "a")).expect("space");
        let r1 = ids.revision();
        assert_ne!(r1, r0, "allocation");
        ids.label(&lk("x", "a"));
        ids.gc(&Live { labels: BTreeSet::from([a]), ..Live::default() });
        assert_eq!(ids.revision(), r1, "a lookup and a gc that frees nothing change nothing");
        ids.gc(&Live::default());
        assert_ne!(ids.revision(), r1, "a freed number");
    }

    #[test]
    fn corrupt_state_is_rejected() {
        let dup = r#"{"version":1,"labels":[{"id":256,"namespace":"x","labels":{},"named_ports":[]},
            {"id":256,"namespace":"y","labels":{},"named_ports":[]}],"cidrs":[],"rules":[],
            "next_label":257,"next_cidr":16777216,"next_rule":1}"#;
        assert!(serde_json::from_str::<Identities>(dup).is_err());
        let low = r#"{"version":1,"labels":[{"id":3,"namespace":"x","labels":{},"named_ports":[]}],
            "cidrs":[],"rules":[],"next_label":257,"next_cidr":16777216,"next_rule":1}"#;
        assert!(serde_json::from_str::<Identities>(low).is_err());
    }

    #[test]
    fn a_full_space_refuses_instead_of_reusing_a_live_number() {
        let mut s: Space<u8> = Space::new(10, 12);
        assert_eq!(s.get_or_alloc(&1), (Some(10), true));
        assert_eq!(s.get_or_alloc(&2), (Some(11), true));
        assert_eq!(s.get_or_alloc(&3), (Some(12), true));
        assert_eq!(s.get_or_alloc(&4), (None, false));
        s.gc(&BTreeSet::from([10, 12]));
        assert_eq!(s.get_or_alloc(&4), (Some(11), true), "wraps to the one free number");
        assert_eq!(s.get_or_alloc(&4), (Some(11), false));
    }
}
