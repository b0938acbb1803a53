//! The one place objects enter the agent's view of the cluster, as kube-rs's
//! `Store::apply_watcher_event` is for its reflector: every source's [`Event`]s are applied
//! here, and the owner task reads the [`Snapshot`] it keeps.
//!
//! A listing is buffered until its `InitDone` and then swapped in, only what differs being
//! touched (a relist after a 410 that finds nothing changed changes nothing, and a relist
//! interrupted half-way leaves the old objects in force). Errors never reach the store: a
//! source that cannot reach its objects simply sends nothing, so the last known state stays.

use std::collections::{BTreeMap, BTreeSet};

use super::{Checkpoint, Event, ObjKey, Snapshot, Valid};

/// A listing in progress: what it named so far.
#[derive(Debug, Default)]
struct Listing {
    objects: BTreeMap<ObjKey, Valid>,
    kept: BTreeSet<ObjKey>,
}

#[derive(Debug, Default)]
pub struct Store {
    snapshot: Snapshot,
    /// Listings in progress, by kind.
    listing: BTreeMap<&'static str, Listing>,
    /// Kinds some source announced (with `Init`), and those it has listed in full.
    announced: BTreeSet<&'static str>,
    listed: BTreeSet<&'static str>,
    checkpoint: Checkpoint,
    /// Bumped by every event that changed the snapshot.
    generation: u64,
}

impl Store {
    pub fn new() -> Self {
        Store::default()
    }

    /// A store holding `snapshot` (the state persisted by an earlier run), not yet synced:
    /// it is enforced until the source's first listing replaces it.
    pub fn with_snapshot(snapshot: Snapshot) -> Self {
        Store { snapshot, ..Store::default() }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Changes whenever the snapshot does.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether every kind a source announced has been listed in full at least once (and
    /// some source announced something); otherwise why not.
    pub fn synced(&self) -> Result<(), String> {
        if let Some(why) = &self.checkpoint.health.not_synced {
            return Err(why.clone());
        }
        if self.announced.is_empty() {
            return Err("no source has listed its objects yet".into());
        }
        let missing: Vec<&str> = self.announced.difference(&self.listed).copied().collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("still listing {}", missing.join(", "))) }
    }

    /// Applies one event; true if the snapshot changed.
    pub fn apply(&mut self, event: Event) -> bool {
        let changed = match event {
            Event::Init(kinds) => {
                for kind in kinds {
                    self.announced.insert(kind);
                    // A listing that starts again (its watch failed half-way) starts afresh.
                    self.listing.insert(kind, Listing::default());
                }
                false
            }
            Event::InitApply(key, valid) => {
                if let Some(l) = self.listing.get_mut(key.kind) {
                    l.objects.insert(key, valid);
                }
                false
            }
            Event::InitKeep(key) => {
                if let Some(l) = self.listing.get_mut(key.kind) {
                    l.kept.insert(key);
                }
                false
            }
            Event::InitDone(kinds) => {
                let mut changed = false;
                for kind in kinds {
                    let Some(listing) = self.listing.remove(kind) else { continue };
                    self.listed.insert(kind);
                    for key in self.snapshot.keys_of(kind) {
                        if !listing.objects.contains_key(&key) && !listing.kept.contains(&key) {
                            self.snapshot.remove(&key);
                            changed = true;
                        }
                    }
                    for (key, valid) in listing.objects {
                        changed |= self.put(&key, valid);
                    }
                }
                changed
            }
            Event::Apply(key, valid) => self.put(&key, valid),
            Event::Delete(key) => {
                let had = self.snapshot.get(&key).is_some();
                self.snapshot.remove(&key);
                had
            }
            Event::Checkpoint(c) => {
                self.checkpoint = *c;
                false
            }
        };
        if changed {
            self.generation += 1;
        }
        changed
    }

