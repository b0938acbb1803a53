//! Standalone datastore: a directory of ordinary Kubernetes YAML (Namespace, Pod,
//! NetworkPolicy; multi-document files and `List` kinds), hot-reloaded.
//!
//! Each reload re-reads the directory and re-parses only files whose bytes changed. Every
//! object is validated on its own: an invalid object is reported (file, object, field) and the
//! last valid version of it from that file stays in force; the rest of the file and the
//! directory go on. A file that vanishes takes its versions of its objects with it.
//!
//! Precedence, as `kubectl apply -f <dir>` leaves a cluster: files apply in name order (byte
//! order) and documents in file order, so of several declarations of one object the last one
//! with a valid version is in force. Every file keeps its own last valid version of each
//! object it declares, so removing or breaking one declaration falls back to the next, and an
//! object stays in force as long as any remaining file declares it validly. Objects declared
//! more than once are reported ([`DirectoryStore::duplicates`]).
//!
//! What one file may cost is bounded before it is parsed (`ward_policy::budget`): a file
//! over the size limit is rejected unread, one whose YAML would expand past the budget is
//! rejected whole; either way its objects keep their last valid versions.
//!
//! As a source of the agent's [`Store`](super::Store) ([`run`]): the first complete read is
//! one listing (`Init`, `InitApply`…, `InitDone`), every later reload sends the objects whose
//! version in force changed (`Apply`/`Delete`), and each batch ends with a
//! [`Checkpoint`](super::Checkpoint) whose revision is the content hash of every file read.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use notify::Watcher as _;
use tokio::sync::mpsc;
use ward_policy::budget::MAX_MANIFEST_BYTES;
use ward_policy::model::Object;

use super::{
    Checkpoint, DIRECTORY_KINDS, Duplicate, Event, Health, Notice, ObjKey, Rejection, Revision, Snapshot, Valid,
};
use super::{file_hash, validate};

#[derive(Debug, Clone, Default)]
struct FileState {
    hash: String,
    /// What the file's metadata was when it was read: an event-driven reload reads only
    /// files whose metadata changed (see [`DirectoryStore::reload_changed`]).
    stamp: Option<Stamp>,
    /// The last valid version of every object the file declares. An object whose version in
    /// the file is now invalid keeps its last valid one here; so does every object of a file
    /// with a document that cannot be read (it might be any of them).
    objects: BTreeMap<ObjKey, Valid>,
    /// How many documents of the file declare each object, valid or not.
    declared: BTreeMap<ObjKey, usize>,
    rejections: Vec<Rejection>,
    notices: Vec<Notice>,
}

impl FileState {
    /// The objects this file counts for: declared, or held from an earlier read.
    fn keys(&self) -> BTreeSet<ObjKey> {
        self.declared.keys().chain(self.objects.keys()).cloned().collect()
    }
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

#[derive(Clone)]
pub struct DirectoryStore {
    dir: PathBuf,
    /// By name: the order is the precedence.
    files: BTreeMap<String, FileState>,
    /// For every object, the files that declare or hold it (each file's declaration count):
    /// the files to look at when it changes, without a pass over every file.
    index: BTreeMap<ObjKey, BTreeMap<String, usize>>,
    /// Objects declared more than once, kept up to date with `index`.
    duplicated: BTreeSet<ObjKey>,
    snapshot: Snapshot,
    rejected: Vec<Rejection>,
    notices: Vec<Notice>,
    /// Objects whose declarations changed since the snapshot was last brought up to date.
    dirty: BTreeSet<ObjKey>,
    /// Whether the directory was listed and read in full at least once, and if the last
    /// listing failed, why.
    synced: bool,
    list_error: Option<String>,
    /// Objects whose version in force changed since [`DirectoryStore::take_events`] last ran
    /// (`None`: gone), and whether the first listing has been sent.
    changes: BTreeMap<ObjKey, Option<Valid>>,
    listed: bool,
    /// Something a checkpoint reports changed (a file's hash, a rejection, the listing error).
    checkpoint_due: bool,
}

/// What one read of a file found.
struct Loaded {
    objects: BTreeMap<ObjKey, Valid>,
    declared: BTreeMap<ObjKey, usize>,
    rejections: Vec<Rejection>,
    notices: Vec<Notice>,
    /// Objects named by a document that failed validation.
    invalid: BTreeSet<ObjKey>,
    /// False when a document could not be read far enough to name its object (or the whole
    /// file was rejected): the file may still declare any object it held.
    all_named: bool,
}

impl DirectoryStore {
    pub fn new(dir: PathBuf) -> Self {
        DirectoryStore {
            dir,
            files: BTreeMap::new(),
            index: BTreeMap::new(),
            duplicated: BTreeSet::new(),
            snapshot: Snapshot::default(),
            rejected: Vec::new(),
            notices: Vec::new(),
            dirty: BTreeSet::new(),
            synced: false,
            list_error: None,
            changes: BTreeMap::new(),
            listed: false,
            checkpoint_due: false,
        }
    }

