//! What the agent keeps on disk between runs besides the endpoint registry: the identity
//! numbers (so a restarted agent computes exactly the map contents already pinned, an empty
//! diff) and the datastore's last snapshot (so a restarted agent enforces what it knew at
//! once, without waiting for the API server).

use std::path::Path;

use ward_policy::identity::Identities;

pub use super::registry::write_atomic;
use crate::datastore::Snapshot;
use ward_policy::compile::Compiled;

const IDENTITIES_FILE: &str = "identities.json";
const SNAPSHOT_FILE: &str = "datastore.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is corrupt: {source}")]
    Corrupt { path: String, source: serde_json::Error },
}

/// Identity numbers persist so that a restarted agent computes exactly the map contents
/// already pinned in the kernel (an empty diff, no churn).
///
/// A corrupt file is set aside (`identities.json.corrupt`) rather than stopping the agent:
/// [`adopt_numbers`] then rebuilds what it can from the pinned maps, and reserves the rest.
pub fn load_identities(state_dir: &Path) -> Result<Identities, StateError> {
    let path = state_dir.join(IDENTITIES_FILE);
    match std::fs::read(&path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(ids) => Ok(ids),
            Err(source) => {
                let e = StateError::Corrupt { path: path.display().to_string(), source };
                tracing::error!(error = %e, "starting from the pinned maps' numbers instead");
                let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                Ok(Identities::default())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Identities::default()),
        Err(source) => Err(StateError::Read { path: path.display().to_string(), source }),
    }
}

/// Writes the identity file; false (logged) if that failed.
fn save_identities(state_dir: &Path, ids: &Identities) -> bool {
    let path = state_dir.join(IDENTITIES_FILE);
    match serde_json::to_vec(ids) {
        Ok(bytes) => match write_atomic(&path, &bytes) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "persisting identities");
                false
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "encoding identities");
            false
        }
    }
}

/// After the maps were written: frees the identity numbers this compile no longer uses, but
/// only if the writes succeeded (otherwise a map may still refer to them), and persists the
/// identity table if it changed since it was last persisted (`saved` holds that revision).
pub fn settle_identities(
    ids: &mut Identities,
    compiled: &Compiled,
    applied: bool,
    state_dir: &Path,
    saved: &mut Option<u64>,
) {
    if applied {
        ids.gc(&compiled.live());
    }
    if *saved != Some(ids.revision()) && save_identities(state_dir, ids) {
        *saved = Some(ids.revision());
    }
}

/// The datastore snapshot a Kubernetes-backed agent persisted, if any (a corrupt file is set
/// aside and the agent starts empty, waiting for the API as a first start does).
pub fn load_snapshot(state_dir: &Path) -> Option<Snapshot> {
    let path = state_dir.join(SNAPSHOT_FILE);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "the persisted datastore snapshot is corrupt; waiting for the API");
            let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
            None
        }
    }
}

/// Persists the snapshot (atomically); false (logged) if that failed.
pub fn save_snapshot(state_dir: &Path, snapshot: &Snapshot) -> bool {
    let path = state_dir.join(SNAPSHOT_FILE);
    let written = serde_json::to_vec(snapshot)
        .map_err(|e| e.to_string())
        .and_then(|b| write_atomic(&path, &b).map_err(|e| e.to_string()));
    match written {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "persisting the datastore snapshot");
            false
        }
    }
}
