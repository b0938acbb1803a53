//! The cluster's long-running programs (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, containerd, kubelet, kube-proxy): each a child started inside one network
//! namespace of the lab, its stdout and stderr in a log file whose tail explains a failure,
//! and stopped together with the others (SIGTERM, a short grace, SIGKILL) or killed on drop.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::{NetNs, NetnsError};

/// Lines of a component's log shown in errors.
pub const LOG_TAIL_LINES: usize = 40;
const POLL_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{component}: creating its log {path}: {source}")]
    Log { component: String, path: PathBuf, source: std::io::Error },
    #[error("{component}: cannot start {program}: {source}")]
    Spawn { component: String, program: String, source: std::io::Error },
    #[error("{component} exited ({status}); {log} ends:\n{tail}")]
    Exited { component: String, status: ExitStatus, log: PathBuf, tail: String },
    #[error("{component}: checking on it: {source}")]
    Wait { component: String, source: std::io::Error },
}

/// One running program of the cluster.
#[derive(Debug)]
pub struct Component {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Component {
    /// Starts `cmd` inside `netns` with its output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, netns: &NetNs, log: &Path) -> Result<Self, ProcessError> {
        let log_err = |source| ProcessError::Log { component: name.to_owned(), path: log.to_owned(), source };
        let out = File::options().create(true).append(true).open(log).map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        netns.command_inside(&mut cmd)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            component: name.to_owned(),
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        Ok(Component { name: name.to_owned(), child: Some(child), log: log.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Errors (with the log's tail) if the program has exited.
    pub fn check_running(&mut self) -> Result<(), ProcessError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(ProcessError::Exited {
                component: self.name.clone(),
                status,
                log: self.log.clone(),
                tail: log_tail(&self.log, LOG_TAIL_LINES),
            }),
            Err(source) => Err(ProcessError::Wait { component: self.name.clone(), source }),
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            // ESRCH: it is gone already, which is what we want.
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// True once the program has exited (and has been reaped).
    fn reaped(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            None | Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                true
            }
            Some(Ok(None)) => false,
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM to every component at once, SIGKILL to those still running after `grace`; returns
/// when all have been reaped. Everything of a lab cluster is thrown away afterwards, so a
/// short grace is enough (kube-apiserver has been seen ignoring SIGTERM for over 10 s).
pub fn stop_all(components: &mut [&mut Component], grace: Duration) {
    for c in components.iter() {
        c.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if components.iter_mut().all(|c| c.reaped()) {
            return;
        }
        thread::sleep(POLL_EVERY);
    }
    for c in components.iter_mut() {
        if let Some(mut child) = c.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_is_its_last_lines() {
        let path = std::env::temp_dir().join(crate::netns::unique_name("tail"));
        fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&path, 10), "a\nb\nc\nd");
        fs::remove_file(&path).unwrap();
        assert_eq!(log_tail(&path, 2), "");
    }
}
