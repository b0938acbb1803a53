//! Standalone datastore: a directory of ordinary Kubernetes YAML (Namespace, Pod,
//! NetworkPolicy; multi-document files and `List` kinds), hot-reloaded.
//!
//! Each reload re-reads the directory and re-parses only files whose bytes changed. Every
//! object is validated on its own: an invalid object is reported (file, object, field) and the
//! last valid version of it stays in force; the rest of the file and the directory go on.
//! A file that vanishes takes its objects with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use notify::Watcher as _;
use tokio::sync::mpsc;
use ward_policy::model::Object;

use super::{ObjKey, Snapshot, Valid, validate};
use crate::api::proto::{Rejection, file_hash};

#[derive(Debug, Clone)]
struct FileState {
    hash: String,
    /// What the file's metadata was when it was read: an event-driven reload reads only
    /// files whose metadata changed (see [`DirectoryStore::reload_changed`]).
    stamp: Option<Stamp>,
    rejections: Vec<Rejection>,
}

/// Device, inode, size and modification time (ns): an atomic replace (new inode) or any
/// write changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

pub struct DirectoryStore {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    /// Every object in force, with the file it came from.
    objects: BTreeMap<ObjKey, (String, Valid)>,
    snapshot: Snapshot,
    rejected: Vec<Rejection>,
    /// Objects added, replaced or removed since the snapshot was last brought up to date.
    dirty: BTreeSet<ObjKey>,
    /// Whether the directory was listed and read in full at least once, and if the last
    /// listing failed, why.
    synced: bool,
    list_error: Option<String>,
}

impl DirectoryStore {
    pub fn new(dir: PathBuf) -> Self {
        DirectoryStore {
            dir,
            files: BTreeMap::new(),
            objects: BTreeMap::new(),
            snapshot: Snapshot::default(),
            rejected: Vec::new(),
            dirty: BTreeSet::new(),
            synced: false,
            list_error: None,
        }
    }

    /// Whether the store has read its whole source once (the CNI plugin's readiness, and the
    /// conflist, wait for this); otherwise why not.
    pub fn synced(&self) -> Result<(), String> {
        match (&self.list_error, self.synced) {
            (_, true) => Ok(()),
            (Some(e), false) => Err(format!("cannot list {}: {e}", self.dir.display())),
            (None, false) => Err(format!("{} not read yet", self.dir.display())),
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn rejected(&self) -> &[Rejection] {
        &self.rejected
    }

    /// File name → content hash of every file whose content is loaded.
    pub fn file_hashes(&self) -> BTreeMap<String, String> {
        self.files.iter().map(|(f, s)| (f.clone(), s.hash.clone())).collect()
    }

    /// Re-reads every file of the directory (start-up and the periodic safety re-read).
    /// Returns true if anything changed.
    pub fn reload(&mut self) -> bool {
        self.reload_files(true)
    }

    /// After a change event: re-reads only the files whose metadata (inode, size, mtime)
    /// changed, which is what one edited file among thousands of objects costs. A write that
    /// leaves all of them equal is still caught by the next [`reload`](Self::reload).
    pub fn reload_changed(&mut self) -> bool {
        self.reload_files(false)
    }

    fn reload_files(&mut self, all: bool) -> bool {
        let listed = match list_manifests(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                // An unreadable directory changes nothing: keep enforcing what we have.
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list manifests");
                self.list_error = Some(e.to_string());
                return false;
            }
        };
        self.list_error = None;
        // Every listed file is read below (a file that cannot be read keeps its last content).
        self.synced = true;
        let mut changed = false;
        let names: BTreeSet<String> = listed.iter().map(|(n, _)| n.clone()).collect();
        let vanished: Vec<String> = self.files.keys().filter(|f| !names.contains(*f)).cloned().collect();
        for f in vanished {
            self.files.remove(&f);
            self.drop_objects(|_, file| *file == f);
            changed = true;
        }
        for (name, path) in listed {
            let stamp = std::fs::metadata(&path).ok().map(|m| Stamp::of(&m));
            if !all && stamp.is_some() && self.files.get(&name).is_some_and(|s| s.stamp == stamp) {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read manifest");
                    continue;
                }
            };
            let hash = file_hash(&bytes);
            if let Some(state) = self.files.get_mut(&name)
                && state.hash == hash
            {
                state.stamp = stamp;
                continue;
            }
            changed = true;
            self.load_file(&name, &bytes, hash, stamp);
        }
        if changed {
            self.rebuild();
        }
        changed
    }

