//! A pod's network namespace, opened by path (`CNI_NETNS`), and a way to run code inside it.
//!
//! `setns` changes the namespace of the calling thread only, so work inside the pod runs on a
//! dedicated thread that enters the namespace and ends with it; the caller's thread (and any
//! netlink socket it holds) stays in the node's namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a namespace file")]
    NotANamespace { path: PathBuf },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::errno::Errno },
    #[error("cannot start a thread for network namespace {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
    #[error("the thread working in network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

/// An open network namespace; the file keeps it alive while we work in it.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => NetnsError::Missing { path: path.to_owned() },
            _ => NetnsError::Open { path: path.to_owned(), source },
        })?;
        let is_nsfs = fstatfs(&file).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC);
        if !is_nsfs {
            return Err(NetnsError::NotANamespace { path: path.to_owned() });
        }
        Ok(Self { path: path.to_owned(), file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("ward-netns".into())
                .spawn_scoped(scope, || {
                    setns(&self.file, CloneFlags::CLONE_NEWNET)
                        .map_err(|source| NetnsError::Enter { path: self.path.clone(), source })?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::Spawn { path: self.path.clone(), source })?;
            worker.join().map_err(|_| NetnsError::Panicked { path: self.path.clone() })?
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