    fn put(&mut self, key: &ObjKey, valid: Valid) -> bool {
        if self.snapshot.get(key).as_ref() == Some(&valid) {
            return false;
        }
        self.snapshot.insert(key, &valid);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::{KIND_NAMESPACE, KIND_POD, Labels};
    use super::*;
    use ward_policy::validate::PodInfo;

    fn ns(name: &str, team: &str) -> (ObjKey, Valid) {
        (
            ObjKey { kind: KIND_NAMESPACE, namespace: String::new(), name: name.into() },
            Valid::Namespace(Labels::from([("team".into(), team.into())]), Default::default()),
        )
    }

    fn pod(name: &str, app: &str) -> (ObjKey, Valid) {
        (
            ObjKey { kind: KIND_POD, namespace: "a".into(), name: name.into() },
            Valid::Pod(PodInfo { labels: Labels::from([("app".into(), app.into())]), ports: vec![], ips: vec![] }),
        )
    }

    fn list(store: &mut Store, kind: &'static str, items: Vec<(ObjKey, Valid)>) -> bool {
        store.apply(Event::Init(vec![kind]));
        for (k, v) in items {
            assert!(!store.apply(Event::InitApply(k, v)), "nothing changes before InitDone");
        }
        store.apply(Event::InitDone(vec![kind]))
    }

    #[test]
    fn a_listing_is_swapped_in_whole_at_init_done_and_only_for_its_kinds() {
        let mut s = Store::new();
        assert!(s.synced().is_err());
        assert!(list(&mut s, KIND_NAMESPACE, vec![ns("a", "x"), ns("b", "y")]));
        assert!(s.synced().is_ok());
        s.apply(Event::Init(vec![KIND_POD]));
        assert_eq!(s.synced(), Err("still listing Pod".into()));
        s.apply(Event::InitApply(pod("p", "web").0, pod("p", "web").1));
        assert!(s.snapshot().pods.is_empty(), "a listing in progress is not in force");
        assert!(s.apply(Event::InitDone(vec![KIND_POD])));
        assert_eq!(s.snapshot().pods.len(), 1);
        assert_eq!(s.snapshot().namespaces.len(), 2, "a Pod listing leaves namespaces alone");
        // A relist that misses b (deleted while the watch was down) removes it; one that finds
        // nothing new changes nothing.
        let before = s.generation();
        assert!(list(&mut s, KIND_NAMESPACE, vec![ns("a", "x")]));
        assert_eq!(s.snapshot().namespaces.keys().collect::<Vec<_>>(), ["a"]);
        assert!(s.generation() > before);
        let before = s.generation();
        assert!(!list(&mut s, KIND_NAMESPACE, vec![ns("a", "x")]), "the same listing again changes nothing");
        assert_eq!(s.generation(), before);
    }

    #[test]
    fn a_listing_that_restarts_forgets_its_first_half_and_keeps_invalid_objects_last_valid_version() {
        let mut s = Store::new();
        list(&mut s, KIND_POD, vec![pod("p", "web"), pod("q", "db")]);
        s.apply(Event::Init(vec![KIND_POD]));
        s.apply(Event::InitApply(pod("r", "new").0, pod("r", "new").1));
        // The watch broke half-way; the listing starts again without r.
        s.apply(Event::Init(vec![KIND_POD]));
        s.apply(Event::InitApply(pod("p", "web2").0, pod("p", "web2").1));
        s.apply(Event::InitKeep(pod("q", "").0));
        assert!(s.apply(Event::InitDone(vec![KIND_POD])));
        let names: Vec<&str> = s.snapshot().pods.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["p", "q"], "r came only in the abandoned half; q is invalid now and keeps its version");
        assert_eq!(s.snapshot().pods[&ward_policy::cluster::PodKey::new("a", "q")].labels["app"], "db");
    }

    #[test]
    fn applies_and_deletes_report_whether_anything_changed() {
        let mut s = Store::new();
        let (k, v) = pod("p", "web");
        assert!(s.apply(Event::Apply(k.clone(), v.clone())));
        assert!(!s.apply(Event::Apply(k.clone(), v)), "the same version again");
        assert!(s.apply(Event::Delete(k.clone())));
        assert!(!s.apply(Event::Delete(k)), "already gone");
    }
}