    fn load_file(&mut self, name: &str, bytes: &[u8], hash: String, stamp: Option<Stamp>) {
        let mut declared = BTreeSet::new();
        let mut rejections = Vec::new();
        let mut all_named = true;
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                rejections.push(Rejection {
                    file: name.to_owned(),
                    object: "file".into(),
                    field: "".into(),
                    message: format!("not UTF-8: {e}"),
                });
                self.files.insert(name.to_owned(), FileState { hash, stamp, rejections });
                return;
            }
        };
        for doc in ward_policy::model::parse_documents(text, name) {
            let obj: Object = match doc {
                Ok(o) => o,
                Err(e) => {
                    all_named = false;
                    rejections.push(rejection(name, &e));
                    continue;
                }
            };
            match validate(&obj, name) {
                Ok((key, valid)) => {
                    declared.insert(key.clone());
                    self.dirty.insert(key.clone());
                    self.objects.insert(key, (name.to_owned(), valid));
                }
                Err(invalid) => {
                    // The last valid version, if any, stays in force.
                    match invalid.key {
                        Some(k) => {
                            declared.insert(k);
                        }
                        None => all_named = false,
                    }
                    rejections.push(rejection(name, &invalid.error));
                }
            }
        }
        // Objects the file no longer declares are deleted, unless a document could not be
        // read at all (it might still be one of them: keep them rather than guess).
        if all_named {
            self.drop_objects(|k, file| file == name && !declared.contains(k));
        }
        for r in &rejections {
            tracing::warn!(file = %r.file, object = %r.object, field = %r.field, "rejected: {}", r.message);
        }
        self.files.insert(name.to_owned(), FileState { hash, stamp, rejections });
    }

    /// Removes the objects for which `gone(key, file)` holds, marking them for the snapshot.
    fn drop_objects(&mut self, gone: impl Fn(&ObjKey, &String) -> bool) {
        let dirty = &mut self.dirty;
        self.objects.retain(|k, (file, _)| {
            let drop = gone(k, file);
            if drop {
                dirty.insert(k.clone());
            }
            !drop
        });
    }

    /// Brings the snapshot up to date with the objects that changed (not a copy of all of
    /// them: one edited file among 10k pods costs that file's objects).
    fn rebuild(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            match self.objects.get(&key) {
                Some((_, valid)) => self.snapshot.insert(&key, valid),
                None => self.snapshot.remove(&key),
            }
        }
        self.rejected = self.files.values().flat_map(|f| f.rejections.iter().cloned()).collect();
    }
}

fn rejection(file: &str, e: &ward_policy::validate::ObjectError) -> Rejection {
    Rejection { file: file.to_owned(), object: e.object.clone(), field: e.field.clone(), message: e.message.clone() }
}

/// `*.yaml`, `*.yml` and `*.json` files directly in `dir`, by name; hidden and editor
/// temporary files are ignored.
fn list_manifests(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        if [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext)) {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Watches `dir` and signals on every change. Keep the returned watcher alive.
pub fn watch(dir: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    std::fs::create_dir_all(dir).map_err(notify::Error::io)?;
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok() {
            let _ = tx.send(());
        }
    })?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_policy::cluster::PolicyRef;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("ward-ds-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    const POLICY_V1: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {}
  ingress:
    - ports: [{port: 80}]
";
    const POLICY_BAD: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {}
  ingress:
    - ports: [{port: 80, endPort: 70}]
";
    const OBJECTS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: db, namespace: shop, labels: {app: db}}
    spec: {containers: [{name: c, ports: [{containerPort: 5432, name: pg}]}]}
