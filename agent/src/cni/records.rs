//! The plugin's own records, beside the IPAM store under `<dataDir>/<network>/`:
//!
//! - `attachments/<containerID>:<ifname>`: every attachment an ADD started, and how far it
//!   got. GC and the sweep of pods removed without a DEL read them (a delegated IPAM plugin's
//!   allocations are known only through these);
//! - `pending/<containerID>:<ifname>`: the DEL queue, deregistrations the agent did not
//!   confirm (it was down or slow). The next plugin call of any kind sends them again before
//!   doing its own work; the agent's own sweep also forgets endpoints whose interface is gone.
//!
//! A file per attachment, written atomically (temporary file, rename): the runtime never runs
//! two commands for one attachment at once, so no lock is needed beyond that. Neither
//! `containerID` (spec charset) nor an interface name can hold ':' or '/', so the file name
//! is unique and a single path component.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::api::proto::AttachmentKey;

const ATTACHMENTS: &str = "attachments";
const PENDING: &str = "pending";

/// How far an attachment got.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// ADD started: addresses may be allocated, interfaces may exist.
    Adding,
    /// ADD succeeded.
    Added,
    /// DEL ran but could not finish (an interface or an address could not be released);
    /// the sweep tries again.
    Deleting,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachmentRecord {
    pub container_id: String,
    pub ifname: String,
    /// `CNI_NETNS` at ADD, handed to a delegated plugin's DEL.
    #[serde(default)]
    pub netns: Option<String>,
    pub stage: Stage,
    /// Unix seconds of the last change.
    pub since: u64,
}

impl AttachmentRecord {
    pub fn new(container_id: &str, ifname: &str, netns: Option<&Path>, stage: Stage) -> Self {
        Self {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            netns: netns.map(|p| p.to_string_lossy().into_owned()),
            stage,
            since: now_secs(),
        }
    }

    pub fn key(&self) -> AttachmentKey {
        AttachmentKey { container_id: self.container_id.clone(), ifname: self.ifname.clone() }
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
#[error("plugin record {path}: {source}")]
pub struct RecordError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// One network's records.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

fn file_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}:{ifname}")
}

impl Records {
    /// `network` is a validated CNI network name: one path component.
    pub fn new(data_dir: &Path, network: &str) -> Self {
        Self { dir: data_dir.join(network) }
    }

    fn write(&self, sub: &str, name: &str, bytes: &[u8]) -> Result<(), RecordError> {
        let dir = self.dir.join(sub);
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| RecordError { path, source }
        };
        fs::create_dir_all(&dir).map_err(err(&dir))?;
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, bytes).map_err(err(&tmp))?;
        fs::rename(&tmp, &path).map_err(err(&path))
    }

    fn remove(&self, sub: &str, name: &str) -> Result<(), RecordError> {
        let path = self.dir.join(sub).join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(RecordError { path, source: e }),
            _ => Ok(()),
        }
    }

    /// The files of `sub`, skipping temporaries; nothing if the directory does not exist.
    fn list(&self, sub: &str) -> Vec<(PathBuf, String)> {
        let Ok(entries) = fs::read_dir(self.dir.join(sub)) else { return Vec::new() };
        let mut out: Vec<(PathBuf, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                (!name.starts_with('.')).then(|| (e.path(), name))
            })
            .collect();
        out.sort();
        out
    }

    pub fn put(&self, record: &AttachmentRecord) -> Result<(), RecordError> {
        let bytes = serde_json::to_vec(record).unwrap_or_default();
        self.write(ATTACHMENTS, &file_name(&record.container_id, &record.ifname), &bytes)
    }

    pub fn get(&self, container_id: &str, ifname: &str) -> Option<AttachmentRecord> {
        let path = self.dir.join(ATTACHMENTS).join(file_name(container_id, ifname));
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    pub fn forget(&self, container_id: &str, ifname: &str) -> Result<(), RecordError> {
        self.remove(ATTACHMENTS, &file_name(container_id, ifname))
    }

    /// Every attachment record; an unreadable one is logged and skipped (it names nothing
    /// Ward can act on).
    pub fn attachments(&self) -> Vec<AttachmentRecord> {
        self.list(ATTACHMENTS)
            .into_iter()
            .filter_map(|(path, _)| {
                match fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<AttachmentRecord>(&b).map_err(|e| e.to_string()))
                {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "unreadable attachment record skipped");
                        None
                    }
                }
            })
            .collect()
    }

    /// Queues a deregistration the agent did not confirm.
    pub fn queue_deregistration(&self, key: &AttachmentKey) -> Result<(), RecordError> {
        self.write(PENDING, &file_name(&key.container_id, &key.ifname), now_secs().to_string().as_bytes())
    }

    /// The queued deregistrations, oldest name first.
    pub fn pending(&self) -> Vec<AttachmentKey> {
        self.list(PENDING)
            .into_iter()
            .filter_map(|(_, name)| {
                let (container_id, ifname) = name.split_once(':')?;
                Some(AttachmentKey { container_id: container_id.to_owned(), ifname: ifname.to_owned() })
            })
            .collect()
    }

    pub fn deregistered(&self, key: &AttachmentKey) -> Result<(), RecordError> {
        self.remove(PENDING, &file_name(&key.container_id, &key.ifname))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_the_queue_round_trip_through_files() {
        let dir = std::env::temp_dir().join(format!("ward-records-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let r = Records::new(&dir, "ward");
        assert!(r.attachments().is_empty() && r.pending().is_empty(), "nothing before the first write");
        let rec = AttachmentRecord::new("c1", "eth0", Some(Path::new("/run/netns/p")), Stage::Adding);
        r.put(&rec).unwrap();
        r.put(&AttachmentRecord { stage: Stage::Added, ..rec.clone() }).unwrap();
        assert_eq!(r.get("c1", "eth0").map(|x| x.stage), Some(Stage::Added));
        assert_eq!(r.attachments().len(), 1);
        fs::write(dir.join("ward/attachments/broken:eth0"), b"{").unwrap();
        assert_eq!(r.attachments().len(), 1, "an unreadable record is skipped");
        r.forget("c1", "eth0").unwrap();
        r.forget("c1", "eth0").unwrap();
        let key = rec.key();
        r.queue_deregistration(&key).unwrap();
        assert_eq!(r.pending(), vec![key.clone()]);
        r.deregistered(&key).unwrap();
        assert!(r.pending().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
