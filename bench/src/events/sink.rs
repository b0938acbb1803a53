//! Where the exporter's lines go in the bench: a FIFO at the `--flow-export-file` path, read
//! by a thread that counts what arrives. A file on disk would grow by hundreds of megabytes a
//! second at these rates; a pipe takes the same `write(2)`s from the exporter (its
//! `BufWriter` flushes into it as into the file) and is drained at memory speed.
//!
//! The reader counts flow lines and sums the `lost_events` lines by source, and parses a
//! sample of the flow lines as JSON (each must be a flow record with a uuid), so a figure
//! never counts lines that are not records.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, bail};

/// Every this many flow lines one is parsed in full.
const SAMPLE_EVERY: u64 = 4096;

/// What has arrived so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Flow records (lines that are not `lost_events`).
    pub flows: u64,
    /// `num_events_lost` summed per `source` of the `lost_events` lines.
    pub lost: BTreeMap<String, u64>,
    /// Sampled lines that were not a JSON flow with a uuid (must stay 0).
    pub bad: u64,
    pub bytes: u64,
}

/// Splits complete lines off `buf` into `c`, keeping a partial last line in `buf`.
pub fn take_lines(buf: &mut Vec<u8>, c: &mut Counts) {
    let mut start = 0;
    while let Some(n) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + n];
        start += n + 1;
        c.bytes += line.len() as u64 + 1;
        if line.starts_with(b"{\"lost_events\"") {
            match serde_json::from_slice::<serde_json::Value>(line) {
                Ok(v) => {
                    let src = v["lost_events"]["source"].as_str().unwrap_or("?").to_owned();
                    *c.lost.entry(src).or_default() += v["lost_events"]["num_events_lost"].as_u64().unwrap_or(0);
                }
                Err(_) => c.bad += 1,
            }
            continue;
        }
        c.flows += 1;
        if c.flows % SAMPLE_EVERY == 1 {
            let ok = serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| v["uuid"].is_string());
            if !ok {
                c.bad += 1;
            }
        }
    }
    buf.drain(..start);
}

/// The FIFO and its reader thread; the FIFO is removed on drop.
pub struct Sink {
    path: std::path::PathBuf,
    counts: Arc<Mutex<Counts>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Sink {
    /// Makes the FIFO at `path` and starts reading it. The reader holds it open for
    /// writing too, so the exporter's open never waits and a closed writer is no EOF.
    pub fn create(path: &Path) -> anyhow::Result<Sink> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).context("a path with a NUL")?;
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            bail!("mkfifo {}: {}", path.display(), std::io::Error::last_os_error());
        }
        // SAFETY: as above; O_RDWR on a FIFO never blocks on Linux.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            bail!("opening {}: {}", path.display(), std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        // Bigger pipe, fewer wakeups (best effort: the default is 64 KiB).
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20) };
        let counts = Arc::new(Mutex::new(Counts::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (counts.clone(), stop.clone());
        let reader = std::thread::Builder::new()
            .name("events-sink".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(1 << 20);
                let mut chunk = vec![0u8; 1 << 20];
                let mut fds = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }];
                while !s2.load(Ordering::Relaxed) {
                    // SAFETY: one valid pollfd.
                    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
                    if ready <= 0 {
                        continue;
                    }
                    match file.read(&mut chunk) {
                        Ok(0) | Err(_) => continue,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            let mut c = c2.lock().unwrap_or_else(|e| e.into_inner());
                            take_lines(&mut buf, &mut c);
                        }
                    }
                }
            })
            .context("starting the sink's reader")?;
        Ok(Sink { path: path.to_owned(), counts, stop, reader: Some(reader) })
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_losses_summed_by_source_and_partial_lines_kept() {
        let mut c = Counts::default();
        let mut buf = br#"{"uuid":"a","verdict":"DROPPED"}
{"lost_events":{"source":"kernel","num_events_lost":7}}
{"uuid":"b"}
{"lost_events":{"source":"export","num_events_lost":3}}
{"lost_events":{"source":"kernel","num_events_lost":2}}
{"uuid":"#
            .to_vec();
        take_lines(&mut buf, &mut c);
        assert_eq!(c.flows, 2);
        assert_eq!(c.lost.get("kernel"), Some(&9));
        assert_eq!(c.lost.get("export"), Some(&3));
        assert_eq!(c.bad, 0, "the sampled line (the first) is a flow");
        assert_eq!(buf, br#"{"uuid":"#.to_vec(), "the partial line waits for its end");
        buf.extend_from_slice(b"\"c\"}\nnot json\n");
        take_lines(&mut buf, &mut c);
        assert_eq!(c.flows, 4);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_sampled_line_that_is_not_a_flow_is_counted_bad() {
        let mut c = Counts::default();
        let mut buf = b"garbage\n".to_vec();
        take_lines(&mut buf, &mut c);
        assert_eq!((c.flows, c.bad), (1, 1));
    }

    #[test]
    fn the_fifo_delivers_what_is_written_into_it() {
        let dir = std::env::temp_dir().join(format!("ward-bench-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("flows.jsonl");
        let sink = Sink::create(&path).expect("sink");
        {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().append(true).open(&path).expect("open for writing");
            for i in 0..10_000 {
                writeln!(w, r#"{{"uuid":"u{i}"}}"#).expect("write");
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sink.counts().flows < 10_000 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(sink.counts().flows, 10_000);
        drop(sink);
        assert!(!path.exists(), "the FIFO is removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
