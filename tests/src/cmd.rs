//! Running the external programs the lab drives (`ip`, `ward-cni`, `mount`): every call has a
//! deadline, and a failure carries the command line and its stderr so a broken lab explains
//! itself.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long an ordinary helper command (`ip ...`) may take before the lab gives up on it.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot start `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: ExitStatus, stdout: String, stderr: String },
    #[error("`{command}` did not finish within {after:?}; killed")]
    Timeout { command: String, after: Duration },
    #[error("waiting for `{command}`: {source}")]
    Wait { command: String, source: std::io::Error },
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion (feeding `stdin` if given), killing it after `timeout`.
/// A non-zero exit is not an error here; see [`run_ok`].
pub(crate) fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output, CmdError> {
    let command = describe(&cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| CmdError::Spawn { command: command.clone(), source })?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits without reading its stdin closes the pipe; its exit status and
        // output explain that better than EPIPE would.
        let _ = pipe.write_all(bytes);
    }
    let out = child.stdout.take().map(|p| thread::spawn(move || read_all(p)));
    let err = child.stderr.take().map(|p| thread::spawn(move || read_all(p)));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CmdError::Timeout { command, after: timeout });
            }
            Ok(None) => thread::sleep(POLL_EVERY),
            Err(source) => return Err(CmdError::Wait { command, source }),
        }
    };
    let join = |h: Option<thread::JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(Output { status, stdout: join(out), stderr: join(err) })
}

/// Runs `cmd` and requires exit status 0; returns its stdout.
pub(crate) fn run_ok(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<String, CmdError> {
    let command = describe(&cmd);
    let out = run(cmd, stdin, timeout)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(CmdError::Failed { command, status: out.status, stdout: out.stdout, stderr: out.stderr.trim().to_owned() })
    }
}

/// `ip <args>` with the default deadline.
pub(crate) fn ip(args: &[&str]) -> Result<String, CmdError> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_ok(cmd, None, DEFAULT_TIMEOUT)
}

fn read_all(mut r: impl Read) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
