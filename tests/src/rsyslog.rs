//! A real log shipper in front of a real log receiver, both Debian's `rsyslogd` (not its
//! system service): the shipper tails a file with `imfile` and forwards each line with
//! `omfwd` over TCP (octet-counted RFC 5424 frames) to the receiver's `imtcp` on 127.0.0.1,
//! which writes each message's text, one per line, into a file. Each runs in the foreground
//! (`-n`) with its own config, pid file and work directory in a scratch directory, inside a
//! lab network namespace, so the machine's own syslog (its socket, config and spool) is
//! never touched. Both are killed, and their files removed, on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::labdir::LabDir;
use crate::netns::{NetNs, NetnsError};
use crate::privileged::in_ci;

/// How long the receiver may take to listen (it writes its port into a file then).
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages up to this size pass whole (rsyslog's default, 8 KiB, would cut long records).
const MAX_MESSAGE: &str = "256k";

#[derive(Debug, thiserror::Error)]
pub enum RsyslogError {
    #[error("rsyslog in {dir}: {what}: {source}")]
    Io { dir: PathBuf, what: String, source: std::io::Error },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("rsyslog {which} in {dir} did not come up within {START_TIMEOUT:?}; its log:\n{log}")]
    NotReady { which: &'static str, dir: PathBuf, log: String },
    #[error("rsyslog config: the path {0} holds a character rsyslog's config strings cannot carry")]
    Path(PathBuf),
}

fn rsyslogd() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    // Root's PATH has the sbin directories; a plain user's may not.
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("rsyslogd")).find(|p| p.is_file())
}

/// Whether `rsyslogd` is installed. Under CI its absence is a failure (a panic naming the
/// package), elsewhere a note and `false`.
pub fn available(test: &str) -> bool {
    if rsyslogd().is_some() {
        return true;
    }
    assert!(!in_ci(), "{test}: needs Debian's rsyslog package (cargo xtask setup); CI=true, so this is a failure");
    eprintln!("{test}: skipped, rsyslog is not installed (cargo xtask setup)");
    false
}

/// A path inside a config string: rsyslog's strings end at `"` and have no escapes we rely on.
fn quoted(p: &Path) -> Result<String, RsyslogError> {
    let s = p.to_str().ok_or_else(|| RsyslogError::Path(p.to_owned()))?;
    if s.contains(['"', '\\', '\n']) {
        return Err(RsyslogError::Path(p.to_owned()));
    }
    Ok(s.to_owned())
}

/// The receiver's config: imtcp on 127.0.0.1 (port chosen by the kernel, written to
/// `port_file`), every message's text (MSG, the forwarded line) written to `out`.
fn receiver_config(work: &Path, port_file: &Path, out: &Path) -> Result<String, RsyslogError> {
    Ok(format!(
        "global(workDirectory=\"{work}\" maxMessageSize=\"{MAX_MESSAGE}\")\n\
         module(load=\"imtcp\")\n\
         template(name=\"line\" type=\"string\" string=\"%msg%\\n\")\n\
         input(type=\"imtcp\" address=\"127.0.0.1\" port=\"0\" listenPortFileName=\"{port}\" ruleset=\"store\")\n\
         ruleset(name=\"store\") {{ action(type=\"omfile\" file=\"{out}\" template=\"line\") }}\n",
        work = quoted(work)?,
        port = quoted(port_file)?,
        out = quoted(out)?,
    ))
}

/// The shipper's config: imfile tails `file` from its start (and follows it when it is
/// renamed away and a new one appears: the exporter's rotation), omfwd sends each line.
fn shipper_config(work: &Path, file: &Path, port: u16) -> Result<String, RsyslogError> {
    Ok(format!(
        "global(workDirectory=\"{work}\" maxMessageSize=\"{MAX_MESSAGE}\")\n\
         module(load=\"imfile\")\n\
         input(type=\"imfile\" file=\"{file}\" tag=\"ward-flows\" freshStartTail=\"off\" ruleset=\"ship\")\n\
         ruleset(name=\"ship\") {{ action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{port}\" protocol=\"tcp\" \
         tcp_framing=\"octet-counted\" template=\"RSYSLOG_SyslogProtocol23Format\") }}\n",
        work = quoted(work)?,
        file = quoted(file)?,
    ))
}

/// The running pair; see the module docs.
#[derive(Debug)]
pub struct Shipper {
    receiver: Child,
    /// `None` until the receiver listens.
    shipper: Option<Child>,
    dir: LabDir,
}