    /// The events that bring a [`Store`](super::Store) to this store's state since the last
    /// call: the first listing once the directory has been read, then the changes, each batch
    /// closed by a checkpoint. Empty while nothing changed.
    pub fn take_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if !self.listed {
            if self.synced().is_err() {
                // Not read yet: the checkpoint says why (STATUS and the conflist wait).
                return vec![Event::Checkpoint(Box::new(self.checkpoint()))];
            }
            self.listed = true;
            self.changes.clear();
            out.push(Event::Init(DIRECTORY_KINDS.to_vec()));
            for kind in DIRECTORY_KINDS {
                for key in self.snapshot.keys_of(kind) {
                    if let Some(valid) = self.snapshot.get(&key) {
                        out.push(Event::InitApply(key, valid));
                    }
                }
            }
            out.push(Event::InitDone(DIRECTORY_KINDS.to_vec()));
        } else {
            if self.changes.is_empty() && !self.checkpoint_due {
                return out;
            }
            for (key, valid) in std::mem::take(&mut self.changes) {
                out.push(match valid {
                    Some(v) => Event::Apply(key, v),
                    None => Event::Delete(key),
                });
            }
        }
        self.checkpoint_due = false;
        out.push(Event::Checkpoint(Box::new(self.checkpoint())));
        out
    }

    /// Revision, rejections, duplicates and notices as they stand.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            revision: Revision::Files { files: self.file_hashes() },
            rejected: self.rejected.clone(),
            duplicates: self.duplicates(),
            notices: self.notices.clone(),
            health: Health {
                not_synced: self.synced().err(),
                last_error: self.list_error.clone(),
                ..Health::default()
            },
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

    pub fn notices(&self) -> &[Notice] {
        &self.notices
    }

