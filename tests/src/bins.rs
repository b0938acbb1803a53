//! Where the lab finds Ward's binaries: `$WARD_BIN_DIR`, else `debug/` of the cargo target
//! directory (`$CARGO_TARGET_DIR`, else `<workspace>/target`).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{binary} not found at {path}; run `cargo xtask build` or point WARD_BIN_DIR at the binaries")]
pub struct MissingBinary {
    pub binary: &'static str,
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
    pub agent: PathBuf,
    pub cni: PathBuf,
    pub cli: PathBuf,
}

impl Binaries {
    /// The binaries in [`default_dir`].
    pub fn locate() -> Result<Self, MissingBinary> {
        Self::in_dir(default_dir())
    }

    pub fn in_dir(dir: impl Into<PathBuf>) -> Result<Self, MissingBinary> {
        let dir = dir.into();
        let find = |binary: &'static str| {
            let path = dir.join(binary);
            if path.is_file() { Ok(path) } else { Err(MissingBinary { binary, path }) }
        };
        Ok(Binaries { agent: find("ward-agent")?, cni: find("ward-cni")?, cli: find("ward")?, dir })
    }
}

/// The workspace this crate was built from.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_owned()
}

/// The cargo target directory builds of this workspace go to.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

pub fn default_dir() -> PathBuf {
    std::env::var_os("WARD_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| target_dir().join("debug"))
}