impl Shipper {
    /// Starts the receiver, waits until it listens, then the shipper tailing `file` (which
    /// need not exist yet), both inside `netns`.
    pub fn start(netns: &NetNs, file: &Path) -> Result<Shipper, RsyslogError> {
        let dir = LabDir::create("rsyslog").map_err(|source| RsyslogError::Io {
            dir: std::env::temp_dir(),
            what: "creating its directory".into(),
            source,
        })?;
        let base = dir.path().to_owned();
        let io = |what: &str, source| RsyslogError::Io { dir: base.clone(), what: what.into(), source };
        let bin = rsyslogd().ok_or_else(|| io("finding rsyslogd", std::io::ErrorKind::NotFound.into()))?;
        for d in ["receiver", "shipper"] {
            std::fs::create_dir(base.join(d)).map_err(|e| io("creating a work directory", e))?;
        }
        let port_file = base.join("receiver.port");
        let conf = receiver_config(&base.join("receiver"), &port_file, &base.join("received.jsonl"))?;
        let receiver = spawn(netns, &bin, &base, "receiver", &conf)?;
        // From here on, a failure drops `pair`, which stops what was started.
        let mut pair = Shipper { receiver, shipper: None, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        let port = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            if let Ok(port) = text.trim().parse::<u16>() {
                break port;
            }
            if Instant::now() >= deadline || matches!(pair.receiver.try_wait(), Ok(Some(_))) {
                return Err(RsyslogError::NotReady { which: "receiver", dir: base, log: pair.log("receiver") });
            }
            thread::sleep(Duration::from_millis(50));
        };
        let conf = shipper_config(&base.join("shipper"), file, port)?;
        let shipper = pair.shipper.insert(spawn(netns, &bin, &base, "shipper", &conf)?);
        // It has nothing to announce; still running after a moment means its config loaded.
        thread::sleep(Duration::from_millis(300));
        if matches!(shipper.try_wait(), Ok(Some(_))) {
            return Err(RsyslogError::NotReady { which: "shipper", dir: base, log: pair.log("shipper") });
        }
        Ok(pair)
    }

    /// The lines the receiver has written so far (a partly written last line left out).
    pub fn received(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("received.jsonl")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(str::to_owned).collect()
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        format!("receiver:\n{}\nshipper:\n{}", self.log("receiver"), self.log("shipper"))
    }

    fn log(&self, which: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{which}.log"))).unwrap_or_default()
    }
}

fn spawn(netns: &NetNs, bin: &Path, base: &Path, which: &str, conf: &str) -> Result<Child, RsyslogError> {
    let io = |what: &str, source| RsyslogError::Io { dir: base.to_owned(), what: format!("{which}: {what}"), source };
    let conf_path = base.join(format!("{which}.conf"));
    std::fs::write(&conf_path, conf).map_err(|e| io("writing its config", e))?;
    let log = std::fs::File::create(base.join(format!("{which}.log"))).map_err(|e| io("creating its log", e))?;
    let log2 = log.try_clone().map_err(|e| io("creating its log", e))?;
    let mut cmd = Command::new(bin);
    netns.command_inside(&mut cmd)?;
    cmd.arg("-n")
        .arg("-f")
        .arg(&conf_path)
        .arg("-i")
        .arg(base.join(format!("{which}.pid")))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .spawn()
        .map_err(|e| io("starting rsyslogd", e))
}

impl Drop for Shipper {
    fn drop(&mut self) {
        for child in self.shipper.iter_mut().chain([&mut self.receiver]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_their_own_files_and_refuse_unquotable_paths() {
        let c = shipper_config(Path::new("/tmp/w"), Path::new("/tmp/f.jsonl"), 4242).expect("config");
        assert!(c.contains("file=\"/tmp/f.jsonl\"") && c.contains("port=\"4242\""), "{c}");
        assert!(c.contains("workDirectory=\"/tmp/w\""), "{c}");
        let r = receiver_config(Path::new("/tmp/w"), Path::new("/tmp/p"), Path::new("/tmp/o")).expect("config");
        assert!(r.contains("address=\"127.0.0.1\"") && r.contains("listenPortFileName=\"/tmp/p\""), "{r}");
        assert!(matches!(quoted(Path::new("/tmp/a\"b")), Err(RsyslogError::Path(_))));
    }
}