    /// Objects declared more than once, each with its declaring files in precedence order
    /// and the file whose version is in force.
    pub fn duplicates(&self) -> Vec<Duplicate> {
        self.duplicated
            .iter()
            .filter_map(|key| {
                let holders = self.index.get(key)?;
                let files = holders.iter().flat_map(|(f, n)| std::iter::repeat_n(f.clone(), (*n).max(1))).collect();
                Some(Duplicate { object: key.to_string(), files, in_force: self.in_force(key).map(|(f, _)| f.clone()) })
            })
            .collect()
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
                let was = self.list_error.replace(e.to_string());
                // The checkpoint says why; a new reason is news for `ward status`.
                if was.as_deref() != self.list_error.as_deref() {
                    self.checkpoint_due = true;
                }
                return false;
            }
        };
        // Every listed file is read below (a file that cannot be read keeps its last content).
        self.synced = true;
        let mut changed = false;
        let names: BTreeSet<String> = listed.iter().map(|(n, _)| n.clone()).collect();
        let vanished: Vec<String> = self.files.keys().filter(|f| !names.contains(*f)).cloned().collect();
        for f in vanished {
            self.remove_file(&f);
            changed = true;
        }
        for (name, path) in listed {
            let stamp = std::fs::metadata(&path).ok().map(|m| Stamp::of(&m));
            if !all && stamp.is_some() && self.files.get(&name).is_some_and(|s| s.stamp == stamp) {
                continue;
            }
            let bytes = match read_bounded(&path) {
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
            self.apply_file(&name, &bytes, hash, stamp);
        }
        if changed {
            self.rebuild();
        }
        if self.list_error.take().is_some() {
            self.checkpoint_due = true;
        }
        changed
    }

    /// Takes `bytes` as the new content of file `name`, exactly as a reload that read them
    /// would, without touching the filesystem (the manifest fuzz target drives the store
    /// through it). The next reload re-reads the file.
    pub fn update_file(&mut self, name: &str, bytes: &[u8]) {
        self.apply_file(name, bytes, file_hash(bytes), None);
        self.rebuild();
    }

    /// Reads one file's new content: its objects replace the file's earlier versions of them.
    fn apply_file(&mut self, name: &str, bytes: &[u8], hash: String, stamp: Option<Stamp>) {
        let loaded = load(name, bytes);
        for r in &loaded.rejections {
            tracing::warn!(file = %r.file, object = %r.object, field = %r.field, "rejected: {}", r.message);
        }
        let old = self.files.remove(name).unwrap_or_default();
        let mut objects = loaded.objects;
        for (key, valid) in &old.objects {
            // The last valid version stays: of an object whose new version is invalid, and of
            // every object when a document could not be named.
            let keep = (loaded.invalid.contains(key) || !loaded.all_named) && !objects.contains_key(key);
            if keep {
                objects.insert(key.clone(), valid.clone());
            }
        }
        let state = FileState {
            hash,
            stamp,
            objects,
            declared: loaded.declared,
            rejections: loaded.rejections,
            notices: loaded.notices,
        };
        let touched: BTreeSet<ObjKey> = old.keys().union(&state.keys()).cloned().collect();
        self.unindex(name, &old);
        self.index_file(name, &state);
        self.files.insert(name.to_owned(), state);
        self.mark(touched);
    }

    /// Forgets a file that is gone: its versions of its objects go with it.
    fn remove_file(&mut self, name: &str) {
        if let Some(old) = self.files.remove(name) {
            self.unindex(name, &old);
            self.mark(old.keys());
        }
    }

    fn unindex(&mut self, name: &str, state: &FileState) {
        for key in state.keys() {
            if let Some(holders) = self.index.get_mut(&key) {
                holders.remove(name);
                if holders.is_empty() {
                    self.index.remove(&key);
                }
            }
        }
    }

    fn index_file(&mut self, name: &str, state: &FileState) {
        for key in state.keys() {
            let count = state.declared.get(&key).copied().unwrap_or(0);
            self.index.entry(key).or_default().insert(name.to_owned(), count);
        }
    }

    /// Marks objects for the snapshot and brings their duplicate status up to date.
    fn mark(&mut self, keys: BTreeSet<ObjKey>) {
        for key in keys {
            // A file that only holds an object (an unreadable document) counts as one
            // declaration: it may well still declare it.
            let declarations: usize = self.index.get(&key).map_or(0, |h| h.values().map(|n| (*n).max(1)).sum());
            if declarations > 1 {
                self.duplicated.insert(key.clone());
            } else {
                self.duplicated.remove(&key);
            }
            self.dirty.insert(key);
        }
    }

    /// The version of `key` in force, and its file: the last file in name order that has a
    /// valid version.
    fn in_force(&self, key: &ObjKey) -> Option<(&String, &Valid)> {
        let holders = self.index.get(key)?;
        holders.keys().rev().find_map(|f| Some((f, self.files.get(f)?.objects.get(key)?)))
    }

    /// Brings the snapshot up to date with the objects that changed (not a copy of all of
    /// them: one edited file among 10k pods costs that file's objects).
    fn rebuild(&mut self) {
        self.checkpoint_due = true;
        for key in std::mem::take(&mut self.dirty) {
            let now = self.in_force(&key).map(|(_, v)| v.clone());
            if self.snapshot.get(&key) != now {
                match &now {
                    Some(valid) => self.snapshot.insert(&key, valid),
                    None => self.snapshot.remove(&key),
                }
                self.changes.insert(key, now);
            }
        }
        self.rejected = self.files.values().flat_map(|f| f.rejections.iter().cloned()).collect();
        self.notices = self.files.values().flat_map(|f| f.notices.iter().cloned()).collect();
    }
}

