//! kubelet (with `protectKernelDefaults: false`, the only setting it starts with here)
//! rewrites machine-wide kernel settings that no network namespace confines:
//! `vm.overcommit_memory=1`, `kernel.panic=10`, `kernel.panic_on_oops=1`, `vm.panic_on_oom=0`
//! and the `kernel.keys.*` quotas. This guard records their values before the first kubelet
//! of the machine starts and puts them back when the last lab cluster goes.
//!
//! Several clusters may run at once (two test binaries, an e2e run beside a test), and a
//! second cluster must not record the first one's kubelet values as the originals. So the
//! record is machine-wide, under [`STATE_DIR`]: `baseline` (the original values, written by
//! the first holder) and `holders/<cluster name>` (one file per live cluster), changed only
//! under a lock. Releasing the last holder restores the baseline and removes it. A holder
//! whose owner process died (its name is `ward-<pid>-<n>`) is dropped by the next cluster or
//! by `cargo xtask lab-clean`, which restores the baseline once no live holder is left.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The settings kubelet changes, as paths under /proc/sys.
pub const GLOBAL_SYSCTLS: [&str; 8] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "kernel/keys/maxkeys",
    "kernel/keys/maxbytes",
];
/// tmpfs: a reboot resets the settings and this record together.
pub const STATE_DIR: &str = "/run/ward/kubelet-sysctls";
pub const PROC_SYS: &str = "/proc/sys";
const BASELINE: &str = "baseline";
const HOLDERS: &str = "holders";
const LOCK: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("kubelet sysctl record {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("kubelet sysctl record: locking {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
    #[error("kubelet sysctl record {path}: unreadable: {source}")]
    Decode { path: PathBuf, source: serde_json::Error },
    #[error("restoring {key}={value}: {source}")]
    Restore { key: String, value: String, source: std::io::Error },
}

/// Where the record and the settings are (tests point both at scratch directories).
#[derive(Clone, Debug)]
pub struct SysctlPlaces {
    pub state_dir: PathBuf,
    pub proc_sys: PathBuf,
}

impl Default for SysctlPlaces {
    fn default() -> Self {
        SysctlPlaces { state_dir: STATE_DIR.into(), proc_sys: PROC_SYS.into() }
    }
}

impl SysctlPlaces {
    /// The current values of [`GLOBAL_SYSCTLS`] (a setting this kernel lacks is left out).
    pub fn read(&self) -> BTreeMap<String, String> {
        GLOBAL_SYSCTLS
            .iter()
            .filter_map(|k| fs::read_to_string(self.proc_sys.join(k)).ok().map(|v| ((*k).to_owned(), v.trim().into())))
            .collect()
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SysctlError + '_ {
        move |source| SysctlError::Io { path: path.to_owned(), source }
    }

    fn lock(&self) -> Result<Flock<File>, SysctlError> {
        fs::create_dir_all(self.state_dir.join(HOLDERS)).map_err(Self::io(&self.state_dir))?;
        let path = self.state_dir.join(LOCK);
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(Self::io(&path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| SysctlError::Lock { path, source })
    }

    /// Holder files whose owner process is gone are removed.
    fn drop_dead_holders(&self) -> Vec<String> {
        let dir = self.state_dir.join(HOLDERS);
        let mut removed = Vec::new();
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dead = crate::cleanup::owner_pid(&name).is_none_or(|pid| !crate::cleanup::alive(pid));
            if dead && fs::remove_file(entry.path()).is_ok() {
                removed.push(name);
            }
        }
        removed
    }

    fn holders(&self) -> Vec<String> {
        let dir = self.state_dir.join(HOLDERS);
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// With no holder left, writes the baseline back and removes it; returns what it restored.
    fn restore_if_unheld(&self) -> Result<Vec<String>, SysctlError> {
        let path = self.state_dir.join(BASELINE);
        if !self.holders().is_empty() || !path.exists() {
            return Ok(Vec::new());
        }
        let text = fs::read_to_string(&path).map_err(Self::io(&path))?;
        let baseline: BTreeMap<String, String> =
            serde_json::from_str(&text).map_err(|source| SysctlError::Decode { path: path.clone(), source })?;
        let now = self.read();
        let mut restored = Vec::new();
        for (key, value) in &baseline {
            if now.get(key) == Some(value) {
                continue;
            }
            fs::write(self.proc_sys.join(key), value).map_err(|source| SysctlError::Restore {
                key: key.clone(),
                value: value.clone(),
                source,
            })?;
            restored.push(format!("{}={value}", key.replace('/', ".")));
        }
        fs::remove_file(&path).map_err(Self::io(&path))?;
        Ok(restored)
    }

    /// For `lab-clean`: drops holders of dead owners and restores the baseline if none is
    /// left. Returns a line per thing it did.
    pub fn clean_stale(&self) -> Result<Vec<String>, SysctlError> {
        if !self.state_dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let mut lines: Vec<String> =
            self.drop_dead_holders().into_iter().map(|h| format!("dropped kubelet sysctl holder {h}")).collect();
        lines.extend(self.restore_if_unheld()?.into_iter().map(|r| format!("restored {r}")));
        Ok(lines)
    }
}

/// One cluster's hold on the record; releasing it (explicitly or on drop) restores the
/// settings if it was the last.
#[derive(Debug)]
pub struct SysctlGuard {
    places: SysctlPlaces,
    holder: String,
    released: bool,
}

impl SysctlGuard {
    /// Registers `holder` (a `ward-<pid>-<n>` name), recording the current values as the
    /// baseline if no live cluster holds one already.
    pub fn acquire(places: SysctlPlaces, holder: &str) -> Result<Self, SysctlError> {
        let lock = places.lock()?;
        places.drop_dead_holders();
        // Every holder of an existing baseline died: their kubelets' values are in force, so
        // put the baseline back before taking a fresh one (which is then the same values).
        places.restore_if_unheld()?;
        let baseline = places.state_dir.join(BASELINE);
        if !baseline.exists() {
            let values = serde_json::to_string_pretty(&places.read()).unwrap_or_default();
            fs::write(&baseline, values).map_err(SysctlPlaces::io(&baseline))?;
        }
        let file = places.state_dir.join(HOLDERS).join(holder);
        fs::write(&file, b"").map_err(SysctlPlaces::io(&file))?;
        drop(lock);
        Ok(SysctlGuard { places, holder: holder.to_owned(), released: false })
    }

    /// The values recorded as the machine's own.
    pub fn baseline(&self) -> Result<BTreeMap<String, String>, SysctlError> {
        let path = self.places.state_dir.join(BASELINE);
        let text = fs::read_to_string(&path).map_err(SysctlPlaces::io(&path))?;
        serde_json::from_str(&text).map_err(|source| SysctlError::Decode { path, source })
    }

    /// Drops this hold; restores the baseline if no other cluster holds it. Returns the
    /// settings it restored (`kernel.panic=1`, ...).
    pub fn release(&mut self) -> Result<Vec<String>, SysctlError> {
        if self.released {
            return Ok(Vec::new());
        }
        let _lock = self.places.lock()?;
        let file = self.places.state_dir.join(HOLDERS).join(&self.holder);
        fs::remove_file(&file).map_err(SysctlPlaces::io(&file))?;
        self.released = true;
        self.places.drop_dead_holders();
        self.places.restore_if_unheld()
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!("ward-lab: cleanup: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc/sys and state directory with the machine's defaults.
    fn places() -> SysctlPlaces {
        let root = std::env::temp_dir().join(crate::netns::unique_name("sysctl"));
        let places = SysctlPlaces { state_dir: root.join("state"), proc_sys: root.join("proc_sys") };
        for key in GLOBAL_SYSCTLS {
            let path = places.proc_sys.join(key);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "0\n").unwrap();
        }
        places
    }

    fn kubelet_writes(p: &SysctlPlaces) {
        fs::write(p.proc_sys.join("kernel/panic"), "10").unwrap();
        fs::write(p.proc_sys.join("vm/overcommit_memory"), "1").unwrap();
    }

    fn holder(n: u32) -> String {
        format!("ward-{}-{n}", std::process::id())
    }

    #[test]
    fn the_last_cluster_to_go_restores_what_the_first_recorded() {
        let p = places();
        let mut first = SysctlGuard::acquire(p.clone(), &holder(1)).unwrap();
        kubelet_writes(&p);
        // The second cluster starts while the first kubelet's values are in force.
        let mut second = SysctlGuard::acquire(p.clone(), &holder(2)).unwrap();
        assert_eq!(second.baseline().unwrap()["kernel/panic"], "0", "the baseline is the machine's value");
        assert_eq!(first.release().unwrap(), Vec::<String>::new(), "another cluster still runs a kubelet");
        assert_eq!(p.read()["kernel/panic"], "10");
        let restored = second.release().unwrap();
        assert_eq!(restored, vec!["kernel.panic=0", "vm.overcommit_memory=0"]);
        assert_eq!(p.read()["kernel/panic"], "0");
        assert!(!p.state_dir.join(BASELINE).exists());
        fs::remove_dir_all(p.state_dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn holders_of_dead_processes_do_not_keep_the_settings_changed() {
        let p = places();
        // A run that was killed: its holder and baseline stay behind, kubelet's values too.
        let dead = "ward-999999999-0";
        std::mem::forget(SysctlGuard::acquire(p.clone(), dead).unwrap());
        kubelet_writes(&p);
        let lines = p.clean_stale().unwrap();
        assert!(lines.contains(&format!("dropped kubelet sysctl holder {dead}")), "{lines:?}");
        assert!(lines.contains(&"restored kernel.panic=0".to_owned()), "{lines:?}");
        assert_eq!(p.read()["vm/overcommit_memory"], "0");
        fs::remove_dir_all(p.state_dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_new_cluster_after_a_killed_one_records_the_machine_values() {
        let p = places();
        std::mem::forget(SysctlGuard::acquire(p.clone(), "ward-999999999-1").unwrap());
        kubelet_writes(&p);
        let mut g = SysctlGuard::acquire(p.clone(), &holder(3)).unwrap();
        assert_eq!(g.baseline().unwrap()["kernel/panic"], "0");
        assert_eq!(p.read()["kernel/panic"], "0", "the dead run's kubelet values were put back first");
        g.release().unwrap();
        fs::remove_dir_all(p.state_dir.parent().unwrap()).unwrap();
    }
}
