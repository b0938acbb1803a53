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
    rejections: Vec<Rejection>,
}

pub struct DirectoryStore {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    /// Every object in force, with the file it came from.
    objects: BTreeMap<ObjKey, (String, Valid)>,
    snapshot: Snapshot,
    rejected: Vec<Rejection>,
}

impl DirectoryStore {
    pub fn new(dir: PathBuf) -> Self {
        DirectoryStore {
            dir,
            files: BTreeMap::new(),
            objects: BTreeMap::new(),
            snapshot: Snapshot::default(),
            rejected: Vec::new(),
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

    /// Re-reads the directory. Returns true if anything changed.
    pub fn reload(&mut self) -> bool {
        let listed = match list_manifests(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                // An unreadable directory changes nothing: keep enforcing what we have.
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list manifests");
                return false;
            }
        };
        let mut changed = false;
        let names: BTreeSet<String> = listed.iter().map(|(n, _)| n.clone()).collect();
        let vanished: Vec<String> = self.files.keys().filter(|f| !names.contains(*f)).cloned().collect();
        for f in vanished {
            self.files.remove(&f);
            self.objects.retain(|_, (file, _)| *file != f);
            changed = true;
        }
        for (name, path) in listed {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read manifest");
                    continue;
                }
            };
            let hash = file_hash(&bytes);
            if self.files.get(&name).is_some_and(|s| s.hash == hash) {
                continue;
            }
            changed = true;
            self.load_file(&name, &bytes, hash);
        }
        if changed {
            self.rebuild();
        }
        changed
    }

    fn load_file(&mut self, name: &str, bytes: &[u8], hash: String) {
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
                self.files.insert(name.to_owned(), FileState { hash, rejections });
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
                    self.objects.insert(key, (name.to_owned(), valid));
                }
                Err((key, e)) => {
                    // The last valid version, if any, stays in force.
                    match key {
                        Some(k) => {
                            declared.insert(k);
                        }
                        None => all_named = false,
                    }
                    rejections.push(rejection(name, &e));
                }
            }
        }
        // Objects the file no longer declares are deleted, unless a document could not be
        // read at all (it might still be one of them: keep them rather than guess).
        if all_named {
            self.objects.retain(|k, (file, _)| file != name || declared.contains(k));
        }
        for r in &rejections {
            tracing::warn!(file = %r.file, object = %r.object, field = %r.field, "rejected: {}", r.message);
        }
        self.files.insert(name.to_owned(), FileState { hash, rejections });
    }

    fn rebuild(&mut self) {
        let mut snap = Snapshot::default();
        for (key, (_, valid)) in &self.objects {
            snap.insert(key, valid);
        }
        self.snapshot = snap;
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