/// Parses and validates one file's content.
fn load(name: &str, bytes: &[u8]) -> Loaded {
    let mut out = Loaded {
        objects: BTreeMap::new(),
        declared: BTreeMap::new(),
        rejections: Vec::new(),
        notices: Vec::new(),
        invalid: BTreeSet::new(),
        all_named: true,
    };
    let whole_file =
        |message: String| Rejection { file: name.to_owned(), object: "file".into(), field: "".into(), message };
    if bytes.len() > MAX_MANIFEST_BYTES {
        // read_bounded stops just past the limit, so this is all we know of its size.
        out.rejections.push(whole_file(format!(
            "larger than {MAX_MANIFEST_BYTES} bytes, the most one manifest file may hold: not read"
        )));
        out.all_named = false;
        return out;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            out.rejections.push(whole_file(format!("not UTF-8: {e}")));
            out.all_named = false;
            return out;
        }
    };
    for doc in ward_policy::model::parse_documents(text, name) {
        let obj: Object = match doc {
            Ok(o) => o,
            Err(e) => {
                out.all_named = false;
                out.rejections.push(rejection(name, &e));
                continue;
            }
        };
        match validate(&obj, name) {
            Ok((key, valid, defaulted)) => {
                for d in defaulted {
                    out.notices.push(Notice {
                        file: name.to_owned(),
                        object: key.to_string(),
                        field: d.field.to_owned(),
                        message: d.message,
                    });
                }
                *out.declared.entry(key.clone()).or_default() += 1;
                // A later document of the file replaces an earlier one, valid or not
                // (kubectl applies them in order; an invalid one changes nothing).
                out.invalid.remove(&key);
                out.objects.insert(key, valid);
            }
            Err(invalid) => {
                match invalid.key {
                    Some(k) => {
                        *out.declared.entry(k.clone()).or_default() += 1;
                        if !out.objects.contains_key(&k) {
                            out.invalid.insert(k);
                        }
                    }
                    None => out.all_named = false,
                }
                out.rejections.push(rejection(name, &invalid.error));
            }
        }
    }
    out
}

fn rejection(file: &str, e: &ward_policy::validate::ObjectError) -> Rejection {
    Rejection { file: file.to_owned(), object: e.object.clone(), field: e.field.clone(), message: e.message.clone() }
}

/// Reads a file, but never more than one byte past [`MAX_MANIFEST_BYTES`]: a huge file (or
/// one that grows while it is read) costs the agent no more than that.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_MANIFEST_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
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

/// How often the whole directory is re-read besides the change events (the safety net for
/// writes the watcher missed), and the quiet time after an event before reading, so an
/// editor's several writes make one reload.
pub const REREAD_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(5);