";

    fn web() -> PolicyRef {
        PolicyRef::new("shop", "web")
    }

    #[test]
    fn loads_multi_document_files_and_lists_and_reports_changes_only_once() {
        let d = dir("load");
        std::fs::write(d.0.join("objects.yaml"), OBJECTS).unwrap();
        std::fs::write(d.0.join("policy.yaml"), POLICY_V1).unwrap();
        std::fs::write(d.0.join("notes.txt"), "not a manifest").unwrap();
        let mut s = DirectoryStore::new(d.0.clone());
        assert!(s.reload());
        assert_eq!(s.snapshot().namespaces.len(), 1);
        assert_eq!(s.snapshot().pods.len(), 1);
        assert!(s.snapshot().policies.contains_key(&web()));
        assert!(s.rejected().is_empty(), "{:?}", s.rejected());
        assert_eq!(s.file_hashes().len(), 2);
        assert_eq!(s.file_hashes()["policy.yaml"], file_hash(POLICY_V1.as_bytes()));
        assert!(!s.reload(), "nothing changed");
    }

    #[test]
    fn an_invalid_version_is_rejected_naming_file_object_and_field_and_the_last_valid_stays() {
        let d = dir("invalid");
        std::fs::write(d.0.join("policy.yaml"), POLICY_V1).unwrap();
        let mut s = DirectoryStore::new(d.0.clone());
        s.reload();
        let before = format!("{:?}", s.snapshot().policies[&web()]);
        std::fs::write(d.0.join("policy.yaml"), POLICY_BAD).unwrap();
        assert!(s.reload());
        assert_eq!(format!("{:?}", s.snapshot().policies[&web()]), before, "the last valid version stays");
        let r = &s.rejected()[0];
        assert_eq!(r.file, "policy.yaml");
        assert!(r.object.contains("shop/web"), "{r:?}");
        assert!(r.field.contains("endPort"), "{r:?}");
        // Fixing the file clears the rejection.
        std::fs::write(d.0.join("policy.yaml"), POLICY_V1.replace("80", "81")).unwrap();
        assert!(s.reload());
        assert!(s.rejected().is_empty());
        assert_ne!(format!("{:?}", s.snapshot().policies[&web()]), before);
    }

    #[test]
    fn malformed_yaml_keeps_the_files_objects_and_a_deleted_file_takes_them_away() {
        let d = dir("malformed");
        std::fs::write(d.0.join("policy.yaml"), POLICY_V1).unwrap();
        let mut s = DirectoryStore::new(d.0.clone());
        s.reload();
        std::fs::write(d.0.join("policy.yaml"), "kind: NetworkPolicy\nspec: [unclosed\n").unwrap();
        assert!(s.reload());
        assert!(s.snapshot().policies.contains_key(&web()), "unreadable document: keep what we had");
        assert_eq!(s.rejected().len(), 1);
        std::fs::remove_file(d.0.join("policy.yaml")).unwrap();
        assert!(s.reload());
        assert!(s.snapshot().policies.is_empty());
        assert!(s.rejected().is_empty());
    }

    #[test]
    fn an_object_removed_from_a_valid_file_is_deleted() {
        let d = dir("removed");
        std::fs::write(d.0.join("all.yaml"), format!("{POLICY_V1}---\n{OBJECTS}")).unwrap();
        let mut s = DirectoryStore::new(d.0.clone());
        s.reload();
        assert_eq!(s.snapshot().policies.len(), 1);
        std::fs::write(d.0.join("all.yaml"), OBJECTS).unwrap();
        s.reload();
        assert!(s.snapshot().policies.is_empty());
        assert_eq!(s.snapshot().pods.len(), 1);
    }

    /// The snapshot as a full rebuild from every object in force would make it.
    fn from_scratch(s: &DirectoryStore) -> String {
        let mut snap = Snapshot::default();
        for (key, (_, valid)) in &s.objects {
            snap.insert(key, valid);
        }
        format!("{snap:?}")
    }

    #[test]
    fn the_snapshot_kept_up_to_date_equals_a_rebuild_through_every_kind_of_change() {
        let d = dir("incremental");
        let mut s = DirectoryStore::new(d.0.clone());
        let same = |s: &DirectoryStore, step: &str| {
            assert_eq!(format!("{:?}", s.snapshot()), from_scratch(s), "after {step}");
        };
        std::fs::write(d.0.join("objects.yaml"), OBJECTS).unwrap();
        std::fs::write(d.0.join("policy.yaml"), POLICY_V1).unwrap();
        assert!(s.reload_changed());
        same(&s, "first load");
        // Another size: two writes within one mtime tick may otherwise look alike (the
        // next test covers that case).
        std::fs::write(d.0.join("policy.yaml"), POLICY_V1.replace("80", "8181")).unwrap();
        assert!(s.reload_changed());
        same(&s, "an edit");
        std::fs::write(d.0.join("policy.yaml"), POLICY_BAD).unwrap();
        assert!(s.reload_changed());
        same(&s, "an invalid version (the last valid stays)");
        // The object moves to another file, and its old file goes.
        std::fs::write(d.0.join("moved.yaml"), POLICY_V1).unwrap();
        std::fs::remove_file(d.0.join("policy.yaml")).unwrap();
        assert!(s.reload_changed());
        same(&s, "a move and a removed file");
        assert!(s.snapshot().policies.contains_key(&web()));
        std::fs::write(d.0.join("objects.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n").unwrap();
        assert!(s.reload_changed());
        same(&s, "a pod removed from its file");
        assert!(s.snapshot().pods.is_empty());
        std::fs::remove_file(d.0.join("moved.yaml")).unwrap();
        assert!(s.reload());
        same(&s, "the policy's file removed");
        assert!(s.snapshot().policies.is_empty());
    }

    #[test]
    fn an_event_reload_reads_changed_files_and_the_full_reread_catches_a_write_that_hid_its_tracks() {
        let d = dir("stamp");
        let path = d.0.join("policy.yaml");
        std::fs::write(&path, POLICY_V1).unwrap();
        let mut s = DirectoryStore::new(d.0.clone());
        assert!(s.reload());
        // An ordinary edit changes size or mtime: the event path sees it.
        std::fs::write(&path, POLICY_V1.replace("80", "8080")).unwrap();
        assert!(s.reload_changed());
        assert_eq!(s.file_hashes()["policy.yaml"], file_hash(POLICY_V1.replace("80", "8080").as_bytes()));
        // Same size, in place, and the old mtime put back: only the full re-read notices.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let edited = POLICY_V1.replace("80", "8181");
        std::fs::write(&path, &edited).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        assert!(!s.reload_changed(), "metadata unchanged: the event path skips the file");
        assert!(s.reload(), "the periodic full re-read compares contents");
        assert_eq!(s.file_hashes()["policy.yaml"], file_hash(edited.as_bytes()));
    }
}
