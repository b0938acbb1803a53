//! The lab's scratch directory (manifests, agent state, IPAM data, logs), unique per lab and
//! removed when the guard drops unless kept.

use std::path::{Path, PathBuf};

use crate::netns::unique_name;

#[derive(Debug)]
pub struct LabDir {
    path: PathBuf,
    keep: bool,
}

impl LabDir {
    pub fn create(tag: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir(&path)?;
        Ok(LabDir { path, keep: false })
    }

    /// `$TMPDIR/<name>`, for a lab whose other parts share its unique name.
    pub fn create_named(name: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        Ok(LabDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
