//! Named network namespaces (`/run/netns/NAME`, the `ip netns` convention the CNI plugin and
//! the agent's `--netns` expect) with RAII cleanup, and per-thread entry into them.
//!
//! Every namespace the lab makes is named by [`unique_name`], so two runs on one machine (or
//! two tests in one process) never collide, and each is deleted when its guard drops, also
//! while unwinding from a panic.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use nix::sched::CloneFlags;

use crate::cmd::{self, CmdError};

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name}: {source}")]
    Command { name: String, source: Box<CmdError> },
    #[error("network namespace {name}: cannot open {path}: {source}")]
    Open { name: String, path: PathBuf, source: std::io::Error },
    #[error("network namespace {name}: setns: {source}")]
    Setns { name: String, source: nix::Error },
    #[error("network namespace {name}: writing {key}: {source}")]
    Sysctl { name: String, key: String, source: std::io::Error },
    #[error("network namespace {name}: the thread running inside it panicked")]
    ThreadPanicked { name: String },
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `ward-<pid>-<n>-<tag>`: unique within this process by the counter and across processes by
/// the pid.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    if tag.is_empty() {
        format!("ward-{}-{n}", std::process::id())
    } else {
        format!("ward-{}-{n}-{tag}", std::process::id())
    }
}

/// A network namespace this process created; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    keep: bool,
}

impl NetNs {
    /// Creates `/run/netns/<name>` with its loopback up.
    pub fn create(name: impl Into<String>) -> Result<Self, NetnsError> {
        let name = name.into();
        let err = |source| NetnsError::Command { name: name.clone(), source: Box::new(source) };
        cmd::ip(&["netns", "add", &name]).map_err(err)?;
        let ns = NetNs { path: Path::new(NETNS_DIR).join(&name), name, keep: false };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace named by [`unique_name`]`(tag)`.
    pub fn create_unique(tag: &str) -> Result<Self, NetnsError> {
        Self::create(unique_name(tag))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what `CNI_NETNS` and `setns()` take.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        cmd::ip(&full).map_err(|source| NetnsError::Command { name: self.name.clone(), source: Box::new(source) })
    }

    /// Moves the calling thread into this namespace. Only network namespaces may be switched
    /// per thread, which is all the lab needs; the thread should not return to a pool that
    /// expects the original namespace.
    pub fn enter_current_thread(&self) -> Result<(), NetnsError> {
        enter(&self.name, &self.path)
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        thread::scope(|s| {
            s.spawn(|| {
                self.enter_current_thread()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(NetnsError::ThreadPanicked { name: self.name.clone() }))
        })
    }

    /// Makes `cmd` start inside this namespace (see [`command_in`]).
    pub fn command_inside(&self, cmd: &mut Command) -> Result<(), NetnsError> {
        command_in(cmd, &self.name, &self.path)
    }

    /// Sets a `net.*` sysctl of this namespace, e.g. `("net/ipv4/ip_forward", "1")`.
    /// `/proc/sys/net` shows the namespace of the thread that opens it.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = Path::new("/proc/sys").join(key);
        self.run_in(|| std::fs::write(&path, value))?.map_err(|source| NetnsError::Sysctl {
            name: self.name.clone(),
            key: key.to_owned(),
            source,
        })
    }

    /// Leaves the namespace in place when the guard drops (`demo --keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = cmd::ip(&["netns", "del", &self.name]) {
            eprintln!("ward-lab: cleanup: {e}");
        }
    }
}

/// Makes `cmd` start inside the network namespace at `path` (and only that namespace: unlike
/// `ip netns exec`, no new mount namespace, so what the program mounts stays visible to
/// everyone, as kubelet's volume mounts must be to containerd and runc).
pub fn command_in(cmd: &mut Command, name: &str, path: &Path) -> Result<(), NetnsError> {
    let file =
        File::open(path).map_err(|source| NetnsError::Open { name: name.to_owned(), path: path.to_owned(), source })?;
    // SAFETY: the closure runs between fork and exec and calls only setns(2), which is
    // async-signal-safe; the file it uses is owned by the closure, so it is open in the child
    // (and closed on exec, being O_CLOEXEC).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// Moves the calling thread into the namespace at `path` (`name` is for messages).
pub fn enter(name: &str, path: &Path) -> Result<(), NetnsError> {
    let file =
        File::open(path).map_err(|source| NetnsError::Open { name: name.to_owned(), path: path.to_owned(), source })?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|source| NetnsError::Setns { name: name.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_carry_the_pid() {
        let a = unique_name("x");
        let b = unique_name("x");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("ward-{}-", std::process::id())), "{a}");
        assert!(a.ends_with("-x"), "{a}");
    }
}