/// The directory as a source of the agent's store, after its first read (which the caller
/// did, to apply it before anything else): sends every later change to `tx` until the
/// receiver goes. A directory that cannot be watched (not a directory yet, say) is bad input,
/// not a reason to stop: the periodic re-read picks it up once it is one.
pub async fn run(mut store: DirectoryStore, tx: mpsc::Sender<Event>) {
    let (fs_tx, mut fs_events) = mpsc::unbounded_channel::<()>();
    let _watcher = match watch(&store.dir, fs_tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(dir = %store.dir.display(), error = %e, "cannot watch the manifests; re-reading them every {REREAD_PERIOD:?}");
            None
        }
    };
    let mut reread = tokio::time::interval(REREAD_PERIOD);
    loop {
        tokio::select! {
            Some(()) = fs_events.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while fs_events.try_recv().is_ok() {}
                store.reload_changed();
            }
            _ = reread.tick() => {
                store.reload();
            }
        }
        for event in store.take_events() {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
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

    /// The snapshot as a full rebuild would make it, written as the precedence rule reads:
    /// every file's versions applied in name order, a later file's replacing an earlier's.
    fn from_scratch(s: &DirectoryStore) -> String {
        let mut snap = Snapshot::default();
        for state in s.files.values() {
            for (key, valid) in &state.objects {
                snap.insert(key, valid);
            }
        }
        format!("{snap:?}")
    }

    /// The duplicates as a full pass over every file's declarations finds them.
    fn duplicates_from_scratch(s: &DirectoryStore) -> Vec<Duplicate> {
        let mut all: BTreeMap<ObjKey, Vec<String>> = BTreeMap::new();
        for (file, state) in &s.files {
            for key in state.keys() {
                let n = state.declared.get(&key).copied().unwrap_or(1).max(1);
                all.entry(key).or_default().extend(std::iter::repeat_n(file.clone(), n));
            }
        }
        all.into_iter()
            .filter(|(_, files)| files.len() > 1)
            .map(|(key, files)| {
                let in_force = files.iter().rev().find(|f| s.files[*f].objects.contains_key(&key)).cloned();
                Duplicate { object: key.to_string(), files, in_force }
            })
            .collect()
    }

    fn port_of(s: &DirectoryStore) -> Option<String> {
        let p = s.snapshot().policies.get(&web())?;
        let rules = p.ingress.as_ref()?;
        Some(format!("{:?}", rules[0].ports.as_ref()?[0].port))
    }

    fn policy_on(port: u16) -> String {
        POLICY_V1.replace("port: 80", &format!("port: {port}"))
    }

    /// Issue 13 item 4: a policy in two files vanished when the file loaded last was
    /// removed, although the other still declared it (the isolated pod lost isolation).
    #[test]
    fn an_object_declared_in_two_files_stays_while_either_declares_it() {
        let d = dir("copy");
        std::fs::write(d.0.join("policy.yaml"), POLICY_V1).unwrap();
        let mut s = DirectoryStore::new(d.0.clone());
        assert!(s.reload());
        std::fs::write(d.0.join("policy-copy.yaml"), POLICY_V1).unwrap();
        assert!(s.reload_changed());
        let dup = Duplicate {
            object: "NetworkPolicy shop/web".into(),
            files: vec!["policy-copy.yaml".into(), "policy.yaml".into()],
            in_force: Some("policy.yaml".into()),
        };
        assert_eq!(s.duplicates(), vec![dup]);
        // Removing either copy leaves the other's in force; removing both removes it.
        std::fs::remove_file(d.0.join("policy-copy.yaml")).unwrap();
        assert!(s.reload_changed());
        assert!(s.snapshot().policies.contains_key(&web()), "policy.yaml still declares it");
        assert!(s.duplicates().is_empty());
        std::fs::write(d.0.join("zz-copy.yaml"), POLICY_V1).unwrap();
        assert!(s.reload_changed());
        std::fs::remove_file(d.0.join("zz-copy.yaml")).unwrap();
        assert!(s.reload_changed());
        assert!(s.snapshot().policies.contains_key(&web()), "the copy loaded last went; policy.yaml remains");
        std::fs::write(d.0.join("zz-copy.yaml"), POLICY_V1).unwrap();
        std::fs::remove_file(d.0.join("policy.yaml")).unwrap();
        assert!(s.reload_changed());
        assert!(s.snapshot().policies.contains_key(&web()), "the copy remains");
        std::fs::remove_file(d.0.join("zz-copy.yaml")).unwrap();
        assert!(s.reload_changed());
        assert!(s.snapshot().policies.is_empty(), "no file declares it");
    }

    /// Precedence as `kubectl apply -f <dir>` leaves it: the last file in name order wins,
    /// and each file keeps its own last valid version.
    #[test]
    fn the_last_file_in_name_order_wins_and_each_file_keeps_its_last_valid_version() {
        let d = dir("precedence");
        std::fs::write(d.0.join("a.yaml"), policy_on(81)).unwrap();
        std::fs::write(d.0.join("b.yaml"), policy_on(82)).unwrap();
        let mut s = DirectoryStore::new(d.0.clone());
        assert!(s.reload());
        assert_eq!(port_of(&s).as_deref(), Some("Number(82)"), "b.yaml comes last");
        // Editing the earlier file changes nothing in force.
        std::fs::write(d.0.join("a.yaml"), policy_on(8181)).unwrap();
        assert!(s.reload_changed());
        assert_eq!(port_of(&s).as_deref(), Some("Number(82)"));
        // b.yaml's version turns invalid: b.yaml's last valid version stays in force.
        std::fs::write(d.0.join("b.yaml"), POLICY_BAD).unwrap();
        assert!(s.reload_changed());
        assert_eq!(port_of(&s).as_deref(), Some("Number(82)"), "b.yaml's last valid version");
        assert_eq!(s.rejected().len(), 1);
        assert_eq!(s.rejected()[0].file, "b.yaml");
        // Gone: a.yaml's version takes over.
        std::fs::remove_file(d.0.join("b.yaml")).unwrap();
        assert!(s.reload_changed());
        assert_eq!(port_of(&s).as_deref(), Some("Number(8181)"));
        // A file that declares it invalid from the start has no version to offer.
        std::fs::write(d.0.join("c.yaml"), POLICY_BAD).unwrap();
        assert!(s.reload_changed());
        assert_eq!(port_of(&s).as_deref(), Some("Number(8181)"), "c.yaml never had a valid version");
        let dups = s.duplicates();
        assert_eq!(dups.len(), 1);
        assert_eq!(dups[0].files, ["a.yaml", "c.yaml"]);
        assert_eq!(dups[0].in_force.as_deref(), Some("a.yaml"));
        // An unreadable document in the later file keeps that file's versions in force.
        std::fs::write(d.0.join("c.yaml"), policy_on(83)).unwrap();
        assert!(s.reload_changed());
        assert_eq!(port_of(&s).as_deref(), Some("Number(83)"));
        std::fs::write(d.0.join("c.yaml"), "kind: NetworkPolicy\nspec: [unclosed\n").unwrap();
        assert!(s.reload_changed());
        assert_eq!(port_of(&s).as_deref(), Some("Number(83)"), "c.yaml might still declare it");
    }

    #[test]
    fn within_one_file_the_later_document_wins_and_the_repeat_is_reported() {
        let d = dir("twice");
        std::fs::write(d.0.join("p.yaml"), format!("{}---\n{}", policy_on(81), policy_on(82))).unwrap();
        let mut s = DirectoryStore::new(d.0.clone());
        assert!(s.reload());
        assert_eq!(port_of(&s).as_deref(), Some("Number(82)"));
        let dups = s.duplicates();
        assert_eq!(dups.len(), 1, "{dups:?}");
        assert_eq!(dups[0].files, ["p.yaml", "p.yaml"]);
        // A later invalid document changes nothing: the earlier valid one stays.
        std::fs::write(d.0.join("p.yaml"), format!("{}---\n{POLICY_BAD}", policy_on(84))).unwrap();
        assert!(s.reload_changed());
        assert_eq!(port_of(&s).as_deref(), Some("Number(84)"));
        assert_eq!(s.rejected().len(), 1);
    }

    /// Issue 13 item 8: a file over a bound (an alias bomb, a huge file) is rejected whole,
    /// naming the file and the bound; its objects keep their last valid versions.
    #[test]
    fn a_file_over_its_budget_is_rejected_and_its_last_valid_objects_stay() {
        let d = dir("budget");
        std::fs::write(d.0.join("policy.yaml"), POLICY_V1).unwrap();
        std::fs::write(d.0.join("objects.yaml"), OBJECTS).unwrap();
        let mut s = DirectoryStore::new(d.0.clone());
        assert!(s.reload());
        let before = format!("{:?}", s.snapshot());
        // 18 million strings from a few KB, were it expanded.
        let leaves = vec!["lol"; 1800].join(",");
        let refs = |alias: &str| vec![alias; 100].join(",");
        let bomb = format!("{POLICY_V1}a: &a [{leaves}]\nb: &b [{}]\nc: [{}]\n", refs("*a"), refs("*b"));
        std::fs::write(d.0.join("policy.yaml"), &bomb).unwrap();
        assert!(s.reload_changed());
        assert_eq!(s.rejected().len(), 1, "{:?}", s.rejected());
        let r = &s.rejected()[0];
        assert_eq!((r.file.as_str(), r.object.as_str()), ("policy.yaml", "file"));
        assert!(r.message.contains("expands to more than") && r.message.contains("nodes"), "{r:?}");
        assert_eq!(format!("{:?}", s.snapshot()), before, "everything stays as it was");
        // A file larger than the limit is not even read whole.
        let big = format!("{OBJECTS}#{}\n", "x".repeat(MAX_MANIFEST_BYTES));
        std::fs::write(d.0.join("objects.yaml"), big).unwrap();
        assert!(s.reload_changed());
        let r = s.rejected().iter().find(|r| r.file == "objects.yaml").expect("objects.yaml rejected");
        assert!(r.message.contains(&format!("larger than {MAX_MANIFEST_BYTES} bytes")), "{r:?}");
        assert_eq!(format!("{:?}", s.snapshot()), before);
        // Fixed, both come back to normal.
        std::fs::write(d.0.join("objects.yaml"), OBJECTS).unwrap();
        std::fs::write(d.0.join("policy.yaml"), policy_on(81)).unwrap();
        assert!(s.reload_changed());
        assert!(s.rejected().is_empty(), "{:?}", s.rejected());
        assert_eq!(port_of(&s).as_deref(), Some("Number(81)"));
    }

    /// Issue 13 item 9: the upstream docs' default-deny example names no namespace.
    #[test]
    fn an_object_without_a_namespace_lands_in_default_with_a_notice() {
        let d = dir("default-ns");
        let example = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny-ingress\nspec:\n  podSelector: {}\n  policyTypes:\n  - Ingress\n";
        std::fs::write(d.0.join("deny.yaml"), example).unwrap();
        std::fs::write(d.0.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n").unwrap();
        let mut s = DirectoryStore::new(d.0.clone());
        assert!(s.reload());
        assert!(s.rejected().is_empty(), "{:?}", s.rejected());
        let key = PolicyRef::new("default", "default-deny-ingress");
        assert_eq!(s.snapshot().policies[&key].ingress, Some(vec![]), "deny all ingress in default");
        let notice = Notice {
            file: "deny.yaml".into(),
            object: "NetworkPolicy default/default-deny-ingress".into(),
            field: "metadata.namespace".into(),
            message: "not set: namespace defaulted to default (as kubectl does)".into(),
        };
        assert_eq!(s.notices(), [notice], "only the policy: a Namespace is cluster-scoped");
        // Said explicitly, the notice goes.
        std::fs::write(d.0.join("deny.yaml"), example.replace("  name:", "  namespace: default\n  name:")).unwrap();
        assert!(s.reload_changed());
        assert!(s.notices().is_empty());
        assert!(s.snapshot().policies.contains_key(&key));
    }

    #[test]
    fn the_snapshot_kept_up_to_date_equals_a_rebuild_through_every_kind_of_change() {
        let d = dir("incremental");
        let mut s = DirectoryStore::new(d.0.clone());
        let same = |s: &DirectoryStore, step: &str| {
            assert_eq!(format!("{:?}", s.snapshot()), from_scratch(s), "after {step}");
            assert_eq!(s.duplicates(), duplicates_from_scratch(s), "duplicates after {step}");
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
        // Duplicates: the same object in several files and twice in one.
        std::fs::write(d.0.join("a.yaml"), policy_on(81)).unwrap();
        std::fs::write(d.0.join("b.yaml"), format!("{}---\n{}", policy_on(82), policy_on(83))).unwrap();
        std::fs::write(d.0.join("c.yaml"), policy_on(84)).unwrap();
        assert!(s.reload_changed());
        same(&s, "three files declare one policy");
        std::fs::write(d.0.join("c.yaml"), POLICY_BAD).unwrap();
        assert!(s.reload_changed());
        same(&s, "the last file's version turns invalid");
        std::fs::remove_file(d.0.join("c.yaml")).unwrap();
        assert!(s.reload_changed());
        same(&s, "the last file removed");
        assert_eq!(port_of(&s).as_deref(), Some("Number(83)"));
        std::fs::write(d.0.join("b.yaml"), "kind: NetworkPolicy\nspec: [unclosed\n").unwrap();
        assert!(s.reload_changed());
        same(&s, "an unreadable document in the file in force");
        std::fs::write(d.0.join("b.yaml"), OBJECTS).unwrap();
        assert!(s.reload_changed());
        same(&s, "the file in force stops declaring it");
        assert_eq!(port_of(&s).as_deref(), Some("Number(81)"));
        std::fs::write(d.0.join("0.yaml"), POLICY_BAD).unwrap();
        std::fs::write(d.0.join("b.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n").unwrap();
        assert!(s.reload_changed());
        same(&s, "an earlier file declares it invalid; the pod goes");
        assert!(s.snapshot().pods.is_empty());
        std::fs::remove_file(d.0.join("a.yaml")).unwrap();
        assert!(s.reload());
        same(&s, "only an invalid declaration is left");
        assert!(s.snapshot().policies.is_empty());
        // A fresh store reading the same directory agrees where no history is involved.
        std::fs::remove_file(d.0.join("0.yaml")).unwrap();
        std::fs::write(d.0.join("a.yaml"), policy_on(85)).unwrap();
        assert!(s.reload());
        same(&s, "the end state");
        let mut fresh = DirectoryStore::new(d.0.clone());
        fresh.reload();
        assert_eq!(format!("{:?}", fresh.snapshot()), format!("{:?}", s.snapshot()));
        assert_eq!(fresh.duplicates(), s.duplicates());
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
